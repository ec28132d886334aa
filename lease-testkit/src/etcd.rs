//! Throwaway `etcd` servers: one node, or a cluster of several on loopback, or a cluster whose
//! members each run in a network namespace of their own, so that a test can cut one off the
//! network ([`EtcdCluster::start_partitionable`]).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::netns::NetnsBridge;
use crate::process::{Server, free_port, require_binary};

/// etcd's own client and peer ports, used by members in namespaces (each has its own ports).
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

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
    /// The client port on [`host`](Self::host).
    pub client_port: u16,
    /// The peer port on [`host`](Self::host).
    pub peer_port: u16,
    host: IpAddr,
    server: Server,
}

/// What a member says of itself and of its cluster's leader ([`EtcdMember::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdMemberStatus {
    /// This member's id.
    pub member_id: u64,
    /// The id of the member it takes for the leader; 0 when it knows none.
    pub leader: u64,
    /// etcd's `raftTerm`: the term of the last entry the member applied (not its current
    /// term, which a cut-off member raises with every election it calls in vain).
    pub raft_term: u64,
    /// etcd's `raftIndex`: the last index of the Raft log the member knows to be committed.
    pub raft_index: u64,
}

impl EtcdMemberStatus {
    /// `true` when the member takes itself for the leader.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.member_id
    }
}

impl EtcdMember {
    /// `HOST:PORT` of the client endpoint (`127.0.0.1:PORT` on loopback, the namespace's
    /// address in a [partitionable](EtcdCluster::start_partitionable) cluster).
    pub fn endpoint(&self) -> String {
        self.client_addr().to_string()
    }

    /// The address the member listens on, for clients and peers.
    pub fn host(&self) -> IpAddr {
        self.host
    }

    /// The client endpoint's socket address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.client_port)
    }

    /// The process, to pause, resume or kill it.
    pub fn process(&mut self) -> &mut Server {
        &mut self.server
    }

    /// `true` when the member reports itself healthy (it has a leader).
    pub fn healthy(&self) -> bool {
        health(self.client_addr())
    }

    /// The member's status (`/v3/maintenance/status` of etcd's JSON gateway), or `None` when it
    /// does not answer within about a second (stopped, or cut off the network).
    pub fn status(&self) -> Option<EtcdMemberStatus> {
        let body = http(self.client_addr(), "POST", "/v3/maintenance/status", "{}")?;
        Some(EtcdMemberStatus {
            member_id: json_u64(&body, "member_id")?,
            leader: json_u64(&body, "leader").unwrap_or(0),
            raft_term: json_u64(&body, "raftTerm").unwrap_or(0),
            raft_index: json_u64(&body, "raftIndex").unwrap_or(0),
        })
    }

    /// Kills the member and starts it again with the same data dir; does not wait for health.
    ///
    /// # Panics
    ///
    /// When the process does not start listening again.
    pub fn restart(&mut self) {
        let addr = self.client_addr();
        self.server
            .restart(Duration::from_secs(20), &move || listening(addr))
            .unwrap_or_else(|e| panic!("etcd member did not restart: {e}"));
    }
}

/// A cluster of etcd members, each in its own data dir under one temp dir; killed on drop.
///
/// The members run on loopback ([`start_cluster`](Self::start_cluster)), or each in a network
/// namespace of its own ([`start_partitionable`](Self::start_partitionable)), where
/// [`partition`](Self::partition) cuts one off its peers and its clients alike.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<EtcdMember>,
    /// The namespaces of a partitionable cluster; dropped after the members (field order).
    netns: Option<NetnsBridge>,
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
            match try_start(&program, n, &options, None) {
                Ok(c) => return Some(c),
                Err(e) => last_err = e,
            }
        }
        panic!("could not start etcd: {last_err}");
    }

    /// Starts an `n`-node cluster whose members each run in a network namespace of their own
    /// (a [`NetnsBridge`]), listening on the namespace's address (`10.213.K.(10+i)`, ports 2379
    /// for clients and 2380 for peers), with the same settings as
    /// [`start_cluster`](Self::start_cluster); waits until every member is healthy. The test
    /// process reaches every member directly; [`partition`](Self::partition) cuts one off.
    ///
    /// `None` if `etcd` or `ip` is not installed, or the process may not create network
    /// namespaces (not root), and `CI` is unset.
    ///
    /// # Panics
    ///
    /// As [`EtcdCluster::start`], and under `CI` when namespaces cannot be created.
    pub fn start_partitionable(n: usize, options: EtcdOptions) -> Option<EtcdCluster> {
        let program = require_binary("etcd", "etcd-server")?;
        let net = NetnsBridge::create(n)?;
        let mut last_err = String::new();
        for _ in 0..3 {
            match try_start(&program, n, &options, Some(&net)) {
                Ok(mut c) => {
                    c.netns = Some(net);
                    return Some(c);
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start etcd in network namespaces: {last_err}");
    }

    /// The client endpoints (`HOST:PORT`) of every member.
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

    /// The index of the member that is the Raft leader now, as the members that answer tell:
    /// one that takes itself for the leader (of several, the one that applied entries of the
    /// highest term, should a deposed leader not know yet). `None` when no member that answers
    /// is the leader (an election is under way, or the leader is cut off or stopped). Blocks
    /// for up to about a second per member that does not answer.
    pub fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((i, m.status()?)))
            .filter(|(_, s)| s.is_leader())
            .max_by_key(|(_, s)| s.raft_term)
            .map(|(i, _)| i)
    }

    /// Waits up to `timeout` for a [`leader`](Self::leader) that `accept` accepts.
    pub fn wait_leader(&self, timeout: Duration, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader().filter(|&i| accept(i)) {
                return Some(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cuts member `i` off the network: its peers and its clients (the test process included)
    /// no longer reach it, nor it them; packets are dropped, so open connections go silent.
    /// Until [`heal`](Self::heal). Idempotent.
    ///
    /// # Panics
    ///
    /// When the cluster was not started with [`start_partitionable`](Self::start_partitionable),
    /// or `ip` fails.
    pub fn partition(&self, i: usize) {
        self.require_netns().cut(i);
    }

    /// Joins member `i` to the network again after a [`partition`](Self::partition).
    /// Idempotent.
    ///
    /// # Panics
    ///
    /// As [`partition`](Self::partition).
    pub fn heal(&self, i: usize) {
        self.require_netns().heal(i);
    }

    /// The namespaces of a cluster started with
    /// [`start_partitionable`](Self::start_partitionable); `None` on loopback.
    pub fn netns(&self) -> Option<&NetnsBridge> {
        self.netns.as_ref()
    }

    fn require_netns(&self) -> &NetnsBridge {
        self.netns
            .as_ref()
            .expect("only a cluster from `EtcdCluster::start_partitionable` can be partitioned")
    }
}

/// Starts `n` members: on loopback (free ports), or each in its namespace of `net` (its own
/// address, etcd's usual ports).
fn try_start(
    program: &Path,
    n: usize,
    options: &EtcdOptions,
    net: Option<&NetnsBridge>,
) -> Result<EtcdCluster, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir for etcd: {e}"))?;
    let places: Vec<(IpAddr, u16, u16)> = (0..n)
        .map(|i| match net {
            Some(net) => (IpAddr::V4(net.address(i)), CLIENT_PORT, PEER_PORT),
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), free_port(), free_port()),
        })
        .collect();
    let initial_cluster = places
        .iter()
        .enumerate()
        .map(|(i, (host, _, peer))| format!("n{i}=http://{host}:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let token = format!("lease-testkit-{}", std::process::id());
    let mut members = Vec::new();
    for (i, &(host, client, peer)) in places.iter().enumerate() {
        let name = format!("n{i}");
        let data = dir.path().join(&name);
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=http://{host}:{client}"),
            format!("--advertise-client-urls=http://{host}:{client}"),
            format!("--listen-peer-urls=http://{host}:{peer}"),
            format!("--initial-advertise-peer-urls=http://{host}:{peer}"),
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
        // In a namespace: `nsenter --net=… etcd …`, which `exec`s etcd, so the watchdog and
        // `Server` signal etcd itself.
        let (program, args) = match net {
            Some(net) => net.wrap(i, program, args),
            None => (program.to_path_buf(), args),
        };
        let addr = SocketAddr::new(host, client);
        let server = Server::spawn(
            &name,
            &program,
            args,
            dir.path(),
            Duration::from_secs(20),
            &|| listening(addr),
        )?;
        members.push(EtcdMember {
            name,
            client_port: client,
            peer_port: peer,
            host,
            server,
        });
    }
    let cluster = EtcdCluster {
        members,
        netns: None,
        _dir: dir,
    };
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

fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn health(addr: SocketAddr) -> bool {
    http(addr, "GET", "/health", "").is_some_and(|body| body.contains("\"health\":\"true\""))
}

/// One HTTP/1.0 request to etcd's client port; the body of a `200` answer. `None` when the
/// member does not answer within about a second, or answers otherwise.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(800))).ok()?;
    s.set_write_timeout(Some(Duration::from_millis(800))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).ok()?;
    // HTTP/1.0: the server closes the connection after its answer.
    let mut answer = Vec::new();
    s.take(64 * 1024).read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

/// The number under `"key":` in etcd's JSON (the gateway writes 64-bit numbers as strings).
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let rest = &json[json.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let digits = rest.trim_start_matches([' ', '"']);
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::json_u64;

    #[test]
    fn reads_the_gateways_numbers() {
        let body = concat!(
            r#"{"header":{"cluster_id":"1511","member_id":"1366","revision":"1"},"#,
            r#""leader":"1366","raftIndex":"4","raftTerm":"2","x":7}"#
        );
        assert_eq!(json_u64(body, "member_id"), Some(1366));
        assert_eq!(json_u64(body, "leader"), Some(1366));
        assert_eq!(json_u64(body, "raftTerm"), Some(2));
        assert_eq!(json_u64(body, "raftIndex"), Some(4));
        assert_eq!(json_u64(body, "x"), Some(7));
        assert_eq!(json_u64(body, "missing"), None);
    }
}
