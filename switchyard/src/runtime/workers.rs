//! Connection workers: the runtime that accepts and serves client connections, apart from the
//! control plane (admin API, health checks, reloads) on the main thread, so that a burst of
//! connections never delays a health check or an operator's API call.
//!
//! One work-stealing runtime with a thread per core. Measured on the latency bench, one
//! single-threaded runtime per core (each accepting on its own duplicate of every listener)
//! spread connections unevenly: its p99 was 1.8-2x the work-stealing runtime's at the same
//! throughput, so connections are balanced by the scheduler instead.

use std::io;

use tokio::runtime::{Builder, Handle};

/// The connection runtime; its threads run until the process exits.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// Starts `count` worker threads (at least one), or one per available core.
    pub fn start(count: Option<usize>) -> io::Result<Self> {
        let count = count
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
            .max(1);
        let runtime = Builder::new_multi_thread()
            .worker_threads(count)
            .thread_name("switchyard-worker")
            .enable_all()
            .build()?;
        let handles = vec![runtime.handle().clone()];
        // The runtime lives on a thread of its own: dropping it from async code would panic.
        std::thread::Builder::new()
            .name("switchyard-runtime".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(Self { handles })
    }

    /// The runtimes to run accept loops on (one accept loop per listener on each).
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}
