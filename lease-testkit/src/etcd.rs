//! Throwaway `etcd` servers: one node, or a cluster of several on loopback.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{Server, free_port, require_binary, tcp_answers};

/// How to start an [`EtcdServer`] or [`EtcdCluster`].
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `--auth-token-ttl` (etcd's default is 300 s): how long a simple auth token lives.
    pub auth_token_ttl: Option<Duration>,
    /// Further `--name=value` arguments for every node.
    pub extra_args: Vec<String>,
}

/// One etcd member of a cluster (or a single-node cluster).
#[derive(Debug)]
pub struct EtcdMember {
    /// The member's name (`n0`, `n1`, …).
    pub name: String,
    /// The client port on 127.0.0.1.
    pub client_port: u16,
    /// The peer port on 127.0.0.1.
    pub peer_port: u16,
    server: Server,
}

impl EtcdMember {
    /// `127.0.0.1:PORT` of the client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The process, to pause, resume or kill it.
    pub fn process(&mut self) -> &mut Server {
        &mut self.server
    }

    /// `true` when the member reports itself healthy (it has a leader).
    pub fn healthy(&self) -> bool {
        health(self.client_port)
    }

    /// Kills the member and starts it again with the same data dir; does not wait for health.
    ///
    /// # Panics
    ///
    /// When the process does not start listening again.
    pub fn restart(&mut self) {
        let port = self.client_port;
        self.server
            .restart(Duration::from_secs(20), &move || listening(port))
            .unwrap_or_else(|e| panic!("etcd member did not restart: {e}"));
    }
}

/// A cluster of etcd members on loopback, each in its own data dir under one temp dir; killed on
/// drop.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<EtcdMember>,
    _dir: TempDir,
}

/// A single-node etcd.
pub type EtcdServer = EtcdCluster;

impl EtcdCluster {
    /// Starts a one-node etcd. `None` if `etcd` is not installed and `CI` is unset.
    ///
    /// # Panics
    ///
    /// When the server cannot be started (or, under `CI`, is not installed), with its log.
    pub fn start(options: EtcdOptions) -> Option<EtcdServer> {
        Self::start_cluster(1, options)
    }

    /// One single-node etcd with default options for every test of this test binary (each test
    /// under its own key prefix, e.g. from [`unique_prefix`](crate::unique_prefix)), started on
    /// first use. `None` if `etcd` is not installed and `CI` is unset.
    ///
    /// It is never dropped; the watchdog stops it when the test process exits.
    ///
    /// # Panics
    ///
    /// As [`EtcdCluster::start`].
    pub fn shared() -> Option<&'static EtcdServer> {
        static SHARED: LazyLock<Option<EtcdServer>> =
            LazyLock::new(|| EtcdServer::start(EtcdOptions::default()));
        SHARED.as_ref()
    }

    /// Starts an `n`-node cluster and waits until every member is healthy.
    ///
    /// # Panics
    ///
    /// As [`EtcdCluster::start`].
    pub fn start_cluster(n: usize, options: EtcdOptions) -> Option<EtcdCluster> {
        let program = require_binary("etcd", "etcd-server")?;
        let mut last_err = String::new();
        for _ in 0..5 {
            match try_start(&program, n, &options) {
                Ok(c) => return Some(c),
                Err(e) => last_err = e,
            }
        }
        panic!("could not start etcd: {last_err}");
    }

    /// The client endpoints (`127.0.0.1:PORT`) of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    /// The first member's client endpoint.
    pub fn endpoint(&self) -> String {
        self.members[0].endpoint()
    }

    /// Waits until at least `quorum` members report healthy, at most `timeout`.
    pub fn wait_healthy(&self, quorum: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.members.iter().filter(|m| m.healthy()).count() >= quorum {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

fn try_start(
    program: &std::path::Path,
    n: usize,
    options: &EtcdOptions,
) -> Result<EtcdCluster, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir for etcd: {e}"))?;
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let token = format!("lease-testkit-{}", std::process::id());
    let mut members = Vec::new();
    for (i, &(client, peer)) in ports.iter().enumerate() {
        let name = format!("n{i}");
        let data = dir.path().join(&name);
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster={initial_cluster}"),
            "--initial-cluster-state=new".to_owned(),
            format!("--initial-cluster-token={token}"),
            // Short heartbeats make leader elections (and so the tests) quick on loopback.
            "--heartbeat-interval=50".to_owned(),
            "--election-timeout=500".to_owned(),
            "--logger=zap".to_owned(),
        ];
        if let Some(ttl) = options.auth_token_ttl {
            args.push(format!("--auth-token-ttl={}", ttl.as_secs().max(1)));
        }
        args.extend(options.extra_args.iter().cloned());
        let server = Server::spawn(
            &name,
            program,
            args,
            dir.path(),
            Duration::from_secs(20),
            &|| listening(client),
        )?;
        members.push(EtcdMember {
            name,
            client_port: client,
            peer_port: peer,
            server,
        });
    }
    let cluster = EtcdCluster { members, _dir: dir };
    if !cluster.wait_healthy(n, Duration::from_secs(30)) {
        let logs: Vec<String> = cluster
            .members
            .iter()
            .map(|m| m.server.log_tail())
            .collect();
        return Err(format!(
            "etcd cluster of {n} not healthy within 30 s:\n{}",
            logs.join("\n---\n")
        ));
    }
    Ok(cluster)
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn health(port: u16) -> bool {
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    tcp_answers(port, request.as_bytes(), b"\"health\":\"true\"")
}
