//! The `map` resolver: a TOML or JSON file of key → answer, read at start, on reload
//! (SIGHUP, the admin API) and when the file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::Fetched;
use super::answer::AnswerText;

/// A file of answers, held in memory.
#[derive(Debug)]
pub struct MapSource {
    file: PathBuf,
    entries: ArcSwap<HashMap<String, AnswerText>>,
    // When the file read last was modified; the watcher rereads on a change.
    modified: std::sync::Mutex<Option<SystemTime>>,
}

impl MapSource {
    /// Reads `file`; an unreadable or malformed file is an error.
    pub fn open(file: &Path) -> Result<Self, String> {
        let source = Self {
            file: file.to_path_buf(),
            entries: ArcSwap::default(),
            modified: std::sync::Mutex::new(None),
        };
        source.reload()?;
        Ok(source)
    }

    /// Rereads the file; on an error the answers in memory stay.
    pub fn reload(&self) -> Result<(), String> {
        let modified = std::fs::metadata(&self.file)
            .and_then(|m| m.modified())
            .ok();
        let text = std::fs::read_to_string(&self.file)
            .map_err(|e| format!("cannot read {}: {e}", self.file.display()))?;
        let entries = parse(&self.file, &text)?;
        self.entries.store(Arc::new(entries));
        *self.modified.lock().unwrap_or_else(|e| e.into_inner()) = modified;
        Ok(())
    }

    /// Whether the file changed since it was read.
    pub fn changed(&self) -> bool {
        let now = std::fs::metadata(&self.file)
            .and_then(|m| m.modified())
            .ok();
        now != *self.modified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer for `key`.
    pub fn fetch(&self, key: &str) -> Fetched {
        match self.entries.load().get(key) {
            Some(answer) => Fetched::Answer(answer.clone()),
            None => Fetched::NoRoute,
        }
    }
}

/// Parses a map file: JSON when it ends in `.json`, else TOML; the top level maps keys to
/// answers.
fn parse(file: &Path, text: &str) -> Result<HashMap<String, AnswerText>, String> {
    let json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let entries: HashMap<String, AnswerText> = if json {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        toml_edit::de::from_str(text).map_err(|e| e.to_string())
    }
    .map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some((key, _)) = entries.iter().find(|(_, a)| a.servers.is_empty()) {
        return Err(format!("{}: `{key}` has no servers", file.display()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_maps() {
        let toml = r#"
            [shop]
            servers = [{ address = "10.0.0.1:80", weight = 2 }]
            tenant = "acme"
        "#;
        let map = parse(Path::new("routes.toml"), toml).unwrap();
        assert_eq!(map["shop"].servers[0].weight, 2);
        let json = r#"{"shop": {"servers": [{"address": "10.0.0.1:80"}]}}"#;
        let map = parse(Path::new("routes.json"), json).unwrap();
        assert_eq!(map["shop"].servers[0].weight, 1);
        assert!(parse(Path::new("r.json"), r#"{"x": {"servers": []}}"#).is_err());
        assert!(parse(Path::new("r.toml"), "x = 1").is_err());
    }
}
