//! [`NetnsBridge`]: hosts on a private network (Linux network namespaces joined by a bridge),
//! any of which can be cut off the network as a whole. Its docs give the design.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::process::require_binary;

/// The first two octets of every subnet; the third is chosen per instance.
const NET: [u8; 2] = [10, 213];
/// Host `i` has the address `.HOST_BASE + i` (the bridge has `.1`).
const HOST_BASE: u8 = 10;
/// At most this many hosts per bridge (interface names have room for two digits).
const MAX_HOSTS: usize = 99;
const NS_PREFIX: &str = "lease-testkit-";
const LINK_PREFIX: &str = "lt";

/// Network namespaces joined by a bridge in the root namespace; each one a host that can be cut
/// off the network. Everything is removed on drop.
///
/// ```no_run
/// # use std::path::Path;
/// let Some(net) = lease_testkit::NetnsBridge::create(3) else { return };
/// // `nsenter --net=/var/run/netns/NS server --listen=10.213.K.10:7000`, for `Server::spawn`:
/// let listen = format!("--listen={}:7000", net.address(0));
/// let (program, args) = net.wrap(0, Path::new("/usr/bin/server"), [listen]);
/// net.cut(0); // host 0 is off the network …
/// net.heal(0); // … and back
/// ```
///
/// # Why namespaces, not proxies
///
/// A [`HoldingProxy`](crate::HoldingProxy) in front of a port cuts the connections that go
/// through it, in one direction per connection. That is not enough to partition a member of a
/// cluster: between etcd members, for one, messages go both ways over connections dialed by
/// either side (a follower dials streams on which the leader sends to it, and the leader falls
/// back to requests it dials itself), so cutting the proxy in front of one peer port leaves the
/// other direction open, and a member's clients reach it on yet another port. A host that
/// really drops off the network loses all of these at once, and its peers see its packets
/// vanish rather than connections being refused.
///
/// A `NetnsBridge` gives each server a network stack of its own: namespace `i` has `lo` and one
/// interface, `eth0`, with the address `10.213.K.(10+i)/24`, the far end of a veth pair whose
/// near end is a port of a bridge in the root namespace; the bridge has `10.213.K.1/24`, so the
/// test process (in the root namespace) reaches every host directly. A server started in a
/// namespace ([`wrap`](Self::wrap): `nsenter --net=/var/run/netns/NS program …`, which `exec`s the
/// program, so the process id stays the server's) listens on its own address, and may use the
/// same ports as its neighbours. [`cut`](Self::cut) sets the near end of host `i`'s veth
/// down: the bridge stops forwarding to and from it, so every packet between that host and
/// anyone else (its peers and the test process alike) is dropped: established TCP connections
/// go silent (no reset, no error until the sender's own timeouts), and new ones get no answer
/// until the kernel's address resolution gives up (about 3 s) and reports "no route to host",
/// as on a LAN whose host went away. [`heal`](Self::heal) sets it up again; connections that
/// survived the cut resume.
///
/// # Names, subnets, cleanup
///
/// Every name embeds the test process's id and a per-process counter: namespaces are
/// `lease-testkit-PID-C-I`, the bridge `ltP-C-b` and the near veth ends `ltP-C-I` (`P` and `C`
/// in base 36, so that interface names stay within 15 bytes). The subnet's third octet `K` is
/// derived from the pid and the counter, skipping every `K` already on an interface or in a
/// route; instances choose it under an exclusive `flock` on a file in the temp dir, so
/// concurrent test processes never pick the same one. Everything is removed on drop. A test
/// process killed before its drops ran (SIGKILL) leaves its namespaces and links behind: each new
/// instance first removes those whose pid no longer runs.
///
/// Creating namespaces needs root (`CAP_NET_ADMIN` and `CAP_SYS_ADMIN`) and `ip` (iproute2).
/// Without them [`create`](Self::create) prints why the test is skipped and returns `None`, or,
/// when the `CI` environment variable is set, panics.
#[derive(Debug)]
pub struct NetnsBridge {
    ip: PathBuf,
    /// `nsenter`, to run commands and servers in a namespace: `ip netns exec` and `ip -n` remount
    /// `/` and `/sys` in a mount namespace of their own, which fails where `/` is no mount
    /// point (a chroot, as on a freshly built test root); entering the network namespace alone
    /// needs no mount.
    nsenter: PathBuf,
    bridge: String,
    subnet: u8,
    hosts: Vec<Host>,
    /// Which hosts are cut now.
    cut: Mutex<HashSet<usize>>,
    /// The `ip` commands that remove what was made, in the order it was made (run backwards on
    /// drop).
    undo: Vec<[String; 3]>,
}

#[derive(Debug)]
struct Host {
    namespace: String,
    /// The near end of the veth pair, a port of the bridge.
    link: String,
}

impl NetnsBridge {
    /// Creates `n` namespaces on a new bridge. `None` (with the reason on stderr) when the
    /// process is not root, `ip` is missing, or namespaces cannot be made here.
    ///
    /// # Panics
    ///
    /// When `n` is 0 or above 99; and instead of returning `None` when the `CI` environment
    /// variable is set, with the reason.
    pub fn create(n: usize) -> Option<NetnsBridge> {
        assert!(
            (1..=MAX_HOSTS).contains(&n),
            "a NetnsBridge has 1 to {MAX_HOSTS} hosts, not {n}"
        );
        let ip = require_binary("ip", "iproute2")?;
        let nsenter = require_binary("nsenter", "util-linux")?;
        if !rustix::process::geteuid().is_root() {
            return skip("network namespaces need root (CAP_NET_ADMIN)");
        }
        match Self::try_create(ip, nsenter, n) {
            Ok(net) => Some(net),
            Err(e) => skip(&format!("cannot create network namespaces: {e}")),
        }
    }

    fn try_create(ip: PathBuf, nsenter: PathBuf, n: usize) -> Result<NetnsBridge, String> {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        // One instance at a time (across processes) picks its subnet and puts it on its bridge.
        // The counter is taken under that lock: every live instance of this process then has a
        // lower one, and `remove_leftovers` (which takes this process's entries at or above it
        // for an earlier run's) cannot remove one being built by another thread.
        let _lock = CreationLock::take()?;
        let counter = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let (p, c) = (base36(u64::from(pid)), base36(counter));
        let bridge = format!("{LINK_PREFIX}{p}-{c}-b");
        let hosts: Vec<Host> = (0..n)
            .map(|i| Host {
                namespace: format!("{NS_PREFIX}{pid}-{counter}-{i}"),
                link: format!("{LINK_PREFIX}{p}-{c}-{i}"),
            })
            .collect();
        if hosts.iter().any(|h| h.link.len() > 15) {
            return Err(format!(
                "interface name `{}` is longer than 15 bytes",
                hosts[n - 1].link
            ));
        }
        remove_leftovers(&ip, pid, counter);
        // Dropped on any error below: removes what was made so far.
        let mut net = NetnsBridge {
            ip,
            nsenter,
            bridge,
            subnet: 0,
            hosts: Vec::new(),
            cut: Mutex::new(HashSet::new()),
            undo: Vec::new(),
        };
        net.subnet = free_subnet(&net.ip, pid, counter)?;
        net.run(&["link", "add", &net.bridge, "type", "bridge"])?;
        net.undo.push(undo("link", &net.bridge));
        // Where `br_netfilter` is loaded (a host running Docker, whose FORWARD policy is DROP),
        // bridged packets would go through iptables: keep them out of it. Best effort: without
        // the module the bridge has nothing to turn off.
        let _ = net.run(&[
            "link",
            "set",
            &net.bridge,
            "type",
            "bridge",
            "nf_call_iptables",
            "0",
            "nf_call_ip6tables",
            "0",
        ]);
        net.run(&["link", "set", &net.bridge, "up"])?;
        let gateway = format!("{}/24", net.gateway());
        net.run(&["addr", "add", &gateway, "dev", &net.bridge])?;
        for (i, host) in hosts.into_iter().enumerate() {
            let address = format!("{}/24", net.address_of(i));
            let ns = host.namespace.clone();
            net.run(&["netns", "add", &ns])?;
            net.undo.push(undo("netns", &ns));
            let link = host.link.clone();
            net.hosts.push(host);
            net.run(&[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            // Deleting the near end of a veth pair deletes its far end too.
            net.undo.push(undo("link", &link));
            net.run(&["link", "set", &link, "master", &net.bridge])?;
            net.run(&["link", "set", &link, "up"])?;
            net.run_in(&ns, &["link", "set", "lo", "up"])?;
            net.run_in(&ns, &["addr", "add", &address, "dev", "eth0"])?;
            net.run_in(&ns, &["link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// How many hosts (namespaces) there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always `false`: there is at least one host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The name of host `i`'s namespace (for `ip netns exec`, `ip -n`).
    pub fn namespace(&self, i: usize) -> &str {
        &self.hosts[i].namespace
    }

    /// Host `i`'s address, `10.213.K.(10+i)`.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.hosts.len(), "no host {i}");
        self.address_of(i)
    }

    fn address_of(&self, i: usize) -> Ipv4Addr {
        let last = HOST_BASE + u8::try_from(i).expect("at most 99 hosts");
        Ipv4Addr::new(NET[0], NET[1], self.subnet, last)
    }

    /// The bridge's address in the root namespace, `10.213.K.1`: where the test process's
    /// connections to the hosts come from.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.subnet, 1)
    }

    /// The program and arguments that run `program args` in host `i`'s namespace:
    /// `nsenter --net=/var/run/netns/NS program args…`. `nsenter` `exec`s the program, so a
    /// process spawned from them has the program's pid (what
    /// [`Server::spawn`](crate::Server::spawn) needs to signal and kill it).
    pub fn wrap(
        &self,
        i: usize,
        program: &Path,
        args: impl IntoIterator<Item = String>,
    ) -> (PathBuf, Vec<String>) {
        let mut all = vec![netns_file(self.namespace(i)), program.display().to_string()];
        all.extend(args);
        (self.nsenter.clone(), all)
    }

    /// Cuts host `i` off the network: every packet between it and anyone else (the other hosts
    /// and the root namespace) is dropped, until [`heal`](Self::heal). Idempotent.
    ///
    /// # Panics
    ///
    /// When `ip` fails, with its error output.
    pub fn cut(&self, i: usize) {
        self.set_link(i, "down");
        self.cuts().insert(i);
    }

    /// Joins host `i` to the network again after a [`cut`](Self::cut). Idempotent.
    ///
    /// # Panics
    ///
    /// When `ip` fails, with its error output.
    pub fn heal(&self, i: usize) {
        self.set_link(i, "up");
        self.cuts().remove(&i);
    }

    /// `true` while host `i` is cut.
    pub fn is_cut(&self, i: usize) -> bool {
        self.cuts().contains(&i)
    }

    fn cuts(&self) -> std::sync::MutexGuard<'_, HashSet<usize>> {
        self.cut.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_link(&self, i: usize, state: &str) {
        let link = &self.hosts[i].link;
        self.run(&["link", "set", link, state])
            .unwrap_or_else(|e| panic!("could not set host {i}'s link {state}: {e}"));
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        run_ip(&self.ip, args)
    }

    /// Runs `ip args…` in namespace `ns` (through `nsenter`, see [`NetnsBridge::nsenter`]).
    fn run_in(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let net = netns_file(ns);
        let ip = self.ip.display().to_string();
        let mut all = vec![net.as_str(), ip.as_str()];
        all.extend_from_slice(args);
        run_program(&self.nsenter, &all)
    }
}

impl Drop for NetnsBridge {
    fn drop(&mut self) {
        // Backwards: each host's veth pair, then its namespace (gone once no process runs in
        // it any more), the bridge last.
        for [object, del, name] in self.undo.iter().rev() {
            if let Err(e) = self.run(&[object, del, name]) {
                eprintln!("lease-testkit: {e}");
            }
        }
    }
}

/// The `ip` command that deletes `object` (`link`, `netns`) `name`.
fn undo(object: &str, name: &str) -> [String; 3] {
    [object.to_owned(), "del".to_owned(), name.to_owned()]
}

fn skip(reason: &str) -> Option<NetnsBridge> {
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (CI is set, so this fails instead of skipping the test)");
    }
    eprintln!("skipping: {reason}");
    None
}

/// Runs `ip args…`; its standard output, or an error naming the command and what `ip` wrote to
/// standard error.
fn run_ip(ip: &Path, args: &[&str]) -> Result<String, String> {
    run_program(ip, args)
}

/// `--net=FILE` for `nsenter`: the file `ip netns add` binds namespace `ns` to.
fn netns_file(ns: &str) -> String {
    format!("--net=/var/run/netns/{ns}")
}

/// Runs `program args…`; its standard output, or an error naming the command and what it wrote
/// to standard error.
fn run_program(program: &Path, args: &[&str]) -> Result<String, String> {
    let name = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let shown = || format!("`{name} {}`", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{} could not run: {e}", shown()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// An exclusive `flock` on a file in the temp dir, held while an instance picks its subnet;
/// released on drop or when the process dies.
struct CreationLock(std::fs::File);

impl CreationLock {
    fn take() -> Result<CreationLock, String> {
        let path = std::env::temp_dir().join("lease-testkit-netns.lock");
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| format!("lock {}: {e}", path.display()))?;
        Ok(CreationLock(file))
    }
}

impl Drop for CreationLock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

/// A third octet whose `10.213.K.0/24` is on no interface and in no route, starting from one
/// derived from the pid and the counter.
fn free_subnet(ip: &Path, pid: u32, counter: u64) -> Result<u8, String> {
    let addresses = run_ip(ip, &["-o", "-4", "addr", "show"])?;
    let routes = run_ip(ip, &["-o", "-4", "route", "show", "table", "all"])?;
    let used: HashSet<u8> = addresses
        .split_whitespace()
        .chain(routes.split_whitespace())
        .filter_map(third_octet)
        .collect();
    let start = (u64::from(pid) * 131 + counter * 17) % 254;
    (0..254)
        .map(|j| u8::try_from((start + j) % 254 + 1).expect("1..=254"))
        .find(|k| !used.contains(k))
        .ok_or_else(|| "every subnet 10.213.K.0/24 is in use".to_owned())
}

/// `K` of a token `10.213.K.x` or `10.213.K.x/len`.
fn third_octet(token: &str) -> Option<u8> {
    let addr = token.split('/').next()?.parse::<Ipv4Addr>().ok()?;
    let [a, b, k, _] = addr.octets();
    ([a, b] == NET).then_some(k)
}

/// Removes the namespaces and links of test processes that no longer run, and those with this
/// process's pid and a counter it has not used yet (left by an earlier process with the same
/// pid). Failures are ignored: another process may be removing them at the same time.
fn remove_leftovers(ip: &Path, pid: u32, counter: u64) {
    let stale = |owner: u32, c: u64| {
        if owner == pid {
            c >= counter
        } else {
            !Path::new("/proc").join(owner.to_string()).exists()
        }
    };
    if let Ok(list) = run_ip(ip, &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some((owner, c)) = parse_namespace(name) {
                if stale(owner, c) {
                    let _ = run_ip(ip, &["netns", "del", name]);
                }
            }
        }
    }
    if let Ok(list) = run_ip(ip, &["-o", "link", "show"]) {
        // `5: name@peer: <FLAGS> …`; veths before bridges, so that the bridge is empty.
        let mut links: Vec<(bool, String)> = list
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
            .filter_map(|name| {
                let (owner, c, bridge) = parse_link(&name)?;
                stale(owner, c).then_some((bridge, name))
            })
            .collect();
        links.sort();
        for (_, name) in links {
            let _ = run_ip(ip, &["link", "del", &name]);
        }
    }
}

/// `(pid, counter)` of a namespace name `lease-testkit-PID-C-I`.
fn parse_namespace(name: &str) -> Option<(u32, u64)> {
    let mut parts = name.strip_prefix(NS_PREFIX)?.split('-');
    let pid = parts.next()?.parse().ok()?;
    let counter = parts.next()?.parse().ok()?;
    let _index: usize = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((pid, counter))
}

/// `(pid, counter, is_bridge)` of a link name `ltP-C-b` or `ltP-C-I` (base 36 `P` and `C`).
fn parse_link(name: &str) -> Option<(u32, u64, bool)> {
    let mut parts = name.strip_prefix(LINK_PREFIX)?.split('-');
    let pid = u32::from_str_radix(parts.next()?, 36).ok()?;
    let counter = u64::from_str_radix(parts.next()?, 36).ok()?;
    let last = parts.next()?;
    let bridge = last == "b";
    if !bridge {
        let _index: usize = last.parse().ok()?;
    }
    parts.next().is_none().then_some((pid, counter, bridge))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let (pid, counter) = (4_194_304_u32, 1_679_615_u64);
        let p = base36(u64::from(pid));
        let c = base36(counter);
        let link = format!("{LINK_PREFIX}{p}-{c}-98");
        assert!(link.len() <= 15, "{link}");
        assert_eq!(parse_link(&link), Some((pid, counter, false)));
        assert_eq!(
            parse_link(&format!("{LINK_PREFIX}{p}-{c}-b")),
            Some((pid, counter, true))
        );
        assert_eq!(
            parse_namespace(&format!("{NS_PREFIX}{pid}-{counter}-3")),
            Some((pid, counter))
        );
        assert_eq!(parse_link("lo"), None);
        assert_eq!(parse_link("lt-x"), None);
        assert_eq!(parse_namespace("lease-testkit-1-2"), None);
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn third_octets() {
        assert_eq!(third_octet("10.213.7.1/24"), Some(7));
        assert_eq!(third_octet("10.213.200.0/24"), Some(200));
        assert_eq!(third_octet("110.213.7.1/24"), None);
        assert_eq!(third_octet("dev"), None);
    }
}
