//! Test support for backends (feature `testing`): the store conformance suite, a
//! fault-injecting wrapper store, and a clock that can jump (a suspend).
//!
//! Every backend runs the same suite against its real server:
//!
//! ```ignore
//! async fn store() -> MyStore { MyStore::connect(..).await.unwrap() }
//! lease_core::conformance_tests!(store());
//! ```
//!
//! The macro stamps out one `#[tokio::test]` per case in [`conformance`], each with a fresh store
//! from the factory expression and its own random key prefix, so cases run in parallel against one
//! shared server. Timing cases use the store's declared
//! [`Capabilities`](crate::Capabilities) (an etcd lease is at least two whole seconds).

pub mod conformance;
mod fault;
mod jump;

pub use fault::{Call, Calls, Fault, FaultStore};
pub use jump::JumpClock;

/// Stamps out one `#[tokio::test]` per conformance case for a store factory.
///
/// `$factory` is an expression that evaluates to a future of a fresh store; it is evaluated once
/// per case. The tests live in a module named `conformance` in the calling scope.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            vacant_key_is_granted_with_fence_one,
            same_holder_extends_and_keeps_fence,
            other_holder_is_refused_without_error,
            expiry_lets_another_holder_in_with_larger_fence,
            same_holder_retakes_expired_lease_with_same_fence,
            release_frees_key_and_keeps_fence_counter,
            zero_lease_releases,
            non_holder_cannot_release_or_renew,
            renew_extends_only_the_exact_grant,
            renew_never_revives_a_lapsed_lease,
            keys_are_independent,
            odd_keys_and_holders_never_collide,
            long_keys_work_and_overlong_or_empty_input_is_refused,
            concurrent_contenders_have_exactly_one_winner,
            fences_strictly_increase_over_alternating_grants,
            wait_for_change_is_bounded_and_wakes_on_release,
            inspect_of_a_never_granted_key_is_free_without_fence,
            inspect_shows_the_grant_and_after_release_the_last_fence,
            inspect_after_expiry_is_free,
            break_of_a_never_granted_key_is_none,
            break_takes_a_held_key_and_raises_the_fence,
            break_of_a_released_key_raises_the_fence,
            break_wakes_waiters,
            inspect_and_break_validate_the_key,
            queue_grants_in_fifo_order,
            newcomers_do_not_overtake_a_live_queue,
            dead_waiters_are_skipped,
            leaving_the_queue_passes_the_key_on,
            a_grant_to_a_dead_waiter_lapses_to_the_next,
            enqueue_again_keeps_the_grant_or_the_place,
            wait_for_grant_wakes_the_granted_waiter,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        mod conformance {
            #[allow(unused_imports)] // the factory expression may name items of the parent module
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = $factory.await;
                    $crate::testing::conformance::$case(store).await;
                }
            )*
        }
    };
}
