//! Connections: opening one (plain or TLS), the store's shared connection with reconnect, and
//! the cancel request sent for a statement that timed out.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use lease_core::StoreError;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

use crate::NAME;
use crate::error::classify;

/// What a connection's task reads besides the answers to statements: notices and, on a
/// listening connection, notifications. The stream ends when the connection does.
pub(crate) type Messages =
    Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>>;

/// How connections are encrypted.
#[derive(Clone)]
pub(crate) enum Tls {
    /// Plain TCP or a Unix socket (the URL's `sslmode` is not `require`).
    None,
    /// TLS through rustls, verified against the roots it was built with.
    #[cfg(feature = "tls")]
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Tls {
    /// The connector `config` asks for: TLS for `sslmode=require`, plain otherwise (also for
    /// `prefer`, the driver's default: a connection that would verify a certificate must be
    /// asked for).
    pub(crate) fn for_config(
        config: &Config,
        root_cert: Option<&std::path::Path>,
    ) -> Result<Tls, StoreError> {
        if config.get_ssl_mode() != SslMode::Require {
            return Ok(Tls::None);
        }
        #[cfg(feature = "tls")]
        {
            crate::tls::connector(root_cert).map(Tls::Rustls)
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = root_cert;
            Err(StoreError::invalid_input(
                NAME,
                "sslmode=require needs the `tls` feature of lease-postgres",
            ))
        }
    }
}

/// Opens one connection: the client, and the stream of its messages, which must be polled for
/// the client to work (see [`spawn_driver`]).
pub(crate) async fn open(
    config: &Config,
    tls: &Tls,
) -> Result<(Client, Messages), tokio_postgres::Error> {
    match tls {
        Tls::None => {
            let (client, mut conn) = config.connect(NoTls).await?;
            let messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            Ok((client, Box::pin(messages)))
        }
        #[cfg(feature = "tls")]
        Tls::Rustls(make) => {
            let (client, mut conn) = config.connect(make.clone()).await?;
            let messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            Ok((client, Box::pin(messages)))
        }
    }
}

/// Drives a connection whose messages nobody needs, until it ends (its client dropped, or the
/// connection lost).
pub(crate) fn spawn_driver(mut messages: Messages) {
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::debug!(message = notice.message(), "notice from PostgreSQL");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                    break;
                }
            }
        }
    });
}

/// Sends a cancel request for whatever `client`'s connection runs now, in the background,
/// bounded by `timeout`.
pub(crate) fn cancel(client: &Client, tls: &Tls, timeout: Duration) {
    let token = client.cancel_token();
    let tls = tls.clone();
    tokio::spawn(async move {
        let sent = match tls {
            Tls::None => tokio::time::timeout(timeout, token.cancel_query(NoTls)).await,
            #[cfg(feature = "tls")]
            Tls::Rustls(make) => tokio::time::timeout(timeout, token.cancel_query(make)).await,
        };
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!("the cancel request for a timed-out statement was not delivered");
        }
    });
}

/// The store's connection for statements: one, shared by every call (tokio-postgres pipelines
/// concurrent statements on it), opened again after it failed.
pub(crate) struct Shared {
    config: Config,
    tls: Tls,
    connect_timeout: Duration,
    shown: String,
    /// The current connection; `None` before the first call and after a failure. The lock is
    /// held while connecting, so a lost connection is opened again once, not by every caller.
    current: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        tls: Tls,
        connect_timeout: Duration,
        shown: String,
        first: Client,
    ) -> Self {
        Self {
            config,
            tls,
            connect_timeout,
            shown,
            current: tokio::sync::Mutex::new(Some(Arc::new(first))),
        }
    }

    pub(crate) fn tls(&self) -> &Tls {
        &self.tls
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The connection, opened again if it was lost.
    ///
    /// # Cancel safety
    ///
    /// Dropped while connecting, it leaves no connection behind; the next call connects.
    pub(crate) async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut current = self.current.lock().await;
        if let Some(client) = current.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *current = None;
        let client =
            Arc::new(connect(&self.config, &self.tls, self.connect_timeout, &self.shown).await?);
        *current = Some(client.clone());
        Ok(client)
    }

    /// Forgets `client` (if it is still the current connection): the next call opens a fresh
    /// one. The old one closes when its last in-flight statement is answered.
    pub(crate) async fn discard(&self, client: &Arc<Client>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *current = None;
        }
    }
}

/// Opens a connection within `timeout` and spawns its driver.
pub(crate) async fn connect(
    config: &Config,
    tls: &Tls,
    timeout: Duration,
    shown: &str,
) -> Result<Client, StoreError> {
    match tokio::time::timeout(timeout, open(config, tls)).await {
        Ok(Ok((client, messages))) => {
            spawn_driver(messages);
            Ok(client)
        }
        Ok(Err(e)) => Err(classify(&format!("connecting to `{shown}`"), e)),
        Err(_) => Err(StoreError::transient(
            NAME,
            format!("connecting to `{shown}`: no answer within {timeout:?}"),
        )),
    }
}
