//! A store server the fleet starts itself (`--store redis`, `--store etcd`: any store that runs
//! as a server), so that the nemesis can restart or stop it; for `--chaos failover` on Redis, a
//! primary with one replica, which the nemesis promotes; for `--chaos leader-partition` on etcd,
//! a cluster of three whose members live in network namespaces of their own, so that the
//! nemesis can cut the leader off its peers and clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lease_testkit::{
    EtcdCluster, EtcdOptions, HoldingProxy, RedisOptions, RedisServer, ServeOptions, Served,
};
use leasehold::Scheme;

/// A throwaway local server the fleet started; stopped when dropped.
pub(crate) struct OwnedServer(Inner);

enum Inner {
    One(Box<Served>),
    Replicated(Box<Replicated>),
    /// An etcd cluster, and its members cut off and stopped, if any.
    Cluster {
        cluster: Box<EtcdCluster>,
        cut: Option<usize>,
        paused: Option<usize>,
    },
}

/// Members of the cluster `--chaos leader-partition` runs on.
const CLUSTER_SIZE: usize = 3;

/// A Redis primary and its replica, which follows it through a proxy (the link), so that the
/// nemesis can hold the replication back before it fails over: the replica then misses the
/// primary's last writes, as an asynchronous replica can.
struct Replicated {
    servers: [RedisServer; 2],
    /// Which of `servers` is the primary.
    primary: usize,
    link: HoldingProxy,
    failed_over: bool,
}

impl OwnedServer {
    /// `--store NAME` (or `NAME?OPTIONS`, the options added to the store's URL), where NAME is a
    /// store that runs as a server: starts a throwaway local server, and gives it with the URL
    /// of its store. `None` for anything else, which is a URL. With `replicated` and Redis, a
    /// primary and a replica of it; with `cluster` and etcd, a cluster of three in network
    /// namespaces.
    ///
    /// # Errors
    ///
    /// When this build leaves the store out (this package's features are named as leasehold's),
    /// or its server is not installed.
    pub(crate) fn start(
        store: &str,
        replicated: bool,
        cluster: bool,
    ) -> anyhow::Result<Option<(OwnedServer, String)>> {
        let (name, query) = match store.split_once('?') {
            Some((n, q)) => (n, Some(q)),
            None => (store, None),
        };
        let Some(scheme) = Scheme::named(name).filter(|s| s.is_server()) else {
            return Ok(None);
        };
        if !scheme.is_built() {
            bail!(
                "`--store {name}` needs the {} store: build with `--features {}`",
                scheme.label(),
                scheme.feature()
            );
        }
        let not_installed = || {
            format!(
                "`--store {name}` starts a local {}, which is not installed",
                lease_testkit::server_program(name).unwrap_or(name)
            )
        };
        let (server, url) = if cluster && scheme == Scheme::Etcd {
            let c = EtcdCluster::start_partitionable(CLUSTER_SIZE, EtcdOptions::default())
                .context(
                    "`--chaos leader-partition` starts a cluster of 3 etcd members in network \
                     namespaces of their own, which needs etcd, `ip` (iproute2) and root",
                )?;
            let url = format!("etcd://{}/fleet/", c.endpoints().join(","));
            let cluster = Inner::Cluster {
                cluster: Box::new(c),
                cut: None,
                paused: None,
            };
            (cluster, url)
        } else if replicated && scheme == Scheme::Redis {
            let r = Replicated::start().with_context(not_installed)??;
            let url = r.servers[0].url();
            (Inner::Replicated(Box::new(r)), url)
        } else {
            // Durable (Redis: AOF with an fsync per write), so fences survive the nemesis's
            // restarts.
            let options = ServeOptions {
                durable: true,
                prefix: "fleet/".to_owned(),
            };
            let served = lease_testkit::serve(name, &options).with_context(not_installed)?;
            let url = served.url().to_owned();
            (Inner::One(Box::new(served)), url)
        };
        let url = match query {
            Some(q) => format!("{url}{}{q}", if url.contains('?') { '&' } else { '?' }),
            None => url,
        };
        Ok(Some((OwnedServer(server), url)))
    }

    /// Kills the server (the primary) and starts it again with its data; returns once it
    /// serves again.
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        match &mut self.0 {
            Inner::One(s) => s.restart().map_err(anyhow::Error::msg),
            Inner::Replicated(r) => {
                r.servers[r.primary].restart();
                Ok(())
            }
            Inner::Cluster { cluster: c, .. } => {
                let leader = c.leader().unwrap_or(0);
                c.members[leader].restart();
                Ok(())
            }
        }
    }

    /// Stops the server (the primary) with SIGSTOP until [`resume`](Self::resume).
    pub(crate) fn pause(&mut self) {
        match &mut self.0 {
            Inner::One(s) => s.pause(),
            Inner::Replicated(r) => r.servers[r.primary].process().pause(),
            // The leader: the cluster elects another, while the stopped one keeps its sockets.
            Inner::Cluster {
                cluster: c, paused, ..
            } => {
                let leader = c.leader().unwrap_or(0);
                c.members[leader].process().pause();
                *paused = Some(leader);
            }
        }
    }

    /// Resumes a stopped server (SIGCONT).
    pub(crate) fn resume(&mut self) {
        match &mut self.0 {
            Inner::One(s) => s.resume(),
            Inner::Replicated(r) => r.servers[r.primary].process().resume(),
            Inner::Cluster {
                cluster: c, paused, ..
            } => {
                if let Some(i) = paused.take() {
                    c.members[i].process().resume();
                }
            }
        }
    }

    /// Whether this is a cluster whose leader can be cut off.
    pub(crate) fn can_cut_leader(&self) -> bool {
        matches!(&self.0, Inner::Cluster { .. })
    }

    /// Cuts the cluster's leader off its peers and its clients (every link of its network
    /// namespace down): the others elect a new leader, and clients must find it. Returns the
    /// member cut, `None` when no member became leader within 5 s (nothing is cut then).
    pub(crate) fn cut_leader(&mut self) -> Option<usize> {
        let Inner::Cluster {
            cluster: c, cut, ..
        } = &mut self.0
        else {
            return None;
        };
        // Right after a heal (or a restart) the cluster may be between leaders.
        let leader = c.wait_leader(Duration::from_secs(5), |_| true)?;
        c.partition(leader);
        *cut = Some(leader);
        Some(leader)
    }

    /// Heals the member [`cut_leader`](Self::cut_leader) cut off.
    pub(crate) fn heal_leader(&mut self) {
        if let Inner::Cluster {
            cluster: c, cut, ..
        } = &mut self.0
        {
            if let Some(i) = cut.take() {
                c.heal(i);
            }
        }
    }

    /// Whether there is a replica to fail over to (once per run).
    pub(crate) fn can_fail_over(&self) -> bool {
        matches!(&self.0, Inner::Replicated(r) if !r.failed_over)
    }

    /// Holds the replication stream back (`true`): the replica misses every write from now on,
    /// until the failover drops them; or lets it through again (`false`).
    pub(crate) fn hold_replication(&self, on: bool) {
        if let Inner::Replicated(r) = &self.0 {
            r.link.hold_answers(on);
        }
    }

    /// Fails over: kills the primary (what its replica had not received is lost with it),
    /// promotes the replica (`REPLICAOF NO ONE`), and gives its `host:port`, where the clients
    /// must go now.
    pub(crate) fn fail_over(&mut self) -> anyhow::Result<String> {
        let Inner::Replicated(r) = &mut self.0 else {
            bail!("no replica to fail over to");
        };
        r.servers[r.primary].process().kill();
        r.link.retarget("127.0.0.1:1");
        r.link.hold_answers(false);
        r.primary = 1 - r.primary;
        r.failed_over = true;
        let port = r.servers[r.primary].port();
        let reply = redis_command(port, "REPLICAOF NO ONE")?;
        if !reply.starts_with("+OK") {
            bail!("REPLICAOF NO ONE answered {reply:?}");
        }
        Ok(format!("127.0.0.1:{port}"))
    }

    /// After a [`fail_over`](Self::fail_over): starts the old primary again, as a replica of
    /// the new one (it drops what only it had), as a failover manager rejoins a failed primary,
    /// so that writes that wait for a replica can be acknowledged again; returns once it is in
    /// sync.
    pub(crate) fn rejoin(&mut self) -> anyhow::Result<()> {
        let Inner::Replicated(r) = &mut self.0 else {
            return Ok(());
        };
        let new_port = r.servers[r.primary].port();
        let old = &mut r.servers[1 - r.primary];
        old.restart();
        let reply = redis_command(old.port(), &format!("REPLICAOF 127.0.0.1 {new_port}"))?;
        if !reply.starts_with("+OK") {
            bail!("REPLICAOF answered {reply:?}");
        }
        // Until it has synchronised, a write that waits for a replica cannot be acknowledged.
        let until = Instant::now() + Duration::from_secs(20);
        while !redis_command(old.port(), "INFO replication")
            .unwrap_or_default()
            .contains("master_link_status:up")
        {
            if Instant::now() > until {
                bail!("the old primary did not synchronise as a replica within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Replicated {
    /// Starts a durable primary and a durable replica of it through a link proxy, and waits
    /// until the replica is in sync. `None` when redis-server is missing (not under CI).
    fn start() -> Option<anyhow::Result<Replicated>> {
        let durable = || RedisOptions {
            aof_always: true,
            ..Default::default()
        };
        let primary = RedisServer::start(durable())?;
        let link = HoldingProxy::start(&format!("127.0.0.1:{}", primary.port()));
        let link_port = link.endpoint().rsplit_once(':')?.1.to_owned();
        let replica = RedisServer::start(RedisOptions {
            extra_args: vec!["--replicaof".into(), "127.0.0.1".into(), link_port],
            ..durable()
        })?;
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let info = redis_command(replica.port(), "INFO replication").unwrap_or_default();
            if info.contains("master_link_status:up") {
                break;
            }
            if Instant::now() > until {
                return Some(Err(anyhow::anyhow!(
                    "the Redis replica did not synchronise with its primary within 20 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Ok(Replicated {
            servers: [primary, replica],
            primary: 0,
            link,
            failed_over: false,
        }))
    }
}

/// Sends one inline command to the Redis server on `127.0.0.1:port` and returns its reply as
/// text (a status line, or a bulk string's header and body).
fn redis_command(port: u16, command: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect to Redis on port {port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{command}\r\n").as_bytes())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s
            .read(&mut buf)
            .with_context(|| format!("read Redis's answer to {command}"))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let complete = match text.as_bytes().first() {
            Some(b'$') => text.split_once("\r\n").is_some_and(|(len, body)| {
                len[1..]
                    .parse::<usize>()
                    .is_ok_and(|len| body.len() >= len + 2)
            }),
            Some(_) => text.ends_with("\r\n"),
            None => false,
        };
        if complete {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}
