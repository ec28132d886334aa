//! A TCP proxy on loopback that can hold back a server's answers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A TCP proxy on loopback in front of one server whose answers (server to client) can be held
/// back while requests still pass: the server applies a request, and the client times out
/// waiting for its answer — an outcome the client cannot know.
#[derive(Debug)]
pub struct HoldingProxy {
    port: u16,
    hold: Arc<AtomicBool>,
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
        let target = target.to_owned();
        let held = hold.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
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
        Self { port, hold }
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
