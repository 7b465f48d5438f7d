//! Which keys a table of the config may hold, read from the types that deserialize it.
//!
//! A listener's table is read by two types (the keys every listener has, and those of its
//! protocol), a pool's by three, a health check's by two. serde's `deny_unknown_fields`
//! cannot span types, so the loader asks each type for the keys it reads and reports a
//! key that none of them reads, at its line, naming where the key does belong when
//! another protocol has it.

use serde::de::DeserializeOwned;
use toml_edit::Item;

use super::report::{ErrorSink, PathSegment};

/// The keys `T` reads: the field names serde's derive gives `deserialize_struct`.
pub fn of<T: DeserializeOwned>() -> &'static [&'static str] {
    serde_aux::serde_introspection::serde_introspect::<T>()
}

/// Where else a key is read, for the error message: `(who, keys)`, e.g.
/// `("http listeners", &[...])`.
pub type Elsewhere<'a> = &'a [(String, &'static [&'static str])];

/// Reports every key of the table `item` (at `path`) that none of `allowed` reads. `what`
/// names the tables for the message (e.g. "postgres listeners").
pub fn check(
    item: &Item,
    path: &[PathSegment],
    allowed: &[&[&str]],
    what: &str,
    elsewhere: Elsewhere<'_>,
    sink: &mut ErrorSink<'_>,
) {
    let Some(table) = item.as_table_like() else {
        return;
    };
    for (key, _) in table.iter() {
        if allowed.iter().any(|keys| keys.contains(&key)) {
            continue;
        }
        let owners: Vec<&str> = elsewhere
            .iter()
            .filter(|(_, keys)| keys.contains(&key))
            .map(|(who, _)| who.as_str())
            .collect();
        let message = if owners.is_empty() {
            format!("unknown key for {what}")
        } else {
            format!("not a key of {what}; it belongs to {}", owners.join(", "))
        };
        let mut at = path.to_vec();
        at.push(PathSegment::Key(key.to_string()));
        sink.at(&at, message);
    }
}
