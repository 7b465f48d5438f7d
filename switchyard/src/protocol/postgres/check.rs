//! The `postgres` check: log in as the configured user, ask whether the server is in
//! recovery, and record its role and (for a replica) its replication lag.
//!
//! The login uses tokio-postgres over a connection the proxy made itself (with the pool's
//! `sslmode`, as sessions get), so every authentication method PostgreSQL offers (trust,
//! cleartext, md5, SCRAM) works without the proxy re-implementing the client side of them.

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::config::SslMode;

use super::tls::{retries_with_tls, secure_server, server_host};
use crate::config::{CheckOptions, DatabaseCheck, HealthConfig};
use crate::health::{Check, Outcome};
use crate::upstream::{Pool, ReplicaLag, Server, ServerRole, connect_server};

/// Role, and for a replica the WAL not yet replayed and the age of the last replayed
/// commit (0 while caught up: an idle primary makes no commits to replay).
const ROLE_QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN \
       COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0) END, \
     CASE WHEN pg_is_in_recovery() THEN \
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
       ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END END";

/// The `postgres` check.
#[derive(Debug)]
pub struct PostgresCheck;

impl Check for PostgresCheck {
    fn check<'a>(
        &'a self,
        pool: &'a Pool,
        server: &'a Server,
        health: &'a HealthConfig,
    ) -> Outcome<'a> {
        Box::pin(async move {
            let CheckOptions::Postgres(check) = &health.options else {
                return Err("not a postgres check".to_string());
            };
            check_role(pool, server, check).await
        })
    }
}

/// Logs in, runs the role query and records the result on `server`; a role change cuts
/// the server's sessions when the pool says so.
async fn check_role(pool: &Pool, server: &Server, health: &DatabaseCheck) -> Result<(), String> {
    let (role, lag) = query_role(pool, server, health).await?;
    crate::health::record_role(pool, server, role, lag, health.on_role_change);
    Ok(())
}

/// Logs in with `config` over a connection the proxy made itself, with the pool's sslmode
/// as sessions get it (`allow` retries with TLS after a refusal); the connection runs in
/// the returned task, which ends once the client is dropped.
pub async fn connect(
    pool: &Pool,
    server: &Server,
    config: &tokio_postgres::Config,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    String,
> {
    let tls = pool.tls.as_deref();
    let host = server_host(server);
    let mut retry = false;
    let (client, connection) = loop {
        let (stream, _) = connect_server(server, pool)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let stream = secure_server(tls, &host, stream, &[], retry)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let may_retry = !retry && retries_with_tls(tls, &stream);
        match config.connect_raw(stream, tokio_postgres::NoTls).await {
            Ok(connected) => break connected,
            Err(_) if may_retry => retry = true,
            Err(error) => return Err(format!("postgres: {error}")),
        }
    };
    Ok((client, tokio::spawn(connection)))
}

async fn query_role(
    pool: &Pool,
    server: &Server,
    health: &DatabaseCheck,
) -> Result<(ServerRole, Option<ReplicaLag>), String> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&health.user)
        .dbname(&health.database)
        .application_name("switchyard-health-check")
        .ssl_mode(SslMode::Disable);
    if let Some(password) = &health.password {
        config.password(crate::secret::resolve(password)?);
    }
    let (client, connection) = connect(pool, server, &config).await?;
    let messages = client
        .simple_query(ROLE_QUERY)
        .await
        .map_err(|e| format!("postgres: {e}"));
    drop(client);
    let _ = connection.await;
    let row = messages?
        .into_iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or("postgres: the role query returned no row")?;
    match row.get(0) {
        Some("f") => Ok((ServerRole::Primary, None)),
        Some("t") => {
            let bytes = row
                .get(1)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_default();
            let seconds = row
                .get(2)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_default();
            Ok((
                ServerRole::Replica,
                Some(ReplicaLag {
                    bytes: bytes.max(0.0) as u64,
                    seconds: seconds.max(0.0),
                }),
            ))
        }
        other => Err(format!(
            "postgres: unexpected pg_is_in_recovery() {other:?}"
        )),
    }
}
