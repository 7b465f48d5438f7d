//! Metric families read straight from live counters at scrape time: a table of
//! `(name, help, how to read)` per kind of object, and the encoder that writes a sample per
//! object. The admin exporter and each protocol's own families use it, so the data path
//! never touches a metrics registry.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// A sample's labels.
pub type Labels = Vec<(&'static str, String)>;

/// How to read a value, and whether it only grows (counter, exact integers) or goes up
/// and down (gauge, which may be fractional, such as a ramping effective weight).
pub enum Read<T: ?Sized> {
    /// Only grows: an exact integer.
    Counter(fn(&T) -> u64),
    /// Goes up and down, may be fractional.
    Gauge(fn(&T) -> f64),
}

/// One metric family over a kind of object: name, help and how to read the value.
pub struct Metric<T: ?Sized> {
    name: &'static str,
    help: &'static str,
    read: Read<T>,
}

impl<T: ?Sized> Metric<T> {
    /// The family's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A family definition.
pub const fn metric<T: ?Sized>(name: &'static str, help: &'static str, read: Read<T>) -> Metric<T> {
    Metric { name, help, read }
}

/// A counter's value.
pub fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A gauge of a count.
pub fn load_usize(counter: &AtomicUsize) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

/// 1 or 0.
pub fn flag(value: bool) -> f64 {
    f64::from(u8::from(value))
}

/// Writes one family: a sample per (labels, object).
pub fn family<T: ?Sized>(
    encoder: &mut DescriptorEncoder,
    metric: &Metric<T>,
    objects: &[(Labels, &T)],
) -> Result<(), std::fmt::Error> {
    family_as(encoder, metric.name, metric, objects)
}

/// [`family`] under another name (families shared by several protocols, each under its
/// own prefix).
pub fn family_as<T: ?Sized>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    metric: &Metric<T>,
    objects: &[(Labels, &T)],
) -> Result<(), std::fmt::Error> {
    if objects.is_empty() {
        return Ok(());
    }
    let kind = match metric.read {
        Read::Counter(_) => ConstCounter::new(0u64).metric_type(),
        Read::Gauge(_) => ConstGauge::new(0.0f64).metric_type(),
    };
    let mut family = encoder.encode_descriptor(name, metric.help, None, kind)?;
    for (labels, object) in objects {
        let sample = family.encode_family(labels)?;
        match metric.read {
            Read::Counter(read) => ConstCounter::new(read(object)).encode(sample)?,
            Read::Gauge(read) => ConstGauge::new(read(object)).encode(sample)?,
        }
    }
    Ok(())
}
