//! Capped exponential backoff with jitter, one instance per waiting call.

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with jitter.
///
/// Each waiting call owns its own `Backoff`, so one caller's long wait or time-out never changes
/// another's (the ancestor shared one, and its "give up" state stuck). The n-th delay is drawn
/// uniformly from `[min, min(max, min·2ⁿ)]`, which spreads waiters apart instead of waking them
/// in lock-step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    jitter: bool,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
            jitter: true,
        }
    }

    /// Plain doubling from `min` to `max`, without jitter (only to reproduce older designs).
    pub(crate) fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1).min(31);
        if ceiling <= self.min || !self.jitter {
            return ceiling;
        }
        if ceiling <= self.min {
            return self.min;
        }
        let nanos = rand::rng().random_range(self.min.as_nanos()..=ceiling.as_nanos());
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_are_jittered() {
        let (min, max) = (Duration::from_millis(1), Duration::from_millis(100));
        let mut b = Backoff::new(min, max);
        let delays: Vec<_> = (0..40).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= min && *d <= max), "{delays:?}");
        assert_eq!(delays[0], min);
        let late = &delays[20..];
        assert!(
            late.iter().any(|d| *d > Duration::from_millis(50)),
            "delays must reach towards the cap: {late:?}"
        );
        let distinct: std::collections::HashSet<_> = late.iter().collect();
        assert!(
            distinct.len() > 10,
            "delays must be jittered, not fixed: {late:?}"
        );
    }

    #[test]
    fn without_jitter_doubles_exactly() {
        let mut b =
            Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).without_jitter();
        let ms: Vec<_> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }
}
