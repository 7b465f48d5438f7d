//! SQL classification for the MySQL/MariaDB transaction pooler and read/write split: what a
//! COM_QUERY (or COM_STMT_PREPARE) text does, read with the `sqlparser` crate's MySQL
//! tokenizer and parser. The PostgreSQL twin is `postgres::classify`; the protocol-neutral
//! answers ([`Access`], [`TxnCommand`], [`RouteOverride`], [`RouteHint`]) are shared
//! (`protocol::sql`).
//!
//! [`classify`] answers, for one query text:
//! - [`Access`]: may it run on a read-only replica? A read is a `SELECT` (also `UNION`s,
//!   subqueries, `WITH … SELECT`, `VALUES`) that the parser accepts, without `FOR UPDATE`,
//!   `FOR SHARE`, `LOCK IN SHARE MODE` or `INTO` (`@var`, `OUTFILE`, `DUMPFILE`) anywhere,
//!   and without a call to a function of [`WRITE_FUNCTIONS`] or `NEXT`/`PREVIOUS VALUE FOR`;
//!   also `SHOW`, `DESCRIBE`/`DESC`/`EXPLAIN` of a table or of a read, `DO` of expressions that
//!   would make a read `SELECT`, `SET` (session and user variables), `USE`, and the
//!   transaction statements themselves (`BEGIN`, `START TRANSACTION`, `COMMIT`, `ROLLBACK`,
//!   `SAVEPOINT`, `RELEASE SAVEPOINT`: the split routes them by its transaction rules).
//!   Everything else — DML, DDL, `CALL`, `LOAD`, `LOCK`, `HANDLER`, `XA`, `SET GLOBAL`/
//!   `PERSIST`, anything unknown or rejected by the parser — is a write, and so is any
//!   statement once the text has pinned. A text of several statements is a write if any is.
//! - [`TxnCommand`]: the first of `BEGIN [WORK]`, `START TRANSACTION [WITH CONSISTENT
//!   SNAPSHOT | READ ONLY | READ WRITE, …]` (read-only only with `READ ONLY`), `COMMIT [WORK]
//!   [AND [NO] CHAIN] [[NO] RELEASE]`, `ROLLBACK` likewise (not `ROLLBACK TO SAVEPOINT`, which
//!   ends nothing), and `XA START`/`XA BEGIN` (a read-write begin), `XA COMMIT`,
//!   `XA ROLLBACK`. `COMMIT … RELEASE` also makes the server close the connection.
//! - [`PinReason`]: state that lives in one server connection — `GET_LOCK(`, `LOCK TABLE[S]`,
//!   `LOCK INSTANCE`, `FLUSH TABLES … WITH READ LOCK`/`FOR EXPORT`, MariaDB `BACKUP`; `CREATE
//!   [OR REPLACE] TEMPORARY TABLE|SEQUENCE`; a user variable assigned (`SET @x = …`, `@x :=`,
//!   `SELECT|FETCH … INTO @x`, `CALL`/`LOAD`/`GET DIAGNOSTICS` naming one); `SQL_CALC_FOUND_ROWS`;
//!   SQL `PREPARE`/`EXECUTE`/`DEALLOCATE PREPARE`; `HANDLER`; `XA START`; and settings the
//!   proxy could not read or replay (see [`PinReason`]). Found from the token stream, so a
//!   statement the parser rejects still pins.
//! - [`SessionChange`]: a session `SET` of system variables to replay as written (`SET x = 1`,
//!   `SET SESSION|LOCAL x`, `SET @@session.x`, `SET @@x`, `SET NAMES`, `SET CHARACTER SET`,
//!   `SET SESSION TRANSACTION …`, `SET ROLE`), `USE db`, and `SET switchyard.route = primary |
//!   replica | auto | DEFAULT` (quoted or not, any case), which the proxy answers itself and
//!   never sends to a server. `SET TRANSACTION …` (no scope) is not one:
//!   [`Classification::next_transaction`].
//! - [`SessionFunctions`]: calls that read the previous statement's state on its connection
//!   (`LAST_INSERT_ID()`, `ROW_COUNT()`, `FOUND_ROWS()`, warnings and diagnostics); and
//!   [`simple_session_query`] recognises the standalone `SELECT LAST_INSERT_ID()` forms the
//!   proxy can answer without a server.
//! - [`Classification::untracked`]: session state may change where the proxy cannot see or
//!   carry it (the pooler resets the connection before anyone else uses it). Exactly: a
//!   statement the parser rejects, except those this module reads from tokens (`SET`, `USE`,
//!   the transaction and savepoint statements, `XA`, `PREPARE`, `DEALLOCATE`/`DROP PREPARE`,
//!   `LOCK`, `UNLOCK`, `HANDLER`, `SHOW`, `BACKUP`, `GET DIAGNOSTICS`), `DO` (parsed as the
//!   `SELECT` of its expressions) and queries the parser accepts once `LOCK IN SHARE MODE` or
//!   their `INTO` clause is taken out; `CALL`, `EXECUTE`, `LOAD`, `INSTALL`/`UNINSTALL`;
//!   MariaDB compound statements (`BEGIN NOT ATOMIC`, `IF`, `CASE`, `LOOP`, `REPEAT`,
//!   `WHILE`, `FOR`, a label); `SET RESOURCE GROUP`; `SET TRANSACTION` (no scope); text the
//!   tokenizer rejects, that is not UTF-8 ([`classify_bytes`]), or too long to parse.
//! - [`RouteHint`]: a leading `/* switchyard: primary */` or `replica` comment (also `#` and
//!   `-- ` comments).
//!
//! Lexing: MySQL runs the content of executable comments (`/*! … */`, `/*!50700 … */`, and
//! MariaDB's `/*M! … */`), so their markers are blanked out before tokenizing, outside
//! strings, quoted names and other comments, and their content is classified as code whatever
//! the version condition. The tokenizer then skips strings, quoted names and comments, so
//! `SELECT 'get_lock('` and `/* LOCK TABLES */ SELECT 1` do not pin; keywords and function
//! names match in any case. A text is split into statements at `;` tokens, except that
//! `CREATE`/`ALTER` of a routine, trigger, event or package and MariaDB compound statements
//! run to the end of the text (their bodies hold `;`).
//!
//! Limits: a stored function (or trigger) that changes session state is not seen; a
//! function that writes but is not listed makes no write of its `SELECT`; the body of a
//! routine being created is searched for pins like code that runs. The proxy reads
//! statements as the server does only while backslashes escape in strings, `"` quotes strings
//! and the client's character set keeps ASCII bytes ASCII: setting `sql_mode` to a value
//! with `ANSI_QUOTES` or `NO_BACKSLASH_ESCAPES` (or `ANSI`, `DB2`, `MAXDB`, `MSSQL`, `ORACLE`,
//! `POSTGRESQL`), or to anything but a constant, or the client character set to `big5`,
//! `cp932`, `gbk`, `gb18030` or `sjis` (or to anything but a constant), pins
//! ([`PinReason::Unreadable`]); a server whose default `sql_mode` has them is misread. Texts
//! over [`MAX_TOKENIZED_TEXT`] bytes are tokenized piece by piece for pins only; statements
//! of more than [`MAX_PARSED_TOKENS`] tokens are not parsed.

use std::borrow::Cow;
use std::cell::OnceCell;

use sqlparser::ast::{Query, SetExpr, Statement};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Word};

use crate::protocol::sql::hint_in;
pub use crate::protocol::sql::{Access, RouteHint, RouteOverride, TxnCommand};

/// Why a session must stay on its server connection for the rest of its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    /// `CREATE [OR REPLACE] TEMPORARY TABLE` (or MariaDB `… TEMPORARY SEQUENCE`).
    TempTable,
    /// A lock held by the connection: `GET_LOCK(`, `LOCK TABLE[S]`, `LOCK INSTANCE FOR
    /// BACKUP`, `FLUSH TABLES … WITH READ LOCK`/`FOR EXPORT`, MariaDB `BACKUP STAGE`/`LOCK`.
    Lock,
    /// A user variable is assigned (`SET @x = …`, `@x := …`, `INTO @x`, or a `CALL`, `LOAD`
    /// or `GET DIAGNOSTICS` naming one). Reading `@x` does not pin.
    UserVariable,
    /// `SQL_CALC_FOUND_ROWS`: the `FOUND_ROWS()` that follows must ask the same connection.
    FoundRows,
    /// A SQL-level `PREPARE` (also `EXECUTE` and `DEALLOCATE`/`DROP PREPARE`, which need
    /// one): the statement lives in the connection.
    SqlPrepare,
    /// `HANDLER … OPEN` (and `READ`/`CLOSE`): an open handler lives in the connection.
    Handler,
    /// `XA START`/`XA BEGIN`: an XA transaction goes through `END`, `PREPARE` and `COMMIT`
    /// on its connection.
    XaTransaction,
    /// After this setting the proxy could no longer tokenize the session's statements as the
    /// server does (see the module documentation): `sql_mode` with `ANSI_QUOTES` or
    /// `NO_BACKSLASH_ESCAPES`, a client character set whose multi-byte characters hold ASCII
    /// bytes, either set to an expression, or a `SET` in text that is not UTF-8.
    Unreadable,
    /// A session setting the proxy cannot replay: in one `SET` with a `GLOBAL`/`PERSIST` one,
    /// with a next-transaction one, or to a value read by a subquery.
    Unreplayable,
}

/// A change to session state that the transaction pooler must carry between server
/// connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A session `SET` of system variables (or `SET ROLE`), to re-run as is on another server
    /// connection (after the ones before it).
    Set {
        /// The statement, trimmed, executable-comment markers blanked out.
        statement: String,
    },
    /// `USE db`: the default database, as the server names it (backquotes removed).
    Use {
        /// Database name.
        database: String,
    },
    /// `SET switchyard.route = …`: answered by the proxy, never sent to a server.
    Route(RouteOverride),
    /// `SET switchyard.route` to something other than `primary`, `replica`, `auto` or
    /// `DEFAULT`: the proxy answers with an error naming the value.
    BadRoute(String),
}

/// Calls that read what the connection's previous statements left behind: on a pooled
/// connection the answer depends on which statements that connection ran. The pooler keeps
/// such a statement on the connection of the statement it refers to (or answers it itself,
/// [`simple_session_query`]); the split sends it where that statement went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionFunctions {
    /// `LAST_INSERT_ID()` without an argument (also `@@identity`, `@@last_insert_id`).
    pub last_insert_id: bool,
    /// `LAST_INSERT_ID(expr)`: sets the value later `LAST_INSERT_ID()` calls return (and the
    /// OK packet's last insert id).
    pub sets_last_insert_id: bool,
    /// `ROW_COUNT()`.
    pub row_count: bool,
    /// `FOUND_ROWS()`.
    pub found_rows: bool,
    /// `SHOW WARNINGS`, `SHOW ERRORS`, `SHOW COUNT(*) WARNINGS|ERRORS`, `SHOW PROFILE[S]`,
    /// `GET DIAGNOSTICS`, `@@warning_count`, `@@error_count`.
    pub diagnostics: bool,
}

impl SessionFunctions {
    /// Whether any of them is used.
    pub fn any(&self) -> bool {
        self.last_insert_id
            || self.sets_last_insert_id
            || self.row_count
            || self.found_rows
            || self.diagnostics
    }

    fn merge(&mut self, other: SessionFunctions) {
        self.last_insert_id |= other.last_insert_id;
        self.sets_last_insert_id |= other.sets_last_insert_id;
        self.row_count |= other.row_count;
        self.found_rows |= other.found_rows;
        self.diagnostics |= other.diagnostics;
    }
}

/// What [`classify`] found in a query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Whether a replica may run it.
    pub access: Access,
    /// The first transaction-control statement in the text.
    pub transaction: Option<TxnCommand>,
    /// Session state changes, in order.
    pub session: Vec<SessionChange>,
    /// The first reason the session must stay on its server connection.
    pub pins: Option<PinReason>,
    /// The leading comment's routing hint.
    pub hint: Option<RouteHint>,
    /// Calls that read the connection's previous statements' state.
    pub session_functions: SessionFunctions,
    /// `SET TRANSACTION …` (or `SET @@transaction_isolation`/`@@transaction_read_only`)
    /// without `SESSION` or `GLOBAL`: it sets the characteristics of the connection's next
    /// transaction only (in autocommit mode, of the next statement). Reported when it is the
    /// text's last statement (a statement after it in the text is that transaction). The
    /// pooler runs this text before the client's next statement on whichever connection
    /// runs it; the connection it ran on is left with the characteristics pending, so
    /// `untracked` is set too.
    pub next_transaction: Option<String>,
    /// The text may change session state the proxy can neither see nor carry (see the
    /// module documentation): the server connection must be reset before another client
    /// uses it.
    pub untracked: bool,
}

impl Classification {
    /// A text that could not be classified: the primary runs it, and whatever it does to the
    /// session is unknown.
    pub fn unknown(hint: Option<RouteHint>) -> Self {
        Self {
            untracked: true,
            access: Access::Write,
            ..Self::empty(hint)
        }
    }

    /// A text without statements so far: a read that changes nothing.
    fn empty(hint: Option<RouteHint>) -> Self {
        Self {
            access: Access::Read,
            transaction: None,
            session: Vec::new(),
            pins: None,
            hint,
            session_functions: SessionFunctions::default(),
            next_transaction: None,
            untracked: false,
        }
    }

    fn pin(&mut self, reason: PinReason) {
        self.pins.get_or_insert(reason);
    }
}

/// Built-in functions after which a `SELECT` (or `DO`, or `SHOW … WHERE`) must run on the
/// primary, as a write:
/// - user-level locks, including the ones that only look at them: the locks live on the
///   server where `GET_LOCK` ran (a replica knows none of them): `get_lock` (which also pins),
///   `release_lock`, `release_all_locks`, `is_free_lock`, `is_used_lock`;
/// - MariaDB sequences: `nextval`, `setval`, and `lastval` (the session's last `nextval`,
///   which ran on the primary);
/// - replication waits, which only make sense against the primary's positions:
///   `master_pos_wait`, `source_pos_wait`, `master_gtid_wait`, `wait_for_executed_gtid_set`,
///   `wait_until_sql_thread_after_gtids`;
/// - the session values left by the connection's previous statements, which a write set:
///   `last_insert_id` (with an argument it also sets the value), `row_count`, `found_rows`.
///
/// Not listed (reads anywhere): `sleep`, `benchmark`, `uuid`, `uuid_short`, `rand`,
/// `load_file`, `connection_id`.
pub const WRITE_FUNCTIONS: &[&str] = &[
    "get_lock",
    "release_lock",
    "release_all_locks",
    "is_free_lock",
    "is_used_lock",
    "nextval",
    "setval",
    "lastval",
    "master_pos_wait",
    "source_pos_wait",
    "master_gtid_wait",
    "wait_for_executed_gtid_set",
    "wait_until_sql_thread_after_gtids",
    "last_insert_id",
    "row_count",
    "found_rows",
];

/// Client character sets whose multi-byte characters can hold ASCII bytes (a backslash or a
/// quote as a second byte): text in them is not tokenized as the server does.
const UNREADABLE_CHARSETS: &[&str] = &["big5", "cp932", "gbk", "gb18030", "sjis"];

/// `sql_mode` values that change how strings and quotes are lexed (`ANSI_QUOTES`,
/// `NO_BACKSLASH_ESCAPES`, and the combination modes that include `ANSI_QUOTES`).
const UNREADABLE_SQL_MODES: &[&str] = &[
    "ansi_quotes",
    "no_backslash_escapes",
    "ansi",
    "db2",
    "maxdb",
    "mssql",
    "oracle",
    "postgresql",
];

/// Transaction characteristics that `SET @@name = …` (no scope word) sets for the next
/// transaction only.
const NEXT_TRANSACTION_VARIABLES: &[&str] = &[
    "transaction_isolation",
    "transaction_read_only",
    "tx_isolation",
    "tx_read_only",
];

/// The proxy's own session setting.
const ROUTE_VARIABLE: &str = "switchyard.route";

/// Texts longer than this are not tokenized whole (a bulk load's tokens take tens of times
/// its bytes): they are cut into pieces of about [`PIECE_BYTES`] at token boundaries and
/// only searched for pins and session functions; the text is a write of unknown effects.
pub const MAX_TOKENIZED_TEXT: usize = 1 << 20;

/// The size of the pieces a long text is tokenized in.
const PIECE_BYTES: usize = 64 << 10;

/// Statements of more tokens than this are not parsed (a write of unknown effects).
pub const MAX_PARSED_TOKENS: usize = 16_384;

/// Stack reserved for a parse beyond what its tokens need.
const PARSE_STACK_BASE: usize = 256 << 10;

/// Stack reserved per token of a parsed statement's [`nesting`]: the parser's recursion and
/// the drop of its tree are at most a few frames per token of it deep (on the worst chains
/// found, about 1 KiB per token overflowed in a debug build; 2 KiB did not).
const PARSE_STACK_PER_TOKEN: usize = 8 << 10;

/// Classifies one query text (see the module documentation for the rules). Never fails and
/// never panics: what cannot be read is a [`Access::Write`] whose session effects are unknown
/// ([`Classification::untracked`]), with the pins its tokens show.
pub fn classify(sql: &str) -> Classification {
    let hint = route_hint(sql);
    if sql.len() > MAX_TOKENIZED_TEXT {
        return classify_long(sql, hint);
    }
    let (code, _) = executable_code(sql, None);
    let Some(tokens) = tokenize(&code) else {
        return Classification::unknown(hint);
    };
    let source = Source::new(&code);
    let mut out = Classification::empty(hint);
    for statement in statements(&tokens) {
        // A statement after `SET TRANSACTION` is the transaction it applied to.
        out.next_transaction = None;
        match statement {
            Piece::Statement(tokens) => classify_statement(tokens, &source, &mut out, 0),
            Piece::Compound(tokens) => compound(tokens, &source, &mut out),
        }
    }
    out
}

/// [`classify`] for the bytes of a COM_QUERY. Text that is not UTF-8 (a client in another
/// character set) is read with its other bytes replaced, which keeps every ASCII byte (the
/// character sets that do not are pinned when set): its pins, transaction command and
/// session functions are found, but it is a write of unknown effects, and a session change
/// in it (which could not be replayed as written) pins instead ([`PinReason::Unreadable`]).
pub fn classify_bytes(sql: &[u8]) -> Classification {
    let text = match std::str::from_utf8(sql) {
        Ok(text) => return classify(text),
        Err(_) => String::from_utf8_lossy(sql),
    };
    let mut out = classify(&text);
    out.access = Access::Write;
    out.untracked = true;
    out.next_transaction = None;
    if !out.session.is_empty() {
        out.session.clear();
        out.pin(PinReason::Unreadable);
    }
    out
}

/// A session function the proxy can answer without a server (from the OK packets it
/// relayed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFunction {
    /// `LAST_INSERT_ID()`.
    LastInsertId,
    /// `ROW_COUNT()`.
    RowCount,
    /// `FOUND_ROWS()`.
    FoundRows,
}

/// A standalone `SELECT LAST_INSERT_ID()` (or `ROW_COUNT()`, `FOUND_ROWS()`): one row, one
/// column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionQuery {
    /// What is asked.
    pub function: SessionFunction,
    /// The column name the server would send: the alias, else the expression exactly as
    /// written (MySQL and MariaDB name a column by its expression's text: `last_insert_id()`
    /// stays in lower case).
    pub column: String,
}

/// The exact standalone forms the proxy may answer itself: leading comments, then `SELECT`,
/// whitespace, the function name (any case) immediately followed by `()`, optionally an
/// alias (`AS name`, or a bare name after whitespace; a name plain, in backquotes, or in
/// quotes without backslashes), optionally `;`, and nothing else but whitespace. Anything
/// else (`LAST_INSERT_ID(5)`, `FROM dual`, a comment inside) is `None` and goes to a server.
pub fn simple_session_query(sql: &str) -> Option<SessionQuery> {
    let mut rest = sql;
    while let Some((_, after)) = leading_comment(rest) {
        rest = after;
    }
    let rest = rest.trim_start_matches(is_space);
    let keyword = rest.get(..6)?;
    if !keyword.eq_ignore_ascii_case("select") {
        return None;
    }
    let rest = rest.get(6..)?;
    let expression = rest.trim_start_matches(is_space);
    if expression.len() == rest.len() {
        return None;
    }
    let (function, name) = [
        (SessionFunction::LastInsertId, "last_insert_id"),
        (SessionFunction::RowCount, "row_count"),
        (SessionFunction::FoundRows, "found_rows"),
    ]
    .into_iter()
    .find(|(_, name)| {
        expression
            .get(..name.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(name))
    })?;
    let end = name.len() + 2;
    if expression.get(name.len()..end) != Some("()") {
        return None;
    }
    let written = expression.get(..end)?;
    let tail = expression.get(end..)?;
    let after_space = tail.trim_start_matches(is_space);
    let (column, rest) = if after_space.is_empty() || after_space.starts_with(';') {
        (written.to_string(), after_space)
    } else if after_space.len() == tail.len() {
        return None;
    } else {
        let as_keyword = after_space
            .get(..2)
            .is_some_and(|word| word.eq_ignore_ascii_case("as"))
            && after_space
                .get(2..)
                .and_then(|after| after.chars().next())
                .is_some_and(|c| is_space(c) || matches!(c, '`' | '\'' | '"'));
        let alias = if as_keyword {
            after_space.get(2..)?.trim_start_matches(is_space)
        } else {
            after_space
        };
        alias_name(alias)?
    };
    let rest = rest.trim_start_matches(is_space);
    let rest = rest.strip_prefix(';').unwrap_or(rest);
    if !rest.trim_start_matches(is_space).is_empty() {
        return None;
    }
    Some(SessionQuery { function, column })
}

/// Words that may follow a select expression without being its alias (clauses, operators,
/// set operations): a bare alias must not be one of them.
const NOT_ALIASES: &[&str] = &[
    "and",
    "as",
    "between",
    "collate",
    "div",
    "escape",
    "except",
    "for",
    "from",
    "group",
    "having",
    "in",
    "intersect",
    "into",
    "is",
    "like",
    "limit",
    "lock",
    "member",
    "mod",
    "not",
    "or",
    "order",
    "procedure",
    "regexp",
    "rlike",
    "select",
    "sounds",
    "union",
    "where",
    "window",
    "with",
    "xor",
];

/// A column alias at the start of `text` and the text after it: a plain name (letters,
/// digits, `_`, `$`, non-ASCII; not only digits; not one of [`NOT_ALIASES`]), a backquoted
/// name (doubled backquotes for one), or a quoted string without backslashes (doubled quotes
/// for one).
fn alias_name(text: &str) -> Option<(String, &str)> {
    let mut chars = text.char_indices();
    match chars.next()? {
        (_, quote @ ('`' | '\'' | '"')) => {
            let mut name = String::new();
            let mut chars = text.char_indices().skip(1).peekable();
            while let Some((at, c)) = chars.next() {
                if c == '\\' && quote != '`' {
                    return None;
                }
                if c != quote {
                    name.push(c);
                    continue;
                }
                if chars.peek().is_some_and(|&(_, next)| next == quote) {
                    chars.next();
                    name.push(quote);
                    continue;
                }
                return Some((name, text.get(at + 1..)?));
            }
            None
        }
        _ => {
            let end = text
                .char_indices()
                .find(|&(_, c)| {
                    !(c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii())
                })
                .map_or(text.len(), |(at, _)| at);
            let name = text.get(..end)?;
            if name.is_empty()
                || name.bytes().all(|b| b.is_ascii_digit())
                || NOT_ALIASES
                    .iter()
                    .any(|word| word.eq_ignore_ascii_case(name))
            {
                return None;
            }
            Some((name.to_string(), text.get(end..)?))
        }
    }
}

/// Whitespace as MySQL's lexer skips it.
fn is_space(c: char) -> bool {
    c.is_ascii_whitespace() || c == '\u{b}'
}

/// The comment `rest` starts with (after whitespace), as its text and the text after it;
/// `None` when it starts with something else, an executable comment (`/*!`, `/*M!`: code) or
/// a block comment without its end.
fn leading_comment(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches(is_space);
    if let Some(after) = rest.strip_prefix("/*") {
        if after.starts_with('!') || after.starts_with("M!") {
            return None;
        }
        let end = after.find("*/")?;
        return Some((after.get(..end)?, after.get(end + 2..)?));
    }
    if let Some(after) = rest.strip_prefix('#') {
        return line_comment(after);
    }
    let after = rest.strip_prefix("--")?;
    // MySQL: `--` starts a comment only when whitespace or a control character follows.
    match after.bytes().next() {
        None => Some(("", "")),
        Some(byte) if byte <= b' ' || byte == 0x7f => line_comment(after),
        Some(_) => None,
    }
}

/// A line comment's text (after its marker) and the text after its line.
fn line_comment(after: &str) -> Option<(&str, &str)> {
    match after.find('\n') {
        Some(end) => Some((after.get(..end)?, after.get(end + 1..)?)),
        None => Some((after, "")),
    }
}

/// The routing hint of the comments a text starts with (the first `switchyard:` comment among
/// them decides).
fn route_hint(sql: &str) -> Option<RouteHint> {
    let mut rest = sql;
    while let Some((comment, after)) = leading_comment(rest) {
        if let Some(hint) = hint_in(comment) {
            return Some(hint);
        }
        rest = after;
    }
    None
}

/// Where the lexer of [`executable_code`] is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lexing {
    Code,
    /// In a string or quoted name opened by this byte.
    Quoted(u8),
    LineComment,
    BlockComment,
}

/// A range of a long text to tokenize on its own (see [`executable_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: usize,
    end: usize,
    /// The range ends a statement (at a `;` or the end of the text).
    statement_end: bool,
}

/// `sql` with the markers of executable comments (`/*!`, `/*!NNNNN`, `/*M!`, `/*M!NNNNNN`
/// and their `*/`) blanked out with spaces where MySQL reads code (not in strings, quoted
/// names or comments), so the tokenizer reads their content as code; positions and lines are
/// kept. With `pieces`, also the ranges to tokenize a long text in: cut at `;` and, past
/// `pieces` bytes, after the next whitespace or comma in code (always token boundaries).
fn executable_code(sql: &str, pieces: Option<usize>) -> (Cow<'_, str>, Vec<Range>) {
    let bytes = sql.as_bytes();
    let mut blanked: Option<Vec<u8>> = None;
    let mut blank = |from: usize, to: usize| {
        let copy = blanked.get_or_insert_with(|| bytes.to_vec());
        for byte in copy.iter_mut().take(to).skip(from) {
            *byte = b' ';
        }
    };
    let mut ranges = Vec::new();
    let mut range_start = 0;
    let mut state = Lexing::Code;
    let mut in_executable = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let next = bytes.get(i + 1).copied();
        match state {
            Lexing::Quoted(quote) => {
                if byte == b'\\' && quote != b'`' {
                    i += 2;
                    continue;
                }
                if byte == quote {
                    state = Lexing::Code;
                }
            }
            Lexing::LineComment => {
                if byte == b'\n' {
                    state = Lexing::Code;
                }
            }
            Lexing::BlockComment => {
                if byte == b'*' && next == Some(b'/') {
                    state = Lexing::Code;
                    i += 2;
                    continue;
                }
            }
            Lexing::Code => match byte {
                b'\'' | b'"' | b'`' => state = Lexing::Quoted(byte),
                b'#' => state = Lexing::LineComment,
                b'-' if next == Some(b'-')
                    && bytes
                        .get(i + 2)
                        .is_none_or(|&after| after <= b' ' || after == 0x7f) =>
                {
                    state = Lexing::LineComment;
                    i += 2;
                    continue;
                }
                b'/' if next == Some(b'*') => {
                    let marker = match (bytes.get(i + 2), bytes.get(i + 3)) {
                        (Some(b'!'), _) => 3,
                        (Some(b'M'), Some(b'!')) => 4,
                        _ => {
                            state = Lexing::BlockComment;
                            i += 2;
                            continue;
                        }
                    };
                    let digits = bytes
                        .iter()
                        .skip(i + marker)
                        .take(6)
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    blank(i, i + marker + digits);
                    in_executable = true;
                    i += marker + digits;
                    continue;
                }
                b'*' if in_executable && next == Some(b'/') => {
                    blank(i, i + 2);
                    in_executable = false;
                    i += 2;
                    continue;
                }
                b';' if pieces.is_some() => {
                    ranges.push(Range {
                        start: range_start,
                        end: i,
                        statement_end: true,
                    });
                    range_start = i + 1;
                }
                b' ' | b'\t' | b'\n' | b'\r' | b','
                    if pieces.is_some_and(|size| i + 1 - range_start >= size) =>
                {
                    ranges.push(Range {
                        start: range_start,
                        end: i + 1,
                        statement_end: false,
                    });
                    range_start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    if pieces.is_some() {
        ranges.push(Range {
            start: range_start,
            end: bytes.len(),
            statement_end: true,
        });
    }
    let code = match blanked {
        // Only ASCII bytes were replaced (by ASCII spaces): the text is still UTF-8.
        Some(copy) => String::from_utf8(copy).map_or(Cow::Borrowed(sql), Cow::Owned),
        None => Cow::Borrowed(sql),
    };
    (code, ranges)
}

/// The significant tokens of `code` (no whitespace or comments), or `None` when the
/// tokenizer rejects it (an unterminated string, quoted name or comment: the server rejects
/// those too).
fn tokenize(code: &str) -> Option<Vec<TokenWithSpan>> {
    let dialect = MySqlDialect {};
    let mut tokens = Tokenizer::new(&dialect, code)
        .tokenize_with_location()
        .ok()?;
    tokens.retain(|token| !matches!(token.token, Token::Whitespace(_) | Token::EOF));
    Some(tokens)
}

/// A text too long to tokenize whole: a write of unknown effects, with the pins and session
/// functions its pieces show.
fn classify_long(sql: &str, hint: Option<RouteHint>) -> Classification {
    let mut out = Classification::unknown(hint);
    let (code, ranges) = executable_code(sql, Some(PIECE_BYTES));
    // The last few tokens of the previous piece go before the next one, so that patterns
    // across a cut (`GET_LOCK` `(`, `@x` `:=`) are still seen.
    let mut carried: Vec<TokenWithSpan> = Vec::new();
    let mut head: Vec<TokenWithSpan> = Vec::new();
    let mut facts = Facts::default();
    for range in ranges {
        let Some(tokens) = code.get(range.start..range.end).and_then(tokenize) else {
            carried.clear();
            continue;
        };
        if head.len() < 4 {
            head.extend(tokens.iter().take(4 - head.len()).cloned());
        }
        carried.extend(tokens);
        scan(&carried, &mut facts);
        let keep = carried.len().saturating_sub(4);
        carried.drain(..keep);
        if range.statement_end {
            facts_pins(&facts, &mut out);
            if let Some(reason) = leading_pin(&head, &facts) {
                out.pin(reason);
            }
            out.session_functions.merge(facts.functions);
            facts = Facts::default();
            carried.clear();
            head.clear();
        }
    }
    out
}

/// What a long statement's first tokens say about pins (the statements [`classify_statement`]
/// pins by their kind).
fn leading_pin(head: &[TokenWithSpan], facts: &Facts) -> Option<PinReason> {
    let word = |i: usize| bare(head.get(i)).unwrap_or_default().to_ascii_uppercase();
    match word(0).as_str() {
        "CREATE" if create_temporary(head) => Some(PinReason::TempTable),
        "LOCK" | "BACKUP" | "FLUSH" => Some(PinReason::Lock),
        "HANDLER" => Some(PinReason::Handler),
        "PREPARE" | "EXECUTE" | "DEALLOCATE" => Some(PinReason::SqlPrepare),
        "DROP" if word(1) == "PREPARE" => Some(PinReason::SqlPrepare),
        "XA" if matches!(word(1).as_str(), "START" | "BEGIN") => Some(PinReason::XaTransaction),
        "SET" if user_variable(head, 1).is_some() => Some(PinReason::UserVariable),
        "SET" => Some(PinReason::Unreplayable),
        "CALL" | "LOAD" | "GET" if facts.user_variable_named => Some(PinReason::UserVariable),
        _ => None,
    }
}

/// One statement of a text, as [`statements`] cuts it.
enum Piece<'t> {
    /// Tokens up to a `;`.
    Statement(&'t [TokenWithSpan]),
    /// A routine, trigger, event or package definition, or a MariaDB compound statement,
    /// with everything after it (its body holds `;`).
    Compound(&'t [TokenWithSpan]),
}

/// The statements of a text, cut at `;` tokens (empty ones skipped), except that a statement
/// with a body runs to the end of the text.
fn statements(tokens: &[TokenWithSpan]) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = tokens;
    while let Some(first) = rest.first() {
        if first.token == Token::SemiColon {
            rest = rest.get(1..).unwrap_or_default();
            continue;
        }
        if has_body(rest) {
            pieces.push(Piece::Compound(rest));
            break;
        }
        let end = rest
            .iter()
            .position(|token| token.token == Token::SemiColon)
            .unwrap_or(rest.len());
        pieces.push(Piece::Statement(rest.get(..end).unwrap_or(rest)));
        rest = rest.get(end..).unwrap_or_default();
    }
    pieces
}

/// Whether the statement starting `tokens` has a body of statements: `CREATE`/`ALTER` naming
/// `PROCEDURE`, `FUNCTION`, `TRIGGER`, `EVENT` or `PACKAGE` before its first `(` or `;`, or a
/// MariaDB compound statement (`BEGIN NOT ATOMIC`, `IF`, `CASE`, `LOOP`, `REPEAT`, `WHILE`,
/// `FOR`, a label `name:`).
fn has_body(tokens: &[TokenWithSpan]) -> bool {
    if anonymous_block(tokens) {
        return true;
    }
    if !(is_kw(tokens.first(), "CREATE") || is_kw(tokens.first(), "ALTER")) {
        return false;
    }
    tokens
        .iter()
        .take_while(|token| !matches!(token.token, Token::LParen | Token::SemiColon))
        .any(|token| {
            ["PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"]
                .iter()
                .any(|word| is_kw(Some(token), word))
        })
}

/// A MariaDB compound statement outside a stored program: code runs that the text shows
/// only as a block.
fn anonymous_block(tokens: &[TokenWithSpan]) -> bool {
    let first = tokens.first();
    (is_kw(first, "BEGIN") && is_kw(tokens.get(1), "NOT") && is_kw(tokens.get(2), "ATOMIC"))
        || ["IF", "CASE", "LOOP", "REPEAT", "WHILE", "FOR"]
            .iter()
            .any(|word| is_kw(first, word))
        || (matches!(first.map(|t| &t.token), Some(Token::Word(_)))
            && tokens.get(1).is_some_and(|t| t.token == Token::Colon))
}

/// A statement that runs to the end of the text (see [`has_body`]).
fn compound(tokens: &[TokenWithSpan], source: &Source<'_>, out: &mut Classification) {
    if anonymous_block(tokens) {
        let mut facts = Facts::default();
        scan(tokens, &mut facts);
        facts_pins(&facts, out);
        out.session_functions.merge(facts.functions);
        out.access = Access::Write;
        out.untracked = true;
    } else {
        classify_statement(tokens, source, out, 0);
    }
}

/// How a statement's kind classifies it, before its tokens' facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A replica may run it (unless its facts make it a write).
    Read,
    /// The primary runs it.
    Write,
    /// The primary runs it, and its effects on the session are unknown.
    Unknown,
}

/// Adds one statement's effects to `out`. `depth` counts MariaDB `SET STATEMENT … FOR`
/// wrappers.
fn classify_statement(
    tokens: &[TokenWithSpan],
    source: &Source<'_>,
    out: &mut Classification,
    depth: usize,
) {
    let mut facts = Facts::default();
    scan(tokens, &mut facts);
    facts_pins(&facts, out);
    out.session_functions.merge(facts.functions);
    let word = |i: usize| bare(tokens.get(i)).unwrap_or_default().to_ascii_uppercase();
    let verdict = match word(0).as_str() {
        "SELECT" | "WITH" | "VALUES" | "TABLE" => query(tokens),
        "" if tokens.first().is_some_and(|t| t.token == Token::LParen) => query(tokens),
        "SHOW" => show(tokens, out),
        "EXPLAIN" | "DESCRIBE" | "DESC" => match parse(tokens) {
            Parsed::ExplainTable | Parsed::Explain { of_read: true } => Verdict::Read,
            Parsed::Rejected => Verdict::Unknown,
            _ => Verdict::Write,
        },
        "SET" => set(tokens, source, out, depth),
        "USE" => match (tokens.get(1).map(|t| &t.token), tokens.len()) {
            (Some(Token::Word(name)), 2) => {
                out.session.push(SessionChange::Use {
                    database: name.value.clone(),
                });
                Verdict::Read
            }
            _ => Verdict::Unknown,
        },
        "BEGIN" | "START" | "COMMIT" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" => {
            transaction(tokens, out)
        }
        "XA" => xa(tokens, out),
        "PREPARE" => {
            out.pin(PinReason::SqlPrepare);
            if is_kw(tokens.get(2), "FROM") && tokens.len() == 4 {
                Verdict::Write
            } else {
                Verdict::Unknown
            }
        }
        "EXECUTE" => {
            out.pin(PinReason::SqlPrepare);
            Verdict::Unknown
        }
        "DEALLOCATE" | "DROP" if word(1) == "PREPARE" => {
            out.pin(PinReason::SqlPrepare);
            if tokens.len() == 3 {
                Verdict::Write
            } else {
                Verdict::Unknown
            }
        }
        "LOCK" => {
            out.pin(PinReason::Lock);
            locking(tokens)
        }
        "UNLOCK" => locking(tokens),
        "BACKUP" => {
            out.pin(PinReason::Lock);
            Verdict::Write
        }
        "FLUSH" => {
            if has_words(tokens, &["WITH", "READ", "LOCK"]) || has_words(tokens, &["FOR", "EXPORT"])
            {
                out.pin(PinReason::Lock);
            }
            parsed_write(tokens)
        }
        "HANDLER" => {
            out.pin(PinReason::Handler);
            if ["OPEN", "READ", "CLOSE"]
                .iter()
                .any(|verb| tokens.iter().any(|t| is_kw(Some(t), verb)))
            {
                Verdict::Write
            } else {
                Verdict::Unknown
            }
        }
        "DO" => do_statement(tokens),
        "CREATE" => {
            if create_temporary(tokens) {
                out.pin(PinReason::TempTable);
            }
            parsed_write(tokens)
        }
        "CALL" | "LOAD" => {
            if facts.user_variable_named {
                out.pin(PinReason::UserVariable);
            }
            Verdict::Unknown
        }
        "GET" if has_words(tokens, &["DIAGNOSTICS"]) => {
            out.session_functions.diagnostics = true;
            if facts.user_variable_named {
                out.pin(PinReason::UserVariable);
            }
            Verdict::Read
        }
        "INSTALL" | "UNINSTALL" => Verdict::Unknown,
        _ => parsed_write(tokens),
    };
    match verdict {
        Verdict::Read if !facts.writes && out.pins.is_none() => {}
        Verdict::Read | Verdict::Write => out.access = Access::Write,
        Verdict::Unknown => {
            out.access = Access::Write;
            out.untracked = true;
        }
    }
    if out.pins.is_some() {
        out.access = Access::Write;
    }
}

/// The pins a statement's token facts show.
fn facts_pins(facts: &Facts, out: &mut Classification) {
    if facts.lock {
        out.pin(PinReason::Lock);
    }
    if facts.user_variable_set {
        out.pin(PinReason::UserVariable);
    }
    if facts.calc_found_rows {
        out.pin(PinReason::FoundRows);
    }
}

/// `CREATE [OR REPLACE] TEMPORARY …`.
fn create_temporary(tokens: &[TokenWithSpan]) -> bool {
    let at = if is_kw(tokens.get(1), "OR") && is_kw(tokens.get(2), "REPLACE") {
        3
    } else {
        1
    };
    is_kw(tokens.first(), "CREATE") && is_kw(tokens.get(at), "TEMPORARY")
}

/// A `SELECT`-like statement: a read when the parser accepts it as a query that reads. The
/// parser lacks `LOCK IN SHARE MODE` and some places of `INTO`: a query with them (a write
/// by its tokens) that the parser accepts without them is a write of known effects.
fn query(tokens: &[TokenWithSpan]) -> Verdict {
    match parse(tokens) {
        Parsed::Query { reads: true } => Verdict::Read,
        Parsed::Rejected => match without_mysql_clauses(tokens).map(|query| parse(&query)) {
            Some(Parsed::Query { .. }) => Verdict::Write,
            _ => Verdict::Unknown,
        },
        _ => Verdict::Write,
    }
}

/// A query's tokens without a final `LOCK IN SHARE MODE` and without its (first, outside
/// parentheses) `INTO …` clause, up to the clause after it; `None` when it has neither.
fn without_mysql_clauses(tokens: &[TokenWithSpan]) -> Option<Vec<TokenWithSpan>> {
    let mut kept = tokens;
    let lock = ["LOCK", "IN", "SHARE", "MODE"];
    let locked = kept.len() > lock.len()
        && has_words(
            kept.get(kept.len() - lock.len()..).unwrap_or_default(),
            &lock,
        );
    if locked {
        kept = kept.get(..kept.len() - lock.len())?;
    }
    let into = top_level(kept).find(|(_, token)| is_kw(Some(token), "INTO"));
    let Some((start, _)) = into else {
        return locked.then(|| kept.to_vec());
    };
    let end = top_level(kept)
        .skip_while(|&(at, _)| at <= start)
        .find(|(_, token)| {
            [
                "FROM",
                "WHERE",
                "GROUP",
                "HAVING",
                "WINDOW",
                "ORDER",
                "LIMIT",
                "FOR",
                "LOCK",
                "UNION",
                "EXCEPT",
                "INTERSECT",
            ]
            .iter()
            .any(|word| is_kw(Some(token), word))
        })
        .map_or(kept.len(), |(at, _)| at);
    let mut query = kept.get(..start)?.to_vec();
    query.extend_from_slice(kept.get(end..)?);
    Some(query)
}

/// A statement that writes: of unknown effects when the parser rejects it.
fn parsed_write(tokens: &[TokenWithSpan]) -> Verdict {
    match parse(tokens) {
        Parsed::Rejected => Verdict::Unknown,
        _ => Verdict::Write,
    }
}

/// `DO expr, …`: read as `SELECT expr, …`.
fn do_statement(tokens: &[TokenWithSpan]) -> Verdict {
    let Some(first) = tokens.first() else {
        return Verdict::Unknown;
    };
    let mut select = Vec::with_capacity(tokens.len());
    select.push(TokenWithSpan {
        token: Token::make_keyword("SELECT"),
        span: first.span,
    });
    select.extend(tokens.iter().skip(1).cloned());
    query(&select)
}

/// `SHOW …`: always a read; the forms that read the previous statement's diagnostics are
/// noted.
fn show(tokens: &[TokenWithSpan], out: &mut Classification) -> Verdict {
    let second = bare(tokens.get(1)).unwrap_or_default();
    let diagnostics = ["WARNINGS", "ERRORS", "PROFILE", "PROFILES"]
        .iter()
        .any(|word| second.eq_ignore_ascii_case(word))
        || (second.eq_ignore_ascii_case("COUNT")
            && (has_words(tokens, &["WARNINGS"]) || has_words(tokens, &["ERRORS"])));
    if diagnostics {
        out.session_functions.diagnostics = true;
    }
    Verdict::Read
}

/// `LOCK TABLE[S]`/`LOCK INSTANCE …`, `UNLOCK TABLE[S]`/`UNLOCK INSTANCE`.
fn locking(tokens: &[TokenWithSpan]) -> Verdict {
    if ["TABLE", "TABLES", "INSTANCE"]
        .iter()
        .any(|word| is_kw(tokens.get(1), word))
    {
        Verdict::Write
    } else {
        Verdict::Unknown
    }
}

/// `BEGIN`, `START TRANSACTION`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `RELEASE SAVEPOINT`,
/// read from tokens (the parser lacks some of MySQL's forms).
fn transaction(tokens: &[TokenWithSpan], out: &mut Classification) -> Verdict {
    let mut words = Words::new(tokens);
    let command = if words.eat("BEGIN") {
        words.eat("WORK");
        TxnCommand::Begin { read_only: false }
    } else if words.eat("START") {
        if !words.eat("TRANSACTION") {
            return Verdict::Unknown;
        }
        let mut read_only = false;
        if !words.done() {
            loop {
                if words.eat_all(&["READ", "ONLY"]) {
                    read_only = true;
                } else if !(words.eat_all(&["WITH", "CONSISTENT", "SNAPSHOT"])
                    || words.eat_all(&["READ", "WRITE"]))
                {
                    return Verdict::Unknown;
                }
                if !words.eat_token(&Token::Comma) {
                    break;
                }
            }
        }
        TxnCommand::Begin { read_only }
    } else if words.eat("SAVEPOINT") {
        return if words.name() && words.done() {
            Verdict::Read
        } else {
            Verdict::Unknown
        };
    } else if words.eat("RELEASE") {
        return if words.eat("SAVEPOINT") && words.name() && words.done() {
            Verdict::Read
        } else {
            Verdict::Unknown
        };
    } else {
        let commit = words.eat("COMMIT");
        if !commit && !words.eat("ROLLBACK") {
            return Verdict::Unknown;
        }
        words.eat("WORK");
        if !commit && words.eat("TO") {
            // `ROLLBACK [WORK] TO [SAVEPOINT] name`: the transaction goes on.
            words.eat("SAVEPOINT");
            return if words.name() && words.done() {
                Verdict::Read
            } else {
                Verdict::Unknown
            };
        }
        if words.eat("AND") {
            words.eat("NO");
            if !words.eat("CHAIN") {
                return Verdict::Unknown;
            }
        }
        words.eat("NO");
        words.eat("RELEASE");
        if commit {
            TxnCommand::Commit
        } else {
            TxnCommand::Rollback
        }
    };
    if !words.done() {
        return Verdict::Unknown;
    }
    out.transaction.get_or_insert(command);
    Verdict::Read
}

/// `XA START|BEGIN|END|PREPARE|COMMIT|ROLLBACK|RECOVER …`: all run on the primary; an XA
/// transaction pins its connection from its start.
fn xa(tokens: &[TokenWithSpan], out: &mut Classification) -> Verdict {
    let verb = bare(tokens.get(1)).unwrap_or_default().to_ascii_uppercase();
    let command = match verb.as_str() {
        "START" | "BEGIN" => {
            out.pin(PinReason::XaTransaction);
            Some(TxnCommand::Begin { read_only: false })
        }
        "COMMIT" => Some(TxnCommand::Commit),
        "ROLLBACK" => Some(TxnCommand::Rollback),
        "END" | "PREPARE" | "RECOVER" => None,
        _ => return Verdict::Unknown,
    };
    if let Some(command) = command {
        out.transaction.get_or_insert(command);
    }
    Verdict::Write
}

/// The scope a `SET` assignment applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Session,
    /// `GLOBAL`, `PERSIST`, `PERSIST_ONLY`: the server's settings, a write.
    Global,
    /// `@@name` without a scope word, for the transaction characteristics: the next
    /// transaction only.
    NextTransaction,
}

/// The scope a `SET` scope word names.
fn scope_word(token: Option<&TokenWithSpan>) -> Option<Scope> {
    let word = bare(token)?;
    if word.eq_ignore_ascii_case("SESSION") || word.eq_ignore_ascii_case("LOCAL") {
        Some(Scope::Session)
    } else if ["GLOBAL", "PERSIST", "PERSIST_ONLY"]
        .iter()
        .any(|scope| word.eq_ignore_ascii_case(scope))
    {
        Some(Scope::Global)
    } else {
        None
    }
}

/// What the assignments of one `SET` statement do, together.
#[derive(Debug, Default)]
struct Assignments {
    count: usize,
    global: bool,
    user: bool,
    session: bool,
    next_transaction: bool,
    unreadable: bool,
    unreplayable: bool,
    /// The value of a `switchyard.route` assignment (session scope).
    route: Option<SessionChange>,
}

/// A `SET` statement, read from tokens: its scope words, user variables, system variables,
/// `NAMES`, `CHARACTER SET`, `TRANSACTION`, `ROLE`, `PASSWORD`, MariaDB's `STATEMENT … FOR`.
fn set(
    tokens: &[TokenWithSpan],
    source: &Source<'_>,
    out: &mut Classification,
    depth: usize,
) -> Verdict {
    let rest = tokens.get(1..).unwrap_or_default();
    let scope = scope_word(rest.first());
    let after_scope = usize::from(scope.is_some());
    if is_kw(rest.get(after_scope), "TRANSACTION") {
        return match scope {
            None => match source.text(tokens) {
                Some(text) => {
                    out.next_transaction = Some(text.to_string());
                    out.untracked = true;
                    Verdict::Read
                }
                None => Verdict::Unknown,
            },
            Some(Scope::Session) => replay(tokens, source, out),
            Some(_) => Verdict::Write,
        };
    }
    if scope.is_none() {
        let first = rest.first();
        if is_kw(first, "ROLE") {
            return replay(tokens, source, out);
        }
        if is_kw(first, "PASSWORD") || (is_kw(first, "DEFAULT") && is_kw(rest.get(1), "ROLE")) {
            return parsed_write(tokens);
        }
        if is_kw(first, "RESOURCE") {
            return Verdict::Unknown;
        }
        if is_kw(first, "STATEMENT") {
            // MariaDB `SET STATEMENT var = value, … FOR statement`: the settings last the one
            // statement, which is what counts.
            let Some((at, _)) = top_level(rest).find(|(_, token)| is_kw(Some(token), "FOR")) else {
                return Verdict::Unknown;
            };
            let inner = rest.get(at + 1..).unwrap_or_default();
            if inner.is_empty() || depth >= 4 {
                return Verdict::Unknown;
            }
            classify_statement(inner, source, out, depth + 1);
            return Verdict::Read;
        }
    }
    let Some(assignments) = assignments(rest) else {
        return Verdict::Unknown;
    };
    if assignments.count == 1
        && let Some(route) = assignments.route
    {
        out.session.push(route);
        return Verdict::Read;
    }
    let session = assignments.session || assignments.route.is_some();
    if assignments.global {
        if assignments.user {
            out.pin(PinReason::UserVariable);
        } else if session || assignments.next_transaction {
            out.pin(PinReason::Unreplayable);
        }
        return Verdict::Write;
    }
    if assignments.user {
        out.pin(PinReason::UserVariable);
        return Verdict::Write;
    }
    if assignments.next_transaction {
        if session {
            out.pin(PinReason::Unreplayable);
            return Verdict::Write;
        }
        return match source.text(tokens) {
            Some(text) => {
                out.next_transaction = Some(text.to_string());
                out.untracked = true;
                Verdict::Read
            }
            None => Verdict::Unknown,
        };
    }
    if assignments.unreadable {
        out.pin(PinReason::Unreadable);
        return Verdict::Write;
    }
    if assignments.unreplayable {
        out.pin(PinReason::Unreplayable);
        return Verdict::Write;
    }
    replay(tokens, source, out)
}

/// Reports the statement as a session `SET` to replay as written.
fn replay(tokens: &[TokenWithSpan], source: &Source<'_>, out: &mut Classification) -> Verdict {
    match source.text(tokens) {
        Some(text) => {
            out.session.push(SessionChange::Set {
                statement: text.to_string(),
            });
            Verdict::Read
        }
        None => Verdict::Unknown,
    }
}

/// The assignments after `SET` (and no other form), or `None` when they do not read as
/// assignments. A scope word applies to the assignments after it until the next one.
fn assignments(tokens: &[TokenWithSpan]) -> Option<Assignments> {
    let mut found = Assignments::default();
    let mut scope = Scope::Session;
    let mut start = 0;
    let cuts = top_level(tokens)
        .filter(|(_, token)| token.token == Token::Comma)
        .map(|(at, _)| at)
        .chain(std::iter::once(tokens.len()));
    for end in cuts {
        let item = tokens.get(start..end)?;
        start = end + 1;
        found.count += 1;
        let mut at = 0;
        if let Some(word_scope) = scope_word(item.first()) {
            scope = word_scope;
            at = 1;
        }
        let target = item.get(at..)?;
        // `NAMES x [COLLATE y]`, `CHARACTER SET x`, `CHARSET x`.
        let charset = if is_kw(target.first(), "NAMES") || is_kw(target.first(), "CHARSET") {
            Some(target.get(1..)?)
        } else if is_kw(target.first(), "CHARACTER") && is_kw(target.get(1), "SET") {
            Some(target.get(2..)?)
        } else {
            None
        };
        if let Some(value) = charset {
            let name = value.first()?;
            let default = is_kw(Some(name), "DEFAULT");
            if !default && !readable_charset(name) {
                found.unreadable = true;
            }
            match scope {
                Scope::Global => found.global = true,
                _ => found.session = true,
            }
            continue;
        }
        let (variable, value) = assignment(target, scope)?;
        match variable {
            Variable::User => found.user = true,
            Variable::System {
                scope: Scope::Global,
                ..
            } => found.global = true,
            Variable::System {
                scope: Scope::NextTransaction,
                ..
            } => found.next_transaction = true,
            Variable::System { name, .. } => {
                if value.iter().any(|token| is_kw(Some(token), "SELECT")) {
                    found.unreplayable = true;
                }
                match name.as_str() {
                    ROUTE_VARIABLE => found.route = Some(route_value(value)),
                    "character_set_client" => {
                        let readable = match value {
                            [one] => is_kw(Some(one), "DEFAULT") || readable_charset(one),
                            _ => false,
                        };
                        found.unreadable |= !readable;
                        found.session = true;
                    }
                    "sql_mode" => {
                        found.unreadable |= !readable_sql_mode(value);
                        found.session = true;
                    }
                    _ => found.session = true,
                }
            }
        }
    }
    Some(found)
}

/// What a `SET` assigns to.
#[derive(Debug, PartialEq, Eq)]
enum Variable {
    /// `@name`.
    User,
    /// A system variable (lower case, dotted parts joined) in a scope.
    System { name: String, scope: Scope },
}

/// One assignment `target = value` (or `:=`), in `scope` unless the target names its own.
fn assignment(tokens: &[TokenWithSpan], scope: Scope) -> Option<(Variable, &[TokenWithSpan])> {
    let (variable, length) = if let Some(length) = user_variable(tokens, 0) {
        (Variable::User, length)
    } else {
        let Token::Word(first) = &tokens.first()?.token else {
            return None;
        };
        let mut parts = Vec::new();
        let mut scope = scope;
        let mut at = 1;
        if first.quote_style.is_none()
            && let Some(name) = first.value.strip_prefix("@@")
        {
            let named = match name.to_ascii_lowercase().as_str() {
                "session" | "local" => Some(Scope::Session),
                "global" | "persist" | "persist_only" => Some(Scope::Global),
                _ => None,
            };
            match named {
                Some(named) if tokens.get(1).is_some_and(|t| t.token == Token::Period) => {
                    scope = named;
                    at = 2;
                }
                _ => {
                    scope = Scope::Session;
                    parts.push(name.to_ascii_lowercase());
                }
            }
            if parts
                .first()
                .is_some_and(|name| NEXT_TRANSACTION_VARIABLES.contains(&name.as_str()))
            {
                scope = Scope::NextTransaction;
            }
        } else {
            parts.push(first.value.to_ascii_lowercase());
        }
        loop {
            if parts.is_empty() || tokens.get(at).is_some_and(|t| t.token == Token::Period) {
                let step = usize::from(!parts.is_empty());
                let Some(Token::Word(part)) = tokens.get(at + step).map(|t| &t.token) else {
                    return None;
                };
                parts.push(part.value.to_ascii_lowercase());
                at += step + 1;
            } else {
                break;
            }
        }
        (
            Variable::System {
                name: parts.join("."),
                scope,
            },
            at,
        )
    };
    match tokens.get(length).map(|t| &t.token) {
        Some(Token::Eq | Token::Assignment) => {}
        _ => return None,
    }
    let value = tokens.get(length + 1..)?;
    if value.is_empty() {
        return None;
    }
    Some((variable, value))
}

/// The value of `SET switchyard.route = …`.
fn route_value(value: &[TokenWithSpan]) -> SessionChange {
    let text = match value {
        [one] => match &one.token {
            Token::Word(word)
                if word.quote_style.is_none() && word.value.eq_ignore_ascii_case("default") =>
            {
                return SessionChange::Route(RouteOverride::Auto);
            }
            Token::Word(word) => word.value.clone(),
            Token::SingleQuotedString(text) | Token::DoubleQuotedString(text) => text.clone(),
            other => other.to_string(),
        },
        _ => value
            .iter()
            .map(|token| token.token.to_string())
            .collect::<Vec<_>>()
            .join(" "),
    };
    match text.to_ascii_lowercase().as_str() {
        "primary" => SessionChange::Route(RouteOverride::Primary),
        "replica" => SessionChange::Route(RouteOverride::Replica),
        "auto" => SessionChange::Route(RouteOverride::Auto),
        _ => SessionChange::BadRoute(text),
    }
}

/// Whether a character set named by this token keeps the proxy reading as the server does.
fn readable_charset(token: &TokenWithSpan) -> bool {
    let name = match &token.token {
        Token::Word(word) if !word.value.starts_with('@') => &word.value,
        Token::SingleQuotedString(text) | Token::DoubleQuotedString(text) => text,
        _ => return false,
    };
    !name.is_empty()
        && !UNREADABLE_CHARSETS
            .iter()
            .any(|charset| name.eq_ignore_ascii_case(charset))
}

/// Whether a `sql_mode` value keeps the proxy reading as the server does: `DEFAULT`, or a
/// constant list of modes without [`UNREADABLE_SQL_MODES`].
fn readable_sql_mode(value: &[TokenWithSpan]) -> bool {
    let [one] = value else {
        return false;
    };
    let modes = match &one.token {
        Token::Word(word)
            if word.quote_style.is_none() && word.value.eq_ignore_ascii_case("default") =>
        {
            return true;
        }
        Token::Word(word) if !word.value.starts_with('@') => &word.value,
        Token::SingleQuotedString(text) | Token::DoubleQuotedString(text) => text,
        _ => return false,
    };
    !modes.split(',').any(|mode| {
        UNREADABLE_SQL_MODES
            .iter()
            .any(|unreadable| mode.trim().eq_ignore_ascii_case(unreadable))
    })
}

/// The tokens of `tokens` outside parentheses, with their positions.
fn top_level(tokens: &[TokenWithSpan]) -> impl Iterator<Item = (usize, &TokenWithSpan)> {
    let mut depth = 0usize;
    tokens.iter().enumerate().filter(move |(_, token)| {
        match token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ => return depth == 0,
        }
        false
    })
}

/// The length of the user variable at `at` (`@name`, `@'name'`, `` @`name` ``, `@"name"`),
/// if there is one.
fn user_variable(tokens: &[TokenWithSpan], at: usize) -> Option<usize> {
    match &tokens.get(at)?.token {
        Token::Word(word)
            if word.quote_style.is_none()
                && word.value.starts_with('@')
                && !word.value.starts_with("@@") =>
        {
            Some(1)
        }
        Token::AtSign => match &tokens.get(at + 1)?.token {
            Token::SingleQuotedString(_) | Token::DoubleQuotedString(_) => Some(2),
            Token::Word(word) if word.quote_style.is_some() => Some(2),
            _ => None,
        },
        _ => None,
    }
}

/// What a statement's tokens show wherever they are, whatever its kind.
#[derive(Debug, Default)]
struct Facts {
    /// A row lock, `INTO`, a write function or a sequence access: not a read.
    writes: bool,
    /// `GET_LOCK(`.
    lock: bool,
    /// A user variable assigned by `:=` or `INTO`.
    user_variable_set: bool,
    /// A user variable named anywhere.
    user_variable_named: bool,
    /// `SQL_CALC_FOUND_ROWS`.
    calc_found_rows: bool,
    functions: SessionFunctions,
}

/// Notes the facts of `tokens` (see [`Facts`]).
fn scan(tokens: &[TokenWithSpan], facts: &mut Facts) {
    for (i, token) in tokens.iter().enumerate() {
        if let Some(length) = user_variable(tokens, i) {
            facts.user_variable_named = true;
            if tokens
                .get(i + length)
                .is_some_and(|t| t.token == Token::Assignment)
            {
                facts.user_variable_set = true;
            }
            continue;
        }
        let Token::Word(word) = &token.token else {
            continue;
        };
        let next = tokens.get(i + 1).map(|t| &t.token);
        if next == Some(&Token::LParen)
            && word.quote_style.is_none_or(|quote| quote == '`')
            && !(i > 0 && tokens.get(i - 1).is_some_and(|t| t.token == Token::Period))
        {
            function_call(word, tokens.get(i + 2).map(|t| &t.token), facts);
            continue;
        }
        if word.quote_style.is_some() {
            continue;
        }
        let value = word.value.as_str();
        if let Some(variable) = value.strip_prefix("@@") {
            system_variable(variable, tokens, i, facts);
        } else if value.eq_ignore_ascii_case("SQL_CALC_FOUND_ROWS") {
            facts.calc_found_rows = true;
        } else if value.eq_ignore_ascii_case("INTO") {
            facts.writes = true;
            if user_variable(tokens, i + 1).is_some() {
                facts.user_variable_set = true;
            }
        } else if value.eq_ignore_ascii_case("FOR") {
            if is_kw(tokens.get(i + 1), "UPDATE") || is_kw(tokens.get(i + 1), "SHARE") {
                facts.writes = true;
            }
        } else if value.eq_ignore_ascii_case("LOCK") {
            if has_words(
                tokens.get(i + 1..).unwrap_or_default(),
                &["IN", "SHARE", "MODE"],
            ) {
                facts.writes = true;
            }
        } else if (value.eq_ignore_ascii_case("NEXT") || value.eq_ignore_ascii_case("PREVIOUS"))
            && is_kw(tokens.get(i + 1), "VALUE")
            && is_kw(tokens.get(i + 2), "FOR")
        {
            facts.writes = true;
        }
    }
}

/// A call of `word(`; `after` is the token after the parenthesis.
fn function_call(word: &Word, after: Option<&Token>, facts: &mut Facts) {
    let name = word.value.as_str();
    if !WRITE_FUNCTIONS
        .iter()
        .any(|function| name.eq_ignore_ascii_case(function))
    {
        return;
    }
    facts.writes = true;
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "get_lock" => facts.lock = true,
        "last_insert_id" if after == Some(&Token::RParen) => facts.functions.last_insert_id = true,
        "last_insert_id" => facts.functions.sets_last_insert_id = true,
        "row_count" => facts.functions.row_count = true,
        "found_rows" => facts.functions.found_rows = true,
        _ => {}
    }
}

/// A system variable `@@name` (or `@@session.name`, …) at `at`.
fn system_variable(name: &str, tokens: &[TokenWithSpan], at: usize, facts: &mut Facts) {
    let scoped = ["session", "local", "global"]
        .iter()
        .any(|scope| name.eq_ignore_ascii_case(scope));
    let name = if scoped && tokens.get(at + 1).is_some_and(|t| t.token == Token::Period) {
        bare(tokens.get(at + 2)).unwrap_or_default()
    } else {
        name
    };
    let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
    if is("identity") || is("last_insert_id") {
        facts.functions.last_insert_id = true;
        facts.writes = true;
    } else if is("warning_count") || is("error_count") {
        facts.functions.diagnostics = true;
    }
}

/// The unquoted word a token is.
fn bare(token: Option<&TokenWithSpan>) -> Option<&str> {
    match &token?.token {
        Token::Word(word) if word.quote_style.is_none() => Some(&word.value),
        _ => None,
    }
}

/// Whether a token is the unquoted word `keyword` (any case).
fn is_kw(token: Option<&TokenWithSpan>, keyword: &str) -> bool {
    bare(token).is_some_and(|word| word.eq_ignore_ascii_case(keyword))
}

/// Whether the unquoted words `words` follow one another somewhere in `tokens`.
fn has_words(tokens: &[TokenWithSpan], words: &[&str]) -> bool {
    (0..tokens.len()).any(|start| {
        words
            .iter()
            .enumerate()
            .all(|(offset, word)| is_kw(tokens.get(start + offset), word))
    })
}

/// A cursor over a statement's tokens, for the statements read from tokens.
struct Words<'t> {
    tokens: &'t [TokenWithSpan],
    at: usize,
}

impl<'t> Words<'t> {
    fn new(tokens: &'t [TokenWithSpan]) -> Self {
        Self { tokens, at: 0 }
    }

    /// Takes the unquoted word `keyword`, if it is next.
    fn eat(&mut self, keyword: &str) -> bool {
        let found = is_kw(self.tokens.get(self.at), keyword);
        self.at += usize::from(found);
        found
    }

    /// Takes the words `keywords`, if they are next (all or none).
    fn eat_all(&mut self, keywords: &[&str]) -> bool {
        let found = keywords
            .iter()
            .enumerate()
            .all(|(offset, word)| is_kw(self.tokens.get(self.at + offset), word));
        if found {
            self.at += keywords.len();
        }
        found
    }

    /// Takes `token`, if it is next.
    fn eat_token(&mut self, token: &Token) -> bool {
        let found = self.tokens.get(self.at).is_some_and(|t| &t.token == token);
        self.at += usize::from(found);
        found
    }

    /// Takes a name (a word, quoted or not), if one is next.
    fn name(&mut self) -> bool {
        let found = matches!(
            self.tokens.get(self.at).map(|t| &t.token),
            Some(Token::Word(_))
        );
        self.at += usize::from(found);
        found
    }

    /// Whether every token was taken.
    fn done(&self) -> bool {
        self.at >= self.tokens.len()
    }
}

/// The code text tokens were read from, to cut statements out of it.
struct Source<'s> {
    code: &'s str,
    /// Where each line starts (tokens know their line and column, in characters).
    lines: OnceCell<Vec<usize>>,
}

impl<'s> Source<'s> {
    fn new(code: &'s str) -> Self {
        Self {
            code,
            lines: OnceCell::new(),
        }
    }

    /// The byte position of a token location.
    fn offset(&self, location: Location) -> Option<usize> {
        let lines = self.lines.get_or_init(|| {
            std::iter::once(0)
                .chain(self.code.match_indices('\n').map(|(at, _)| at + 1))
                .collect()
        });
        let line_start = *lines.get(usize::try_from(location.line).ok()?.checked_sub(1)?)?;
        let column = usize::try_from(location.column).ok()?.checked_sub(1)?;
        let line = self.code.get(line_start..)?;
        let within = line
            .char_indices()
            .map(|(at, _)| at)
            .chain(std::iter::once(line.len()))
            .nth(column)?;
        Some(line_start + within)
    }

    /// The text from the first token's start to the last one's end, trimmed.
    fn text(&self, tokens: &[TokenWithSpan]) -> Option<&'s str> {
        let start = self.offset(tokens.first()?.span.start)?;
        let end = self.offset(tokens.last()?.span.end)?;
        Some(self.code.get(start..end)?.trim())
    }
}

/// What the parser made of one statement, reduced to what the rules need (the tree itself is
/// dropped where it was built, on the stack sized for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parsed {
    /// The parser rejected it (or it was too long to parse).
    Rejected,
    /// A query; `reads` when it has no row lock, `INTO` or data-modifying body.
    Query { reads: bool },
    /// `DESCRIBE table`.
    ExplainTable,
    /// `EXPLAIN statement`; `of_read` when the statement is a query that reads.
    Explain { of_read: bool },
    /// Any other statement.
    Other,
}

/// Parses one statement (its tokens, without `;`) with the MySQL dialect, on a stack large
/// enough for its length (see [`PARSE_STACK_PER_TOKEN`]). A panic in the parser (foreign code
/// behind a safe API) is a rejection.
fn parse(tokens: &[TokenWithSpan]) -> Parsed {
    if tokens.is_empty() || tokens.len() > MAX_PARSED_TOKENS {
        return Parsed::Rejected;
    }
    let stack = PARSE_STACK_BASE + nesting(tokens) * PARSE_STACK_PER_TOKEN;
    let tokens = tokens.to_vec();
    stacker::maybe_grow(stack, stack, move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || parse_here(tokens)))
            .unwrap_or(Parsed::Rejected)
    })
}

/// How deep a parse of `tokens` may recurse, in tokens: the most tokens, over the statement,
/// of the current list item at each open parenthesis level, added up. The parser reads list
/// items (between commas, or statements between `;` in a body) in loops, so only a chain
/// within one item (operators, joins, set operations, postfix forms) or a nesting of
/// parentheses makes it, or the drop of its tree, recurse; a statement of `n` tokens has a
/// nesting of at most `n`.
fn nesting(tokens: &[TokenWithSpan]) -> usize {
    let mut levels: Vec<usize> = vec![0];
    let mut total = 0usize;
    let mut deepest = 0usize;
    for token in tokens {
        match token.token {
            Token::LParen | Token::LBracket | Token::LBrace => levels.push(0),
            Token::RParen | Token::RBracket | Token::RBrace if levels.len() > 1 => {
                total -= levels.pop().unwrap_or_default();
            }
            Token::Comma | Token::SemiColon => {
                if let Some(item) = levels.last_mut() {
                    total -= *item;
                    *item = 0;
                }
            }
            _ => {}
        }
        if let Some(item) = levels.last_mut() {
            *item += 1;
            total += 1;
        }
        deepest = deepest.max(total);
    }
    deepest
}

/// [`parse`] on the current stack.
fn parse_here(tokens: Vec<TokenWithSpan>) -> Parsed {
    let dialect = MySqlDialect {};
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let Ok(statement) = parser.parse_statement() else {
        return Parsed::Rejected;
    };
    if parser.peek_token_ref().token != Token::EOF {
        return Parsed::Rejected;
    }
    match &statement {
        Statement::Query(query) => Parsed::Query {
            reads: query_reads(query),
        },
        Statement::ExplainTable { .. } => Parsed::ExplainTable,
        Statement::Explain { statement, .. } => Parsed::Explain {
            of_read: matches!(statement.as_ref(), Statement::Query(query) if query_reads(query)),
        },
        _ => Parsed::Other,
    }
}

/// Whether a parsed query only reads: no row lock, no `INTO`, no data-modifying body, in it
/// or its common table expressions. (Subqueries in expressions cannot modify data in MySQL;
/// the token facts catch row locks and `INTO` anywhere.)
fn query_reads(query: &Query) -> bool {
    query.locks.is_empty()
        && query
            .with
            .as_ref()
            .is_none_or(|with| with.cte_tables.iter().all(|cte| query_reads(&cte.query)))
        && set_expr_reads(&query.body)
}

/// Whether a query body only reads.
fn set_expr_reads(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => select.into.is_none(),
        SetExpr::Query(query) => query_reads(query),
        SetExpr::SetOperation { left, right, .. } => set_expr_reads(left) && set_expr_reads(right),
        SetExpr::Values(_) | SetExpr::Table(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sql: &str) -> Classification {
        classify(sql)
    }

    fn access(sql: &str) -> Access {
        c(sql).access
    }

    fn set(statement: &str) -> SessionChange {
        SessionChange::Set {
            statement: statement.to_string(),
        }
    }

    #[test]
    fn reads() {
        for sql in [
            "SELECT 1",
            "select * from t where a = 1",
            "SELECT a FROM t WHERE b IN (SELECT b FROM u) ORDER BY a DESC LIMIT 10, 20",
            "SELECT 1 UNION SELECT 2",
            "(SELECT 1) UNION ALL (SELECT 2)",
            "SELECT * FROM (SELECT 1) x",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "WITH RECURSIVE c AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT * FROM c",
            "VALUES ROW(1, 2)",
            "SELECT SQL_NO_CACHE STRAIGHT_JOIN a FROM t FORCE INDEX (PRIMARY)",
            "SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t",
            "SELECT a->>'$.b', _utf8mb4'x' COLLATE utf8mb4_bin, x'41' FROM t",
            "SELECT * FROM t WHERE a = ? AND b = ?",
            "SELECT SLEEP(1), UUID(), UUID_SHORT(), RAND(), CONNECTION_ID()",
            "SELECT @x",
            "SELECT @@session.sql_mode, @@autocommit",
            "SELECT 'get_lock(', \"LOCK TABLES\", `INTO`",
            "/* get_lock( */ select 1",
            "SELECT 1 -- FOR UPDATE",
            "SELECT 1 # INTO @x",
            "SHOW TABLES",
            "SHOW ENGINE INNODB STATUS",
            "SHOW SESSION VARIABLES LIKE 'a%'",
            "SHOW GRANTS FOR CURRENT_USER()",
            "DESCRIBE t",
            "DESC t",
            "EXPLAIN t",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN FORMAT=JSON SELECT 1",
            "DO 1",
            "DO SLEEP(1)",
            "SET autocommit = 0",
            "USE db",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "ROLLBACK TO SAVEPOINT a",
            "SELECT 1; SELECT 2;",
            "",
            "   ",
            ";",
            "/* only a comment */",
        ] {
            let classification = c(sql);
            assert_eq!(classification.access, Access::Read, "{sql:?}");
            assert!(!classification.untracked, "{sql:?}");
            assert_eq!(classification.pins, None, "{sql:?}");
        }
    }

    #[test]
    fn writes() {
        for sql in [
            "SELECT * FROM t WHERE a = 1 FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR UPDATE NOWAIT",
            "SELECT * FROM t LOCK IN SHARE MODE",
            "SELECT * FROM (SELECT * FROM t FOR UPDATE) x",
            "SELECT a INTO OUTFILE '/tmp/x' FROM t",
            "SELECT a FROM t INTO DUMPFILE '/tmp/x'",
            "SELECT RELEASE_LOCK('a')",
            "SELECT IS_FREE_LOCK('a'), IS_USED_LOCK('a')",
            "SELECT RELEASE_ALL_LOCKS()",
            "select NextVal(s), setval(s, 5), lastval(s)",
            "SELECT NEXT VALUE FOR s",
            "SELECT PREVIOUS VALUE FOR s",
            "SELECT MASTER_POS_WAIT('f', 4), SOURCE_POS_WAIT('f', 4)",
            "SELECT MASTER_GTID_WAIT('0-1-1')",
            "SELECT LAST_INSERT_ID(5)",
            "SELECT LAST_INSERT_ID()",
            "SELECT ROW_COUNT()",
            "SELECT @@identity",
            "SHOW TABLES WHERE GET_LOCK('a', 1)",
            "DO RELEASE_LOCK('a')",
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)",
            "REPLACE INTO t VALUES (1)",
            "UPDATE t SET a = 1 ORDER BY id LIMIT 1",
            "DELETE FROM t WHERE a = 1 LIMIT 10",
            "WITH c AS (SELECT 1) DELETE FROM t WHERE a IN (SELECT * FROM c)",
            "EXPLAIN DELETE FROM t",
            "CREATE TABLE t (a INT) ENGINE=InnoDB",
            "DROP TABLE t",
            "ALTER TABLE t ADD COLUMN b INT",
            "TRUNCATE TABLE t",
            "UNLOCK TABLES",
            "KILL 5",
            "ANALYZE TABLE t",
            "SET GLOBAL max_connections = 10",
            "SET PERSIST max_connections = 10",
            "SET @@global.sql_mode = 'ANSI'",
            "SET GLOBAL TRANSACTION READ ONLY",
            "SET PASSWORD = 'x'",
            "SET DEFAULT ROLE r TO u",
            "SELECT 1; DELETE FROM t",
            "DELETE FROM t; SELECT 1",
        ] {
            assert_eq!(access(sql), Access::Write, "{sql:?}");
            assert_eq!(c(sql).session, vec![], "{sql:?}");
        }
    }

    /// Whatever the parser rejects (and this module does not read itself) is a write whose
    /// effects are unknown.
    #[test]
    fn unknown() {
        for sql in [
            "SELEC 1",
            "garbage",
            "SELECT 'unterminated",
            "SELECT `unterminated",
            "SELECT /* unterminated",
            "TABLE t",
            "UPDATE LOW_PRIORITY IGNORE t SET a = 1",
            "CALL p()",
            "EXECUTE s",
            "LOAD DATA INFILE 'x' INTO TABLE t",
            "LOAD XML INFILE 'x' INTO TABLE t",
            "INSTALL PLUGIN x SONAME 'y'",
            "UNINSTALL PLUGIN x",
            "BEGIN NOT ATOMIC SELECT 1; END",
            "IF 1 THEN SELECT 1; END IF",
            "lbl: LOOP LEAVE lbl; END LOOP",
            "SET RESOURCE GROUP rg",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "BEGIN TRANSACTION",
            "COMMIT AND",
            "USE",
            "USE a b",
            "SET",
            "SET x",
            "SET x = ",
            "SET = 1",
            "SET STATEMENT x = 1",
            "XA FOO",
            "PREPARE s",
            "SELECT 1; SELEC 2",
        ] {
            let classification = c(sql);
            assert_eq!(classification.access, Access::Write, "{sql:?}");
            assert!(classification.untracked, "{sql:?}");
            assert_eq!(classification.transaction, None, "{sql:?}");
            assert_eq!(classification.session, vec![], "{sql:?}");
        }
        assert_eq!(c("garbage"), Classification::unknown(None));
        // MySQL forms the parser lacks but this module reads itself are tracked.
        for sql in [
            "SELECT * FROM t LOCK IN SHARE MODE",
            "SELECT a INTO OUTFILE '/tmp/x' FIELDS TERMINATED BY ',' FROM t",
            "SELECT a FROM t INTO @x",
            "SET CHARACTER SET utf8",
            "COMMIT WORK AND NO CHAIN NO RELEASE",
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
            "XA START 'x'",
            "PREPARE s FROM 'select 1'",
            "DO 1",
            "SHOW SLAVE HOSTS",
            "HANDLER t OPEN",
            "LOCK INSTANCE FOR BACKUP",
        ] {
            assert!(!c(sql).untracked, "{sql:?}");
        }
    }

    #[test]
    fn transactions() {
        let begin = |read_only| Some(TxnCommand::Begin { read_only });
        let cases = [
            ("begin", begin(false)),
            ("BEGIN WORK", begin(false)),
            ("START TRANSACTION", begin(false)),
            ("START TRANSACTION READ ONLY", begin(true)),
            ("start transaction read write", begin(false)),
            ("START TRANSACTION WITH CONSISTENT SNAPSHOT", begin(false)),
            (
                "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                begin(true),
            ),
            ("COMMIT", Some(TxnCommand::Commit)),
            ("commit work", Some(TxnCommand::Commit)),
            ("commit and chain", Some(TxnCommand::Commit)),
            ("COMMIT AND NO CHAIN RELEASE", Some(TxnCommand::Commit)),
            (
                "COMMIT WORK AND NO CHAIN NO RELEASE",
                Some(TxnCommand::Commit),
            ),
            ("ROLLBACK", Some(TxnCommand::Rollback)),
            ("ROLLBACK WORK AND CHAIN", Some(TxnCommand::Rollback)),
            ("rollback to savepoint a", None),
            ("ROLLBACK WORK TO a", None),
            ("SAVEPOINT a", None),
            ("RELEASE SAVEPOINT a", None),
            ("XA START 'x'", begin(false)),
            ("XA BEGIN 'x', 'y', 1", begin(false)),
            ("XA END 'x'", None),
            ("XA PREPARE 'x'", None),
            ("XA COMMIT 'x' ONE PHASE", Some(TxnCommand::Commit)),
            ("XA ROLLBACK 'x'", Some(TxnCommand::Rollback)),
            ("BEGIN; INSERT INTO t VALUES (1); COMMIT", begin(false)),
            ("SELECT 1; COMMIT", Some(TxnCommand::Commit)),
            ("SET TRANSACTION READ ONLY", None),
            ("SELECT 'BEGIN'", None),
            // The statements of a routine body are not the text's.
            (
                "CREATE PROCEDURE p() BEGIN START TRANSACTION; COMMIT; END",
                None,
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(c(sql).transaction, expected, "{sql:?}");
        }
        for sql in [
            "START TRANSACTION READ ONLY",
            "BEGIN",
            "COMMIT",
            "SAVEPOINT a",
        ] {
            assert_eq!(access(sql), Access::Read, "{sql:?}");
        }
        let xa = c("XA START 'x'");
        assert_eq!(
            (xa.access, xa.pins),
            (Access::Write, Some(PinReason::XaTransaction))
        );
    }

    #[test]
    fn pins() {
        use PinReason::*;
        let cases = [
            ("select get_lock('a',1)", Some(Lock)),
            ("sElEcT Get_Lock('a', 1)", Some(Lock)),
            ("SELECT GET_LOCK ('a', 1)", Some(Lock)),
            ("SELECT `get_lock`('a', 1)", Some(Lock)),
            ("DO GET_LOCK('a', 1)", Some(Lock)),
            ("SELECT 1 FROM t WHERE GET_LOCK('a', 1)", Some(Lock)),
            ("SELECT db.get_lock('a', 1)", None),
            ("/* get_lock( */ select 1", None),
            ("select 'get_lock('", None),
            ("select 'LOCK TABLES'", None),
            ("/* LOCK TABLES */ SELECT 1", None),
            ("-- LOCK TABLES\nSELECT 1", None),
            ("SELECT \"a\\\" get_lock(\"", None),
            ("LOCK TABLES t READ", Some(Lock)),
            ("lock table t write", Some(Lock)),
            ("LOCK INSTANCE FOR BACKUP", Some(Lock)),
            ("FLUSH TABLES WITH READ LOCK", Some(Lock)),
            ("FLUSH TABLES t FOR EXPORT", Some(Lock)),
            ("BACKUP STAGE START", Some(Lock)),
            ("FLUSH TABLES", None),
            ("UNLOCK TABLES", None),
            ("CREATE TEMPORARY TABLE t (a int)", Some(TempTable)),
            (
                "create or replace temporary table t (a int)",
                Some(TempTable),
            ),
            ("CREATE TEMPORARY TABLE t SELECT 1", Some(TempTable)),
            ("CREATE TABLE t (a int)", None),
            ("DROP TEMPORARY TABLE t", None),
            ("SET @x = 1", Some(UserVariable)),
            ("SET @x := 1", Some(UserVariable)),
            ("set @`x` = 1", Some(UserVariable)),
            ("SET @'my var' = 1", Some(UserVariable)),
            ("SET @a = 1, autocommit = 0", Some(UserVariable)),
            ("SET autocommit = 0, @a = 1", Some(UserVariable)),
            ("/*!40101 SET @x=1 */", Some(UserVariable)),
            (
                "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */",
                Some(UserVariable),
            ),
            ("/*M!100100 SET @x=1 */", Some(UserVariable)),
            ("/*! SELECT GET_LOCK('a', 1) */", Some(Lock)),
            ("SELECT @x := 1", Some(UserVariable)),
            ("SELECT @x:=1", Some(UserVariable)),
            ("SELECT @'my var' := 1", Some(UserVariable)),
            ("UPDATE t SET a = (@x := a + 1)", Some(UserVariable)),
            ("SELECT a INTO @x FROM t", Some(UserVariable)),
            ("SELECT a, b FROM t INTO @x, @y", Some(UserVariable)),
            ("CALL p(@out)", Some(UserVariable)),
            ("GET DIAGNOSTICS @n = NUMBER", Some(UserVariable)),
            ("SELECT @x", None),
            ("SELECT @x = 1", None),
            ("SELECT a FROM t WHERE b = @x", None),
            ("EXECUTE s USING @a", Some(SqlPrepare)),
            (
                "SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1",
                Some(FoundRows),
            ),
            ("PREPARE s FROM 'select 1'", Some(SqlPrepare)),
            ("PREPARE s FROM @sql", Some(SqlPrepare)),
            ("DEALLOCATE PREPARE s", Some(SqlPrepare)),
            ("DROP PREPARE s", Some(SqlPrepare)),
            ("HANDLER t OPEN", Some(Handler)),
            ("HANDLER t READ FIRST", Some(Handler)),
            ("HANDLER t CLOSE", Some(Handler)),
            ("XA START 'x'", Some(XaTransaction)),
            ("SELECT 1; SELECT GET_LOCK('a', 1); SET @x = 1", Some(Lock)),
            (
                "SELECT GET_LOCK('a', 1) FROM t LOCK IN SHARE MODE",
                Some(Lock),
            ),
            ("SELEC GET_LOCK('a', 1)", Some(Lock)),
        ];
        for (sql, expected) in cases {
            let sql = sql.replace("\\n", "\n");
            let classification = c(&sql);
            assert_eq!(classification.pins, expected, "{sql:?}");
            if expected.is_some() {
                assert_eq!(classification.access, Access::Write, "{sql:?}");
            }
        }
        // Once pinned, every later statement of the text is a write too.
        assert_eq!(access("SET @x = 1; SELECT 1"), Access::Write);
    }

    #[test]
    fn session_changes() {
        let cases = [
            ("SET x = 1", vec![set("SET x = 1")]),
            ("SET autocommit=0", vec![set("SET autocommit=0")]),
            ("SET SESSION x = 1", vec![set("SET SESSION x = 1")]),
            ("SET LOCAL x = 1", vec![set("SET LOCAL x = 1")]),
            ("SET @@session.x = 1", vec![set("SET @@session.x = 1")]),
            ("SET @@local.x = 1", vec![set("SET @@local.x = 1")]),
            ("SET @@x = 1", vec![set("SET @@x = 1")]),
            ("SET x := 1", vec![set("SET x := 1")]),
            ("SET NAMES utf8mb4", vec![set("SET NAMES utf8mb4")]),
            (
                "set names 'utf8mb4' collate 'utf8mb4_bin'",
                vec![set("set names 'utf8mb4' collate 'utf8mb4_bin'")],
            ),
            ("SET NAMES DEFAULT", vec![set("SET NAMES DEFAULT")]),
            (
                "SET CHARACTER SET utf8",
                vec![set("SET CHARACTER SET utf8")],
            ),
            ("SET CHARSET latin1", vec![set("SET CHARSET latin1")]),
            (
                "SET character_set_client = utf8mb4",
                vec![set("SET character_set_client = utf8mb4")],
            ),
            (
                "SET SESSION sql_mode = 'STRICT_TRANS_TABLES'",
                vec![set("SET SESSION sql_mode = 'STRICT_TRANS_TABLES'")],
            ),
            (
                "SET sql_mode = DEFAULT",
                vec![set("SET sql_mode = DEFAULT")],
            ),
            (
                "SET time_zone = '+00:00'",
                vec![set("SET time_zone = '+00:00'")],
            ),
            (
                "SET sql_mode = '', time_zone = 'UTC'",
                vec![set("SET sql_mode = '', time_zone = 'UTC'")],
            ),
            (
                "set SESSION transaction isolation level read committed",
                vec![set(
                    "set SESSION transaction isolation level read committed",
                )],
            ),
            (
                "SET SESSION TRANSACTION READ ONLY",
                vec![set("SET SESSION TRANSACTION READ ONLY")],
            ),
            (
                "SET @@session.transaction_isolation = 'READ-COMMITTED'",
                vec![set(
                    "SET @@session.transaction_isolation = 'READ-COMMITTED'",
                )],
            ),
            ("SET ROLE r", vec![set("SET ROLE r")]),
            ("SET x = @y", vec![set("SET x = @y")]),
            ("  SET x = 1 ;  ", vec![set("SET x = 1")]),
            (
                "/* switchyard: primary */ SET x = 1",
                vec![set("SET x = 1")],
            ),
            ("/*!40101 SET NAMES utf8 */", vec![set("SET NAMES utf8")]),
            (
                "SET /*!50000 SESSION */ x = 1",
                vec![set("SET          SESSION    x = 1")],
            ),
            (
                "SET x = 1; SET y = 2",
                vec![set("SET x = 1"), set("SET y = 2")],
            ),
            (
                "USE `my db`",
                vec![SessionChange::Use {
                    database: "my db".into(),
                }],
            ),
            (
                "use `a``b`",
                vec![SessionChange::Use {
                    database: "a`b".into(),
                }],
            ),
            (
                "USE MyDb;",
                vec![SessionChange::Use {
                    database: "MyDb".into(),
                }],
            ),
            ("SET TRANSACTION READ ONLY", vec![]),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", vec![]),
            ("SET GLOBAL x=1", vec![]),
            ("SET @x = 1", vec![]),
            ("SET STATEMENT max_statement_time = 1 FOR SELECT 1", vec![]),
        ];
        for (sql, expected) in cases {
            let classification = c(sql);
            assert_eq!(classification.session, expected, "{sql:?}");
            if !expected.is_empty() {
                assert_eq!(classification.access, Access::Read, "{sql:?}");
                assert!(!classification.untracked, "{sql:?}");
            }
        }
        // A reported SET re-runs as the same change.
        for sql in [
            "SET x = 1",
            "/*!40101 SET NAMES utf8 */",
            "SET /*!50000 SESSION */ x = 1",
        ] {
            for change in c(sql).session {
                if let SessionChange::Set { statement } = &change {
                    assert_eq!(c(statement).session, vec![change.clone()], "{sql:?}");
                }
            }
        }
    }

    /// `SET TRANSACTION` without a scope sets the next transaction's characteristics: not a
    /// session change, but text to run before it.
    #[test]
    fn next_transaction() {
        for sql in [
            "SET TRANSACTION READ ONLY",
            "set transaction isolation level serializable",
            "SET @@transaction_isolation = 'SERIALIZABLE'",
            "SET @@tx_read_only = 1",
        ] {
            let classification = c(sql);
            assert_eq!(
                classification.next_transaction.as_deref(),
                Some(sql),
                "{sql:?}"
            );
            assert!(classification.session.is_empty(), "{sql:?}");
            assert!(classification.untracked, "{sql:?}");
            assert_eq!(classification.access, Access::Read, "{sql:?}");
        }
        assert_eq!(
            c("SET SESSION TRANSACTION READ ONLY").next_transaction,
            None
        );
        let consumed = c("SET TRANSACTION READ ONLY; START TRANSACTION");
        assert_eq!(consumed.next_transaction, None);
        assert_eq!(
            consumed.transaction,
            Some(TxnCommand::Begin { read_only: false })
        );
        assert_eq!(
            c("SELECT 1; SET TRANSACTION READ ONLY")
                .next_transaction
                .as_deref(),
            Some("SET TRANSACTION READ ONLY")
        );
        assert_eq!(
            c("SET @@transaction_isolation = 'SERIALIZABLE', autocommit = 0").pins,
            Some(PinReason::Unreplayable)
        );
    }

    /// Settings after which the proxy would misread the session's statements pin; so do
    /// settings it cannot replay.
    #[test]
    fn unreadable_and_unreplayable() {
        use PinReason::*;
        let cases = [
            ("SET SESSION sql_mode = 'ANSI'", Some(Unreadable)),
            ("SET sql_mode = 'ANSI_QUOTES'", Some(Unreadable)),
            (
                "SET @@sql_mode = 'STRICT_TRANS_TABLES,no_backslash_escapes'",
                Some(Unreadable),
            ),
            ("SET sql_mode = 'oracle'", Some(Unreadable)),
            ("SET sql_mode = @saved", Some(Unreadable)),
            (
                "SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')",
                Some(Unreadable),
            ),
            ("SET sql_mode = 4", Some(Unreadable)),
            ("SET NAMES gbk", Some(Unreadable)),
            ("SET NAMES 'SJIS'", Some(Unreadable)),
            ("SET CHARACTER SET big5", Some(Unreadable)),
            ("SET character_set_client = cp932", Some(Unreadable)),
            ("SET character_set_client = @c", Some(Unreadable)),
            ("SET sql_mode = 'TRADITIONAL'", None),
            ("SET NAMES latin1", None),
            ("SET x = (SELECT a FROM t)", Some(Unreplayable)),
            ("SET GLOBAL a = 1, SESSION b = 2", Some(Unreplayable)),
            ("SET GLOBAL a = 1, @b = 2", Some(UserVariable)),
            ("SET GLOBAL sql_mode = 'ANSI'", None),
        ];
        for (sql, expected) in cases {
            let classification = c(sql);
            assert_eq!(classification.pins, expected, "{sql:?}");
            if expected.is_some() {
                assert!(classification.session.is_empty(), "{sql:?}");
                assert_eq!(classification.access, Access::Write, "{sql:?}");
            }
        }
    }

    #[test]
    fn route_override() {
        let cases = [
            (
                "set switchyard.route = 'replica'",
                SessionChange::Route(RouteOverride::Replica),
            ),
            (
                "SET switchyard.route = primary",
                SessionChange::Route(RouteOverride::Primary),
            ),
            (
                "SET switchyard.route = \"PRIMARY\"",
                SessionChange::Route(RouteOverride::Primary),
            ),
            (
                "SET SESSION switchyard.route = Auto",
                SessionChange::Route(RouteOverride::Auto),
            ),
            (
                "SET switchyard.route = DEFAULT",
                SessionChange::Route(RouteOverride::Auto),
            ),
            (
                "SET @@switchyard.route := 'replica';",
                SessionChange::Route(RouteOverride::Replica),
            ),
            (
                "SET SWITCHYARD.ROUTE = replica",
                SessionChange::Route(RouteOverride::Replica),
            ),
            (
                "SET switchyard.route = bogus",
                SessionChange::BadRoute("bogus".into()),
            ),
            (
                "SET switchyard.route = 'default'",
                SessionChange::BadRoute("default".into()),
            ),
            (
                "SET switchyard.route = 1",
                SessionChange::BadRoute("1".into()),
            ),
        ];
        for (sql, expected) in cases {
            let classification = c(sql);
            assert_eq!(classification.session, vec![expected], "{sql:?}");
            assert_eq!(classification.access, Access::Read, "{sql:?}");
            assert!(!classification.untracked, "{sql:?}");
        }
        // Among other settings it is a setting like any other (the server refuses it).
        assert_eq!(
            c("SET switchyard.route = replica, autocommit = 0").session,
            vec![set("SET switchyard.route = replica, autocommit = 0")]
        );
        assert_eq!(
            access("SET GLOBAL switchyard.route = replica"),
            Access::Write
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
            ("# switchyard: replica\nSELECT 1", Some(RouteHint::Replica)),
            (
                "/* app=web */ /* switchyard: replica */ SELECT 1",
                Some(RouteHint::Replica),
            ),
            ("/* a /* switchyard: primary */ SELECT 1", None),
            ("SELECT 1 /* switchyard: replica */", None),
            ("/* switchyard: elsewhere */ SELECT 1", None),
            ("/* switchyard: replica", None),
            ("/*! switchyard: replica */ SELECT 1", None),
            ("--switchyard: primary\nSELECT 1", None),
            (
                "/* switchyard: replica */ SELEC 1",
                Some(RouteHint::Replica),
            ),
            ("", None),
            ("/", None),
            ("/*", None),
            ("--", None),
            ("#", None),
        ];
        for (sql, expected) in cases {
            let sql = sql.replace("\\n", "\n");
            assert_eq!(c(&sql).hint, expected, "{sql:?}");
        }
        let write = c("/* switchyard: replica */ UPDATE t SET x = 1");
        assert_eq!(
            (write.access, write.hint),
            (Access::Write, Some(RouteHint::Replica))
        );
    }

    #[test]
    fn session_functions() {
        let f = |sql: &str| c(sql).session_functions;
        assert!(f("SELECT LAST_INSERT_ID()").last_insert_id);
        assert!(!f("SELECT LAST_INSERT_ID()").sets_last_insert_id);
        assert!(f("SELECT last_insert_id(5)").sets_last_insert_id);
        assert!(!f("SELECT last_insert_id(5)").last_insert_id);
        assert!(f("INSERT INTO t VALUES (LAST_INSERT_ID())").last_insert_id);
        assert!(f("UPDATE t SET id = LAST_INSERT_ID(id + 1)").sets_last_insert_id);
        assert!(f("SELECT @@identity").last_insert_id);
        assert!(f("SELECT @@session.last_insert_id").last_insert_id);
        assert!(f("SELECT row_count()").row_count);
        assert!(f("SELECT FOUND_ROWS()").found_rows);
        assert!(f("SHOW WARNINGS").diagnostics);
        assert!(f("show errors limit 1").diagnostics);
        assert!(f("SHOW COUNT(*) WARNINGS").diagnostics);
        assert!(f("SELECT @@warning_count").diagnostics);
        assert!(f("GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT").diagnostics);
        assert!(!f("SELECT 'LAST_INSERT_ID()'").any());
        assert!(!f("SELECT 1").any());
        assert!(!f("SHOW TABLES").any());
        assert_eq!(access("SHOW WARNINGS"), Access::Read);
    }

    #[test]
    fn simple_session_queries() {
        let q = |function, column: &str| {
            Some(SessionQuery {
                function,
                column: column.to_string(),
            })
        };
        use SessionFunction::*;
        let cases = [
            (
                "SELECT LAST_INSERT_ID()",
                q(LastInsertId, "LAST_INSERT_ID()"),
            ),
            (
                "select last_insert_id()",
                q(LastInsertId, "last_insert_id()"),
            ),
            (
                "  SeLeCt\n\tLast_Insert_Id() ;  ",
                q(LastInsertId, "Last_Insert_Id()"),
            ),
            (
                "SELECT LAST_INSERT_ID();",
                q(LastInsertId, "LAST_INSERT_ID()"),
            ),
            ("SELECT LAST_INSERT_ID() AS id", q(LastInsertId, "id")),
            (
                "SELECT LAST_INSERT_ID() as `my id`",
                q(LastInsertId, "my id"),
            ),
            (
                "SELECT LAST_INSERT_ID() AS 'it''s'",
                q(LastInsertId, "it's"),
            ),
            ("SELECT LAST_INSERT_ID() AS \"id\";", q(LastInsertId, "id")),
            ("SELECT LAST_INSERT_ID() id", q(LastInsertId, "id")),
            ("SELECT LAST_INSERT_ID()AS`x`", None),
            (
                "/* switchyard: primary */ SELECT LAST_INSERT_ID()",
                q(LastInsertId, "LAST_INSERT_ID()"),
            ),
            ("SELECT ROW_COUNT()", q(RowCount, "ROW_COUNT()")),
            ("SELECT found_rows() AS n", q(FoundRows, "n")),
            ("SELECT LAST_INSERT_ID(5)", None),
            ("SELECT LAST_INSERT_ID( )", None),
            ("SELECT LAST_INSERT_ID ()", None),
            ("SELECT LAST_INSERT_ID() FROM dual", None),
            ("SELECT LAST_INSERT_ID() + 1", None),
            ("SELECT LAST_INSERT_ID(), 1", None),
            ("SELECT LAST_INSERT_ID() AS", None),
            ("SELECT LAST_INSERT_ID() AS 'a\\'b'", None),
            ("SELECT LAST_INSERT_ID() AS a b", None),
            ("SELECT LAST_INSERT_ID() 123", None),
            ("SELECT LAST_INSERT_ID(); SELECT 1", None),
            ("SELECT LAST_INSERT_ID() /* c */", None),
            ("SELECTLAST_INSERT_ID()", None),
            ("INSERT INTO t VALUES (LAST_INSERT_ID())", None),
            ("/*! SELECT LAST_INSERT_ID() */", None),
            ("SELECT @@identity", None),
            ("", None),
            ("SELECT", None),
        ];
        for (sql, expected) in cases {
            let sql = sql.replace("\\n", "\n").replace("\\t", "\t");
            assert_eq!(simple_session_query(&sql), expected, "{sql:?}");
        }
    }

    /// Text that is not UTF-8 is a write of unknown effects; its pins are still found, and a
    /// session change in it pins instead.
    #[test]
    fn not_utf8() {
        let latin1 = classify_bytes(b"SELECT 'M\xfcller'");
        assert_eq!(latin1, Classification::unknown(None));
        let lock = classify_bytes(b"SELECT GET_LOCK('\xe9', 1)");
        assert_eq!(
            (lock.access, lock.untracked, lock.pins),
            (Access::Write, true, Some(PinReason::Lock))
        );
        let set = classify_bytes(b"SET NAMES latin1, @@session.x = '\xe9'");
        assert_eq!(
            (set.session.len(), set.pins),
            (0, Some(PinReason::Unreadable))
        );
        assert_eq!(
            classify_bytes(b"BEGIN; SELECT '\xff'").transaction,
            Some(TxnCommand::Begin { read_only: false })
        );
        assert_eq!(classify_bytes(b"SELECT 1"), c("SELECT 1"));
        assert_eq!(classify_bytes(b""), c(""));
    }

    /// Garbage, control bytes and huge or deeply nested input classify without panicking
    /// (or overflowing the stack), as writes unless they are plainly reads.
    #[test]
    fn hostile_input() {
        assert_eq!(access("\u{1}\u{2}\u{fffd}garbage\u{7f}"), Access::Write);
        let long_in = format!(
            "SELECT * FROM t WHERE id IN ({})",
            vec!["1"; 5_000].join(",")
        );
        assert_eq!(access(&long_in), Access::Read);
        let too_long_in = format!(
            "SELECT * FROM t WHERE id IN ({})",
            vec!["1"; 20_000].join(",")
        );
        assert!(c(&too_long_in).untracked);
        let long_write = format!("{}; UPDATE t SET x = 1", vec!["SELECT 1"; 2_000].join("; "));
        assert_eq!(access(&long_write), Access::Write);
        let long_string = format!("SELECT '{}'", "x".repeat(512 << 10));
        assert_eq!(access(&long_string), Access::Read);
        // Inputs that nest (or chain) deeper than a thread's stack would hold.
        let deep = [
            format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000)),
            format!("SELECT {}1", "NOT ".repeat(10_000)),
            format!("SELECT {}1", "- ".repeat(10_000)),
            format!("SELECT 1{}", " + 1".repeat(8_000)),
            format!("SELECT a{}", " IS NOT NULL".repeat(5_000)),
            format!("SELECT 1 FROM t {}", "JOIN t ".repeat(8_000)),
            format!("SELECT 1 {}", "UNION SELECT 1 ".repeat(5_000)),
            format!("SELECT {}1", "@x := ".repeat(8_000)),
            format!(
                "SELECT {}1{}",
                "(SELECT ".repeat(10_000),
                ")".repeat(10_000)
            ),
        ];
        // Parsed where they fit the parser's depth and length limits, rejected otherwise; on
        // a small stack too, as a pooled session's task would run it.
        let expected = [
            Access::Write,
            Access::Write,
            Access::Write,
            Access::Read,
            Access::Read,
            Access::Read,
            Access::Read,
            Access::Write,
            Access::Write,
        ];
        let on_small_stack = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || deep.iter().map(|sql| c(sql).access).collect::<Vec<_>>())
            .expect("thread");
        assert_eq!(on_small_stack.join().expect("no overflow"), expected);
        // More chains, inside parentheses and lists too: no overflow, whatever the answer.
        let more = [
            format!("SELECT f({}1)", "1 + ".repeat(7_000)),
            format!("SELECT CASE {} END", "WHEN a THEN b ".repeat(3_000)),
            format!("SELECT 1 FROM t WHERE {}1", "a = 1 AND ".repeat(3_000)),
            format!(
                "SELECT 1, (SELECT 1 FROM t {})",
                "LEFT JOIN t ON 1 ".repeat(3_000)
            ),
            format!("SELECT a{}", "->'$'".repeat(7_000)),
            format!("SELECT a{}", " COLLATE x".repeat(7_000)),
            format!("SELECT {}1", "~".repeat(14_000)),
            format!("SELECT {}1", "BINARY ".repeat(14_000)),
            format!("SELECT {}1{}", "f(".repeat(7_000), ")".repeat(7_000)),
            format!("SELECT {}", "(SELECT 1) UNION ".repeat(3_000)),
        ];
        let on_small_stack = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                more.iter()
                    .map(|sql| c(sql).access)
                    .collect::<Vec<_>>()
                    .len()
            })
            .expect("thread");
        assert_eq!(on_small_stack.join().expect("no overflow"), 10);
    }

    /// Texts over the tokenizing limit still pin, piece by piece, even across a cut.
    #[test]
    fn long_texts() {
        let values = vec!["(1, 'a')"; 120_000].join(", ");
        let insert = format!("INSERT INTO t VALUES {values}");
        assert!(insert.len() > MAX_TOKENIZED_TEXT);
        let classification = c(&insert);
        assert_eq!(classification, Classification::unknown(None));
        let lock = format!("{insert}; SELECT GET_LOCK('a', 1)");
        assert_eq!(c(&lock).pins, Some(PinReason::Lock));
        let assigned = format!("SELECT {}, @x := 1", vec!["1"; 400_000].join(", "));
        assert_eq!(c(&assigned).pins, Some(PinReason::UserVariable));
        let set = format!("SET @x = '{}'", "y".repeat(MAX_TOKENIZED_TEXT));
        assert_eq!(c(&set).pins, Some(PinReason::UserVariable));
        let temp = format!(
            "CREATE TEMPORARY TABLE t SELECT {}",
            vec!["1"; 400_000].join(", ")
        );
        assert_eq!(c(&temp).pins, Some(PinReason::TempTable));
        let hinted = format!("/* switchyard: replica */ {insert}");
        assert_eq!(c(&hinted).hint, Some(RouteHint::Replica));
        // A cut between a function name and its parenthesis still finds the call.
        let cut = PIECE_BYTES - "SELECT ".len() - "GET_LOCK".len() - 1;
        let across = format!("SELECT {}GET_LOCK ('a', 1)", " ".repeat(cut));
        let across = format!("{across}, {}", vec!["1"; 400_000].join(", "));
        assert_eq!(c(&across).pins, Some(PinReason::Lock));
    }

    #[test]
    fn nesting_bounds_recursion() {
        let n = |sql: &str| tokenize(sql).map(|tokens| nesting(&tokens));
        assert_eq!(n("SELECT 1"), Some(2));
        assert_eq!(n("SELECT a, b, c FROM t"), Some(4));
        assert_eq!(n("SELECT f(a, g(b, c)) FROM t"), Some(6));
        assert_eq!(n("SELECT 1 + 1 + 1"), Some(6));
        assert_eq!(n("SELECT ((1))"), Some(4));
        let columns = vec!["`t`.`c`"; 500].join(", ");
        let wide = format!("SELECT {columns} FROM t WHERE id IN (1, 2, 3) LIMIT 1");
        assert!(n(&wide).is_some_and(|depth| depth < 20));
        let tokens = tokenize(&format!("SELECT {}1{}", "(".repeat(50), ")".repeat(50)));
        assert!(tokens.is_some_and(|tokens| nesting(&tokens) <= tokens.len()));
    }

    #[test]
    fn executable_comments() {
        assert_eq!(
            executable_code("SELECT /*!50000 1 */, '/*!', /* /*! */ 2", None).0,
            "SELECT          1   , '/*!', /* /*! */ 2"
        );
        assert_eq!(
            executable_code("/*M!100100 SET x=1*/", None).0,
            "           SET x=1  "
        );
        assert_eq!(executable_code("SELECT 1", None).0, "SELECT 1");
        assert_eq!(access("/*!40101 SELECT 1 */"), Access::Read);
        assert_eq!(access("SELECT 1 /*!FOR UPDATE */"), Access::Write);
        assert_eq!(
            c("/*!40014 SET FOREIGN_KEY_CHECKS=0 */;").session,
            vec![set("SET FOREIGN_KEY_CHECKS=0")]
        );
    }

    /// The crate's stable-Rust fuzz pass, checking what the fuzz target checks: mutated real
    /// statements never panic, reported SETs re-run as the same change, and simple session
    /// queries are what `classify` says they use.
    #[test]
    fn mutated_statements_classify_without_panicking() {
        let mut mutator = crate::testing::Mutator::new();
        let seeds = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
            "/* switchyard: replica */ SELECT * FROM t FOR UPDATE",
            "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;",
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY; SET NAMES utf8mb4; COMMIT",
            "SET switchyard.route = replica; # x\nSELECT GET_LOCK('a', 1)",
            "SELECT LAST_INSERT_ID() AS `id`;",
            "CREATE PROCEDURE p() BEGIN SELECT 1; END; USE `db`",
        ];
        for round in 0..3_000 {
            let mut input = seeds[round % seeds.len()].as_bytes().to_vec();
            mutator.mutate(&mut input);
            let classification = classify_bytes(&input);
            for change in &classification.session {
                if let SessionChange::Set { statement } = change {
                    assert_eq!(c(statement).session, vec![change.clone()], "{input:?}");
                }
            }
            if let Ok(text) = std::str::from_utf8(&input)
                && simple_session_query(text).is_some()
            {
                assert!(classification.session_functions.any(), "{text:?}");
            }
        }
    }

    /// Time per call on typical statements. Run with
    /// `cargo test --release -p switchyard --lib mysql::classify::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        let columns: Vec<String> = (0..60).map(|i| format!("`t`.`column_{i}`")).collect();
        let long_select = format!(
            "SELECT {} FROM `t` WHERE `t`.`id` IN (?, ?, ?, ?) ORDER BY `t`.`id` LIMIT 100",
            columns.join(", ")
        );
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
            "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 77, -4321, CURRENT_TIMESTAMP);",
            "SELECT `users`.* FROM `users` WHERE `users`.`id` = ? LIMIT 1",
            "SET NAMES utf8mb4",
            "BEGIN",
            &long_select,
        ] {
            let rounds = 20_000;
            let time = |call: &dyn Fn()| {
                let start = std::time::Instant::now();
                for _ in 0..rounds {
                    call();
                }
                start.elapsed() / rounds
            };
            let whole = time(&|| {
                std::hint::black_box(classify(std::hint::black_box(sql)));
            });
            let tokens = tokenize(sql).unwrap_or_default();
            let lexing = time(&|| {
                std::hint::black_box(tokenize(std::hint::black_box(sql)));
            });
            let parsing = time(&|| {
                std::hint::black_box(parse(std::hint::black_box(&tokens)));
            });
            println!(
                "{whole:?} per classify ({lexing:?} tokenizing, {parsing:?} parsing): {sql:.60}"
            );
        }
    }
}
