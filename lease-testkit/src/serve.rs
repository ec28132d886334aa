//! One way for programs to start a throwaway server of a store named as `leasehold::Scheme::name`
//! spells it (`--store redis`, `--store etcd` without a URL): the fleet and the bench call
//! [`serve`] instead of knowing each server.

use std::time::Duration;

use crate::{EtcdCluster, EtcdOptions, PostgresOptions, PostgresServer, RedisOptions, RedisServer};

/// How [`serve`] starts a server.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Every write reaches the disk before it is answered, so fences survive a restart (Redis:
    /// AOF with an fsync per write; etcd and PostgreSQL always do so).
    pub durable: bool,
    /// The key prefix, for the stores whose URL carries one (etcd: `etcd://HOST:PORT/PREFIX`;
    /// PostgreSQL: the schema, `?schema=PREFIX`, cut to 63 bytes).
    pub prefix: String,
}

/// A throwaway store server started by [`serve`], and the URL that opens its store; the server
/// is stopped on drop.
#[derive(Debug)]
pub struct Served {
    url: String,
    server: Server,
}

#[derive(Debug)]
enum Server {
    Redis(RedisServer),
    Etcd(EtcdCluster),
    Postgres(PostgresServer),
}

/// The program that serves `store`, when test support can start one (`redis-server`, `etcd`,
/// `postgres`);
/// `None` for a store it has no server for (an embedded store such as SQLite).
pub fn server_program(store: &str) -> Option<&'static str> {
    match store {
        "redis" => Some("redis-server"),
        "etcd" => Some("etcd"),
        "postgres" => Some("postgres"),
        _ => None,
    }
}

/// Starts a throwaway server for `store` on a free loopback port, in a temp dir. `None` when
/// [`server_program`] has no server for it, or its program is not installed and `CI` is unset.
///
/// # Panics
///
/// When the server cannot be started (or, under `CI`, is not installed), with its log.
pub fn serve(store: &str, options: &ServeOptions) -> Option<Served> {
    match store {
        "redis" => {
            let server = RedisServer::start(RedisOptions {
                aof_always: options.durable,
                ..Default::default()
            })?;
            Some(Served {
                url: server.url(),
                server: Server::Redis(server),
            })
        }
        "etcd" => {
            let cluster = EtcdCluster::start(EtcdOptions::default())?;
            Some(Served {
                url: format!("etcd://{}/{}", cluster.endpoint(), options.prefix),
                server: Server::Etcd(cluster),
            })
        }
        "postgres" => {
            // Commits are always durable (fsync on, synchronous_commit on). The prefix, if
            // any, names the store's schema (at most 63 bytes).
            let server = PostgresServer::start(PostgresOptions::default())?;
            let mut url = server.url();
            if !options.prefix.is_empty() {
                let mut schema: String = options.prefix.clone();
                while schema.len() > 63 {
                    schema.pop();
                }
                url.push_str("?schema=");
                url.push_str(&percent_encode(&schema));
            }
            Some(Served {
                url,
                server: Server::Postgres(server),
            })
        }
        _ => None,
    }
}

/// Every byte but unreserved ones as `%XX`, for a URL's query value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Served {
    /// The URL that opens the server's store (without credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server's processes (SIGSTOP): it keeps its sockets and its data but answers
    /// nothing, and its clocks run on, until [`resume`](Self::resume). Returns once every thread
    /// is stopped (for PostgreSQL, of the postmaster and every backend).
    pub fn pause(&mut self) {
        match &mut self.server {
            Server::Redis(s) => s.process().pause(),
            Server::Etcd(c) => c.members[0].process().pause(),
            Server::Postgres(s) => s.pause(),
        }
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&mut self) {
        match &mut self.server {
            Server::Redis(s) => s.process().resume(),
            Server::Etcd(c) => c.members[0].process().resume(),
            Server::Postgres(s) => s.resume(),
        }
    }

    /// `host:port` the server listens on (for a proxy in front of it).
    pub fn endpoint(&self) -> String {
        match &self.server {
            Server::Redis(s) => format!("127.0.0.1:{}", s.port()),
            Server::Etcd(c) => c.endpoint(),
            Server::Postgres(s) => format!("127.0.0.1:{}", s.port()),
        }
    }

    /// Kills the server and starts it again with the same port and data, and waits until it
    /// serves again.
    ///
    /// # Errors
    ///
    /// When the server does not become healthy again in time.
    ///
    /// # Panics
    ///
    /// When the server's process does not start again, with its log.
    pub fn restart(&mut self) -> Result<(), String> {
        match &mut self.server {
            Server::Redis(s) => {
                s.restart();
                Ok(())
            }
            Server::Etcd(c) => {
                c.members[0].restart();
                if c.wait_healthy(1, Duration::from_secs(20)) {
                    Ok(())
                } else {
                    Err("etcd did not become healthy within 20 s of its restart".to_owned())
                }
            }
            Server::Postgres(s) => {
                s.restart_immediate();
                Ok(())
            }
        }
    }
}
