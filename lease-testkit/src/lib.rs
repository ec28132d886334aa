//! Test support shared by every backend: start a real server binary on a free loopback port in a
//! temp dir (redis-server, etcd, PostgreSQL and PgBouncer), wait until it answers, stop it on drop.
//!
//! When the `CI` environment variable is set, a missing server binary is a test failure (a panic
//! naming the package to install); otherwise the test prints why it is skipped and returns.
//!
//! ```no_run
//! let Some(redis) = lease_testkit::RedisServer::start(Default::default()) else { return };
//! let url = redis.url();
//! ```
//!
//! Every server runs under a watchdog that kills it once the test process is gone, so one kept in
//! a `static` ([`RedisServer::shared`], [`EtcdServer::shared`]) does not outlive its tests.
//!
//! Beside the servers: the process-fault suite every backend runs
//! ([`process_conformance_tests!`], [`process_suite`]), [`unique_prefix`] to keep tests apart on
//! a shared server, [`HoldingProxy`] to hold a server's answers back, and [`faketime`] to step a
//! process's wall clock while it runs.
//!
//! For network partitions: [`NetnsBridge`] runs servers on hosts of their own (Linux network
//! namespaces on a bridge; needs root) and cuts any one of them off the network, peers and
//! clients alike; [`EtcdCluster::start_partitionable`] starts an etcd cluster on such hosts, so
//! that a test can [`partition`](EtcdCluster::partition) its leader.

mod etcd;
pub mod faketime;
mod netns;
mod postgres;
mod prefix;
mod process;
pub mod process_suite;
mod proxy;
mod redis;
mod serve;
mod tls;

pub use etcd::{EtcdCluster, EtcdMember, EtcdMemberStatus, EtcdOptions, EtcdServer};
pub use netns::NetnsBridge;
pub use postgres::{POSTGRES_PASSWORD, POSTGRES_USER, PgBouncer, PostgresOptions, PostgresServer};
pub use prefix::unique_prefix;
pub use process::{Server, free_port, pause_process, require_binary};
pub use proxy::HoldingProxy;
pub use redis::{RedisOptions, RedisServer};
pub use serve::{ServeOptions, Served, serve, server_program};
pub use tls::make_test_certs;
