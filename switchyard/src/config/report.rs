//! Problems in a config file, each placed at its file, line and key: what the loader, the
//! rules and the resource checks report into, with no knowledge of what the config holds.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{Document, Item};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when the problem can be placed.
    pub line: Option<usize>,
    /// The dotted key path, e.g. `listener[0].pool`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A segment of a key path, used to find where in the file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Collects problems and places them in the source text.
pub struct ErrorSink<'a> {
    pub(super) file: &'a Path,
    pub(super) document: &'a Document<String>,
    pub(super) errors: Vec<ConfigError>,
    /// For each array section, the file index of each entry that parsed: entries that
    /// failed are missing from the config, so config indexes must be mapped back.
    pub(super) parsed_indexes: Vec<(String, Vec<usize>)>,
}

impl<'a> ErrorSink<'a> {
    /// Records a problem at a key path.
    pub fn at(&mut self, path: &[PathSegment], message: impl Into<String>) {
        let path = self.file_path(path);
        let path = path.as_slice();
        let span = lookup(self.document.as_item(), path);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: span.map(|s| line_of(self.document.raw(), s)),
            key: render_path(path),
            message: message.into(),
        });
    }

    fn at_span(&mut self, path: &[PathSegment], span: Option<usize>, message: String) {
        let span = span.or_else(|| lookup(self.document.as_item(), path));
        // Name the innermost key the error points into, e.g. `timeouts.connect`.
        let deeper = span
            .map(|offset| path_at(self.document.as_item(), offset))
            .unwrap_or_default();
        let path = if deeper.len() > path.len() {
            deeper.as_slice()
        } else {
            path
        };
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: span.map(|s| line_of(self.document.raw(), s)),
            key: render_path(path),
            message,
        });
    }

    /// Maps a path into the parsed config (`listener[i]`) to the path in the file.
    fn file_path(&self, path: &[PathSegment]) -> Vec<PathSegment> {
        let mut mapped = path.to_vec();
        if let [PathSegment::Key(section), PathSegment::Index(i), ..] = path
            && let Some((_, indexes)) = self.parsed_indexes.iter().find(|(s, _)| s == section)
            && let Some(&file_index) = indexes.get(*i)
        {
            mapped[1] = PathSegment::Index(file_index);
        }
        mapped
    }

    /// Whether the file writes the key at `path` (a key left out takes its default).
    pub fn is_set(&self, path: &[PathSegment]) -> bool {
        let mut item = self.document.as_item();
        for segment in self.file_path(path) {
            let next = match segment {
                PathSegment::Key(key) => item.get(key.as_str()),
                PathSegment::Index(i) => item.get(i),
            };
            match next {
                Some(next) => item = next,
                None => return false,
            }
        }
        true
    }

    /// Names of `[[section]]` entries that failed to parse, so references to them are not
    /// reported as undefined on top of the parse error.
    pub fn unparsed_names(&self, section: &str) -> Vec<String> {
        let Some(item) = self.document.as_table().get(section) else {
            return Vec::new();
        };
        let parsed = self
            .parsed_indexes
            .iter()
            .find(|(s, _)| s == section)
            .map(|(_, v)| v.as_slice())
            .unwrap_or_default();
        let count = match item {
            Item::ArrayOfTables(tables) => tables.len(),
            Item::Value(toml_edit::Value::Array(array)) => array.len(),
            _ => 0,
        };
        (0..count)
            .filter(|i| !parsed.contains(i))
            .filter_map(|i| {
                item[i]
                    .get("name")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
            })
            .collect()
    }

    /// The base path of the config file, for resolving relative file names.
    pub fn config_dir(&self) -> &Path {
        self.file.parent().unwrap_or_else(|| Path::new("."))
    }
}

/// Shorthand for building key paths.
#[macro_export]
#[doc(hidden)]
macro_rules! key_path {
    ($($seg:expr),* $(,)?) => {
        [$($crate::config::report::IntoSegment::into_segment($seg)),*]
    };
}

/// Converts keys and indexes into path segments for `key_path!`.
pub trait IntoSegment {
    /// The segment.
    fn into_segment(self) -> PathSegment;
}

impl IntoSegment for &str {
    fn into_segment(self) -> PathSegment {
        PathSegment::Key(self.to_string())
    }
}

impl IntoSegment for usize {
    fn into_segment(self) -> PathSegment {
        PathSegment::Index(self)
    }
}

fn render_path(path: &[PathSegment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            PathSegment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            PathSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Finds the start offset of the deepest item along `path` that exists.
fn lookup(root: &Item, path: &[PathSegment]) -> Option<usize> {
    let mut item = root;
    let mut best = None;
    for segment in path {
        let next = match segment {
            PathSegment::Key(key) => item.get(key.as_str()),
            PathSegment::Index(i) => match item {
                Item::ArrayOfTables(tables) => tables.get(*i).map(|_| &item[*i]),
                Item::Value(toml_edit::Value::Array(array)) => array.get(*i).map(|_| &item[*i]),
                _ => None,
            },
        };
        match next {
            Some(next) => {
                item = next;
                if let Some(span) = span_of(item) {
                    best = Some(span);
                }
            }
            None => break,
        }
    }
    best
}

/// The key path of the innermost item whose span contains `offset`.
fn path_at(root: &Item, offset: usize) -> Vec<PathSegment> {
    fn contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
    }
    let mut path = Vec::new();
    let mut item = root;
    'descend: loop {
        if let Some(table) = item.as_table_like() {
            // Inline values and keys carry spans that enclose them.
            for (key, child) in table.iter() {
                if matches!(child, Item::Table(_) | Item::ArrayOfTables(_)) {
                    continue;
                }
                let key_span = table.key(key).and_then(|k| k.span());
                if contains(child.span(), offset) || contains(key_span, offset) {
                    path.push(PathSegment::Key(key.to_string()));
                    item = child;
                    continue 'descend;
                }
            }
            // `[table]` and `[[array]]` spans cover their header only: the body that holds
            // `offset` belongs to the last header before it.
            let mut headers: Vec<(usize, Vec<PathSegment>, &Item)> = Vec::new();
            for (key, child) in table.iter() {
                match child {
                    Item::Table(t) => headers.extend(
                        t.span()
                            .map(|s| (s.start, vec![PathSegment::Key(key.to_string())], child)),
                    ),
                    Item::ArrayOfTables(tables) => {
                        for (i, t) in tables.iter().enumerate() {
                            headers.extend(t.span().map(|s| {
                                let segments =
                                    vec![PathSegment::Key(key.to_string()), PathSegment::Index(i)];
                                (s.start, segments, &child[i])
                            }));
                        }
                    }
                    _ => {}
                }
            }
            let best = headers
                .into_iter()
                .filter(|(start, _, _)| *start <= offset)
                .max_by_key(|(start, _, _)| *start);
            if let Some((_, segments, next)) = best {
                path.extend(segments);
                item = next;
                continue 'descend;
            }
        }
        if let Item::Value(toml_edit::Value::Array(array)) = item {
            for (i, value) in array.iter().enumerate() {
                if contains(value.span(), offset) {
                    path.push(PathSegment::Index(i));
                    item = &item[i];
                    continue 'descend;
                }
            }
        }
        return path;
    }
}

fn span_of(item: &Item) -> Option<usize> {
    match item {
        Item::Table(table) => table.span().map(|s| s.start),
        Item::ArrayOfTables(tables) => tables.span().map(|s| s.start),
        _ => item.span().map(|s| s.start),
    }
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
/// Deserializes one section, reporting its error (if any) at the right place.
pub(super) fn section<T: DeserializeOwned>(
    item: &Item,
    at: &[&str],
    sink: &mut ErrorSink<'_>,
) -> Option<T> {
    let value = match item.clone() {
        Item::Table(table) => toml_edit::Value::InlineTable(table.into_inline_table()),
        Item::Value(value) => value,
        _ => {
            sink.at(&segments(at, &[]), "must be a table");
            return None;
        }
    };
    match T::deserialize(value.into_deserializer()) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let (keys, message) = split_keys(error.message());
            let path = segments(at, &keys);
            sink.at_span(&path, error.span().map(|s| s.start), message);
            None
        }
    }
}

/// Section path plus the keys an error names, as segments.
pub(super) fn segments(at: &[&str], keys: &[String]) -> Vec<PathSegment> {
    at.iter()
        .map(|s| match s.parse::<usize>() {
            Ok(i) => PathSegment::Index(i),
            Err(_) => PathSegment::Key(s.to_string()),
        })
        .chain(keys.iter().map(|k| PathSegment::Key(k.clone())))
        .collect()
}

/// serde errors name unknown fields in their message; pull the field out as a key.
fn split_keys(message: &str) -> (Vec<String>, String) {
    let message = first_line(message);
    let keys = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(|k| vec![k.to_string()])
        .unwrap_or_default();
    (keys, message)
}

pub(super) fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}
