//! Smoke tests of the harness binary: `--quick` on each store writes one JSON record per
//! scenario × implementation × parameters, the report and the plots, and bad input fails with a
//! message naming what is wrong. Timings are not checked.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lease-bench"))
}

/// Runs `--quick` on `store` and checks what a user reads from the JSON and the out dir.
fn quick(store: &str, version_prefix: &str, peer: Option<&str>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("out.json");
    let out = dir.path().join("report");
    let run = bench()
        .args(["--quick", "--store", store, "--json"])
        .arg(&json)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run lease-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "lease-bench --quick --store {store} failed: {}\n{stdout}\n{stderr}\nworkers.log:\n{}",
        run.status,
        std::fs::read_to_string(out.join("workers.log")).unwrap_or_default()
    );
    assert!(
        stdout.contains("handoff"),
        "the table lists handoffs:\n{stdout}"
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    assert!(report["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert!(!report["machine"]["kernel"].as_str().unwrap().is_empty());
    let records = report["records"].as_array().expect("records");
    for r in records {
        assert!(r["error"].is_null(), "a measurement failed: {r}");
        assert!(
            r["store_version"]
                .as_str()
                .unwrap()
                .starts_with(version_prefix),
            "store version in {r}"
        );
    }
    let find = |scenario: &str, imp: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["scenario"] == scenario && r["implementation"] == imp)
            .collect()
    };
    let floor = find("floor", "floor");
    assert_eq!(floor.len(), 1);
    assert!(floor[0]["p50"].as_f64().unwrap() > 0.0);

    for scenario in [
        "uncontended",
        "reentrant",
        "handoff",
        "one-key",
        "renewal",
        "fairness",
        "crash",
    ] {
        for imp in ["ours", "ancestor"] {
            assert!(
                !find(scenario, imp).is_empty(),
                "no {scenario} record for {imp}"
            );
        }
    }
    assert!(!find("many-keys", "ours").is_empty());
    assert!(!find("many-keys", "floor").is_empty());

    // Every latency record carries its ratio to the floor next to the absolute figure.
    let acquire = find("uncontended", "ours")
        .into_iter()
        .find(|r| r["metric"] == "acquire latency")
        .expect("uncontended acquire");
    assert!(acquire["ratio_to_floor"].as_f64().unwrap() > 0.0);

    // Re-entry makes no store call at all.
    for r in find("reentrant", "ours") {
        assert_eq!(r["extra"]["store_calls"], 0, "{r}");
    }

    // The quick handoff grid: hold {0, 10} ms × waiters {1, 2}, ten handoffs each.
    let handoffs = find("handoff", "ours");
    assert_eq!(handoffs.len(), 4);
    for r in &handoffs {
        assert_eq!(r["samples"], 10, "{r}");
        assert!(r["params"]["hold_ms"].is_u64() && r["params"]["waiters"].is_u64());
    }

    // The harness's own Redis and SQLite run with the waiter queue: `ours` is queued and
    // `ours-barging` beside it in every scenario that compares the two modes. etcd has no queue
    // yet, so it has no barging rows.
    let queued = store != "etcd";
    for scenario in ["handoff", "one-key", "fairness", "crash"] {
        let barging = find(scenario, "ours-barging").len();
        if queued {
            assert!(
                barging > 0 && barging == find(scenario, "ours").len(),
                "{scenario}: one ours-barging record per ours record"
            );
        } else {
            assert_eq!(
                barging, 0,
                "{scenario}: ours-barging on a store without a queue"
            );
        }
    }
    for r in find("handoff", "ours-barging") {
        assert_eq!(r["samples"], 10, "{r}");
    }

    // Fairness: eight processes, each with a count.
    let fair = find("fairness", "ours");
    assert_eq!(fair[0]["extra"]["counts"][0].as_array().unwrap().len(), 8);
    assert!(fair[0]["value"].as_f64().unwrap() > 0.0);

    // A SIGKILLed holder's key went to the waiter.
    assert!(find("crash", "ours")[0]["p50"].as_f64().unwrap() > 0.0);

    // Redis also has the fastest floor (a dedicated blocking connection), and ratios are to it.
    if store.starts_with("redis") {
        let fastest = find("floor", "floor-fastest");
        assert_eq!(fastest.len(), 1, "no fastest floor");
        assert_eq!(fastest[0]["ratio_to_floor"].as_f64(), Some(1.0));
    }

    if let Some(peer) = peer {
        assert!(!find("uncontended", peer).is_empty(), "no {peer} record");
        assert!(!find("handoff", peer).is_empty(), "no {peer} handoff");
    }

    let store_name = store.split(':').next().unwrap();
    for f in [
        "report.md".to_owned(),
        format!("handoff-{store_name}.svg"),
        format!("fairness-{store_name}.svg"),
    ] {
        let p: &Path = &out.join(&f);
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!text.is_empty());
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Goals"), "{md}");
}

#[test]
fn quick_sqlite() {
    quick("sqlite", "SQLite", None);
}

#[cfg(feature = "redis")]
#[test]
fn quick_redis() {
    // Under CI a missing server fails here (lease-testkit panics); elsewhere the test skips.
    if lease_testkit::require_binary("redis-server", "redis-server").is_none() {
        return;
    }
    quick("redis", "Redis", Some("rslock"));
}

#[cfg(feature = "etcd")]
#[test]
fn quick_etcd() {
    if lease_testkit::require_binary("etcd", "etcd-server").is_none() {
        return;
    }
    quick("etcd", "etcd", Some("etcd-lock-rpc"));
}

#[test]
fn bad_input_names_what_is_wrong() {
    // Refused runs write nothing, but run from a temp dir so that a regression cannot leave a
    // `target/lease-bench` behind in the source tree.
    let dir = tempfile::tempdir().expect("temp dir");
    let bench = || {
        let mut c = bench();
        c.current_dir(dir.path());
        c
    };
    let run = bench().args(["--store", "mongodb"]).output().unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("unknown store `mongodb`"), "{err}");

    let run = bench().args(["--scenario", "nope"]).output().unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("nope"), "{err}");

    let run = bench().args(["--runs", "0"]).output().unwrap();
    assert!(!run.status.success());

    let run = bench().args(["--store", "sqlite://"]).output().unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("names no file"), "{err}");
}
