//! What switchyard tells operators: diagnostic logs (tracing) and connection/access logs.

mod access;
mod clock;
mod connection;
pub mod families;
mod histogram;
mod line;
mod termination;

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

pub use access::AccessLog;
pub use connection::ConnectionRecord;
pub use histogram::DurationHistogram;
#[cfg(test)]
pub use line::line_text;
pub use line::{JsonFields, Line, OrDash};
pub use termination::Termination;

/// Swaps the log filter of the running process; set only when the config's level is the
/// one in force (no `RUST_LOG`), so a reload can change it.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the diagnostic logger on stderr with the configured filter.
/// `RUST_LOG`, when set, wins over the config so operators can debug without editing it.
pub fn init_tracing(level: &str) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok());
    let env_wins = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok();
    if installed && !env_wins {
        let _ = LEVEL.set(handle);
    }
}

/// Applies a reloaded `log.level`; `Err` says why the level in force stays.
pub fn set_log_level(level: &str) -> Result<(), String> {
    let handle = LEVEL
        .get()
        .ok_or("RUST_LOG is set and takes precedence over the config")?;
    let filter = EnvFilter::try_new(level).map_err(|e| format!("`{level}`: {e}"))?;
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log filter: {e}"))
}
