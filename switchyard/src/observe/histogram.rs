//! Duration histograms for Prometheus (HTTP request durations, resolver lookups): 16
//! buckets doubling from a first upper bound, and one past them, counted per worker
//! (`TallyHistogram`) and encoded at scrape time; the sum is kept in nanoseconds.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::tally::TallyHistogram;

/// Buckets with an upper bound.
const BOUNDED: usize = 16;

/// A duration histogram whose first bucket ends at `FIRST_MICROS` microseconds, each next
/// one at twice the last (1 000: 1 ms to about 33 s; 100: 0.1 ms to about 3.3 s). A clone
/// counts in the same series.
#[derive(Debug, Default, Clone)]
pub struct DurationHistogram<const FIRST_MICROS: u64>(Arc<TallyHistogram<{ BOUNDED + 1 }>>);

impl<const FIRST_MICROS: u64> DurationHistogram<FIRST_MICROS> {
    /// The upper bounds of the buckets, in seconds.
    const BOUNDS: [f64; BOUNDED] = {
        let mut bounds = [FIRST_MICROS as f64 / 1e6; BOUNDED];
        let mut i = 1;
        while i < BOUNDED {
            bounds[i] = bounds[i - 1] * 2.0;
            i += 1;
        }
        bounds
    };

    /// Counts one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = Self::BOUNDS.partition_point(|&bound| bound < seconds);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.observe(bucket, nanos);
    }
}

impl<const FIRST_MICROS: u64> TypedMetric for DurationHistogram<FIRST_MICROS> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl<const FIRST_MICROS: u64> EncodeMetric for DurationHistogram<FIRST_MICROS> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.read();
        let buckets: Vec<(f64, u64)> = Self::BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts.buckets)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            counts.sum as f64 / 1e9,
            counts.count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_their_buckets() {
        let histogram = DurationHistogram::<1000>::default();
        for millis in [0, 1, 2, 3, 1000, 40_000] {
            histogram.observe(Duration::from_millis(millis));
        }
        let counts = histogram.0.read();
        // Upper bounds are inclusive: 1 ms is in the first bucket, 2 ms in the second.
        assert_eq!(&counts.buckets[..4], &[2, 1, 1, 0]);
        // 1 s in the bucket up to 1.024 s, 40 s past the last bound.
        assert_eq!(counts.buckets[10], 1);
        assert_eq!(counts.buckets[16], 1);
        assert_eq!(counts.count, 6);
        assert_eq!(counts.sum, 41_006_000_000);
        let fine = DurationHistogram::<100>::default();
        fine.observe(Duration::from_micros(150));
        assert_eq!(fine.0.read().buckets[1], 1, "0.1 ms < 150 us <= 0.2 ms");
    }
}
