//! Durations written as strings (`"250ms"`, `"2s"`, `"1m"`), for serde's `with` attribute.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses a human duration; the error names the accepted forms.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration `{text}` ({e}); write e.g. \"250ms\", \"2s\", \"1m\"")
    })
}

/// Deserializes a required duration.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Optional durations: absent, or `"none"`/`"0"` for "no limit".
pub mod option {
    use super::*;

    /// Deserializes an optional duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim() == "none" {
            return Ok(None);
        }
        parse(&text).map(Some).map_err(serde::de::Error::custom)
    }
}
