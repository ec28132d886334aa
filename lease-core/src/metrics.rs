//! Metric names and recording, through the `metrics` facade (install any recorder to collect).
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `lease_acquired_total` | counter | grants from the store (not re-entrant guards) |
//! | `lease_reentrant_total` | counter | guards handed out without a store call |
//! | `lease_contended_total` | counter | acquire attempts refused because another holder had the key |
//! | `lease_late_grants_total` | counter | grants that arrived after their local deadline and were released instead of handed out |
//! | `lease_uncertain_releases_total` | counter | releases whose outcome stayed unknown (error, panic, dropped); later leases use a new holder string |
//! | `lease_acquire_seconds` | histogram | latency of a successful store acquire call |
//! | `lease_wait_seconds` | histogram | time a waiting call waited before it got a guard |
//! | `lease_renew_failures_total` | counter | failed renewal attempts (retried while time remains) |
//! | `lease_lost_total` | counter | leases lost, labelled by `reason` |
//! | `lease_slack_seconds` | histogram | time left before the local deadline when a renewal succeeded |
//!
//! Every metric carries a `store` label (the store's name). Keys and holders are not labels:
//! they are unbounded.

use std::time::Duration;

pub(crate) fn acquired(store: &'static str, latency: Duration) {
    metrics::counter!("lease_acquired_total", "store" => store).increment(1);
    metrics::histogram!("lease_acquire_seconds", "store" => store).record(latency.as_secs_f64());
}

pub(crate) fn reentrant(store: &'static str) {
    metrics::counter!("lease_reentrant_total", "store" => store).increment(1);
}

pub(crate) fn contended(store: &'static str) {
    metrics::counter!("lease_contended_total", "store" => store).increment(1);
}

pub(crate) fn wait(store: &'static str, waited: Duration) {
    metrics::histogram!("lease_wait_seconds", "store" => store).record(waited.as_secs_f64());
}

pub(crate) fn renewed(store: &'static str, slack: Duration) {
    metrics::histogram!("lease_slack_seconds", "store" => store).record(slack.as_secs_f64());
}

pub(crate) fn renew_failed(store: &'static str) {
    metrics::counter!("lease_renew_failures_total", "store" => store).increment(1);
}

pub(crate) fn lost(store: &'static str, reason: &'static str) {
    metrics::counter!("lease_lost_total", "store" => store, "reason" => reason).increment(1);
}

pub(crate) fn late_grant(store: &'static str) {
    metrics::counter!("lease_late_grants_total", "store" => store).increment(1);
}

pub(crate) fn uncertain_release(store: &'static str) {
    metrics::counter!("lease_uncertain_releases_total", "store" => store).increment(1);
}
