//! `switchyard ctl`: operating a running proxy through its admin API.

use std::time::{Duration, Instant};

use hyper::Method;

use crate::admin::client::AdminClient;
use crate::admin::{ListenerStatus, PoolStatus, ServerStatus};

/// A `ctl` command.
#[derive(Debug, Clone)]
pub enum CtlCommand {
    /// Show listeners, pools and servers.
    Status {
        /// Print the raw JSON.
        json: bool,
    },
    /// Stop new work to a server; optionally wait until it has no sessions.
    Drain {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
        /// Wait for the server's sessions to end, up to this long.
        wait: Option<Duration>,
    },
    /// Put a server back into service.
    Ready {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
    },
    /// Take a server out and cut its sessions.
    Maint {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
    },
    /// Re-read the config file.
    Reload,
    /// Show what a resolver answers for a key.
    Resolve {
        /// Resolver name.
        resolver: String,
        /// The routing key.
        key: String,
    },
    /// Show usage per tenant.
    Tenants,
    /// Drop a key from a resolver's cache.
    Purge {
        /// Resolver name.
        resolver: String,
        /// The routing key.
        key: String,
    },
}

/// Runs a command, printing its result; `Err` carries the message for stderr.
pub async fn run(client: &AdminClient, command: CtlCommand) -> Result<(), String> {
    match command {
        CtlCommand::Status { json } => status(client, json).await,
        CtlCommand::Drain { pool, server, wait } => {
            set_state(client, &pool, &server, "drain").await?;
            match wait {
                Some(limit) => wait_idle(client, &pool, &server, limit).await,
                None => Ok(()),
            }
        }
        CtlCommand::Ready { pool, server } => set_state(client, &pool, &server, "ready").await,
        CtlCommand::Maint { pool, server } => set_state(client, &pool, &server, "maint").await,
        CtlCommand::Resolve { resolver, key } => {
            let body = expect_ok(
                client
                    .call(Method::GET, &key_path(&resolver, &key), None)
                    .await?,
            )?;
            println!("{}", body.trim_end());
            Ok(())
        }
        CtlCommand::Purge { resolver, key } => {
            expect_ok(
                client
                    .call(Method::DELETE, &key_path(&resolver, &key), None)
                    .await?,
            )?;
            println!("{resolver}/{key}: purged");
            Ok(())
        }
        CtlCommand::Tenants => {
            let body = expect_ok(client.call(Method::GET, "/api/v1/tenants", None).await?)?;
            let rows: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&body)
                .map_err(|e| format!("unexpected /api/v1/tenants answer: {e}"))?;
            println!("{:<24} {}", "TENANT", crate::accounting::FIELDS.join(" "));
            for row in rows {
                let values: Vec<String> = crate::accounting::FIELDS
                    .iter()
                    .map(|f| row.get(*f).map(|v| v.to_string()).unwrap_or_default())
                    .collect();
                let tenant = row.get("tenant").and_then(|t| t.as_str()).unwrap_or("-");
                println!("{tenant:<24} {}", values.join(" "));
            }
            Ok(())
        }
        CtlCommand::Reload => {
            let (status, body) = client.call(Method::POST, "/api/v1/reload", None).await?;
            if status == 400 {
                return Err(reload_refused(&body));
            }
            println!("{}", expect_ok((status, body))?.trim_end());
            Ok(())
        }
    }
}

/// The message of a refused reload: the headline, then every error on its own line.
fn reload_refused(body: &str) -> String {
    let Ok(answer) = serde_json::from_str::<serde_json::Value>(body) else {
        return format!("reload refused: {}", body.trim_end());
    };
    let headline = answer
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("reload refused");
    let errors = answer
        .get("errors")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str());
    std::iter::once(format!("reload refused: {headline}"))
        .chain(errors.map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `/api/v1/resolvers/{resolver}/keys/{key}`.
fn key_path(resolver: &str, key: &str) -> String {
    format!(
        "/api/v1/resolvers/{}/keys/{}",
        crate::admin::client::path_segment(resolver),
        crate::admin::client::path_segment(key)
    )
}

fn expect_ok((status, body): (u16, String)) -> Result<String, String> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(body);
    Err(format!(
        "admin API answered {status}: {}",
        message.trim_end()
    ))
}

async fn set_state(
    client: &AdminClient,
    pool: &str,
    server: &str,
    state: &str,
) -> Result<(), String> {
    let path = format!(
        "/api/v1/pools/{}/servers/{}/state",
        crate::admin::client::path_segment(pool),
        crate::admin::client::path_segment(server)
    );
    let body = serde_json::json!({ "state": state }).to_string();
    expect_ok(client.call(Method::POST, &path, Some(body)).await?)?;
    println!("{pool}/{server}: {state}");
    Ok(())
}

async fn pools(client: &AdminClient) -> Result<Vec<PoolStatus>, String> {
    let body = expect_ok(client.call(Method::GET, "/api/v1/pools", None).await?)?;
    serde_json::from_str(&body).map_err(|e| format!("unexpected /api/v1/pools answer: {e}"))
}

/// Polls the server's active session count until it reaches zero or `limit` passes.
async fn wait_idle(
    client: &AdminClient,
    pool: &str,
    server: &str,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let active = pools(client)
            .await?
            .into_iter()
            .find(|p| p.name == pool)
            .and_then(|p| p.servers.into_iter().find(|s| s.name == server))
            .map(|s| s.active)
            .ok_or_else(|| format!("{pool}/{server} disappeared"))?;
        if active == 0 {
            println!("{pool}/{server}: idle");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{pool}/{server} still has {active} active sessions after {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(client: &AdminClient, json: bool) -> Result<(), String> {
    let listeners_body = expect_ok(client.call(Method::GET, "/api/v1/listeners", None).await?)?;
    let pools = pools(client).await?;
    if json {
        let listeners: serde_json::Value =
            serde_json::from_str(&listeners_body).unwrap_or_default();
        let all = serde_json::json!({ "listeners": listeners, "pools": pools });
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return Ok(());
    }
    let listeners: Vec<ListenerStatus> = serde_json::from_str(&listeners_body)
        .map_err(|e| format!("unexpected /api/v1/listeners answer: {e}"))?;
    println!(
        "{:<16} {:<24} {:<9} {:>8} {:>10}",
        "LISTENER", "ADDRESS", "PROTOCOL", "ACTIVE", "TOTAL"
    );
    for l in &listeners {
        println!(
            "{:<16} {:<24} {:<9} {:>8} {:>10}",
            l.name, l.address, l.protocol, l.active, l.total
        );
    }
    println!();
    println!(
        "{:<12} {:<12} {:<22} {:<6} {:<9} {:<8} {:>8} {:>7} {:>8} {:>12} {:>12}  CHECK",
        "POOL",
        "SERVER",
        "ADDRESS",
        "STATE",
        "HEALTH",
        "ROLE",
        "WEIGHT",
        "ACTIVE",
        "TOTAL",
        "BYTES_IN",
        "BYTES_OUT"
    );
    let row = |pool: &str, s: &ServerStatus| {
        // A database role from the health check, else whether it is a backup.
        let role = match s.role.as_str() {
            "primary" | "replica" => s.role.as_str(),
            _ if s.backup => "backup",
            _ => "-",
        };
        println!(
            "{:<12} {:<12} {:<22} {:<6} {:<9} {:<8} {:>8} {:>7} {:>8} {:>12} {:>12}  {}",
            pool,
            s.name,
            s.address,
            s.state,
            s.health,
            role,
            weight_column(s),
            s.active,
            s.total,
            s.bytes_in,
            s.bytes_out,
            s.check.as_deref().unwrap_or("-")
        );
    };
    for pool in &pools {
        for s in &pool.servers {
            row(&pool.name, s);
        }
        // A pool with `resolver`: each server set in use, then the keys routed to it.
        for set in &pool.resolved {
            for s in &set.servers {
                row(&pool.name, s);
            }
            let keys: Vec<String> = set
                .keys
                .iter()
                .map(|k| match &k.tenant {
                    Some(tenant) => format!("{} (tenant {tenant})", k.key),
                    None => k.key.clone(),
                })
                .collect();
            println!("{:<12} {:<12} keys: {}", pool.name, "", keys.join(", "));
        }
        if pool.queued > 0 {
            println!("{:<12} ({} queued)", pool.name, pool.queued);
        }
    }
    Ok(())
}

/// The weight as `ctl status` shows it: the configured weight, or `effective/configured`
/// while `slow_start` ramps the server up, so an operator sees it is not at full share yet.
fn weight_column(server: &ServerStatus) -> String {
    if server.effective_weight < f64::from(server.weight) {
        format!("{:.2}/{}", server.effective_weight, server.weight)
    } else {
        server.weight.to_string()
    }
}
