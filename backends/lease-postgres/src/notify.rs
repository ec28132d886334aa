//! The listening connection: one per store, `LISTEN`ing on the schema's channel, which every
//! release and break of a key announces with `pg_notify` inside its own statement (so the
//! announcement is delivered at commit, and only if it commits).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, Config};

use crate::conn::{self, Tls};
use crate::schema::quote_ident;

/// The message that wakes every waiter: the listening connection was (re)established, so
/// announcements may have been missed.
pub(crate) const EVERY_KEY: &str = "*";

/// How often the listening connection checks that the server still answers; a check left
/// unanswered until the next one means the connection is dead (a paused server, a lost
/// network), and it is opened again.
const PING_EVERY: Duration = Duration::from_secs(5);

/// The channel of the store's schema: a short name derived from it (a channel is an identifier
/// of at most 63 bytes; a schema name may already be that long).
pub(crate) fn channel_of(schema: &str) -> String {
    // FNV-1a, 64 bits: stable across versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schema.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("lease_released_{h:016x}")
}

/// A key as its announcement names it: the hex of its bytes (a payload is text and a key may
/// hold any character, NUL included; at most 2 KiB, below the payload limit of 8000 bytes).
pub(crate) fn payload_of(key: &str) -> String {
    use std::fmt::Write as _;
    key.bytes()
        .fold(String::with_capacity(key.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The store's listening connection, and the waiters it wakes.
pub(crate) struct Listener {
    sender: broadcast::Sender<Arc<str>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Starts listening in a task of its own, which reconnects (with a growing pause, 50 ms to
    /// 2 s) whenever the connection is lost.
    pub(crate) fn start(config: Config, tls: Tls, timeout: Duration, channel: String) -> Self {
        let (sender, _) = broadcast::channel(1024);
        let task = tokio::spawn(run(config, tls, timeout, channel, sender.clone()));
        Self {
            sender,
            task: task.abort_handle(),
        }
    }

    /// Announcements from now on: key payloads ([`payload_of`]) and [`EVERY_KEY`].
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.sender.subscribe()
    }
}

async fn run(
    config: Config,
    tls: Tls,
    timeout: Duration,
    channel: String,
    sender: broadcast::Sender<Arc<str>>,
) {
    let mut pause = Duration::from_millis(50);
    loop {
        let listened = listen(&config, &tls, timeout, &channel, &sender).await;
        // Whatever was announced while the connection was down is lost: every waiter looks
        // again.
        let _ = sender.send(EVERY_KEY.into());
        match listened {
            Listened::Lost(why, true) => {
                tracing::debug!(%why, "the listening connection was lost; reconnecting");
                pause = Duration::from_millis(50);
            }
            Listened::Lost(why, false) => {
                tracing::debug!(%why, ?pause, "cannot listen for releases; waiters poll until it can");
            }
        }
        let jitter = rand::random_range(0.5..1.0);
        tokio::time::sleep(pause.mul_f64(jitter)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Why [`listen`] returned, and whether it had been listening.
enum Listened {
    Lost(String, bool),
}

type Ping<'a> = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>>;

/// One listening connection, until it fails.
async fn listen(
    config: &Config,
    tls: &Tls,
    timeout: Duration,
    channel: &str,
    sender: &broadcast::Sender<Arc<str>>,
) -> Listened {
    let lost = |why: String| Listened::Lost(why, false);
    let (client, mut messages) = match tokio::time::timeout(timeout, conn::open(config, tls)).await
    {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return lost(e.to_string()),
        Err(_) => return lost(format!("no answer within {timeout:?}")),
    };
    // The answer to LISTEN arrives only while the connection's messages are read.
    let sql = format!("LISTEN {}", quote_ident(channel));
    let mut subscribe: Ping<'_> = Box::pin(client.batch_execute(&sql));
    let subscribed = tokio::time::timeout(timeout, async {
        loop {
            tokio::select! {
                r = &mut subscribe => return r.map_err(|e| e.to_string()),
                m = messages.next() => match m {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("connection closed".to_owned()),
                },
            }
        }
    })
    .await;
    match subscribed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return lost(e),
        Err(_) => return lost(format!("LISTEN not answered within {timeout:?}")),
    }
    // Announcements made before LISTEN took effect were not heard.
    let _ = sender.send(EVERY_KEY.into());
    let mut ticker = tokio::time::interval(PING_EVERY);
    ticker.tick().await;
    let mut ping: Option<Ping<'_>> = None;
    let why = loop {
        tokio::select! {
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == channel => {
                    let _ = sender.send(n.payload().into());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break e.to_string(),
                None => break "connection closed".to_owned(),
            },
            r = async { ping.as_mut().expect("guarded").await }, if ping.is_some() => {
                ping = None;
                if let Err(e) = r {
                    break e.to_string();
                }
            }
            _ = ticker.tick() => {
                if ping.is_some() {
                    break format!("the server did not answer a ping within {PING_EVERY:?}");
                }
                ping = Some(Box::pin(client.batch_execute("SELECT 1")));
            }
        }
    };
    Listened::Lost(why, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_short_and_differ_by_schema() {
        let a = channel_of("lease");
        assert_eq!(a, channel_of("lease"));
        assert_ne!(a, channel_of("Lease"));
        assert!(channel_of(&"x".repeat(63)).len() <= 63);
    }

    #[test]
    fn payloads_are_the_hex_of_the_key() {
        assert_eq!(payload_of("k\0é"), "6b00c3a9");
        assert_eq!(payload_of(&"k".repeat(1024)).len(), 2048);
    }
}
