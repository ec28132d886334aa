//! A store server the fleet starts itself (`--store redis`, `--store etcd`: any store that runs
//! as a server), so that the nemesis can restart or stop it.

use anyhow::{Context, bail};
use lease_testkit::{ServeOptions, Served};
use leasehold::Scheme;

/// A throwaway local server the fleet started; stopped when dropped.
pub(crate) struct OwnedServer(Served);

impl OwnedServer {
    /// `--store NAME`, where NAME is a store that runs as a server: starts a throwaway local
    /// server, and gives it with the URL of its store. `None` for anything else, which is a URL.
    ///
    /// # Errors
    ///
    /// When this build leaves the store out (this package's features are named as leasehold's),
    /// or its server is not installed.
    pub(crate) fn start(store: &str) -> anyhow::Result<Option<(OwnedServer, String)>> {
        let Some(scheme) = Scheme::named(store).filter(|s| s.is_server()) else {
            return Ok(None);
        };
        if !scheme.is_built() {
            bail!(
                "`--store {store}` needs the {} store: build with `--features {}`",
                scheme.label(),
                scheme.feature()
            );
        }
        // Durable (Redis: AOF with an fsync per write), so fences survive the nemesis's restarts.
        let options = ServeOptions {
            durable: true,
            prefix: "fleet/".to_owned(),
        };
        let served = lease_testkit::serve(store, &options).with_context(|| {
            format!(
                "`--store {store}` starts a local {}, which is not installed",
                lease_testkit::server_program(store).unwrap_or(store)
            )
        })?;
        let url = served.url().to_owned();
        Ok(Some((OwnedServer(served), url)))
    }

    /// Stops the server (SIGSTOP) until [`resume`](Self::resume).
    pub(crate) fn pause(&mut self) {
        self.0.pause();
    }

    /// Resumes a stopped server (SIGCONT).
    pub(crate) fn resume(&mut self) {
        self.0.resume();
    }

    /// Kills the server and starts it again with its data; returns once it serves again.
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.0.restart().map_err(anyhow::Error::msg)
    }
}
