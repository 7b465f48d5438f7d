//! Reading a config file and reporting every problem with file, line and key.
//!
//! Each top-level section and each `[[listener]]`/`[[pool]]` entry is deserialized on its own,
//! so one mistake does not hide the others; semantic checks then run over whatever parsed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{Document, Item};

use super::database::{DatabaseCheck, MysqlCheck, UserConfig};
use super::http::HttpCheck;
use super::protocols::{ListenerOptions, pool_groups, read_pool_groups};
use super::schema::{
    AdminConfig, CheckKind, CheckOptions, Config, HealthConfig, ListenerConfig, LogConfig,
    PoolConfig, Protocol,
};
use super::{duration, keys, validate};

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
    file: &'a Path,
    document: &'a Document<String>,
    errors: Vec<ConfigError>,
    /// For each array section, the file index of each entry that parsed: entries that
    /// failed are missing from the config, so config indexes must be mapped back.
    parsed_indexes: Vec<(String, Vec<usize>)>,
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
        [$($crate::config::load::IntoSegment::into_segment($seg)),*]
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

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where `switchyard run` looks for its config without `-c`, in order.
pub const DEFAULT_PATHS: [&str; 2] = ["switchyard.toml", "/etc/switchyard/switchyard.toml"];

/// The first of [`DEFAULT_PATHS`] that exists, or what to do when none does.
pub fn default_path() -> Result<std::path::PathBuf, String> {
    DEFAULT_PATHS
        .iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "no config file: looked for ./{} and {}; pass one with -c FILE \
                 (examples/quickstart.toml is a small working one, `switchyard check -c FILE` \
                 validates one)",
                DEFAULT_PATHS[0], DEFAULT_PATHS[1]
            )
        })
}

/// What a config's files and resources must also pass, beyond its own rules (the TLS
/// certificates can be read and fit their keys, say): checks from above the config that
/// report into the same sink, with lines.
pub type ResourceCheck = fn(&Config, &mut ErrorSink<'_>);

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_with(path, &[])
}

/// Reads, parses and validates a config file, then runs `checks` on it.
pub fn load_file_with(path: &Path, checks: &[ResourceCheck]) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    load_str_with(path, &text, checks)
}

/// Parses and validates config text; `path` names it in errors and anchors relative paths.
pub fn load_str(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    load_str_with(path, text, &[])
}

/// Parses and validates config text, then runs `checks` on it.
pub fn load_str_with(
    path: &Path,
    text: &str,
    checks: &[ResourceCheck],
) -> Result<Config, ConfigErrors> {
    let document = Document::parse(text.to_string()).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            key: String::new(),
            message: first_line(e.message()),
        }])
    })?;
    let mut sink = ErrorSink {
        file: path,
        document: &document,
        errors: Vec::new(),
        parsed_indexes: Vec::new(),
    };
    let mut config = deserialize_sections(&document, &mut sink);
    resolve_paths(&mut config, sink.config_dir());
    super::http::apply_defaults(&mut config);
    validate::validate(&config, &mut sink);
    for check in checks {
        check(&config, &mut sink);
    }
    if sink.errors.is_empty() {
        Ok(config)
    } else {
        let mut errors = sink.errors;
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(ConfigErrors(errors))
    }
}

/// Makes the file paths of TLS sections, resolvers (a map's file, a webhook's `ca`) and the
/// usage sink's `ca` relative to the config file's directory.
fn resolve_paths(config: &mut Config, config_dir: &Path) {
    for listener in &mut config.listeners {
        if let Some(tls) = &mut listener.tls {
            for pair in &mut tls.certs {
                pair.cert = config_dir.join(&pair.cert);
                pair.key = config_dir.join(&pair.key);
            }
            if let Some(ca) = &mut tls.client_ca {
                *ca = config_dir.join(&*ca);
            }
        }
    }
    let sink_ca = config
        .accounting
        .as_mut()
        .and_then(|a| a.sink.as_mut())
        .and_then(|sink| sink.ca.as_mut());
    let resolver_files = config
        .resolvers
        .iter_mut()
        .flat_map(|r| [r.file.as_mut(), r.ca.as_mut()]);
    for file in resolver_files.chain([sink_ca]).flatten() {
        *file = config_dir.join(&*file);
    }
    for pool in &mut config.pools {
        if let Some(tls) = &mut pool.upstream_tls {
            for path in [
                &mut tls.root_cert,
                &mut tls.client_cert,
                &mut tls.client_key,
            ]
            .into_iter()
            .flatten()
            {
                *path = config_dir.join(&*path);
            }
        }
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

fn deserialize_sections(document: &Document<String>, sink: &mut ErrorSink<'_>) -> Config {
    let mut config = Config {
        workers: None,
        shutdown_timeout: std::time::Duration::from_secs(30),
        admin: None,
        log: LogConfig::default(),
        listeners: Vec::new(),
        pools: Vec::new(),
        users: Vec::new(),
        resolvers: Vec::new(),
        accounting: None,
        upgrade_socket: None,
    };
    for (key, item) in document.as_table().iter() {
        match key {
            "workers" => match item.as_integer() {
                Some(n) if (1..=1024).contains(&n) => config.workers = Some(n as usize),
                _ => sink.at(&key_path!("workers"), "must be an integer from 1 to 1024"),
            },
            "shutdown_timeout" => match item.as_str().map(duration::parse) {
                Some(Ok(d)) => config.shutdown_timeout = d,
                Some(Err(e)) => sink.at(&key_path!("shutdown_timeout"), e),
                None => sink.at(&key_path!("shutdown_timeout"), "must be a duration string"),
            },
            "admin" => config.admin = section::<AdminConfig>(item, &[key], sink),
            "log" => {
                if let Some(log) = section::<LogConfig>(item, &[key], sink) {
                    config.log = log;
                }
            }
            "listener" => config.listeners = entries(item, key, sink, listener),
            "pool" => config.pools = entries(item, key, sink, pool),
            "user" => config.users = entries(item, key, sink, section::<UserConfig>),
            "accounting" => {
                config.accounting =
                    section::<super::accounting::AccountingConfig>(item, &[key], sink)
            }
            "resolver" => {
                config.resolvers =
                    entries(item, key, sink, section::<super::resolver::ResolverConfig>)
            }
            "upgrade_socket" => match item.as_str() {
                Some(path) if !path.is_empty() => config.upgrade_socket = Some(path.into()),
                _ => sink.at(&key_path!("upgrade_socket"), "must be a non-empty path"),
            },
            other => sink.at(
                &key_path!(other),
                "unknown key; expected one of workers, shutdown_timeout, admin, log, listener, pool, user, resolver, accounting, upgrade_socket",
            ),
        }
    }
    config
}

/// Reads every entry of an array of tables with `read`.
fn entries<T>(
    item: &Item,
    key: &str,
    sink: &mut ErrorSink<'_>,
    read: impl Fn(&Item, &[&str], &mut ErrorSink<'_>) -> Option<T>,
) -> Vec<T> {
    let count = match item {
        Item::ArrayOfTables(tables) => tables.len(),
        Item::Value(toml_edit::Value::Array(array)) => array.len(),
        _ => {
            sink.at(
                &key_path!(key),
                format!("must be an array of tables ([[{key}]])"),
            );
            return Vec::new();
        }
    };
    let mut parsed_indexes = Vec::new();
    let entries = (0..count)
        .filter_map(|i| {
            let entry = read(&item[i], &[key, &i.to_string()], sink)?;
            parsed_indexes.push(i);
            Some(entry)
        })
        .collect();
    sink.parsed_indexes.push((key.to_string(), parsed_indexes));
    entries
}

/// Reads a listener: the keys every listener has, then those of its protocol; a key
/// neither reads is reported, naming the protocols that do read it.
fn listener(item: &Item, at: &[&str], sink: &mut ErrorSink<'_>) -> Option<ListenerConfig> {
    let mut listener: ListenerConfig = section(item, at, sink)?;
    let path = segments(at, &[]);
    let Some(keys) = ListenerOptions::keys(listener.protocol) else {
        sink.at(
            &segments(at, &["protocol".to_string()]),
            format!(
                "protocol `{}` is not available in this build yet; use `tcp`, `http`, `postgres`, `mysql` or `smtp`",
                listener.protocol.as_str()
            ),
        );
        return None;
    };
    let options = ListenerOptions::read(listener.protocol, item, at, sink)?;
    let protocol = listener.protocol.as_str();
    let elsewhere: Vec<(String, &'static [&'static str])> = Protocol::ALL
        .into_iter()
        .filter(|p| *p != listener.protocol)
        .filter_map(|p| {
            Some((
                format!("{} listeners", p.as_str()),
                ListenerOptions::keys(p)?,
            ))
        })
        .collect();
    keys::check(
        item,
        &path,
        &[keys::of::<ListenerConfig>(), keys],
        &format!("{protocol} listeners"),
        &elsewhere,
        sink,
    );
    listener.options = options;
    Some(listener)
}

/// Reads a pool: the keys every pool has, the HTTP keys and the database keys (whether a
/// listener using the pool reads them is checked later), and its health check's keys.
fn pool(item: &Item, at: &[&str], sink: &mut ErrorSink<'_>) -> Option<PoolConfig> {
    let mut pool: PoolConfig = section(item, at, sink)?;
    read_pool_groups(&mut pool, item, at, sink)?;
    let mut allowed = vec![keys::of::<PoolConfig>()];
    allowed.extend(pool_groups().iter().map(|(_, keys, _)| *keys));
    keys::check(item, &segments(at, &[]), &allowed, "pools", &[], sink);
    if let (Some(health), Some(health_item)) = (&mut pool.health, item.get("health")) {
        let mut at = at.to_vec();
        at.push("health");
        health.options = check_options(health, health_item, &at, sink)?;
    }
    Some(pool)
}

/// Reads the keys of a health check's kind, and reports a key neither the check nor its
/// kind reads.
fn check_options(
    health: &HealthConfig,
    item: &Item,
    at: &[&str],
    sink: &mut ErrorSink<'_>,
) -> Option<CheckOptions> {
    let kinds: [(CheckKind, &'static [&'static str]); 5] = [
        (CheckKind::Tcp, &[]),
        (CheckKind::Http, keys::of::<HttpCheck>()),
        (CheckKind::Postgres, keys::of::<DatabaseCheck>()),
        (CheckKind::Mysql, keys::of::<MysqlCheck>()),
        (CheckKind::Smtp, &[]),
    ];
    let (options, keys) = match health.check {
        CheckKind::Tcp => (CheckOptions::Tcp, kinds[0].1),
        CheckKind::Http => (CheckOptions::Http(section(item, at, sink)?), kinds[1].1),
        CheckKind::Postgres => (CheckOptions::Postgres(section(item, at, sink)?), kinds[2].1),
        CheckKind::Mysql => (CheckOptions::Mysql(section(item, at, sink)?), kinds[3].1),
        CheckKind::Smtp => (CheckOptions::Smtp, kinds[4].1),
    };
    let elsewhere: Vec<(String, &'static [&'static str])> = kinds
        .iter()
        .filter(|(kind, _)| *kind != health.check)
        .map(|(kind, keys)| (format!("`{}` checks", kind.as_str()), *keys))
        .collect();
    keys::check(
        item,
        &segments(at, &[]),
        &[keys::of::<HealthConfig>(), keys],
        &format!("`{}` checks", health.check.as_str()),
        &elsewhere,
        sink,
    );
    Some(options)
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
fn segments(at: &[&str], keys: &[String]) -> Vec<PathSegment> {
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
