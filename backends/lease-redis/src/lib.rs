//! The redis store for lease-core (in progress).
