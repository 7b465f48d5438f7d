//! What the rules need from the keys of one protocol's listeners, and what they check them
//! against. The config holds every protocol's keys, so a protocol's rules are handed the
//! parts of it they read rather than the config itself.

use super::database::{PoolView, UserConfig};
use super::report::ErrorSink;

/// What the config rules need from the keys of one protocol's listeners.
pub trait ListenerKeys {
    /// The pools its routes send to, in route order.
    fn route_pools(&self) -> Vec<&str>;
    /// Checks its keys against `around`; `i` is the listener's index in the config.
    fn validate(&self, around: &Surroundings<'_>, i: usize, sink: &mut ErrorSink<'_>);
}

/// What a listener's keys are checked against: the keys every listener has that its
/// protocol's rules read, and the rest of the config.
pub struct Surroundings<'a> {
    /// Whether the listener has `tls` certificates.
    pub tls: bool,
    /// The listener's `pool`.
    pub pool: Option<&'a String>,
    /// The `[[user]]` entries.
    pub users: &'a [UserConfig],
    /// Every pool, as the database rules read it.
    pub pools: &'a [PoolView<'a>],
}
