//! Connection workers: one thread per core, each with its own single-threaded runtime.
//!
//! A connection lives on one worker for its whole life: its client and server sockets,
//! timers, and the tasks it spawns (an HTTP server connection's driver, say) are driven by
//! one epoll instance on one thread. A work-stealing runtime instead wakes other threads
//! for events of tasks it moved, and on small requests those cross-thread wake-ups cost
//! more than the proxying: on the HTTP bench (`bench http`, 13-byte responses) one
//! work-stealing runtime served 0.50x HAProxy's requests/s, these workers 0.65x.
//!
//! Every worker accepts on every listener (duplicates of one kernel socket), and hands each
//! connection to the worker serving the fewest connections, itself on a tie. Without that
//! hand-off, whichever worker woke first took a burst of connections and kept them (the
//! latency bench's p99 was 1.8-2x the work-stealing runtime's); with it, connections stay
//! balanced however the kernel spreads the accepts. A listener with `workers = N` is
//! accepted on and served by the first N workers only (fewer sleeping workers to wake).
//! The control plane (admin API, health checks, reloads) runs on the main thread's runtime.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};

thread_local! {
    /// The index of the worker whose thread this is; `None` off the workers.
    static CURRENT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the worker running the caller, `None` off the workers (the control plane,
/// tests). Sockets are driven by the worker that registered them, so a connection prefers
/// server connections its own worker opened.
pub fn current_worker() -> Option<usize> {
    CURRENT.get()
}

/// Which of `slots` per-worker slots the caller uses, for state kept per worker: 0 off the
/// workers (the control plane, tests), else its worker's own; workers past the last slot
/// share slots.
pub fn worker_slot(slots: usize) -> usize {
    match (current_worker(), slots) {
        (Some(worker), 2..) => 1 + worker % (slots - 1),
        _ => 0,
    }
}

/// The worker runtimes; their threads run until the process exits. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Workers {
    workers: Arc<[Worker]>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Connections this worker serves now.
    connections: Arc<AtomicUsize>,
}

/// A connection counted on its worker until dropped.
#[derive(Debug)]
pub struct Placement {
    connections: Arc<AtomicUsize>,
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` workers (at least one), or one per available core.
    pub fn start(count: Option<usize>) -> io::Result<Self> {
        let count = count
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
            .max(1);
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            workers.push(Worker {
                handle: runtime.handle().clone(),
                connections: Arc::default(),
            });
            // The runtime lives on a thread of its own: dropping it from async code would
            // panic.
            std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || {
                    CURRENT.set(Some(index));
                    runtime.block_on(crate::memory::trim_periodically())
                })?;
        }
        Ok(Self {
            workers: workers.into(),
        })
    }

    /// How many workers there are (each runs one accept loop per listener).
    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Connections each worker serves now, by worker index (for the metrics).
    pub fn connections(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|worker| worker.connections.load(Ordering::Relaxed))
            .collect()
    }

    /// Worker `index`'s runtime (indices wrap around).
    pub fn handle(&self, index: usize) -> &Handle {
        &self.workers[index % self.workers.len()].handle
    }

    /// Where a connection accepted on worker `accepted_on` should run: of the first
    /// `among` workers (the ones serving its listener), the one serving the fewest
    /// connections, `accepted_on` itself unless another serves strictly fewer. The
    /// connection counts there until the returned placement is dropped.
    pub fn place(&self, accepted_on: usize, among: usize) -> (usize, Placement) {
        let load = |index: usize| self.workers[index].connections.load(Ordering::Relaxed);
        let among = among.clamp(1, self.workers.len());
        let home = accepted_on % among;
        let mut best = home;
        for index in 0..among {
            if load(index) < load(best) {
                best = index;
            }
        }
        let connections = self.workers[best].connections.clone();
        connections.fetch_add(1, Ordering::Relaxed);
        (best, Placement { connections })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_has_its_own_slot_and_threads_off_the_workers_share_slot_zero() {
        assert_eq!(worker_slot(4), 0);
        let slots: Vec<usize> = (0..5)
            .map(|worker| {
                CURRENT.set(Some(worker));
                worker_slot(4)
            })
            .collect();
        CURRENT.set(None);
        // Three worker slots: workers past them share, never slot 0.
        assert_eq!(slots, [1, 2, 3, 1, 2]);
        CURRENT.set(Some(7));
        assert_eq!(worker_slot(1), 0);
        CURRENT.set(None);
    }

    #[test]
    fn connections_go_to_the_least_busy_worker_and_stay_home_on_a_tie() {
        let workers = Workers::start(Some(3)).unwrap();
        let (first, a) = workers.place(1, 3);
        assert_eq!(first, 1, "a tie keeps the connection where it was accepted");
        let (second, b) = workers.place(1, 3);
        assert_ne!(second, 1);
        let (third, _c) = workers.place(1, 3);
        assert!(third != 1 && third != second);
        drop((a, b));
        // Worker 1 and `second` are free again; the third is busy.
        assert_eq!(workers.place(third, 3).0, 1.min(second));
    }

    #[test]
    fn a_listener_served_by_fewer_workers_places_only_on_those() {
        let workers = Workers::start(Some(3)).unwrap();
        let one: Vec<_> = (0..6).map(|_| workers.place(2, 1)).collect();
        assert!(one.iter().all(|(worker, _)| *worker == 0));
        let two: Vec<_> = (0..6).map(|_| workers.place(2, 2)).collect();
        assert!(two.iter().all(|(worker, _)| *worker == 1));
        assert_eq!(workers.connections(), vec![6, 6, 0]);
        drop(two);
        assert_eq!(workers.connections(), vec![6, 0, 0]);
    }
}
