//! Health checking: the rise/fall state machine per server, driven by one task per server
//! running the pool's check. The checks themselves come from the protocols that speak to
//! the servers (an `http` check from HTTP, a `postgres` one from PostgreSQL) through the
//! [`Check`] trait; the TCP connect check is here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{HealthConfig, OnRoleChange};
use crate::upstream::{
    Pool, ReplicaLag, Server, ServerRole, connect_server, on_transition, secure_upstream,
};

/// The outcome of one check: `Err` says why the server failed it.
pub type Outcome<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// One kind of health check.
pub trait Check: Send + Sync + std::fmt::Debug + 'static {
    /// Checks `server` of `pool` once (the caller bounds it by the check timeout).
    fn check<'a>(
        &'a self,
        pool: &'a Pool,
        server: &'a Server,
        health: &'a HealthConfig,
    ) -> Outcome<'a>;
}

/// The `tcp` check: a connect, and with `upstream_tls` the TLS handshake.
#[derive(Debug)]
pub struct TcpCheck;

impl Check for TcpCheck {
    fn check<'a>(&'a self, pool: &'a Pool, server: &'a Server, _: &'a HealthConfig) -> Outcome<'a> {
        Box::pin(async move {
            let (stream, _) = connect_server(server, pool)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            secure_upstream(pool, server, stream, &[])
                .await
                .map(drop)
                .map_err(|e| format!("tls: {e}"))
        })
    }
}

/// Records what a database check found of `server`'s role; a change (a promotion, or a
/// primary back as a replica) is logged, cuts the server's sessions when the pool says so,
/// and lets queued clients look again.
pub fn record_role(
    pool: &Pool,
    server: &Server,
    role: ServerRole,
    lag: Option<ReplicaLag>,
    on_change: OnRoleChange,
) {
    if let Some(previous) = server.record_role(role, lag) {
        tracing::warn!(pool = %pool.name, server = %server.name, from = ?previous, to = ?role, "server role changed");
        if on_change == OnRoleChange::ShutdownSessions {
            server.cut_sessions();
        }
        pool.wake_queue();
    }
}

/// Starts a task running `check` for every server of `pool` (if it has health checking);
/// the tasks end when `stop` fires or the pool is retired by a reload.
pub fn spawn_checks(pool: &Arc<Pool>, check: Arc<dyn Check>, stop: &CancellationToken) {
    let Some(health) = pool.health.clone() else {
        return;
    };
    for server in &pool.servers {
        let (pool, server, stop, health, check) = (
            pool.clone(),
            server.clone(),
            stop.clone(),
            health.clone(),
            check.clone(),
        );
        tokio::spawn(async move {
            let checking = pool.clone();
            tokio::select! {
                () = stop.cancelled() => {}
                () = checking.retired() => {}
                () = check_loop(pool, server, health, check) => {}
            }
        });
    }
}

async fn check_loop(
    pool: Arc<Pool>,
    server: Arc<Server>,
    health: HealthConfig,
    check: Arc<dyn Check>,
) {
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
        let started = tokio::time::Instant::now();
        let outcome = check.check(&pool, &server, &health);
        let result = match tokio::time::timeout(health.effective_timeout(), outcome).await {
            Ok(result) => result,
            Err(_) => Err("check timed out".to_string()),
        };
        if let Some(transition) = server.record_active_check(result, started.elapsed()) {
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
