//! The soak's PostgreSQL: a primary with a synchronous streaming replica, a failover that
//! crashes the primary and promotes the replica (then makes a new replica where the old
//! primary was, so the next failover can go the other way), the clients' write
//! transaction, and the final check that every acknowledged write is in the table once.
//!
//! Replication is synchronous (`synchronous_standby_names = '*'`): a COMMIT is
//! acknowledged only once the replica has the WAL, so a crash of the primary loses no
//! acknowledged write by itself, and any acknowledged write missing after a failover is
//! the proxy's doing (e.g. a COMMIT answered that never reached a server).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use super::ledger::{Fault, Ledger};
use super::proxy::Proxy;
use crate::pg::Cluster;

/// Sessions each server accepts: the clients, the transaction pool's server connections
/// (two pools), health checks and the replication connection.
const MAX_CONNECTIONS: usize = 200;

/// The ids of acknowledged writes, shared by every client.
#[derive(Clone, Default)]
pub struct Acked(Arc<Mutex<Vec<i64>>>);

impl Acked {
    /// A COMMIT of the row with `id` was acknowledged.
    pub fn push(&self, id: i64) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(id);
    }

    fn ids(&self) -> Vec<i64> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Connects to `addr` as `postgres` (trusted), its connection driven by a task.
pub async fn connect(
    addr: SocketAddr,
    application: &str,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user("postgres")
        .dbname("postgres")
        .application_name(application)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// A short, stable name of a PostgreSQL failure for the tables: the step and the SQLSTATE,
/// or that the connection broke.
pub fn kind(step: &str, error: &tokio_postgres::Error) -> String {
    if let Some(code) = error.code() {
        format!("{step}: sqlstate {}", code.code())
    } else if error.is_closed() {
        format!("{step}: connection closed")
    } else {
        format!(
            "{step}: {}",
            error.to_string().chars().take(40).collect::<String>()
        )
    }
}

/// The failure's message, the server's (or proxy's) own when there is one.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// The payload of row `id`: derived from it, so the final check can recompute it.
fn payload(id: i64) -> String {
    format!("{id:016x}").repeat(usize::try_from(id.rem_euclid(32)).unwrap_or(0) + 1)
}

/// Why a write transaction did not complete.
pub enum WriteError {
    /// The row read back inside the transaction is not the one written.
    Mismatch(String),
    /// A statement failed (`step`: which one).
    Failed {
        /// `begin`, `insert`, `select` or `commit`.
        step: &'static str,
        /// What the driver said.
        error: tokio_postgres::Error,
    },
}

/// One write transaction: BEGIN, INSERT the row `id`, SELECT it back, COMMIT. Returns the
/// payload bytes moved when the COMMIT is acknowledged.
pub async fn write(client: &mut Client, id: i64, writer: &str) -> Result<usize, WriteError> {
    let failed = |step| move |error| WriteError::Failed { step, error };
    let body = payload(id);
    let transaction = client.transaction().await.map_err(failed("begin"))?;
    transaction
        .execute(
            "INSERT INTO soak_writes (id, writer, payload) VALUES ($1, $2, $3)",
            &[&id, &writer, &body],
        )
        .await
        .map_err(failed("insert"))?;
    let rows = transaction
        .query("SELECT payload FROM soak_writes WHERE id = $1", &[&id])
        .await
        .map_err(failed("select"))?;
    let read: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    if read != [body.clone()] {
        return Err(WriteError::Mismatch(format!(
            "id {id}: read back {} rows, not the one written",
            read.len()
        )));
    }
    transaction.commit().await.map_err(failed("commit"))?;
    Ok(body.len() * 2)
}

/// What the final check found.
pub struct Integrity {
    /// COMMITs acknowledged to clients.
    pub acknowledged: usize,
    /// Acknowledged writes absent from the table (or with another payload).
    pub lost: usize,
    /// Ids present more than once.
    pub duplicated: usize,
    /// Rows in the table.
    pub rows: usize,
    /// Rows written by transactions whose clients vanished before COMMIT (negative ids).
    pub vanished_committed: usize,
}

/// The primary and its replica; `servers[i]` is the address of the proxy's server `p{i+1}`.
pub struct Database {
    primary: Option<Cluster>,
    replica: Option<Cluster>,
    /// Which of `p1`/`p2` is the primary now.
    primary_slot: usize,
    /// The addresses of `p1` and `p2`.
    pub servers: [SocketAddr; 2],
}

impl Database {
    /// initdb a primary, create the table, make a replica and turn synchronous
    /// replication on.
    pub async fn start() -> Result<Self> {
        let primary = Cluster::init(MAX_CONNECTIONS).await?;
        let replica = match prepare(&primary).await {
            Ok(replica) => replica,
            Err(error) => {
                primary.stop().await;
                return Err(error);
            }
        };
        let servers = [primary.address(), replica.address()];
        Ok(Database {
            primary: Some(primary),
            replica: Some(replica),
            primary_slot: 0,
            servers,
        })
    }

    /// The current primary's address.
    pub fn primary(&self) -> SocketAddr {
        self.servers[self.primary_slot]
    }

    /// Crashes the primary and promotes the replica; the fault's window lasts until both
    /// PostgreSQL pools of the proxy see the new primary. Then starts a new replica of it
    /// where the old primary was and makes replication synchronous again.
    pub async fn failover(&mut self, proxy: &Proxy, ledger: &Ledger) -> Result<()> {
        if self.primary.is_none() || self.replica.is_none() {
            bail!("no primary and replica to fail over (an earlier failover failed)");
        }
        let (Some(old), Some(new)) = (self.primary.take(), self.replica.take()) else {
            bail!("no primary and replica to fail over");
        };
        let window = ledger.fault_begin(Fault::PromoteReplica);
        let old_address = old.address();
        let crashed = old.crash().await;
        let promoted = new.promote().await;
        self.primary_slot = 1 - self.primary_slot;
        let primary = &*self.primary.insert(new);
        crashed?;
        promoted?;
        let name = format!("p{}", self.primary_slot + 1);
        for pool in ["pg", "pgtx"] {
            proxy
                .wait_server(pool, &name, Some("primary"), Duration::from_secs(30))
                .await?;
        }
        ledger.fault_end(window);
        self.replica = Some(primary.replica(Some(old_address), MAX_CONNECTIONS).await?);
        synchronous(primary).await
    }

    /// Checks the table on the primary against the acknowledged ids.
    pub async fn verify(&self, acked: &Acked) -> Result<Integrity> {
        let (client, task) = connect(self.primary(), "soak-verify").await?;
        let rows = client
            .query("SELECT id, payload FROM soak_writes", &[])
            .await
            .context("reading soak_writes")?;
        let mut table: HashMap<i64, Vec<String>> = HashMap::new();
        for row in &rows {
            table.entry(row.get(0)).or_default().push(row.get(1));
        }
        drop(client);
        let _ = task.await;
        let ids = acked.ids();
        let lost = ids
            .iter()
            .filter(|&&id| {
                table
                    .get(&id)
                    .is_none_or(|found| !found.contains(&payload(id)))
            })
            .count();
        Ok(Integrity {
            acknowledged: ids.len(),
            lost,
            duplicated: table.values().filter(|found| found.len() > 1).count(),
            rows: rows.len(),
            vanished_committed: table.keys().filter(|&&id| id < 0).count(),
        })
    }

    /// Stops both servers.
    pub async fn stop(self) {
        for cluster in [self.primary, self.replica].into_iter().flatten() {
            cluster.stop().await;
        }
    }
}

/// Creates the table on `primary`, starts its replica and turns synchronous replication
/// on; stops the replica again when that fails.
async fn prepare(primary: &Cluster) -> Result<Cluster> {
    let (client, task) = connect(primary.address(), "soak-setup").await?;
    client
        .batch_execute(
            "CREATE TABLE soak_writes (id bigint NOT NULL, writer text NOT NULL, payload text NOT NULL);
             CREATE INDEX ON soak_writes (id);",
        )
        .await
        .context("creating soak_writes")?;
    drop(client);
    let _ = task.await;
    let replica = primary.replica(None, MAX_CONNECTIONS).await?;
    if let Err(error) = synchronous(primary).await {
        replica.stop().await;
        return Err(error);
    }
    Ok(replica)
}

/// Waits until `primary` streams to a replica, then makes its commits wait for it.
async fn synchronous(primary: &Cluster) -> Result<()> {
    let (client, task) = connect(primary.address(), "soak-setup").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await?;
        if row.get::<_, i64>(0) > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the replica does not stream within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two calls: ALTER SYSTEM refuses to run in the implicit transaction of a
    // multi-statement query.
    client
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        .await
        .context("turning synchronous replication on")?;
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .context("reloading the primary's configuration")?;
    drop(client);
    let _ = task.await;
    Ok(())
}
