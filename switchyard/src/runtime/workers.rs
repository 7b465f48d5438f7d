//! Connection workers: one thread per core, each with its own single-threaded runtime.
//!
//! Every worker runs an accept loop on every listener (duplicates of the same kernel socket),
//! and a connection stays on the thread that accepted it for its whole life: its client and
//! server sockets, timers and buffers are driven by one epoll instance on one thread. A
//! work-stealing runtime instead wakes other threads for events of a connection they do not
//! own, and on small messages those cross-thread wake-ups cost more than the proxying.
//! Whichever worker is idle wins the race to accept, which balances load without a
//! dispatcher. The control plane (admin API, health checks, reloads) runs on the main
//! thread's runtime.

use std::io;

use tokio::runtime::{Builder, Handle};

/// Handles of the worker runtimes; the threads run until the process exits.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// Starts `count` workers (at least one), or one per available core.
    pub fn start(count: Option<usize>) -> io::Result<Self> {
        let count = count
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
            .max(1);
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        }
        Ok(Self { handles })
    }

    /// The worker runtimes, to spawn per-worker tasks on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}
