//! The chaos schedule of `fleet --chaos`: which faults, when, on which workers, from a seed.
//!
//! Faults come one at a time, spread over the first 70 % of the run; the rest of the run is the
//! healing phase, in which the fleet must recover. Pauses alternate between 3× the lease (the
//! lease expires while the worker is stopped, so another worker takes its job over and the
//! paused one comes back with a stale fence) and 0.5× the lease (the lease must survive it). The
//! first pause is a long one, so every run with pauses forces at least one lease expiry. Store
//! pauses (the store server stopped) and partitions (workers cut off the store) alternate the
//! same way.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// SIGKILL a worker (a new one takes its place).
    Kill,
    /// SIGSTOP some workers for a while, then SIGCONT.
    Pause,
    /// Restart the store server.
    StoreRestart,
    /// Delay some workers' store replies (after the store acted) for a while.
    Slow,
    /// SIGSTOP the store server for a while, then SIGCONT.
    StorePause,
    /// Cut some workers off the store server for a while (each reaches it through a proxy of
    /// its own), then heal.
    Partition,
    /// Hold the replication back for a while, kill the primary and promote its replica, which
    /// the workers' proxies then lead to (once per run).
    Failover,
    /// Step some workers' wall clocks an hour ahead or behind for a while (libfaketime), then
    /// back; workers with an odd proc id also run in a time namespace whose boot and monotonic
    /// clocks are an hour off the host's.
    Clock,
    /// Cut the leader of a three-member etcd cluster off its peers and its clients for a while,
    /// then heal.
    LeaderPartition,
}

/// Every fault, in the order the command line lists them.
pub const ALL: [Fault; 9] = [
    Fault::Kill,
    Fault::Pause,
    Fault::StoreRestart,
    Fault::Slow,
    Fault::StorePause,
    Fault::Partition,
    Fault::Failover,
    Fault::Clock,
    Fault::LeaderPartition,
];

impl Fault {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::StoreRestart => "store-restart",
            Fault::Slow => "slow",
            Fault::StorePause => "store-pause",
            Fault::Partition => "partition",
            Fault::Failover => "failover",
            Fault::Clock => "clock",
            Fault::LeaderPartition => "leader-partition",
        }
    }

    /// Whether the fault needs a store server the fleet started itself.
    pub fn needs_own_server(self) -> bool {
        matches!(
            self,
            Fault::StoreRestart | Fault::StorePause | Fault::Failover | Fault::LeaderPartition
        )
    }
}

/// `kill, pause, …`: every fault's name.
fn names() -> String {
    ALL.map(Fault::name).join(", ")
}

/// Parses `kill,pause,store-restart,slow,store-pause,partition,failover,clock,leader-partition`
/// (any non-empty subset, any order).
///
/// # Errors
///
/// An unknown or repeated fault, or an empty list.
pub fn parse_faults(list: &str) -> Result<Vec<Fault>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let f = ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| format!("unknown fault `{name}` in --chaos: use {}", names()))?;
        if out.contains(&f) {
            return Err(format!("`{name}` appears twice in --chaos"));
        }
        out.push(f);
    }
    if out.is_empty() {
        return Err(format!("--chaos needs at least one of {}", names()));
    }
    Ok(out)
}

/// A worker's store URL through a proxy at `endpoint` (`host:port`) instead of the server it
/// names: `(the server's host:port, the new URL)`. Only a plain TCP store naming one server
/// with its port can be proxied.
///
/// # Errors
///
/// Why this URL cannot go through a proxy.
pub fn proxied_url(url: &str, endpoint: &str) -> Result<(String, String), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "the store URL has no scheme".to_owned())?;
    let plain = ["redis", "valkey", "etcd", "postgres", "postgresql"];
    if !plain.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "a proxy can cut only a plain TCP store server ({}://), not {scheme}://",
            plain.join("://, ")
        ));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    if host.contains(',') {
        return Err("the store URL names several servers: one proxy cannot stand for them".into());
    }
    if host
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err("the store URL names no port for the proxy to connect to".into());
    }
    Ok((
        host.to_owned(),
        format!("{scheme}://{user}{endpoint}{path}"),
    ))
}

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Kill the worker in this slot.
    Kill {
        /// Worker slot (0-based).
        slot: usize,
    },
    /// Stop the workers in these slots for `factor` × the lease.
    Pause {
        /// Worker slots (0-based).
        slots: Vec<usize>,
        /// Pause length in leases.
        factor: f64,
    },
    /// Restart the store server.
    StoreRestart,
    /// Delay the store replies of the workers in these slots by `factor` × the lease, for
    /// [`SLOW_FOR`] leases.
    Slow {
        /// Worker slots (0-based).
        slots: Vec<usize>,
        /// Reply delay in leases.
        factor: f64,
    },
    /// Stop the store server for `factor` × the lease.
    StorePause {
        /// Pause length in leases.
        factor: f64,
    },
    /// Hold the replication back for `lag` × the lease, then fail over to the replica.
    Failover {
        /// How long the replica misses the primary's writes before the primary dies, in leases.
        lag: f64,
    },
    /// Cut the workers in these slots off the store for `factor` × the lease.
    Partition {
        /// Worker slots (0-based).
        slots: Vec<usize>,
        /// Partition length in leases.
        factor: f64,
    },
    /// Cut the store cluster's leader off for `factor` × the lease.
    LeaderPartition {
        /// Partition length in leases.
        factor: f64,
    },
    /// Step the wall clocks of the workers in these slots by `offset_secs` for [`CLOCK_FOR`]
    /// leases, then back to the real time.
    Clock {
        /// Worker slots (0-based).
        slots: Vec<usize>,
        /// The step, in seconds (negative: back).
        offset_secs: i64,
    },
}

/// How far a `clock` step moves a wall clock, in seconds, and a time namespace's clocks.
pub const CLOCK_STEP_SECS: i64 = 3600;

/// How long, in leases, a worker's wall clock stays stepped: past a lease, so that renewals and
/// grants happen on the stepped clock.
pub const CLOCK_FOR: f64 = 3.0;

/// How long, in leases, the replica misses the primary's writes before a failover.
pub const FAILOVER_LAG: f64 = 0.5;

/// How long, in leases, a `slow` step lasts.
pub const SLOW_FOR: f64 = 2.0;

/// A step and when it starts, from the start of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Start of the step.
    pub at: Duration,
    /// What to do.
    pub action: Action,
}

/// One to half of the worker slots, drawn at random, in order.
fn some_slots(rng: &mut StdRng, workers: usize) -> Vec<usize> {
    let mut slots: Vec<usize> = (0..workers).collect();
    slots.shuffle(rng);
    slots.truncate(rng.random_range(1..=(workers / 2).max(1)));
    slots.sort_unstable();
    slots
}

/// The schedule for a run of `duration` with `workers` workers and the given `lease`.
pub fn plan(
    seed: u64,
    faults: &[Fault],
    duration: Duration,
    lease: Duration,
    workers: usize,
) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let end = duration.mul_f64(0.7);
    let mut t = Duration::from_secs(1).max(lease / 2);
    let mut steps = Vec::new();
    let mut long_next = true;
    // Slow replies alternate between 1.5× the lease (every grant arrives past its deadline) and
    // 0.3× (renewals still land in time).
    let mut late_next = true;
    // Store pauses alternate as worker pauses do, each kind on its own.
    let mut store_long_next = true;
    let mut cut_long_next = true;
    let mut leader_long_next = true;
    // Wall clocks are stepped ahead, then back, in turn.
    let mut ahead_next = true;
    let mut round: Vec<Fault> = Vec::new();
    // A failover uses the one replica up: once per run.
    let mut faults = faults.to_vec();
    while t < end && workers > 0 && !faults.is_empty() {
        // Every fault once per round, in a shuffled order.
        if round.is_empty() {
            round.clone_from(&faults);
            round.shuffle(&mut rng);
        }
        let fault = round.pop().expect("refilled above");
        if fault == Fault::Failover {
            faults.retain(|f| *f != Fault::Failover);
        }
        let (action, len) = match fault {
            Fault::Kill => (
                Action::Kill {
                    slot: rng.random_range(0..workers),
                },
                Duration::ZERO,
            ),
            Fault::Pause => {
                let factor = if long_next { 3.0 } else { 0.5 };
                long_next = !long_next;
                let slots = some_slots(&mut rng, workers);
                (Action::Pause { slots, factor }, lease.mul_f64(factor))
            }
            Fault::StoreRestart => (Action::StoreRestart, Duration::from_secs(1)),
            Fault::Slow => {
                let factor = if late_next { 1.5 } else { 0.3 };
                late_next = !late_next;
                let slots = some_slots(&mut rng, workers);
                (Action::Slow { slots, factor }, lease.mul_f64(SLOW_FOR))
            }
            Fault::StorePause => {
                let factor = if store_long_next { 3.0 } else { 0.5 };
                store_long_next = !store_long_next;
                (Action::StorePause { factor }, lease.mul_f64(factor))
            }
            Fault::Failover => (
                Action::Failover { lag: FAILOVER_LAG },
                lease.mul_f64(FAILOVER_LAG) + Duration::from_secs(1),
            ),
            Fault::Partition => {
                let factor = if cut_long_next { 3.0 } else { 0.5 };
                cut_long_next = !cut_long_next;
                let slots = some_slots(&mut rng, workers);
                (Action::Partition { slots, factor }, lease.mul_f64(factor))
            }
            Fault::LeaderPartition => {
                let factor = if leader_long_next { 3.0 } else { 0.5 };
                leader_long_next = !leader_long_next;
                (Action::LeaderPartition { factor }, lease.mul_f64(factor))
            }
            Fault::Clock => {
                let offset_secs = if ahead_next {
                    CLOCK_STEP_SECS
                } else {
                    -CLOCK_STEP_SECS
                };
                ahead_next = !ahead_next;
                let slots = some_slots(&mut rng, workers);
                (
                    Action::Clock { slots, offset_secs },
                    lease.mul_f64(CLOCK_FOR),
                )
            }
        };
        if t + len > end && !steps.is_empty() {
            break;
        }
        steps.push(Step { at: t, action });
        t += len + lease.mul_f64(rng.random_range(0.5..1.5));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_go_through_a_proxy_and_others_say_why_not() {
        let p = "127.0.0.1:9";
        assert_eq!(
            proxied_url("redis://u:pw@127.0.0.1:6379/2?wait_replicas=1", p).unwrap(),
            (
                "127.0.0.1:6379".to_owned(),
                "redis://u:pw@127.0.0.1:9/2?wait_replicas=1".to_owned()
            )
        );
        assert_eq!(
            proxied_url("etcd://127.0.0.1:2379/fleet/", p).unwrap().1,
            "etcd://127.0.0.1:9/fleet/"
        );
        assert_eq!(
            proxied_url("redis://h:1", p).unwrap(),
            ("h:1".to_owned(), "redis://127.0.0.1:9".to_owned())
        );
        for bad in [
            "sqlite:///tmp/x.db",
            "rediss://h:1",
            "etcd://a:1,b:2/p",
            "redis://h",
        ] {
            assert!(proxied_url(bad, p).is_err(), "{bad}");
        }
    }

    #[test]
    fn fault_lists_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_faults("pause,kill").unwrap(),
            [Fault::Pause, Fault::Kill]
        );
        assert!(parse_faults("kill,nap").unwrap_err().contains("`nap`"));
        assert!(parse_faults("kill,kill").unwrap_err().contains("twice"));
        assert!(parse_faults("").is_err());
    }

    #[test]
    fn the_schedule_is_seeded_leaves_a_healing_phase_and_starts_pauses_long() {
        let all = ALL;
        let (d, lease) = (Duration::from_secs(90), Duration::from_secs(1));
        let a = plan(7, &all, d, lease, 4);
        assert_eq!(a, plan(7, &all, d, lease, 4));
        assert_ne!(a, plan(8, &all, d, lease, 4));
        for f in all {
            assert!(
                a.iter().any(|s| matches!(
                    (&s.action, f),
                    (Action::Kill { .. }, Fault::Kill)
                        | (Action::Pause { .. }, Fault::Pause)
                        | (Action::StoreRestart, Fault::StoreRestart)
                        | (Action::Slow { .. }, Fault::Slow)
                        | (Action::StorePause { .. }, Fault::StorePause)
                        | (Action::Partition { .. }, Fault::Partition)
                        | (Action::Failover { .. }, Fault::Failover)
                        | (Action::Clock { .. }, Fault::Clock)
                        | (Action::LeaderPartition { .. }, Fault::LeaderPartition)
                )),
                "{f:?} missing from {a:?}"
            );
        }
        let last = a.last().unwrap();
        assert!(last.at < d.mul_f64(0.7));
        let first_pause = a.iter().find_map(|s| match &s.action {
            Action::Pause { factor, slots } => Some((*factor, slots.len())),
            _ => None,
        });
        let (factor, n) = first_pause.unwrap();
        assert_eq!(factor, 3.0);
        assert!((1..=2).contains(&n));
        let store_pauses: Vec<f64> = a
            .iter()
            .filter_map(|s| match s.action {
                Action::StorePause { factor } => Some(factor),
                _ => None,
            })
            .collect();
        assert_eq!(store_pauses[..2], [3.0, 0.5], "{store_pauses:?}");
        let cuts: Vec<(f64, usize)> = a
            .iter()
            .filter_map(|s| match &s.action {
                Action::Partition { factor, slots } => Some((*factor, slots.len())),
                _ => None,
            })
            .collect();
        assert_eq!([cuts[0].0, cuts[1].0], [3.0, 0.5], "{cuts:?}");
        assert!(cuts.iter().all(|c| (1..=2).contains(&c.1)), "{cuts:?}");
        let failovers = a
            .iter()
            .filter(|s| matches!(s.action, Action::Failover { .. }))
            .count();
        assert_eq!(failovers, 1, "one replica, one failover: {a:?}");
        let steps: Vec<i64> = a
            .iter()
            .filter_map(|s| match s.action {
                Action::Clock { offset_secs, .. } => Some(offset_secs),
                _ => None,
            })
            .collect();
        assert_eq!(steps[..2], [3600, -3600], "{steps:?}");
        let only = plan(7, &[Fault::Failover], d, lease, 4);
        assert_eq!(only.len(), 1, "{only:?}");
        // A short run still gets its one long pause.
        let short = plan(1, &[Fault::Pause], Duration::from_secs(5), lease, 2);
        assert!(matches!(short[0].action, Action::Pause { factor: 3.0, .. }));
    }
}
