//! SQL classification for the read/write split: what a query string does, decided with
//! PostgreSQL's own grammar (the `pg_query` crate embeds the server's parser), never by
//! keyword guessing.
//!
//! [`classify`] answers, for one simple-protocol query string or one Parse message's text:
//! - [`Access`]: may it run on a read-only replica? A `SELECT` (also `VALUES`, `TABLE`, and
//!   `EXPLAIN`, `DECLARE` and `COPY … TO STDOUT` of one) without `FOR UPDATE/SHARE/NO KEY
//!   UPDATE/KEY SHARE`, without a data-modifying CTE, without `SELECT … INTO` and without a
//!   call to a write function ([`Rules`]) is a read; so are `SHOW`, `SET`/`RESET`,
//!   `DISCARD`, cursor `FETCH`/`MOVE`/`CLOSE`, `DEALLOCATE`, `UNLISTEN` and the transaction
//!   statements themselves. Everything else — DML, DDL, `COPY FROM`, `CALL`, `DO`, `VACUUM`,
//!   `LOCK`, `NOTIFY`, `EXECUTE`, anything unknown, and anything the parser rejects — is a
//!   write. A string of several statements is a write if any of them is.
//! - [`TxnCommand`]: `BEGIN`/`START TRANSACTION` (with whether it may run on a replica),
//!   `COMMIT`/`END`, `ROLLBACK`/`ABORT`. `SET TRANSACTION READ ONLY` is not reported: it comes
//!   after the transaction started on its server, so it cannot move it.
//! - [`SessionChange`]: session-level `SET`/`RESET`/`RESET ALL`/`DISCARD ALL` and
//!   `SELECT set_config('name', 'value', false)` alone, with the text to re-run on another
//!   server connection, and `SET switchyard.route`, which the proxy answers itself. `SET
//!   LOCAL`, `SET TRANSACTION` and `set_config(…, true)` last one transaction at most.
//! - [`PinReason`]: state that lives in one server connection and cannot be moved: session
//!   advisory locks, `LISTEN`, temporary tables, SQL `PREPARE`, `DECLARE … WITH HOLD`, `SET
//!   ROLE`/`SET SESSION AUTHORIZATION`, `set_config(…, false)` in any other form, and
//!   settings after which the proxy could not read the session's statements as the server
//!   does (a client-only `client_encoding`, `standard_conforming_strings` off).
//!   A pinning statement is a write, so a session pins to a primary connection.
//! - [`Classification::untracked`]: the string may change session state in ways the proxy
//!   cannot see or carry: it calls a function not known to be free of session effects
//!   (`quiet`), runs a `DO` block, `CALL`, `EXECUTE`, `LOAD` or an extension script,
//!   deallocates prepared statements, or could not be parsed. The pooler then resets the
//!   server connection before anyone else uses it.
//! - [`RouteHint`]: a leading `/* switchyard: primary */` or `replica` comment.
//!
//! Limits: a function that writes but is not listed (built in or `write_functions`) makes
//! no write of its `SELECT`; an expression nested deeper than the parse tree's decoder
//! allows (about 48 chained binary operators) is not classified and goes to the primary.
//!
//! Whole-tree facts (a write function called anywhere, a data-modifying statement nested
//! anywhere, a row lock in any subquery) come from a walk over every field of the parse tree
//! through its `serde::Serialize` implementation, so no node type can be missed; the
//! node iterator `pg_query` offers visits only some node types.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pg_query::protobuf::{self, DiscardMode, RawStmt, TransactionStmtKind, VariableSetKind};
use pg_query::{NodeEnum, NodeRef};
use serde::Serialize;
use serde::ser::{self, Impossible};

use super::quiet;
use super::scanner::{self, Scan};
use crate::protocol::sql::hint_in;
pub use crate::protocol::sql::{Access, RouteHint, RouteOverride, TxnCommand};

/// A change to session state that the transaction pooler must carry between server
/// connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A session-level `SET`: `name` is the parameter (lower case, as PostgreSQL compares
    /// them), `statement` the text to re-run as is on another server connection.
    Set {
        /// Parameter name.
        name: String,
        /// The `SET` statement.
        statement: String,
    },
    /// `RESET name` or `SET name TO DEFAULT`.
    Reset {
        /// Parameter name.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `SET switchyard.route = …`: answered by the proxy, never sent to a server.
    Route(RouteOverride),
    /// `SET switchyard.route` to something other than `primary`, `replica` or `auto`: the
    /// proxy answers with an error (SQLSTATE 22023) naming the value.
    BadRoute(String),
}

/// Why a session must stay on its server connection for the rest of its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    /// A session-level advisory lock (`pg_advisory_lock` family, not the `_xact_` ones).
    AdvisoryLock,
    /// `LISTEN`: notifications arrive on that connection.
    Listen,
    /// A temporary table, view or sequence (`CREATE TEMP …`, `SELECT … INTO TEMP`).
    TempTable,
    /// A SQL-level `PREPARE` (named statements of the extended protocol are tracked instead).
    SqlPrepare,
    /// `DECLARE … WITH HOLD`: the cursor outlives its transaction.
    HoldCursor,
    /// `SET ROLE` or `SET SESSION AUTHORIZATION` (also through `set_config`): replaying an
    /// identity change among other settings depends on their order and privileges, and
    /// `RESET ALL` does not undo it; the connection is reset with `DISCARD ALL` when the
    /// client leaves.
    Identity,
    /// A `client_encoding` whose characters can hide ASCII bytes, or
    /// `standard_conforming_strings` off, or a `SET` in text that is not UTF-8: from then on
    /// the proxy could not read (or replay) the session's statements as the server does.
    Unreadable,
    /// `set_config(name, value, false)` in a form the proxy cannot replay: a value that is
    /// not a constant, a third argument that is not a constant, or a call among other
    /// expressions (whether it runs depends on the rows).
    SetConfig,
}

/// What [`classify`] found in a query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Whether a replica may run it.
    pub access: Access,
    /// The first transaction-control statement in the string.
    pub transaction: Option<TxnCommand>,
    /// Session state changes, in order.
    pub session: Vec<SessionChange>,
    /// The first reason the session must stay on its server connection.
    pub pins: Option<PinReason>,
    /// The leading comment's routing hint.
    pub hint: Option<RouteHint>,
    /// The string may change session state the proxy can neither see nor carry (see the
    /// module documentation): the server connection must be reset before another client
    /// uses it.
    pub untracked: bool,
}

impl Classification {
    /// A string that could not be classified: the primary runs it, and whatever it does to
    /// the session is unknown.
    pub fn unknown(hint: Option<RouteHint>) -> Self {
        Self {
            access: Access::Write,
            transaction: None,
            session: Vec::new(),
            pins: None,
            hint,
            untracked: true,
        }
    }
}

/// What a statement does to the session, as the transaction pooler needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEffects {
    /// Session changes to replay on other connections, in order.
    pub changes: Vec<SessionChange>,
    /// Why the session must stay on its connection, if it must.
    pub pins: Option<PinReason>,
    /// Effects nobody can see or replay: reset the connection before anyone else uses it.
    pub untracked: bool,
}

/// What the statement text `sql` (a simple query or a Parse) does to the session. Text the
/// pre-check ([`quiet::is_quiet`]) passes costs no parse; the rest is classified. Text that
/// is not UTF-8 (a client in another encoding) is read with its other bytes replaced, which
/// keeps every ASCII byte (server encodings keep ASCII bytes ASCII; a client-only encoding
/// pins first): a `SET` in it could not be replayed as written, so it pins.
pub fn session_effects(sql: &[u8]) -> SessionEffects {
    if quiet::is_quiet(sql) {
        return SessionEffects::default();
    }
    // Valid UTF-8 (nearly every text) is checked by the faster of the two paths.
    let text = match std::str::from_utf8(sql) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(sql),
    };
    // Session effects do not depend on write functions: the built-in rules serve all.
    static RULES: std::sync::LazyLock<Rules> = std::sync::LazyLock::new(Rules::default);
    let classification = classify(&text, &RULES);
    let mut effects = SessionEffects {
        changes: Vec::with_capacity(classification.session.len()),
        pins: classification.pins,
        untracked: classification.untracked,
    };
    for change in classification.session {
        match change {
            // The server got a `SET switchyard.route` (a placeholder setting) that is not
            // replayed: the proxy answers the ones it takes itself before any server sees them.
            SessionChange::Route(_) | SessionChange::BadRoute(_) => effects.untracked = true,
            change => effects.changes.push(change),
        }
    }
    if matches!(text, std::borrow::Cow::Owned(_)) && !effects.changes.is_empty() {
        effects.changes.clear();
        effects.pins.get_or_insert(PinReason::Unreadable);
    }
    effects
}

/// Functions that write, take locks or expose the writer's session state, so a `SELECT`
/// calling them must run on the primary: sequences (`currval`/`lastval` read the session's
/// own `nextval`, which ran on the primary), advisory locks (all variants, including
/// unlocks), large-object writers, `pg_notify`, `set_config` (changes session state the
/// pooler does not track), and the functions that assign or report the transaction id.
const DEFAULT_WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_export",
    "lo_from_bytea",
    "lo_put",
    "lo_unlink",
    "lo_truncate",
    "lo_truncate64",
    "lowrite",
    "pg_notify",
    "set_config",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_logical_emit_message",
];

/// Session-level advisory lock functions: the lock outlives the transaction, so the session
/// pins to its server connection.
const SESSION_LOCK_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// `DeclareCursorStmt.options` bit for `WITH HOLD` (PostgreSQL's `CURSOR_OPT_HOLD`).
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// The split's classification rules: the write functions in force (the built-in list plus
/// a route's or pool's `write_functions`). Built once per config, shared by sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    write_functions: Arc<HashSet<String>>,
}

impl Rules {
    /// The built-in write functions plus `extra` (names as PostgreSQL stores them: unquoted
    /// names in lower case, no schema; a call matches whatever schema it names).
    pub fn new<S: AsRef<str>>(extra: impl IntoIterator<Item = S>) -> Self {
        let mut names: HashSet<String> = DEFAULT_WRITE_FUNCTIONS
            .iter()
            .map(|name| name.to_string())
            .collect();
        names.extend(extra.into_iter().map(|name| name.as_ref().to_string()));
        Self {
            write_functions: Arc::new(names),
        }
    }

    fn is_write_function(&self, name: &str) -> bool {
        self.write_functions.contains(name)
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::new(std::iter::empty::<&str>())
    }
}

/// [`classify`] with a cache, one per set of [`Rules`] (per route), shared by its sessions.
///
/// Parsing costs microseconds per statement; clients send the same statement shapes over
/// and over with different numbers (`… WHERE aid = 123`), so results are cached under the
/// text with its numeric literals masked. Masking is only done where it cannot change the
/// result: texts with a string, backslash or dollar quote (a number inside a string could
/// be anything), or with both a comment and a quoted name, are not cached; quoted names
/// are kept verbatim, as are digits inside names (`t1`) and parameters (`$1`); and neither
/// results that carry statement text (session changes) nor strings the parser rejects are
/// cached. Within those limits a number's value changes the
/// classification only where some values are syntax errors (`FETCH 99999999999`): such a
/// string may get the cached answer of a valid one and fail on whichever server. The cache
/// keeps two generations of [`CACHE_GENERATION`] entries each (an approximate LRU that
/// needs no list: a full generation becomes the old one, which hits promote from).
#[derive(Debug)]
pub struct Classifier {
    rules: Rules,
    cache: std::sync::Mutex<Generations>,
}

/// Entries per cache generation.
const CACHE_GENERATION: usize = 2048;
/// Longer texts are classified without the cache (bounds its memory to a few MiB).
const CACHE_MAX_TEXT: usize = 1024;

/// The two generations of [`Classifier`]'s cache.
#[derive(Debug, Default)]
struct Generations {
    current: HashMap<Vec<u8>, Classification>,
    previous: HashMap<Vec<u8>, Classification>,
}

impl Generations {
    fn get(&mut self, key: &[u8]) -> Option<Classification> {
        if let Some(found) = self.current.get(key) {
            return Some(found.clone());
        }
        let found = self.previous.remove(key)?;
        self.insert(key.to_vec(), found.clone());
        Some(found)
    }

    fn insert(&mut self, key: Vec<u8>, classification: Classification) {
        if self.current.len() >= CACHE_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, classification);
    }
}

impl Classifier {
    /// A classifier with an empty cache.
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            cache: std::sync::Mutex::default(),
        }
    }

    /// The same answer as [`classify`] with this classifier's rules.
    pub fn classify(&self, sql: &str) -> Classification {
        let Some(key) = cache_key(sql) else {
            return classify(sql, &self.rules);
        };
        if let Some(found) = self.lock().get(&key) {
            return found;
        }
        let (classification, parsed) = parse_and_classify(sql, &self.rules);
        if parsed && classification.session.is_empty() {
            self.lock().insert(key, classification.clone());
        }
        classification
    }

    /// The cache; a poisoned lock (a panic elsewhere while holding it) still holds a
    /// consistent map, so it is used as is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The cache key of a query string: its bytes with each run of digits that starts a
/// number replaced by `0`; `None` where masking could change the meaning (see
/// [`Classifier`]) or the text is too long to cache.
fn cache_key(sql: &str) -> Option<Vec<u8>> {
    let bytes = sql.as_bytes();
    if bytes.len() > CACHE_MAX_TEXT {
        return None;
    }
    // Without strings, dollar quotes and comments, every `"` opens or closes a quoted name.
    let comments = sql.contains("--") || sql.contains("/*");
    let mut key = Vec::with_capacity(bytes.len());
    let mut quoted = false;
    let mut after_name = false;
    let mut in_number = false;
    for (i, &byte) in bytes.iter().enumerate() {
        if quoted {
            quoted = byte != b'"';
            key.push(byte);
            continue;
        }
        match byte {
            b'"' if comments => return None,
            b'"' => quoted = true,
            b'\'' | b'\\' => return None,
            b'$' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            b'0'..=b'9' if in_number => continue,
            b'0'..=b'9' if !after_name => {
                in_number = true;
                key.push(b'0');
                continue;
            }
            _ => {}
        }
        in_number = false;
        after_name =
            byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'$' | b'"') || byte >= 0x80;
        key.push(byte);
    }
    Some(key)
}

/// Classifies one query string (see the module documentation for the rules). Never fails:
/// what cannot be parsed or understood is a [`Access::Write`] whose session effects are
/// unknown ([`Classification::untracked`]) and with nothing else reported.
pub fn classify(sql: &str, rules: &Rules) -> Classification {
    parse_and_classify(sql, rules).0
}

/// [`classify`], also telling whether the parser accepted the string.
fn parse_and_classify(sql: &str, rules: &Rules) -> (Classification, bool) {
    let hint = route_hint(sql);
    // The parser is foreign code behind a safe API; a panic in its Rust post-processing
    // must not take the connection's task down, so it classifies as unknown instead.
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0));
    let Ok(Ok(parsed)) = parsed else {
        let mut unknown = Classification::unknown(hint);
        if unquoted_primary_route(sql) {
            unknown.access = Access::Read;
            unknown
                .session
                .push(SessionChange::Route(RouteOverride::Primary));
        }
        return (unknown, false);
    };
    let mut out = Classification {
        access: Access::Read,
        transaction: None,
        session: Vec::new(),
        pins: None,
        hint,
        untracked: false,
    };
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            return (Classification::unknown(hint), false);
        };
        statement(node, raw, sql, rules, &mut out);
    }
    (out, true)
}

/// Adds one top-level statement's effects to `out`.
fn statement(node: &NodeEnum, raw: &RawStmt, sql: &str, rules: &Rules, out: &mut Classification) {
    let facts = Facts::of(node, rules);
    let read_kind = match node {
        NodeEnum::SelectStmt(_) | NodeEnum::ExplainStmt(_) => true,
        NodeEnum::VariableShowStmt(_)
        | NodeEnum::FetchStmt(_)
        | NodeEnum::ClosePortalStmt(_)
        | NodeEnum::DeallocateStmt(_)
        | NodeEnum::UnlistenStmt(_) => true,
        NodeEnum::VariableSetStmt(set) => {
            session_set(set, raw, sql, out);
            true
        }
        NodeEnum::DiscardStmt(discard) => {
            if discard.target == DiscardMode::DiscardAll as i32 {
                out.session.push(SessionChange::DiscardAll);
            }
            true
        }
        NodeEnum::TransactionStmt(txn) => transaction(txn, out),
        NodeEnum::DeclareCursorStmt(declare) => {
            if declare.options & CURSOR_OPT_HOLD != 0 {
                set_pin(out, PinReason::HoldCursor);
            }
            true
        }
        NodeEnum::CopyStmt(copy) => !copy.is_from && !copy.is_program && copy.filename.is_empty(),
        NodeEnum::ListenStmt(_) => {
            set_pin(out, PinReason::Listen);
            false
        }
        NodeEnum::PrepareStmt(_) => {
            set_pin(out, PinReason::SqlPrepare);
            false
        }
        _ => false,
    };
    if facts.session_lock {
        set_pin(out, PinReason::AdvisoryLock);
    }
    if facts.temp {
        set_pin(out, PinReason::TempTable);
    }
    if facts.untracked {
        out.untracked = true;
    }
    if facts.set_config_calls > 0 {
        set_config_effects(node, facts.set_config_calls, out);
    }
    if !read_kind || facts.writes || out.pins.is_some() {
        out.access = Access::Write;
    }
}

/// Records the first pin of the string.
fn set_pin(out: &mut Classification, reason: PinReason) {
    out.pins.get_or_insert(reason);
}

/// A `TransactionStmt`: reports BEGIN/COMMIT/ROLLBACK; returns whether it is a read (two-phase
/// commit statements write).
fn transaction(txn: &protobuf::TransactionStmt, out: &mut Classification) -> bool {
    let command = match TransactionStmtKind::try_from(txn.kind) {
        Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart) => {
            TxnCommand::Begin {
                read_only: begin_read_only(&txn.options),
            }
        }
        Ok(TransactionStmtKind::TransStmtCommit) => TxnCommand::Commit,
        Ok(TransactionStmtKind::TransStmtRollback) => TxnCommand::Rollback,
        Ok(
            TransactionStmtKind::TransStmtSavepoint
            | TransactionStmtKind::TransStmtRelease
            | TransactionStmtKind::TransStmtRollbackTo,
        ) => return true,
        _ => return false,
    };
    out.transaction.get_or_insert(command);
    true
}

/// Whether a BEGIN's options make a transaction a replica can run: `READ ONLY`, and not
/// `SERIALIZABLE` (a hot standby refuses serializable transactions).
fn begin_read_only(options: &[protobuf::Node]) -> bool {
    let mut read_only = false;
    for option in options {
        let Some(NodeEnum::DefElem(def)) = &option.node else {
            continue;
        };
        let value = def.arg.as_ref().and_then(|arg| arg.node.as_ref());
        match (def.defname.as_str(), value) {
            ("transaction_read_only", Some(NodeEnum::AConst(constant))) => {
                read_only = matches!(
                    &constant.val,
                    Some(protobuf::a_const::Val::Ival(i)) if i.ival != 0
                );
            }
            ("transaction_isolation", Some(NodeEnum::AConst(constant))) => {
                if matches!(
                    &constant.val,
                    Some(protobuf::a_const::Val::Sval(s)) if s.sval == "serializable"
                ) {
                    return false;
                }
            }
            _ => {}
        }
    }
    read_only
}

/// The parameter of the proxy's own session override.
const ROUTE_PARAMETER: &str = "switchyard.route";

/// A `SET`/`RESET` statement: records the session change it makes, if any.
fn session_set(
    set: &protobuf::VariableSetStmt,
    raw: &RawStmt,
    sql: &str,
    out: &mut Classification,
) {
    let name = set.name.to_ascii_lowercase();
    if name == "role" || name == "session_authorization" {
        // `SET LOCAL ROLE` ends with the transaction.
        if !set.is_local {
            set_pin(out, PinReason::Identity);
        }
        return;
    }
    if VariableSetKind::try_from(set.kind) == Ok(VariableSetKind::VarSetValue)
        && !readable_after(&name, set_value(&set.args).as_deref())
    {
        // Statements after a `SET LOCAL` of it are misread until the transaction ends.
        if set.is_local {
            out.untracked = true;
        } else {
            set_pin(out, PinReason::Unreadable);
        }
        return;
    }
    if set.is_local {
        return;
    }
    // Per-transaction parameters and `SET TRANSACTION …` last one transaction at most.
    if name.starts_with("transaction") {
        return;
    }
    let change = match VariableSetKind::try_from(set.kind) {
        Ok(VariableSetKind::VarSetValue) if name == ROUTE_PARAMETER => route_value(&set.args),
        Ok(VariableSetKind::VarSetValue) => SessionChange::Set {
            name,
            statement: statement_text(raw, sql).to_string(),
        },
        Ok(VariableSetKind::VarSetDefault | VariableSetKind::VarReset)
            if name == ROUTE_PARAMETER =>
        {
            SessionChange::Route(RouteOverride::Auto)
        }
        Ok(VariableSetKind::VarSetDefault | VariableSetKind::VarReset) => {
            SessionChange::Reset { name }
        }
        Ok(VariableSetKind::VarResetAll) => SessionChange::ResetAll,
        Ok(VariableSetKind::VarSetMulti) if name == "session characteristics" => {
            return session_characteristics(&set.args, out);
        }
        _ => return,
    };
    out.session.push(change);
}

/// `SET SESSION CHARACTERISTICS AS TRANSACTION …` sets the `default_transaction_*`
/// parameters; it is reported as one `SET` per parameter so that a later `RESET` of one of
/// them cancels exactly what it should.
fn session_characteristics(options: &[protobuf::Node], out: &mut Classification) {
    for option in options {
        let Some(NodeEnum::DefElem(def)) = &option.node else {
            continue;
        };
        let Some(NodeEnum::AConst(constant)) = def.arg.as_ref().and_then(|arg| arg.node.as_ref())
        else {
            continue;
        };
        let value = match &constant.val {
            Some(protobuf::a_const::Val::Ival(i)) if i.ival != 0 => "on".to_string(),
            Some(protobuf::a_const::Val::Ival(_)) => "off".to_string(),
            Some(protobuf::a_const::Val::Sval(s)) => format!("'{}'", s.sval.replace('\'', "''")),
            _ => continue,
        };
        let name = format!("default_{}", def.defname);
        out.session.push(SessionChange::Set {
            statement: format!("SET {name} = {value}"),
            name,
        });
    }
}

/// The value of a `SET` with one constant value, as text.
fn set_value(args: &[protobuf::Node]) -> Option<String> {
    let [arg] = args else {
        return None;
    };
    let Some(NodeEnum::AConst(constant)) = &arg.node else {
        return None;
    };
    match &constant.val {
        Some(protobuf::a_const::Val::Sval(s)) => Some(s.sval.clone()),
        Some(protobuf::a_const::Val::Ival(i)) => Some(i.ival.to_string()),
        Some(protobuf::a_const::Val::Fval(f)) => Some(f.fval.clone()),
        Some(protobuf::a_const::Val::Boolval(b)) => Some(b.boolval.to_string()),
        _ => None,
    }
}

/// Whether the proxy still reads statements as the server does after parameter `name`
/// (lower case) is set to `value` (`None`: not a constant the proxy can read).
fn readable_after(name: &str, value: Option<&str>) -> bool {
    match name {
        "client_encoding" => value.is_some_and(scanner::readable_encoding),
        "standard_conforming_strings" => value.is_some_and(scanner::conforming_strings),
        _ => true,
    }
}

/// What one call of the built-in `set_config(name, value, is_local)` does.
#[derive(Debug, PartialEq, Eq)]
enum SetConfig {
    /// `is_local` is a constant true: the setting ends with the transaction. `readable` is
    /// false when it may change how the rest of the transaction's statements read.
    Local {
        /// Whether the proxy still reads statements as the server does.
        readable: bool,
    },
    /// `is_local` is a constant false, the name and value constants.
    Session {
        /// The parameter, as written.
        name: String,
        /// The value.
        value: String,
    },
    /// Anything else: a session setting the proxy cannot know.
    Unknown,
}

/// `call` read as a call of the built-in `set_config` (unqualified or in `pg_catalog`),
/// or `None` when it calls another function.
fn set_config_call(call: &protobuf::FuncCall) -> Option<SetConfig> {
    let name: Vec<&str> = call
        .funcname
        .iter()
        .map(|part| match &part.node {
            Some(NodeEnum::String(s)) => s.sval.as_str(),
            _ => "",
        })
        .collect();
    if !matches!(
        name.as_slice(),
        ["set_config"] | ["pg_catalog", "set_config"]
    ) {
        return None;
    }
    let text = |arg: &protobuf::Node| match &arg.node {
        Some(NodeEnum::AConst(constant)) => match &constant.val {
            Some(protobuf::a_const::Val::Sval(s)) if !constant.isnull => Some(s.sval.clone()),
            _ => None,
        },
        _ => None,
    };
    let boolean = |arg: &protobuf::Node| match &arg.node {
        Some(NodeEnum::AConst(constant)) if !constant.isnull => match &constant.val {
            Some(protobuf::a_const::Val::Boolval(b)) => Some(b.boolval),
            Some(protobuf::a_const::Val::Sval(s)) => scanner::parse_bool(&s.sval),
            _ => None,
        },
        _ => None,
    };
    let [name, value, local] = call.args.as_slice() else {
        return Some(SetConfig::Unknown);
    };
    let plain = !call.func_variadic && call.agg_order.is_empty() && call.over.is_none();
    let (name, value) = (text(name), text(value));
    Some(match (plain, boolean(local)) {
        (true, Some(true)) => SetConfig::Local {
            readable: name
                .as_deref()
                .is_some_and(|name| readable_after(&name.to_ascii_lowercase(), value.as_deref())),
        },
        (true, Some(false)) => match (name, value) {
            (Some(name), Some(value)) => SetConfig::Session { name, value },
            _ => SetConfig::Unknown,
        },
        _ => SetConfig::Unknown,
    })
}

/// The effects of the `set_config` calls in one statement; `calls` is how many the walk
/// over the whole tree counted. Only `SELECT set_config('name', 'value', false)` alone is
/// recorded (and replayed as such: `SET` would quote a list value such as a search path
/// differently); a session-level call in any other form pins, because whether and how it
/// runs depends on what the proxy cannot see. Calls with `is_local` true last one
/// transaction.
fn set_config_effects(node: &NodeEnum, calls: usize, out: &mut Classification) {
    if let (1, Some(call)) = (calls, sole_call(node))
        && let Some(SetConfig::Session { name, value }) = set_config_call(call)
    {
        return session_set_config(&name, &value, out);
    }
    // The typed node iterator visits only some node types; the walk counted every call,
    // so any it missed is unknown.
    let found: Vec<SetConfig> = node
        .nodes()
        .into_iter()
        .filter_map(|(node, ..)| match node {
            NodeRef::FuncCall(call) => set_config_call(call),
            _ => None,
        })
        .collect();
    if found.len() < calls {
        return set_pin(out, PinReason::SetConfig);
    }
    for call in found {
        match call {
            SetConfig::Local { readable: true } => {}
            SetConfig::Local { readable: false } => out.untracked = true,
            SetConfig::Session { .. } | SetConfig::Unknown => set_pin(out, PinReason::SetConfig),
        }
    }
}

/// The function call of `SELECT f(…)` with nothing else (no FROM, WHERE, other targets…).
fn sole_call(node: &NodeEnum) -> Option<&protobuf::FuncCall> {
    let NodeEnum::SelectStmt(select) = node else {
        return None;
    };
    let alone = select.from_clause.is_empty()
        && select.where_clause.is_none()
        && select.group_clause.is_empty()
        && select.having_clause.is_none()
        && select.window_clause.is_empty()
        && select.values_lists.is_empty()
        && select.sort_clause.is_empty()
        && select.limit_count.is_none()
        && select.limit_offset.is_none()
        && select.locking_clause.is_empty()
        && select.with_clause.is_none()
        && select.into_clause.is_none()
        && select.distinct_clause.is_empty()
        && select.larg.is_none()
        && select.rarg.is_none();
    let [target] = select.target_list.as_slice() else {
        return None;
    };
    let Some(NodeEnum::ResTarget(target)) = &target.node else {
        return None;
    };
    match target.val.as_ref().and_then(|val| val.node.as_ref()) {
        Some(NodeEnum::FuncCall(call)) if alone => Some(call),
        _ => None,
    }
}

/// `SELECT set_config('name', 'value', false)` alone: a `SET` by another spelling.
fn session_set_config(name: &str, value: &str, out: &mut Classification) {
    let lower = name.to_ascii_lowercase();
    if lower == "role" || lower == "session_authorization" {
        return set_pin(out, PinReason::Identity);
    }
    if !readable_after(&lower, Some(value)) {
        return set_pin(out, PinReason::Unreadable);
    }
    if lower.starts_with("transaction") {
        return;
    }
    out.session.push(SessionChange::Set {
        statement: format!(
            "SELECT pg_catalog.set_config({}, {}, false)",
            super::settings::literal(name),
            super::settings::literal(value)
        ),
        name: lower,
    });
}

/// The value of `SET switchyard.route = …`.
fn route_value(args: &[protobuf::Node]) -> SessionChange {
    let value = match args {
        [arg] => match &arg.node {
            Some(NodeEnum::AConst(constant)) => match &constant.val {
                Some(protobuf::a_const::Val::Sval(s)) => s.sval.clone(),
                Some(protobuf::a_const::Val::Ival(i)) => i.ival.to_string(),
                Some(protobuf::a_const::Val::Fval(f)) => f.fval.clone(),
                Some(protobuf::a_const::Val::Boolval(b)) => b.boolval.to_string(),
                _ => String::new(),
            },
            _ => String::new(),
        },
        _ => String::new(),
    };
    match value.to_ascii_lowercase().as_str() {
        "primary" => SessionChange::Route(RouteOverride::Primary),
        "replica" => SessionChange::Route(RouteOverride::Replica),
        "auto" => SessionChange::Route(RouteOverride::Auto),
        _ => SessionChange::BadRoute(value),
    }
}

/// The source text of one statement of a query string, trimmed; `stmt_len` 0 means "to the
/// end". The parser's offsets are byte positions at token boundaries of valid UTF-8, so the
/// slice is on character boundaries; should it not be, the whole string is returned (it
/// contains the statement, and re-running it is what the client asked for).
fn statement_text<'s>(raw: &RawStmt, sql: &'s str) -> &'s str {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(len) => start.saturating_add(len),
    };
    sql.get(start..end).unwrap_or(sql).trim()
}

/// The routing hint of the comments a query string starts with (the first `switchyard:`
/// comment among them decides), read with the server's scanner (block comments nest).
/// Text that does not start with a comment is not scanned.
fn route_hint(sql: &str) -> Option<RouteHint> {
    let start = sql.trim_start();
    if !start.starts_with("--") && !start.starts_with("/*") {
        return None;
    }
    let scan = Scan::new(sql)?;
    scan.leading_comments().0.into_iter().find_map(hint_in)
}

/// `SET switchyard.route = primary` as the issue and the docs spell it: `PRIMARY` is a
/// reserved word, so PostgreSQL's grammar rejects it unquoted. The proxy answers this SET
/// itself, so it accepts that exact form (`SET [SESSION] switchyard.route =|TO primary`,
/// alone in the string, comments aside) when the parser refuses the string.
fn unquoted_primary_route(sql: &str) -> bool {
    let Some(scan) = Scan::new(sql) else {
        return false;
    };
    let mut statements = scan
        .statements()
        .filter(|statement| statement.first().is_some());
    let (Some(statement), None) = (statements.next(), statements.next()) else {
        return false;
    };
    let words: Vec<String> = statement
        .words()
        .map(|word| word.text.to_ascii_lowercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(
        words.as_slice(),
        ["set", "switchyard", ".", "route", "=" | "to", "primary"]
            | [
                "set",
                "session",
                "switchyard",
                ".",
                "route",
                "=" | "to",
                "primary"
            ]
    )
}

/// Facts about a whole statement tree, gathered by [`Walker`].
#[derive(Debug, Default)]
struct Facts {
    /// A data-modifying statement, row lock, `INTO`, `EXECUTE` or write function anywhere.
    writes: bool,
    /// A session-level advisory lock is taken.
    session_lock: bool,
    /// A temporary relation is named (created, or `pg_temp` addressed).
    temp: bool,
    /// Something may change session state unseen: a call of a function not known to be
    /// free of session effects, or a statement that runs code the text does not show.
    untracked: bool,
    /// Calls of the built-in `set_config`.
    set_config_calls: usize,
}

impl Facts {
    fn of(node: &NodeEnum, rules: &Rules) -> Self {
        let mut walker = Walker {
            rules,
            stack: Vec::new(),
            function: None,
            facts: Facts::default(),
        };
        if node.serialize(&mut walker).is_err() {
            walker.facts.writes = true;
        }
        walker.facts
    }
}

/// Visits every field of a parse tree through its `Serialize` implementation (derived for
/// every protobuf type), noting the node types and values that make a statement a write.
struct Walker<'r> {
    rules: &'r Rules,
    /// The structs being visited, innermost last, each with the field being visited.
    stack: Vec<(&'static str, &'static str)>,
    /// While inside a `FuncCall.funcname`: the name's parts so far.
    function: Option<Vec<String>>,
    facts: Facts,
}

impl Walker<'_> {
    fn enter_struct(&mut self, name: &'static str) {
        if matches!(
            name,
            "InsertStmt"
                | "UpdateStmt"
                | "DeleteStmt"
                | "MergeStmt"
                | "LockingClause"
                | "IntoClause"
                | "ExecuteStmt"
        ) {
            self.facts.writes = true;
        }
        if matches!(
            name,
            "DoStmt"
                | "CallStmt"
                | "ExecuteStmt"
                | "DeallocateStmt"
                | "LoadStmt"
                | "CreateExtensionStmt"
                | "AlterExtensionStmt"
                | "RefreshMatViewStmt"
        ) {
            // Code the text does not show runs, or prepared statements (the pooler's
            // among them) are dropped.
            self.facts.untracked = true;
        }
        self.stack.push((name, ""));
    }

    fn field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), std::fmt::Error> {
        let Some(top) = self.stack.last_mut() else {
            return Err(std::fmt::Error);
        };
        top.1 = key;
        let in_funcname = *top == ("FuncCall", "funcname");
        if in_funcname {
            self.function = Some(Vec::new());
        }
        let result = value.serialize(&mut *self);
        if in_funcname && let Some(parts) = self.function.take() {
            self.function_called(&parts);
        }
        result
    }

    /// Notes a call of the function named `parts` (schema and name, or name).
    fn function_called(&mut self, parts: &[String]) {
        let function = parts.last().map(String::as_str).unwrap_or_default();
        if self.rules.is_write_function(function) {
            self.facts.writes = true;
        }
        if SESSION_LOCK_FUNCTIONS.contains(&function) {
            self.facts.session_lock = true;
        }
        let built_in = match parts {
            [_] => true,
            [schema, _] => schema == "pg_catalog",
            _ => false,
        };
        if built_in && function == "set_config" {
            self.facts.set_config_calls += 1;
        } else if !(built_in
            && (quiet::quiet_function(function) || SESSION_LOCK_FUNCTIONS.contains(&function)))
        {
            self.facts.untracked = true;
        }
    }

    fn string(&mut self, value: &str) {
        if let Some(function) = &mut self.function {
            function.push(value.to_string());
            return;
        }
        match self.stack.last() {
            Some(("RangeVar", "relpersistence")) if value == "t" => self.facts.temp = true,
            Some(("RangeVar", "schemaname")) if value.starts_with("pg_temp") => {
                self.facts.temp = true
            }
            _ => {}
        }
    }
}

/// Implements a serializer method that ignores its scalar value.
macro_rules! ignore_scalar {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), std::fmt::Error> { Ok(()) })*
    };
}

impl ser::Serializer for &mut Walker<'_> {
    type Ok = ();
    type Error = std::fmt::Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Impossible<(), std::fmt::Error>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    ignore_scalar!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_f32: f32, serialize_f64: f64, serialize_char: char,
        serialize_bytes: &[u8], serialize_unit_struct: &'static str,
    );

    fn serialize_str(self, value: &str) -> Result<(), std::fmt::Error> {
        self.string(value);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), std::fmt::Error> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), std::fmt::Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), std::fmt::Error> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), std::fmt::Error> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), std::fmt::Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), std::fmt::Error> {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, std::fmt::Error> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, std::fmt::Error> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, std::fmt::Error> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, std::fmt::Error> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, std::fmt::Error> {
        // No parse tree type holds a map.
        Err(std::fmt::Error)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, std::fmt::Error> {
        self.enter_struct(name);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, std::fmt::Error> {
        self.enter_struct(variant);
        Ok(self)
    }
}

/// Implements the element-visiting serializer traits by serializing each element.
macro_rules! elements {
    ($($trait:ident :: $method:ident),* $(,)?) => {
        $(impl ser::$trait for &mut Walker<'_> {
            type Ok = ();
            type Error = std::fmt::Error;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), std::fmt::Error> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), std::fmt::Error> {
                Ok(())
            }
        })*
    };
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

/// Implements the field-visiting serializer traits through [`Walker::field`].
macro_rules! fields {
    ($($trait:ident),* $(,)?) => {
        $(impl ser::$trait for &mut Walker<'_> {
            type Ok = ();
            type Error = std::fmt::Error;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), std::fmt::Error> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), std::fmt::Error> {
                self.stack.pop();
                Ok(())
            }
        })*
    };
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sql: &str) -> Classification {
        classify(sql, &Rules::default())
    }

    fn access(sql: &str) -> Access {
        c(sql).access
    }

    /// Statements as pgbench, ORMs and drivers send them, with the access each must get.
    #[test]
    fn reads_and_writes() {
        let reads = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
            "SELECT 1",
            "select 1;",
            "VALUES (1), (2)",
            "TABLE pgbench_branches",
            "SHOW search_path",
            "SHOW ALL",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t WHERE id = $1",
            "SELECT \"auth_user\".\"id\", \"auth_user\".\"username\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = 1 LIMIT 21",
            "SELECT users.id AS users_id FROM users WHERE users.name = 'x' AND users.note = E'it''s \\' ok'",
            "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
            "WITH x AS (SELECT * FROM t) SELECT * FROM x",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
            "SELECT * FROM a UNION SELECT * FROM b",
            "SELECT count(*), max(x) FROM t GROUP BY y HAVING count(*) > 1",
            "SELECT now(), random(), pg_is_in_recovery(), inet_server_port()",
            "SELECT txid_current_snapshot()",
            "-- comment\nSELECT 1",
            "/* switchyard: replica */ SELECT 1",
            "DECLARE c CURSOR FOR SELECT * FROM t",
            "FETCH 10 FROM c",
            "CLOSE c",
            "COPY t TO STDOUT",
            "COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)",
            "DEALLOCATE ALL",
            "UNLISTEN *",
            "SET search_path TO a, b",
            "RESET ALL",
            "DISCARD ALL",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT s1",
            "RELEASE SAVEPOINT s1",
            "ROLLBACK TO SAVEPOINT s1",
            "",
            "   ",
            "-- only a comment",
            "SELECT 1; SELECT 2",
        ];
        for sql in reads {
            assert_eq!(access(sql), Access::Read, "{sql:?}");
        }
        let writes = [
            "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77;",
            "UPDATE pgbench_tellers SET tbalance = tbalance + 12 WHERE tid = 3;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 77, -4321, CURRENT_TIMESTAMP);",
            "DELETE FROM t WHERE id = 1",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "INSERT INTO t (a) VALUES ($1) RETURNING id",
            "SELECT * FROM t WHERE id = 1 FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR KEY SHARE SKIP LOCKED",
            "SELECT \"t\".\"id\" FROM \"t\" INNER JOIN \"u\" ON t.u = u.id FOR UPDATE OF t",
            "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
            "SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)",
            "WITH x AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM x",
            "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
            "SELECT nextval('s')",
            "SELECT pg_catalog.nextval('public.s'::regclass)",
            "SELECT currval('s')",
            "SELECT lastval()",
            "SELECT setval('s', 10)",
            "SELECT ARRAY[nextval('s')]",
            "SELECT coalesce((SELECT nextval('s')), 0)",
            "SELECT f(x => nextval('s'))",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_try_advisory_lock_shared(1, 2)",
            "SELECT pg_advisory_unlock(1)",
            "SELECT pg_notify('ch', 'x')",
            "SELECT set_config('search_path', 'a', false)",
            "SELECT txid_current()",
            "SELECT pg_current_xact_id()",
            "SELECT lo_create(0)",
            "SELECT * INTO new_t FROM t",
            "CREATE TABLE t (id int)",
            "CREATE TEMP TABLE t (id int)",
            "ALTER TABLE t ADD COLUMN x int",
            "DROP TABLE t",
            "CREATE INDEX CONCURRENTLY i ON t (x)",
            "TRUNCATE t",
            "COPY t FROM STDIN",
            "COPY t TO '/tmp/x'",
            "CALL p()",
            "DO $$BEGIN PERFORM 1; END$$",
            "VACUUM ANALYZE t",
            "ANALYZE t",
            "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
            "NOTIFY ch, 'x'",
            "LISTEN ch",
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "EXPLAIN ANALYZE UPDATE t SET x = 1",
            "EXPLAIN UPDATE t SET x = 1",
            "EXPLAIN ANALYZE SELECT nextval('s')",
            "CREATE TABLE t2 AS SELECT * FROM t",
            "REFRESH MATERIALIZED VIEW v",
            "GRANT SELECT ON t TO u",
            "CHECKPOINT",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "SELECT 1; UPDATE t SET x = 1",
            "UPDATE t SET x = 1; SELECT 1",
            "SELEC 1",
            "SELECT (",
            "\u{0}",
            "SELECT 1\u{0}",
            "this is not sql at all",
        ];
        for sql in writes {
            assert_eq!(access(sql), Access::Write, "{sql:?}");
        }
    }

    #[test]
    fn configured_write_functions() {
        let rules = Rules::new(["my_writer"]);
        assert_eq!(
            classify("SELECT my_writer(1)", &rules).access,
            Access::Write
        );
        assert_eq!(
            classify("SELECT app.my_writer(1)", &rules).access,
            Access::Write
        );
        assert_eq!(classify("SELECT my_reader(1)", &rules).access, Access::Read);
        assert_eq!(c("SELECT my_writer(1)").access, Access::Read);
        // Still the built-ins.
        assert_eq!(
            classify("SELECT nextval('s')", &rules).access,
            Access::Write
        );
    }

    #[test]
    fn transaction_commands() {
        const RW: Option<TxnCommand> = Some(TxnCommand::Begin { read_only: false });
        const RO: Option<TxnCommand> = Some(TxnCommand::Begin { read_only: true });
        let cases = [
            ("BEGIN", RW),
            ("begin transaction", RW),
            ("START TRANSACTION", RW),
            ("START TRANSACTION READ WRITE", RW),
            ("BEGIN READ ONLY", RO),
            ("START TRANSACTION READ ONLY", RO),
            ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", RO),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", RW),
            (
                "BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE DEFERRABLE",
                RW,
            ),
            ("BEGIN READ ONLY, READ WRITE", RW),
            ("COMMIT", Some(TxnCommand::Commit)),
            ("END", Some(TxnCommand::Commit)),
            ("COMMIT AND CHAIN", Some(TxnCommand::Commit)),
            ("ROLLBACK", Some(TxnCommand::Rollback)),
            ("ABORT", Some(TxnCommand::Rollback)),
            ("SAVEPOINT a", None),
            ("SET TRANSACTION READ ONLY", None),
            ("SELECT 1", None),
            ("BEGIN; UPDATE t SET x = 1; COMMIT", RW),
        ];
        for (sql, expected) in cases {
            assert_eq!(c(sql).transaction, expected, "{sql:?}");
        }
        assert_eq!(c("BEGIN; UPDATE t SET x = 1; COMMIT").access, Access::Write);
    }

    fn set(name: &str, statement: &str) -> SessionChange {
        SessionChange::Set {
            name: name.into(),
            statement: statement.into(),
        }
    }

    #[test]
    fn session_changes() {
        let cases: Vec<(&str, Vec<SessionChange>)> = vec![
            (
                "SET search_path TO a, b",
                vec![set("search_path", "SET search_path TO a, b")],
            ),
            (
                "SET SESSION statement_timeout = 5",
                vec![set(
                    "statement_timeout",
                    "SET SESSION statement_timeout = 5",
                )],
            ),
            (
                "  SET Application_Name = 'x;y';  ",
                vec![set("application_name", "SET Application_Name = 'x;y'")],
            ),
            (
                "SET TIME ZONE 'UTC'",
                vec![set("timezone", "SET TIME ZONE 'UTC'")],
            ),
            (
                "SET NAMES 'UTF8'",
                vec![set("client_encoding", "SET NAMES 'UTF8'")],
            ),
            ("SET ROLE app", vec![]),
            (
                "SELECT set_config('search_path', 'a, \"B\"', false)",
                vec![set(
                    "search_path",
                    "SELECT pg_catalog.set_config('search_path', 'a, \"B\"', false)",
                )],
            ),
            (
                "select PG_CATALOG.SET_CONFIG('My.Var', E'x\\\\y''', 'off');",
                vec![set(
                    "my.var",
                    "SELECT pg_catalog.set_config('My.Var', E'x\\\\y''', false)",
                )],
            ),
            (
                "SELECT U&\"\\0073et_config\"('a.b', 'c', false)",
                vec![set(
                    "a.b",
                    "SELECT pg_catalog.set_config('a.b', 'c', false)",
                )],
            ),
            ("SELECT set_config('search_path', 'a', true)", vec![]),
            (
                "SELECT set_config('transaction_isolation', 'serializable', false)",
                vec![],
            ),
            ("SET LOCAL statement_timeout = 5", vec![]),
            ("SET LOCAL switchyard.route = primary", vec![]),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", vec![]),
            ("SET transaction_read_only = on", vec![]),
            ("SET x.y FROM CURRENT", vec![]),
            (
                "RESET search_path",
                vec![SessionChange::Reset {
                    name: "search_path".into(),
                }],
            ),
            (
                "SET work_mem TO DEFAULT",
                vec![SessionChange::Reset {
                    name: "work_mem".into(),
                }],
            ),
            ("RESET ALL", vec![SessionChange::ResetAll]),
            ("DISCARD ALL", vec![SessionChange::DiscardAll]),
            ("DISCARD PLANS", vec![]),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                vec![
                    set(
                        "default_transaction_isolation",
                        "SET default_transaction_isolation = 'repeatable read'",
                    ),
                    set(
                        "default_transaction_read_only",
                        "SET default_transaction_read_only = on",
                    ),
                ],
            ),
            (
                "SET switchyard.route = primary",
                vec![SessionChange::Route(RouteOverride::Primary)],
            ),
            (
                "/* x */ set session SWITCHYARD.ROUTE to PRIMARY ;",
                vec![SessionChange::Route(RouteOverride::Primary)],
            ),
            (
                "SET switchyard.route='primary'",
                vec![SessionChange::Route(RouteOverride::Primary)],
            ),
            ("SET switchyard.route = primary; SELECT 1", vec![]),
            ("SET other.route = primary", vec![]),
            (
                "SET switchyard.route TO 'replica'",
                vec![SessionChange::Route(RouteOverride::Replica)],
            ),
            (
                "set SWITCHYARD.ROUTE = AUTO",
                vec![SessionChange::Route(RouteOverride::Auto)],
            ),
            (
                "RESET switchyard.route",
                vec![SessionChange::Route(RouteOverride::Auto)],
            ),
            (
                "SET switchyard.route TO DEFAULT",
                vec![SessionChange::Route(RouteOverride::Auto)],
            ),
            (
                "SET switchyard.route = sideways",
                vec![SessionChange::BadRoute("sideways".into())],
            ),
            (
                "SET switchyard.route = 1",
                vec![SessionChange::BadRoute("1".into())],
            ),
            (
                "SET a.b = 1; SELECT 1; /* x */ SET c.d = 'e;f'",
                vec![set("a.b", "SET a.b = 1"), set("c.d", "SET c.d = 'e;f'")],
            ),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = a AS 'SELECT 1'",
                vec![],
            ),
            ("SET search_path = 'a'; SELEC", vec![]),
        ];
        for (sql, expected) in cases {
            assert_eq!(c(sql).session, expected, "{sql:?}");
        }
    }

    /// A captured `SET` must run again as is: parsing the reported text gives the same
    /// change.
    #[test]
    fn set_statements_rerun() {
        for sql in [
            "SET search_path TO a, \"B\"; SELECT 1",
            "/* switchyard: primary */ SET statement_timeout = '5s'",
            "SELECT 1;\n  SET datestyle = iso, mdy  ;",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "SELECT set_config('search_path', 'a, b', false)",
            "SELECT pg_catalog.set_config('x.y', E'back\\slash ''q''', 'false')",
        ] {
            for change in c(sql).session {
                let SessionChange::Set { statement, .. } = &change else {
                    panic!("{change:?}");
                };
                assert_eq!(c(statement).session, vec![change.clone()], "{sql:?}");
            }
        }
    }

    #[test]
    fn pins() {
        let cases = [
            ("SELECT pg_advisory_lock(1)", Some(PinReason::AdvisoryLock)),
            (
                "SELECT pg_try_advisory_lock(1, 2)",
                Some(PinReason::AdvisoryLock),
            ),
            (
                "select pg_advisory_lock_shared(42)",
                Some(PinReason::AdvisoryLock),
            ),
            ("SELECT pg_advisory_xact_lock(1)", None),
            ("SELECT pg_try_advisory_xact_lock(1)", None),
            ("LISTEN jobs", Some(PinReason::Listen)),
            ("CREATE TEMP TABLE t (id int)", Some(PinReason::TempTable)),
            (
                "CREATE TEMPORARY TABLE t AS SELECT 1",
                Some(PinReason::TempTable),
            ),
            (
                "CREATE TABLE pg_temp.t (id int)",
                Some(PinReason::TempTable),
            ),
            ("CREATE TEMP VIEW v AS SELECT 1", Some(PinReason::TempTable)),
            ("CREATE TEMP SEQUENCE s", Some(PinReason::TempTable)),
            ("SELECT * INTO TEMP t FROM u", Some(PinReason::TempTable)),
            (
                "SELECT * INTO TEMPORARY TABLE t FROM u",
                Some(PinReason::TempTable),
            ),
            ("CREATE TABLE t (id int)", None),
            ("PREPARE p (int) AS SELECT $1", Some(PinReason::SqlPrepare)),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                Some(PinReason::HoldCursor),
            ),
            ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", None),
            (
                "SELECT 1; LISTEN a; SELECT pg_advisory_lock(1)",
                Some(PinReason::Listen),
            ),
            ("SET ROLE evil", Some(PinReason::Identity)),
            ("RESET ROLE", Some(PinReason::Identity)),
            ("SET SESSION AUTHORIZATION evil", Some(PinReason::Identity)),
            (
                "SET SESSION AUTHORIZATION DEFAULT",
                Some(PinReason::Identity),
            ),
            ("SET LOCAL ROLE evil", None),
            (
                "SELECT set_config('role', 'evil', false)",
                Some(PinReason::Identity),
            ),
            ("SET client_encoding TO 'SJIS'", Some(PinReason::Unreadable)),
            ("SET NAMES 'win932'", Some(PinReason::Unreadable)),
            ("SET client_encoding TO 'LATIN1'", None),
            (
                "SET standard_conforming_strings = off",
                Some(PinReason::Unreadable),
            ),
            ("SET standard_conforming_strings = on", None),
            (
                "SELECT set_config('standard_conforming_strings', 'off', false)",
                Some(PinReason::Unreadable),
            ),
            (
                "SELECT set_config('search_path', 'a', false) FROM t",
                Some(PinReason::SetConfig),
            ),
            (
                "SELECT set_config('search_path', $1, false)",
                Some(PinReason::SetConfig),
            ),
            (
                "SELECT set_config('search_path', 'a', $1)",
                Some(PinReason::SetConfig),
            ),
            (
                "SELECT 1, set_config('a.b', 'c', false)",
                Some(PinReason::SetConfig),
            ),
            (
                "SELECT CASE WHEN x THEN set_config('a.b', 'c', false) END FROM t",
                Some(PinReason::SetConfig),
            ),
            (
                "SELECT set_config('a.b', set_config('c.d', 'e', false), false)",
                Some(PinReason::SetConfig),
            ),
            (
                "SELECT set_config(setting_name => 'a.b', new_value => 'c', is_local => false)",
                Some(PinReason::SetConfig),
            ),
            (
                "SELECT set_config('a.b', $1, true), set_config('c.d', $2, 'on') FROM t",
                None,
            ),
        ];
        for (sql, expected) in cases {
            let classification = c(sql);
            assert_eq!(classification.pins, expected, "{sql:?}");
            if expected.is_some() {
                assert_eq!(classification.access, Access::Write, "{sql:?}");
            }
        }
    }

    /// What the pooler cannot see or carry is reported, so the connection gets reset.
    #[test]
    fn untracked_effects() {
        let untracked = [
            "SELECT my_function()",
            "SELECT public.lower(x)",
            "SELECT \"Lower\"(x)",
            "SELECT db.pg_catalog.lower(x)",
            "SELECT * FROM t WHERE x = my_function()",
            "INSERT INTO t VALUES (my_function())",
            "SELECT setseed(0.5)",
            "DO $$BEGIN PERFORM set_config('search_path', 'x', false); END$$",
            "CALL p()",
            "EXPLAIN ANALYZE EXECUTE p",
            "EXECUTE p",
            "DEALLOCATE ALL",
            "LOAD 'auto_explain'",
            "CREATE EXTENSION hstore",
            "REFRESH MATERIALIZED VIEW v",
            "SET LOCAL client_encoding = 'SJIS'",
            "SELECT set_config('client_encoding', 'SJIS', true)",
            "SELECT set_config($1, $2, true)",
            "SELEC 1",
            "SELECT 'unterminated",
        ];
        for sql in untracked {
            assert!(c(sql).untracked, "{sql:?}");
        }
        let tracked = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123",
            "SELECT lower(x), pg_catalog.upper(x), count(*), now(), nextval('s') FROM t",
            "SELECT EXTRACT(year FROM d), TRIM(s), substring(s FROM 2), d AT TIME ZONE 'UTC' FROM t",
            "SELECT pg_advisory_lock(1)",
            "SELECT set_config('search_path', 'a', false)",
            "SELECT set_config('a.b', 'c', true) FROM t",
            "SET search_path TO a",
            "SET LOCAL client_encoding = 'UTF8'",
            "DISCARD ALL",
            "",
        ];
        for sql in tracked {
            assert!(!c(sql).untracked, "{sql:?}");
        }
    }

    /// The pooler's view: quiet text skips the parser; what is not UTF-8 cannot be
    /// replayed as written.
    #[test]
    fn session_effects_for_the_pooler() {
        assert_eq!(session_effects(b"SELECT 1"), SessionEffects::default());
        assert_eq!(
            session_effects(b"/* ; */ SET search_path TO evil1").changes,
            vec![set("search_path", "SET search_path TO evil1")]
        );
        let route = session_effects(b"SET switchyard.route = replica");
        assert!(route.untracked && route.changes.is_empty());
        let latin1 = session_effects(b"SET application_name = 'M\xfcller'");
        assert_eq!(
            (latin1.changes.len(), latin1.pins),
            (0, Some(PinReason::Unreadable))
        );
        assert_eq!(
            session_effects(b"SELECT 'M\xfcller'"),
            SessionEffects::default()
        );
    }

    #[test]
    fn hints() {
        let cases = [
            (
                "/* switchyard: replica */ SELECT 1",
                Some(RouteHint::Replica),
            ),
            (
                "/* switchyard: primary */ SELECT 1",
                Some(RouteHint::Primary),
            ),
            ("/*switchyard:primary*/SELECT 1", Some(RouteHint::Primary)),
            (
                "  /* SwitchYard:  Replica  */\nSELECT 1",
                Some(RouteHint::Replica),
            ),
            ("-- switchyard: primary\nSELECT 1", Some(RouteHint::Primary)),
            (
                "/* app=web */ /* switchyard: replica */ SELECT 1",
                Some(RouteHint::Replica),
            ),
            (
                "/* a /* nested */ b */ /* switchyard: replica */ SELECT 1",
                Some(RouteHint::Replica),
            ),
            ("/* a /* switchyard: primary */ b */ SELECT 1", None),
            ("SELECT 1 /* switchyard: replica */", None),
            ("/* switchyard: elsewhere */ SELECT 1", None),
            ("/* switchyard: replica", None),
            ("-- comment\nSELECT 1", None),
            (
                "/* switchyard: replica */ SELEC 1",
                Some(RouteHint::Replica),
            ),
            ("", None),
            ("/", None),
            ("/*", None),
            ("--", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(c(sql).hint, expected, "{sql:?}");
        }
        let write = c("/* switchyard: replica */ UPDATE t SET x = 1");
        assert_eq!(
            (write.access, write.hint),
            (Access::Write, Some(RouteHint::Replica))
        );
    }

    /// Garbage, control bytes, invalid statements and huge or deeply nested input classify
    /// as writes (or reads when they are reads) without panicking.
    #[test]
    fn hostile_input() {
        assert_eq!(access("\u{1}\u{2}\u{fffd}garbage\u{7f}"), Access::Write);
        assert_eq!(access("SELECT 'unterminated"), Access::Write);
        assert_eq!(access("SELECT $$unterminated"), Access::Write);
        assert_eq!(access("SELECT /* unterminated"), Access::Write);
        let long_in = format!(
            "SELECT * FROM t WHERE id IN ({})",
            vec!["1"; 50_000].join(",")
        );
        assert_eq!(access(&long_in), Access::Read);
        let long_write = format!("{}; UPDATE t SET x = 1", vec!["SELECT 1"; 5_000].join("; "));
        assert_eq!(access(&long_write), Access::Write);
        let deep = format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(access(&deep), Access::Write);
        // Expressions nested deeper than the protobuf decoder's recursion limit (about 48
        // binary operators in a chain) cannot be decoded: the primary runs them.
        assert_eq!(
            access(&format!("SELECT 1{}", " + 1".repeat(40))),
            Access::Read
        );
        assert_eq!(
            access(&format!("SELECT 1{}", " + 1".repeat(2_000))),
            Access::Write
        );
        let long_string = format!("SELECT '{}'", "x".repeat(1 << 20));
        assert_eq!(access(&long_string), Access::Read);
    }

    /// The crate's stable-Rust fuzz pass, checking what the fuzz target checks: mutated real
    /// statements never panic, whatever the parser rejects is a write, and reported SETs
    /// re-run as the same change.
    #[test]
    fn mutated_statements_classify_without_panicking() {
        let mut mutator = crate::testing::Mutator::new();
        let seeds = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
            "/* switchyard: replica */ SELECT * FROM t FOR UPDATE OF t",
            "WITH x AS (DELETE FROM t RETURNING *) SELECT nextval('s') FROM x",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SET search_path TO a, b; COMMIT",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; RESET ALL; DISCARD ALL",
            "SET switchyard.route = replica; -- x\nDECLARE c CURSOR WITH HOLD FOR SELECT 1",
        ];
        let rules = Rules::default();
        for round in 0..3_000 {
            let mut input = seeds[round % seeds.len()].as_bytes().to_vec();
            mutator.mutate(&mut input);
            let sql = String::from_utf8_lossy(&input);
            let classification = classify(&sql, &rules);
            if pg_query::parse(&sql, 0).is_err() && classification.session.is_empty() {
                assert_eq!(classification.access, Access::Write, "{sql:?}");
            }
            for change in &classification.session {
                if let SessionChange::Set { statement, .. } = change {
                    let again = classify(statement, &rules).session;
                    assert_eq!(again, vec![change.clone()], "{sql:?}");
                }
            }
        }
    }

    #[test]
    fn cache_keys_mask_numbers_only_where_safe() {
        let key = |sql: &str| cache_key(sql).map(|k| String::from_utf8(k).expect("utf-8"));
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 123;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = 0;")
        );
        assert_eq!(
            key("UPDATE t1 SET x = x + -4.25e3 WHERE id = $12").as_deref(),
            Some("UPDATE t1 SET x = x + -0.0e3 WHERE id = $12")
        );
        assert_eq!(
            key("SELECT tbl_ø9 FROM x").as_deref(),
            Some("SELECT tbl_ø9 FROM x")
        );
        assert_ne!(key("SELECT f1()"), key("SELECT f2()"));
        assert_eq!(
            key("SELECT \"u\".\"id 1\", \"it's $x\"\"2\" FROM \"u\" WHERE \"u\".\"id\" = 42")
                .as_deref(),
            Some("SELECT \"u\".\"id 1\", \"it's $x\"\"2\" FROM \"u\" WHERE \"u\".\"id\" = 0")
        );
        for sql in [
            "SELECT '1'",
            "SELECT $$1$$",
            "SELECT $a$1$a$",
            "SELECT E'\\1'",
            "/* \" */ SELECT \"a 1\"",
            "SELECT \"a\" -- 1",
        ] {
            assert_eq!(key(sql), None, "{sql}");
        }
        assert_eq!(key(&"SELECT 1 ".repeat(200)), None);
    }

    /// The cached classifier answers exactly as `classify` does, for statements that share
    /// cache keys and for mutated ones, in any order.
    #[test]
    fn classifier_cache_answers_as_classify() {
        let rules = Rules::new(["my_writer"]);
        let classifier = Classifier::new(rules.clone());
        let mut statements: Vec<String> = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 22",
            "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 7",
            "SET statement_timeout = 5",
            "SET statement_timeout = 6",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_advisory_lock(2)",
            "/* switchyard: replica */ SELECT 3",
            "BEGIN READ ONLY",
            "SELECT my_writer(1)",
            "SELECT 1; SET a.b = 2",
            "SELECT 1; SET a.b = 3",
            "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = 5 LIMIT 1",
            "SELECT \"my_writer\"(1), \"x 2\" FROM \"t 3\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut mutator = crate::testing::Mutator::new();
        for round in 0..2_000 {
            let mut input = statements[round % 14].as_bytes().to_vec();
            mutator.mutate(&mut input);
            statements.push(String::from_utf8_lossy(&input).into_owned());
        }
        for _ in 0..2 {
            for sql in &statements {
                assert_eq!(classifier.classify(sql), classify(sql, &rules), "{sql:?}");
            }
        }
        assert_eq!(
            classifier.classify("SET statement_timeout = 6").session,
            vec![SessionChange::Set {
                name: "statement_timeout".into(),
                statement: "SET statement_timeout = 6".into()
            }]
        );
    }

    /// Past a generation's size the old entries move to the previous generation, hits
    /// promote them back, and nothing is lost from a correct answer.
    #[test]
    fn classifier_cache_is_bounded() {
        let classifier = Classifier::new(Rules::default());
        for i in 0..(CACHE_GENERATION * 2 + 10) {
            classifier.classify(&format!("SELECT c{i} FROM t"));
        }
        let cache = classifier.lock();
        assert!(cache.current.len() <= CACHE_GENERATION);
        assert!(cache.previous.len() <= CACHE_GENERATION);
        drop(cache);
        let first_kept = format!("SELECT c{} FROM t", CACHE_GENERATION + 5);
        assert!(
            classifier
                .lock()
                .previous
                .contains_key(first_kept.as_bytes())
        );
        assert_eq!(classifier.classify(&first_kept).access, Access::Read);
        assert!(
            classifier
                .lock()
                .current
                .contains_key(first_kept.as_bytes())
        );
    }

    /// Time per call on typical pgbench statements (and two the pooler must classify):
    /// the split's classification, cached and not, the parse in it, and the pooler's path
    /// (the scan, the pre-check on it, and `session_effects`, which is the pre-check alone
    /// for quiet text). Run with
    /// `cargo test --release -p switchyard --lib classify::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        fn time<T>(mut call: impl FnMut() -> T) -> std::time::Duration {
            let rounds = 20_000;
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(call());
            }
            start.elapsed() / rounds
        }
        let rules = Rules::default();
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
            "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 77, -4321, CURRENT_TIMESTAMP);",
            "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
            "SET search_path TO app, public",
            "SELECT my_function($1)",
        ] {
            let sql = std::hint::black_box(sql);
            let per_call = time(|| classify(sql, &rules));
            let classifier = Classifier::new(Rules::default());
            let cached = time(|| classifier.classify(sql));
            let parse = time(|| pg_query::parse(sql, 0).is_ok());
            let scan = time(|| Scan::new(sql).is_some());
            let quiet = time(|| quiet::is_quiet(sql));
            let effects = time(|| session_effects(sql.as_bytes()));
            println!(
                "{per_call:?} per classify ({parse:?} in pg_query::parse), {cached:?} cached; \
                 pooler: {effects:?} per session_effects ({quiet:?} pre-check, {scan:?} in the scan): {sql}"
            );
        }
    }
}
