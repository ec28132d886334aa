//! A TCP proxy on loopback that can hold back a server's answers.
//!
//! Why not a crate: `noxious`, the Rust port of Toxiproxy, was last released in April 2021 (on
//! tokio-util 0.6 and rand 0.8), keeps its toxics private to the crate (they are driven through
//! its HTTP API), and cannot hold back answers while requests pass or move a proxy to another
//! server (a failover); Toxiproxy itself is a Go program in no registry these machines reach (not
//! in Debian 12). What the faults need is small: copy bytes both ways, and hold, cut or retarget
//! on a flag, which a thread per direction does. Slow replies are made inside the worker instead
//! (`lease-examples`' `slow` store wrapper), where they reach embedded SQLite too; the kernel here
//! has no `netem` for delay.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP proxy on loopback in front of one server whose answers (server to client) can be held
/// back while requests still pass: the server applies a request, and the client times out
/// waiting for its answer — an outcome the client cannot know. It can also be pointed at
/// another server ([`retarget`](Self::retarget)), as a failover moves a service address, and cut
/// from it ([`cut`](Self::cut) until [`heal`](Self::heal)), as a network partition cuts a client
/// off its server.
#[derive(Debug)]
pub struct HoldingProxy {
    port: u16,
    hold: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    target: Arc<Mutex<String>>,
    /// Both sockets of every connection made so far, to cut them on a retarget.
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl HoldingProxy {
    /// Starts proxying to `target` (`host:port`) on a free port; its threads live as long as the
    /// test process.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let hold = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let target = Arc::new(Mutex::new(target.to_owned()));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (held, severed, to, opened) = (hold.clone(), cut.clone(), target.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if severed.load(Ordering::SeqCst) {
                    // A black hole: the connection is made (as by the client's kernel, before
                    // any packet is lost), and whatever is sent on it goes nowhere.
                    if let Ok(c) = client.try_clone() {
                        opened.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                    }
                    std::thread::spawn(move || swallow(client));
                    continue;
                }
                let now = to.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let Ok(server) = TcpStream::connect(&now) else {
                    continue;
                };
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    opened
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend([c, s]);
                }
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (
                    client.try_clone().expect("clone socket"),
                    server.try_clone().expect("clone socket"),
                );
                let severed2 = severed.clone();
                std::thread::spawn(move || pump(client, server, None, &severed2));
                let (held, severed) = (held.clone(), severed.clone());
                std::thread::spawn(move || pump(s2, c2, Some(held), &severed));
            }
        });
        Self {
            port,
            hold,
            cut,
            target,
            open,
        }
    }

    /// Sends new connections to `target` (`host:port`) from now on, and cuts every connection
    /// made so far, as a failover moves the service's address to another server: clients
    /// reconnect and reach the new one.
    pub fn retarget(&self, target: &str) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target.to_owned();
        self.shut_open();
    }

    /// Cuts the client side off the server, as a network partition does: from now on every
    /// byte either way is dropped, and new connections are accepted but lead nowhere. With
    /// `reset`, the open connections are also cut at once (the clients see their connection
    /// end); without, they just go silent. Lasts until [`heal`](Self::heal).
    pub fn cut(&self, reset: bool) {
        self.cut.store(true, Ordering::SeqCst);
        if reset {
            self.shut_open();
        }
    }

    /// Ends a [`cut`](Self::cut): every connection made before now is closed (bytes were lost
    /// from its stream, so it cannot carry on, as a TCP connection whose retransmissions gave
    /// up), and new connections reach the server again.
    pub fn heal(&self) {
        // Closed first, then opened: no connection that lost bytes forwards anything again.
        self.shut_open();
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the proxy is cut off its server.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    fn shut_open(&self) {
        for socket in self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Holds back (`true`) or lets through (`false`) everything the server sends.
    pub fn hold_answers(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, hold: Option<Arc<AtomicBool>>, cut: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(h) = &hold {
            while h.load(Ordering::SeqCst) && !cut.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if cut.load(Ordering::SeqCst) {
            // Lost in the partition; the heal closes this connection.
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Reads and drops everything a connection made during a cut sends, until it is closed.
fn swallow(mut from: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while matches!(from.read(&mut buf), Ok(n) if n > 0) {}
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; its `host:port`.
    fn echo() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = c.read(&mut buf) {
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(proxy: &HoldingProxy) -> TcpStream {
        let s = TcpStream::connect(proxy.endpoint()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    }

    /// `Some(true)` echoed, `Some(false)` closed, `None` silent.
    fn ping(s: &mut TcpStream) -> Option<bool> {
        if s.write_all(b"ping").is_err() {
            return Some(false);
        }
        let mut buf = [0u8; 4];
        match s.read(&mut buf) {
            Ok(4) => Some(&buf == b"ping"),
            Ok(_) => Some(false),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
            Err(_) => Some(false),
        }
    }

    #[test]
    fn a_cut_silences_old_and_new_connections_and_a_heal_closes_the_old_ones() {
        let proxy = HoldingProxy::start(&echo());
        let mut old = connect(&proxy);
        assert_eq!(ping(&mut old), Some(true));
        proxy.cut(false);
        assert!(proxy.is_cut());
        assert_eq!(ping(&mut old), None, "an open connection goes silent");
        let mut during = connect(&proxy);
        assert_eq!(
            ping(&mut during),
            None,
            "a new one is accepted but leads nowhere"
        );
        proxy.heal();
        assert_eq!(
            ping(&mut old),
            Some(false),
            "lost bytes: closed at the heal"
        );
        assert_eq!(ping(&mut during), Some(false));
        let mut after = connect(&proxy);
        assert_eq!(ping(&mut after), Some(true));
        // With a reset, open connections end at once.
        proxy.cut(true);
        assert_eq!(ping(&mut after), Some(false));
        proxy.heal();
        assert_eq!(ping(&mut connect(&proxy)), Some(true));
    }
}
