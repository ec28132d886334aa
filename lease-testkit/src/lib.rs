//! Test support shared by every backend: start a real server binary on a free loopback port in a
//! temp dir, wait until it answers, stop it on drop.
//!
//! When the `CI` environment variable is set, a missing server binary is a test failure (a panic
//! naming the package to install); otherwise the test prints why it is skipped and returns.
//!
//! ```no_run
//! let Some(redis) = lease_testkit::RedisServer::start(Default::default()) else { return };
//! let url = redis.url();
//! ```

mod etcd;
mod process;
mod redis;
mod serve;
mod tls;

pub use etcd::{EtcdCluster, EtcdOptions, EtcdServer};
pub use process::{Server, free_port, require_binary};
pub use redis::{RedisOptions, RedisServer};
pub use serve::{ServeOptions, Served, serve, server_program};
pub use tls::make_test_certs;
