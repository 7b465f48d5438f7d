//! Counts that every worker adds to on every request (bytes per listener and server, HTTP
//! requests, the request-duration histogram), kept in one cache line per worker: workers
//! never write the same line, and a reader sums the lines. One shared atomic per count (or
//! a histogram behind one lock, as prometheus-client's is) moves its cache line between
//! cores on every request, a cost that grows with the number of workers.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::workers::worker_slot;

/// Lines per count: slot 0 for threads off the workers, the rest one per worker (workers
/// past them share).
const SLOTS: usize = 8;

/// A value alone in its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line<T>(T);

/// A count that only grows, added to by every worker.
#[derive(Debug, Default)]
pub struct Tally {
    lines: [Line<AtomicU64>; SLOTS],
}

impl Tally {
    /// Adds `n` on the calling worker's line.
    pub fn add(&self, n: u64) {
        self.lines[worker_slot(SLOTS)]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The count: all lines summed (each line read once, so not one instant's total while
    /// workers add, as with any counter read during updates).
    pub fn get(&self) -> u64 {
        self.lines.iter().fold(0, |sum, line| {
            sum.wrapping_add(line.0.load(Ordering::Relaxed))
        })
    }
}

/// Observations counted in `B` buckets, with their count and sum, per worker.
#[derive(Debug)]
pub struct TallyHistogram<const B: usize> {
    lines: [Line<HistogramLine<B>>; SLOTS],
}

#[derive(Debug)]
struct HistogramLine<const B: usize> {
    buckets: [AtomicU64; B],
    count: AtomicU64,
    sum: AtomicU64,
}

/// What a [`TallyHistogram`] holds, summed over the workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramCounts<const B: usize> {
    /// Observations per bucket (not cumulative).
    pub buckets: [u64; B],
    /// Observations.
    pub count: u64,
    /// The observed amounts added up.
    pub sum: u64,
}

impl<const B: usize> Default for TallyHistogram<B> {
    fn default() -> Self {
        Self {
            lines: std::array::from_fn(|_| {
                Line(HistogramLine {
                    buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                    count: AtomicU64::new(0),
                    sum: AtomicU64::new(0),
                })
            }),
        }
    }
}

impl<const B: usize> TallyHistogram<B> {
    /// Counts one observation of `amount` in `bucket` (the last bucket when past the end).
    pub fn observe(&self, bucket: usize, amount: u64) {
        let line = &self.lines[worker_slot(SLOTS)].0;
        line.buckets[bucket.min(B - 1)].fetch_add(1, Ordering::Relaxed);
        line.count.fetch_add(1, Ordering::Relaxed);
        line.sum.fetch_add(amount, Ordering::Relaxed);
    }

    /// The counts of every worker summed.
    pub fn read(&self) -> HistogramCounts<B> {
        let mut counts = HistogramCounts {
            buckets: [0; B],
            count: 0,
            sum: 0,
        };
        for line in &self.lines {
            for (total, bucket) in counts.buckets.iter_mut().zip(&line.0.buckets) {
                *total = total.wrapping_add(bucket.load(Ordering::Relaxed));
            }
            counts.count = counts
                .count
                .wrapping_add(line.0.count.load(Ordering::Relaxed));
            counts.sum = counts.sum.wrapping_add(line.0.sum.load(Ordering::Relaxed));
        }
        counts
    }
}

/// A count a binary upgrade carries over: read in the old process, added in the new one.
pub trait Carried {
    /// The count now.
    fn value(&self) -> u64;
    /// Adds what the old process had counted.
    fn carry(&self, n: u64);
}

impl Carried for AtomicU64 {
    fn value(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }

    fn carry(&self, n: u64) {
        self.fetch_add(n, Ordering::Relaxed);
    }
}

impl Carried for Tally {
    fn value(&self) -> u64 {
        self.get()
    }

    fn carry(&self, n: u64) {
        self.add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_every_worker_add_up() {
        let workers = crate::workers::Workers::start(Some(3)).unwrap_or_else(|e| panic!("{e}"));
        let tally = std::sync::Arc::new(Tally::default());
        let histogram = std::sync::Arc::new(TallyHistogram::<3>::default());
        let (done, finished) = std::sync::mpsc::channel();
        for worker in 0..workers.count() {
            let (tally, histogram, done) = (tally.clone(), histogram.clone(), done.clone());
            workers.handle(worker).spawn(async move {
                for i in 0..1000 {
                    tally.add(2);
                    histogram.observe(i % 5, 10);
                }
                let _ = done.send(());
            });
        }
        // And one thread off the workers.
        tally.add(1);
        for _ in 0..workers.count() {
            finished.recv().unwrap_or_else(|e| panic!("{e}"));
        }
        // Each worker and the other thread counted on a line of its own.
        let used = tally
            .lines
            .iter()
            .filter(|line| line.0.load(Ordering::Relaxed) > 0);
        assert_eq!(used.count(), 4);
        assert_eq!(tally.get(), 6001);
        assert_eq!(
            histogram.read(),
            HistogramCounts {
                // Buckets 3 and 4 fall into the last one.
                buckets: [600, 600, 1800],
                count: 3000,
                sum: 30000,
            }
        );
    }

    #[test]
    fn lines_do_not_share_a_cache_line() {
        assert_eq!(std::mem::align_of::<Line<AtomicU64>>(), 64);
        assert_eq!(std::mem::size_of::<Tally>(), 64 * SLOTS);
    }
}
