//! `leader` against a real SQLite store: leadership moves after each kill with a larger fence, and
//! the run's own checks catch candidates that share one holder id.

use std::process::{Command, Output};

fn leader(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leader"))
        .args(args)
        .output()
        .expect("run leader")
}

/// The number after `label` on the summary line that starts with it.
fn figure(stdout: &str, label: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{stdout}"))
}

#[test]
fn leadership_moves_after_each_kill_with_a_larger_fence() {
    let out = leader(&[
        "--candidates",
        "3",
        "--duration",
        "8s",
        "--lease",
        "1s",
        "--kill-every",
        "2500ms",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("result                 ok, 0 violations"),
        "{stdout}"
    );
    let kills = figure(&stdout, "leaders killed");
    let elections = figure(&stdout, "elections");
    assert!(kills >= 2, "{stdout}");
    assert_eq!(elections, kills + 1, "one new leader per kill:\n{stdout}");
    let fences: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("fences"))
        .expect("fences line")
        .split('→')
        .map(|f| f.trim().parse().expect("a fence"))
        .collect();
    assert_eq!(fences.len() as u64, elections);
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{stdout}");
    assert!(
        figure(&stdout, "actions") > 0,
        "the leaders acted:\n{stdout}"
    );
}

#[test]
fn candidates_sharing_one_holder_are_reported() {
    let out = leader(&[
        "--duration",
        "2s",
        "--kill-every",
        "0s",
        "--broken-shared-holder",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("while candidate"),
        "an overlap is named:\n{stdout}"
    );
    assert!(stdout.contains("not above the previous leader"), "{stdout}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = leader(&["--candidates", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--candidates must be at least 2"),
        "{stderr}"
    );
    let out = leader(&["--store", "nosuch://x"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown store scheme `nosuch://`"),
        "{stderr}"
    );
}
