//! The etcd store for lease-core (in progress).
