//! A TCP proxy on loopback that can hold back a server's answers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP proxy on loopback in front of one server whose answers (server to client) can be held
/// back while requests still pass: the server applies a request, and the client times out
/// waiting for its answer — an outcome the client cannot know. It can also be pointed at
/// another server ([`retarget`](Self::retarget)), as a failover moves a service address.
#[derive(Debug)]
pub struct HoldingProxy {
    port: u16,
    hold: Arc<AtomicBool>,
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
        let target = Arc::new(Mutex::new(target.to_owned()));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (held, to, opened) = (hold.clone(), target.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
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
                std::thread::spawn(move || pump(client, server, None));
                let held = held.clone();
                std::thread::spawn(move || pump(s2, c2, Some(held)));
            }
        });
        Self {
            port,
            hold,
            target,
            open,
        }
    }

    /// Sends new connections to `target` (`host:port`) from now on, and cuts every connection
    /// made so far, as a failover moves the service's address to another server: clients
    /// reconnect and reach the new one.
    pub fn retarget(&self, target: &str) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target.to_owned();
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

fn pump(mut from: TcpStream, mut to: TcpStream, hold: Option<Arc<AtomicBool>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(h) = &hold {
            while h.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
