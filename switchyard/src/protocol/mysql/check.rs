//! The `mysql` check: log in as the configured user (with the pool's `sslmode`, as
//! sessions will), read whether the server is read-only, and for a read-only server
//! (a replica) its replication lag; record role and lag on the server.
//!
//! Works with MySQL and MariaDB alike: the read-only variables are read with `SHOW GLOBAL
//! VARIABLES`, which simply leaves out the ones a server does not have (MariaDB has no
//! `super_read_only`), and the lag with `SHOW REPLICA STATUS`, falling back to `SHOW
//! SLAVE STATUS` on servers older than the new syntax (MySQL < 8.0.22, MariaDB < 10.5).

use tokio::net::TcpStream;

use super::flags::capabilities;
use super::login::{
    Credential, LoginError, LoginOptions, ServerConnection, login, retries_with_tls,
};
use super::query::{QueryError, QueryResult, ResultSet, query, quit};
use crate::config::{CheckOptions, HealthConfig, MysqlCheck};
use crate::health::{Check, Outcome};
use crate::upstream::{Pool, ReplicaLag, Server, ServerRole, connect_server};

/// The read-only switches: any of them on makes the server a replica.
const ROLE_QUERY: &str = "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
     ('read_only', 'super_read_only', 'innodb_read_only')";
/// MySQL's and MariaDB's parse error: the server predates `SHOW REPLICA STATUS`.
const ER_PARSE_ERROR: u16 = 1064;
/// The largest packet the check accepts (its answers are a few hundred bytes).
const MAX_PACKET: usize = 1 << 20;

/// The `mysql` check.
#[derive(Debug)]
pub struct MysqlHealthCheck;

impl Check for MysqlHealthCheck {
    fn check<'a>(
        &'a self,
        pool: &'a Pool,
        server: &'a Server,
        health: &'a HealthConfig,
    ) -> Outcome<'a> {
        Box::pin(async move {
            let CheckOptions::Mysql(check) = &health.options else {
                return Err("not a mysql check".to_string());
            };
            check_role(pool, server, check).await
        })
    }
}

/// Logs in, reads role and lag and records them on `server`; a role change cuts the
/// server's sessions when the pool says so.
async fn check_role(pool: &Pool, server: &Server, health: &MysqlCheck) -> Result<(), String> {
    let (role, lag) = query_role(pool, server, health).await?;
    crate::health::record_role(pool, server, role, lag, health.on_role_change);
    Ok(())
}

/// Connects to `server` and logs in with `options`, with the pool's `sslmode` (`allow`
/// retries over TLS after the server refused the plaintext login).
pub async fn connect(
    pool: &Pool,
    server: &Server,
    options: &LoginOptions,
) -> Result<ServerConnection<TcpStream>, String> {
    let tls = pool.tls.as_deref();
    let host = crate::upstream::server_host(server);
    let mut refused = None;
    loop {
        let (stream, _) = connect_server(server, pool)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let retry = refused.is_some();
        match login(stream, tls, &host, retry, options).await {
            Ok(connection) => return Ok(connection),
            Err(error) if !retry && retries_with_tls(tls, &error) => refused = Some(error),
            // A server without TLS cannot take `allow`'s retry: what it said to the
            // plaintext login (a wrong password...) is the error worth reporting.
            Err(LoginError::TlsUnavailable(_)) if refused.is_some() => {
                return Err(format!(
                    "mysql: {}",
                    refused.take().map(|e| e.to_string()).unwrap_or_default()
                ));
            }
            Err(error) => return Err(format!("mysql: {error}")),
        }
    }
}

/// What the check logs in with.
fn login_options(health: &MysqlCheck) -> Result<LoginOptions, String> {
    let password = match &health.password {
        Some(spec) => crate::secret::resolve(spec)?,
        None => String::new(),
    };
    Ok(LoginOptions {
        user: health.user.clone(),
        credential: Credential::Password(password),
        database: health.database.clone(),
        capabilities: capabilities::LOGIN,
        attributes: vec![
            ("_client_name".into(), "switchyard".into()),
            ("_client_version".into(), env!("CARGO_PKG_VERSION").into()),
            ("program_name".into(), "switchyard-health-check".into()),
        ],
        max_packet: MAX_PACKET,
        charset: super::handshake::UTF8MB4_GENERAL_CI,
    })
}

async fn query_role(
    pool: &Pool,
    server: &Server,
    health: &MysqlCheck,
) -> Result<(ServerRole, Option<ReplicaLag>), String> {
    let mut connection = connect(pool, server, &login_options(health)?).await?;
    let result = role_and_lag(&mut connection).await;
    let _ = quit(&mut connection).await;
    result
}

async fn role_and_lag(
    connection: &mut ServerConnection<TcpStream>,
) -> Result<(ServerRole, Option<ReplicaLag>), String> {
    let variables = rows(query(connection, ROLE_QUERY).await, ROLE_QUERY)?;
    let read_only = variables.rows.iter().any(|row| {
        variables
            .value(row, &["Value"])
            .is_some_and(|v| v.eq_ignore_ascii_case("ON") || v == "1")
    });
    if !read_only {
        return Ok((ServerRole::Primary, None));
    }
    let status = match query(connection, "SHOW REPLICA STATUS").await {
        Err(QueryError::Server(err)) if err.code == ER_PARSE_ERROR => rows(
            query(connection, "SHOW SLAVE STATUS").await,
            "SHOW SLAVE STATUS",
        )?,
        other => rows(other, "SHOW REPLICA STATUS")?,
    };
    Ok((ServerRole::Replica, replica_lag(&status)))
}

fn rows(result: Result<QueryResult, QueryError>, sql: &str) -> Result<ResultSet, String> {
    match result {
        Ok(QueryResult::Rows(set)) => Ok(set),
        Ok(QueryResult::Ok(_)) => Err(format!("mysql: `{sql}` returned no result set")),
        Err(error) => Err(format!("mysql: `{sql}`: {error}")),
    }
}

/// A replica's lag from its replication status: `Seconds_Behind_Source` (or `_Master`),
/// and the relay log not yet applied, in bytes, when the I/O and SQL threads are in the
/// same binary log file (else 0). `None` when the server is not replicating or the lag
/// is unknown (the SQL thread stopped: NULL seconds), which `max_replica_lag` refuses.
pub fn replica_lag(status: &ResultSet) -> Option<ReplicaLag> {
    let row = status.rows.first()?;
    let value = |names: &[&str]| status.value(row, names);
    let seconds = value(&["Seconds_Behind_Source", "Seconds_Behind_Master"])?
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite())?;
    let position = |names: &[&str]| value(names).and_then(|v| v.parse::<u64>().ok());
    let same_file = value(&["Source_Log_File", "Master_Log_File"])
        == value(&["Relay_Source_Log_File", "Relay_Master_Log_File"]);
    let read = position(&["Read_Source_Log_Pos", "Read_Master_Log_Pos"]);
    let executed = position(&["Exec_Source_Log_Pos", "Exec_Master_Log_Pos"]);
    let bytes = match (same_file, read, executed) {
        (true, Some(read), Some(executed)) => read.saturating_sub(executed),
        _ => 0,
    };
    Some(ReplicaLag {
        bytes,
        seconds: seconds.max(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(columns: &[&str], row: &[Option<&str>]) -> ResultSet {
        ResultSet {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: vec![row.iter().map(|v| v.map(str::to_string)).collect()],
            status: 0,
        }
    }

    #[test]
    fn lag_from_either_naming() {
        let maria = status(
            &[
                "Master_Log_File",
                "Read_Master_Log_Pos",
                "Relay_Master_Log_File",
                "Exec_Master_Log_Pos",
                "Seconds_Behind_Master",
            ],
            &[
                Some("bin.000001"),
                Some("1500"),
                Some("bin.000001"),
                Some("1000"),
                Some("3"),
            ],
        );
        assert_eq!(
            replica_lag(&maria),
            Some(ReplicaLag {
                bytes: 500,
                seconds: 3.0
            })
        );
        let mysql = status(
            &[
                "Source_Log_File",
                "Read_Source_Log_Pos",
                "Relay_Source_Log_File",
                "Exec_Source_Log_Pos",
                "Seconds_Behind_Source",
            ],
            &[
                Some("bin.000002"),
                Some("10"),
                Some("bin.000001"),
                Some("1000"),
                Some("0"),
            ],
        );
        assert_eq!(
            replica_lag(&mysql),
            Some(ReplicaLag {
                bytes: 0,
                seconds: 0.0
            })
        );
        let stopped = status(&["Seconds_Behind_Master"], &[None]);
        assert_eq!(replica_lag(&stopped), None);
        assert_eq!(replica_lag(&ResultSet::default()), None);
    }
}
