//! Health checking: one checker per kind, driving the rise/fall state machine per server.
//!
//! Each server of a pool with a `health` section gets its own task. A new check kind (the
//! database and SMTP checks) is one more `Check` variant and its function.

mod http;
pub mod mysql;
pub mod postgres;
mod tracker;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use http::StatusRange;
pub use tracker::{Health, HealthTracker, Transition};

use crate::config::{CheckKind, HealthConfig, OnDown};
use crate::upstream::{Pool, Server, connect_server};

/// Starts a check task for every server of `pool` (if it has health checking); the tasks
/// end when `stop` fires or the pool is retired by a reload.
pub fn spawn_checks(pool: &Arc<Pool>, stop: &CancellationToken) {
    let Some(health) = pool.health.clone() else {
        return;
    };
    for server in &pool.servers {
        let (pool, server, stop, health) =
            (pool.clone(), server.clone(), stop.clone(), health.clone());
        tokio::spawn(async move {
            let checking = pool.clone();
            tokio::select! {
                () = stop.cancelled() => {}
                () = checking.retired() => {}
                () = check_loop(pool, server, health) => {}
            }
        });
    }
}

async fn check_loop(pool: Arc<Pool>, server: Arc<Server>, health: HealthConfig) {
    // Spread the first checks of a pool over the interval instead of firing all at once.
    let index = pool
        .servers
        .iter()
        .position(|s| Arc::ptr_eq(s, &server))
        .unwrap_or(0);
    let jitter = health
        .interval
        .mul_f64(index as f64 / pool.servers.len().max(1) as f64 / 4.0);
    tokio::time::sleep(jitter).await;
    loop {
        let result = run_check(&pool, &server, &health).await;
        if let Some(transition) = server.record_check(result) {
            on_transition(&pool, &server, &transition);
        }
        let pause = if server.health_in_transition() {
            health.effective_fast_interval()
        } else {
            health.interval
        };
        tokio::time::sleep(pause).await;
    }
}

/// One check of one server, bounded by the check timeout.
async fn run_check(pool: &Pool, server: &Server, health: &HealthConfig) -> Result<(), String> {
    let check = async {
        match health.check {
            CheckKind::Http => http::check(pool, server, health).await,
            CheckKind::Postgres => postgres::check(pool, server, health).await,
            CheckKind::Mysql => mysql::check(pool, server, health).await,
            // Validation refuses the smtp check for now; tcp is a connect (and TLS).
            _ => {
                let (stream, _) = connect_server(server, pool)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                // With `upstream_tls`, a check passes only if the TLS handshake does.
                crate::tls::secure_upstream(pool, server, stream, &[])
                    .await
                    .map(drop)
                    .map_err(|e| format!("tls: {e}"))
            }
        }
    };
    match tokio::time::timeout(health.effective_timeout(), check).await {
        Ok(result) => result,
        Err(_) => Err("check timed out".to_string()),
    }
}

/// Logs a health change and applies its consequences.
pub fn on_transition(pool: &Pool, server: &Server, transition: &Transition) {
    match transition.to {
        Health::Down => {
            tracing::warn!(pool = %pool.name, server = %server.name, reason = %transition.reason, "server is down");
            if pool
                .health
                .as_ref()
                .is_some_and(|h| h.on_down == OnDown::ShutdownSessions)
            {
                server.cut_sessions();
            }
        }
        Health::Up => {
            tracing::info!(pool = %pool.name, server = %server.name, "server is up");
        }
        Health::Unchecked => {}
    }
    // Queued clients may now have a server (or none): let them look again.
    pool.wake_queue();
}
