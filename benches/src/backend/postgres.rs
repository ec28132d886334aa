//! PostgreSQL: the floor is one one-row `UPDATE … RETURNING` on a connection of its own, sent
//! as the store sends its statements (unnamed, `query_typed`); the peer is the server's own
//! session advisory lock (`pg_advisory_lock`), which queues waiters in the server and hands the
//! lock over at unlock. The harness's own server gets the waiter queue (`?queued_grants=true`).

use std::time::Duration;

use anyhow::Context as _;
use lease_core::DynStore;
use lease_postgres::PostgresStore;
use lease_postgres::tokio_postgres::types::Type;
use lease_postgres::tokio_postgres::{self, Client, NoTls};

use super::{Backend, Floor, Fut, PeerHeld, PeerLock, QUEUED_GRANTS};
use crate::proto::Imp;

pub(super) struct Postgres;

/// A plain connection to the server at `location` (the store's own URL options taken out).
async fn connect(location: &str) -> anyhow::Result<Client> {
    let config = PostgresStore::builder(location)
        .connection_config()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (client, conn) = config
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl Backend for Postgres {
    fn floor_operation(&self) -> &'static str {
        "one-row UPDATE … RETURNING (unnamed statement)"
    }

    fn queued_grants_options(&self) -> &'static [&'static str] {
        &[QUEUED_GRANTS]
    }

    fn floor<'a>(&'a self, location: &'a str, _store: &'a DynStore) -> Fut<'a, Box<dyn Floor>> {
        Box::pin(async move {
            let client = connect(location).await?;
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS lease_bench_floor (k text PRIMARY KEY, v bigint \
                     NOT NULL)",
                )
                .await?;
            Ok(Box::new(Update(client)) as Box<dyn Floor>)
        })
    }

    fn version<'a>(&'a self, location: &'a str) -> Fut<'a, String> {
        Box::pin(async move {
            let client = connect(location).await?;
            let row = client
                .query_typed("SELECT current_setting('server_version')", &[])
                .await?;
            let v: String = row.first().context("no version row")?.get(0);
            Ok(format!("PostgreSQL {v}"))
        })
    }

    fn peers(&self) -> &'static [Imp] {
        &[Imp::PgAdvisoryLock]
    }

    fn peer_version(&self, peer: Imp) -> anyhow::Result<String> {
        anyhow::ensure!(
            peer == Imp::PgAdvisoryLock,
            "{} is no peer of PostgreSQL",
            peer.name()
        );
        Ok("pg_advisory_lock".to_owned())
    }

    fn peer_lock<'a>(
        &'a self,
        location: &'a str,
        key: &'a str,
        _lease_ms: Option<u64>,
    ) -> Fut<'a, Box<dyn PeerLock>> {
        Box::pin(async move {
            Ok(Box::new(AdvisoryLock {
                client: connect(location).await?,
                name: format!("bench-advisory/{key}"),
                timeout: std::sync::Mutex::new(None),
            }) as Box<dyn PeerLock>)
        })
    }
}

/// The floor's connection.
struct Update(Client);

impl Floor for Update {
    fn op<'a>(&'a self, key: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let k = format!("bench-floor:{key}");
            let rows = self
                .0
                .query_typed(
                    "UPDATE lease_bench_floor SET v = v + 1 WHERE k = $1 RETURNING v",
                    &[(&k, Type::TEXT)],
                )
                .await?;
            if rows.is_empty() {
                // The key's first round: its row, so that the next rounds update one.
                self.0
                    .query_typed(
                        "INSERT INTO lease_bench_floor VALUES ($1, 1) ON CONFLICT (k) DO NOTHING",
                        &[(&k, Type::TEXT)],
                    )
                    .await?;
            }
            Ok(())
        })
    }
}

/// `pg_advisory_lock` on a session of its own. A timed wait sets the session's `lock_timeout`
/// (the server gives up the wait itself, so a lock is never granted to a caller that stopped
/// waiting); without one it waits as long as it takes.
struct AdvisoryLock {
    client: Client,
    name: String,
    /// The `lock_timeout` the session has now.
    timeout: std::sync::Mutex<Option<Option<Duration>>>,
}

impl PeerLock for AdvisoryLock {
    fn acquire(&self, timeout: Option<Duration>) -> Fut<'_, Option<PeerHeld>> {
        Box::pin(async move {
            let changed = {
                let mut current = self
                    .timeout
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                let changed = *current != Some(timeout);
                *current = Some(timeout);
                changed
            };
            if changed {
                let ms = timeout.map_or(0, |t| t.as_millis().max(1));
                self.client
                    .batch_execute(&format!("SET lock_timeout = {ms}"))
                    .await?;
            }
            let got = self
                .client
                .query_typed(
                    "SELECT pg_advisory_lock(hashtext($1))",
                    &[(&self.name, Type::TEXT)],
                )
                .await;
            match got {
                Ok(_) => Ok(Some(PeerHeld(Box::new(())))),
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn release(&self, held: PeerHeld) -> Fut<'_, ()> {
        Box::pin(async move {
            let () = held.downcast()?;
            self.client
                .query_typed(
                    "SELECT pg_advisory_unlock(hashtext($1))",
                    &[(&self.name, Type::TEXT)],
                )
                .await?;
            Ok(())
        })
    }
}
