//! What switchyard tells operators: diagnostic logs (tracing) and connection/access logs.

mod access;

pub use access::{AccessLog, ConnectionRecord};

/// Installs the diagnostic logger on stderr with the configured filter.
/// `RUST_LOG`, when set, wins over the config so operators can debug without editing it.
pub fn init_tracing(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
