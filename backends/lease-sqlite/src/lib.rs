//! The sqlite store for lease-core (in progress).
