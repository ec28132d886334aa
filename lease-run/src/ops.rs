//! The operator's subcommands: `status` (who holds a key) and `break` (take it away).

use std::time::Duration;

use leasehold::{DynStore, KeyState, LeaseStore};

use crate::cli::{BreakArgs, StatusArgs, exit};
use crate::{Failure, store_url};

/// How long an operator's call may take before it is reported as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

async fn open(args: &crate::cli::StoreArgs) -> Result<DynStore, Failure> {
    let url = store_url(args)?;
    leasehold::open(&url)
        .await
        .map_err(|e| Failure(exit::STORE, crate::open_failed(&e)))
}

/// `held by host/pid/lease-run, fence 2, 7s left` or `free (last fence 3)`.
pub(crate) fn describe(state: &KeyState) -> String {
    let fence = state.fence.map(|f| f.get());
    match (&state.holder, fence) {
        (Some(_), f) => {
            let mut s = format!("held by {}", state.holder_label().unwrap_or("?"));
            if let Some(f) = f {
                s.push_str(&format!(", fence {f}"));
            }
            if let Some(left) = state.remaining {
                let left =
                    Duration::from_millis(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
                s.push_str(&format!(", {} left", humantime::format_duration(left)));
            }
            s
        }
        (None, Some(f)) => format!("free (last fence {f})"),
        (None, None) => "free (never granted)".into(),
    }
}

/// The key's state, for the busy message; `None` if the store cannot tell quickly.
pub(crate) async fn holder_of(store: &DynStore, key: &str) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(2), store.inspect(key)).await {
        Ok(Ok(state)) if state.is_held() => Some(describe(&state)),
        _ => None,
    }
}

pub(crate) async fn status(args: StatusArgs) -> Result<u8, Failure> {
    let store = open(&args.store).await?;
    let state = tokio::time::timeout(CALL_TIMEOUT, store.inspect(&args.key))
        .await
        .map_err(|_| Failure(exit::STORE, "the store did not answer".into()))?
        .map_err(|e| Failure(exit::STORE, e.to_string()))?;
    if args.json {
        let json = serde_json::json!({
            "key": args.key,
            "held": state.is_held(),
            "holder": state.holder_label(),
            "fence": state.fence.map(|f| f.get()),
            "remaining_ms": state.remaining.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        });
        println!("{json}");
    } else {
        println!("{}: {}", args.key, describe(&state));
    }
    Ok(0)
}

pub(crate) async fn break_key(args: BreakArgs) -> Result<u8, Failure> {
    if !args.force {
        return Err(Failure(
            exit::USAGE,
            format!(
                "`break` takes `{}` away from its holder (whose command is then stopped); add \
                 --force to do it",
                args.key
            ),
        ));
    }
    let store = open(&args.store).await?;
    let broken = tokio::time::timeout(CALL_TIMEOUT, store.break_lock(&args.key))
        .await
        .map_err(|_| {
            Failure(
                exit::STORE,
                "the store did not answer (the break may still be applied; check with `status`)"
                    .into(),
            )
        })?
        .map_err(|e| Failure(exit::STORE, e.to_string()))?;
    match broken {
        None => println!("{}: never granted; nothing to break", args.key),
        Some(b) => {
            let before = match (&b.previous_holder, b.was_live) {
                (Some(h), true) => format!("was held by {}", label(h)),
                (Some(h), false) => format!("the lease of {} had already lapsed", label(h)),
                (None, _) => "was free".into(),
            };
            println!(
                "{}: broken ({before}); fence now {}: the old holder's fenced writes are rejected",
                args.key,
                b.fence.get()
            );
        }
    }
    Ok(0)
}

fn label(holder: &str) -> &str {
    holder.split('#').next().unwrap_or(holder)
}
