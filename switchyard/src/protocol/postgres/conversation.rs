//! The state of a transaction-mode session without its sockets (see `transaction` for what
//! it means): what the proxy expects from the server connection it holds, in order, and
//! what it tracks of the client's session and of that connection, updated per client
//! message and per server message. `transaction` moves the bytes; keeping the state apart
//! lets tests and fuzzing (`crate::testing`) drive the very same code without a server.

use std::collections::VecDeque;

use super::classify::{self, Classification, PinReason, SessionChange, SessionEffects};
use super::codec::CodecError;
use super::errors::{error_field, sqlstate};
use super::frames::{self, Frame, Message, Parse};
use super::settings::{self, SessionSettings};
use super::split::{SplitConfig, SplitState, Target};
use super::statements::{ClientStatements, ServerStatements, Statement};

/// What the pooler tracks of a server connection's session, kept with the connection
/// (`pooler::Link`) from one client's transaction to the next.
#[derive(Debug)]
pub struct Tracked {
    /// Statements prepared on it.
    pub prepared: ServerStatements,
    /// The session settings applied on it (see `settings::SessionSettings::id`).
    pub applied: u64,
}

impl Tracked {
    /// A fresh connection keeping at most `max_prepared` statements.
    pub fn new(max_prepared: usize) -> Self {
        Self {
            prepared: ServerStatements::new(max_prepared),
            applied: 0,
        }
    }
}

/// A response the proxy expects from the server, in order.
#[derive(Debug)]
enum Expect {
    /// The answer to a client's message; `prepares` names the statement a Parse makes.
    Client(Kind, Option<String>),
    /// The answer to a message the proxy sent on its own; the client never sees it.
    Injected(Kind, Option<String>),
    /// A message the proxy answers itself, due at this place in the response stream.
    Synthetic(Frame),
}

/// Message kinds by what ends their answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    /// Sync, Query and FunctionCall: answered up to ReadyForQuery.
    UntilReady,
}

impl Kind {
    /// Whether a server message with `tag` ends the answer to a message of this kind.
    fn ended_by(self, tag: u8) -> bool {
        match self {
            Kind::Parse => tag == b'1',
            Kind::Bind => tag == b'2',
            Kind::Close => tag == b'3',
            Kind::Describe => matches!(tag, b'T' | b'n'),
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
            Kind::UntilReady => tag == b'Z',
        }
    }
}

/// One transaction's hold on a server connection, without the connection.
#[derive(Debug)]
pub struct Hold {
    expected: VecDeque<Expect>,
    /// ReadyForQuery messages still due to the client.
    pending: usize,
    /// The last transaction status the server reported.
    status: u8,
    /// An error came since the last ReadyForQuery (the extended protocol skips to Sync).
    skipping: bool,
    /// Session changes run in the current transaction (applied when it commits).
    changes: Vec<SessionChange>,
    /// The current transaction failed at some point (its changes are void).
    failed: bool,
    /// What the read/write split made of the lease's first statement.
    pub class: Option<Classification>,
    /// The server sent a FATAL error (passed on as ERROR): it is closing.
    server_fatal: bool,
    /// Something ran that may have changed session state unseen (see `transaction`): the
    /// connection is reset before its next use.
    untracked: bool,
    /// Bytes due to the server, sent (and emptied) by the session.
    pub to_server: Vec<u8>,
}

impl Hold {
    /// A hold using `buffers` (empty, kept from the session's last transaction).
    pub fn new(buffers: Buffers) -> Self {
        Self {
            expected: buffers.expected,
            pending: 0,
            status: b'I',
            skipping: false,
            changes: Vec::new(),
            failed: false,
            class: None,
            server_fatal: false,
            untracked: false,
            to_server: buffers.to_server,
        }
    }

    /// Gives up the buffers, emptied, for the session's next transaction; one grown past
    /// [`KEEP_BUFFER`] is let go, so a session going from transaction to transaction does
    /// not hold a large message's room (a session that waits lets go of them all).
    pub fn take_buffers(&mut self) -> Buffers {
        self.expected.clear();
        self.to_server.clear();
        if self.to_server.capacity() > KEEP_BUFFER {
            self.to_server = Vec::new();
        }
        Buffers {
            expected: std::mem::take(&mut self.expected),
            to_server: std::mem::take(&mut self.to_server),
        }
    }

    fn send(&mut self, frame: &[u8]) {
        append(&mut self.to_server, frame);
    }

    /// Queues what the server's next answer should be, with room for a few at the first
    /// (a transaction starts with none, and growing from nothing took two reallocations
    /// for an extended-protocol query's five).
    fn expect(&mut self, answer: Expect) {
        if self.expected.capacity() == 0 {
            self.expected.reserve(8);
        }
        self.expected.push_back(answer);
    }

    /// Whether the transaction is over (nothing due, the server idle).
    pub fn finished(&self) -> bool {
        self.pending == 0 && self.expected.is_empty() && self.status == b'I'
    }

    /// Whether no ReadyForQuery is due: every Query and Sync sent has been answered in
    /// full. Extended-protocol messages after the last Sync may still wait, for a Sync
    /// that may never come, so they do not count.
    pub fn synced(&self) -> bool {
        self.pending == 0
    }

    /// Whether the server said FATAL: the connection is ending.
    pub fn server_fatal(&self) -> bool {
        self.server_fatal
    }
}

/// The largest buffer of bytes to the server a session keeps from one transaction to the
/// next.
const KEEP_BUFFER: usize = 64 * 1024;

/// Room a buffer gets at its first bytes. A session lets go of its buffers while its client
/// waits, so each transaction starts them empty; grown from nothing, a reply of a few
/// messages was reallocated at 8, 16, 32, 64 and 128 bytes (about a tenth of the
/// instructions of a `pgbench -S -M extended` transaction).
const FIRST_ROOM: usize = 512;

/// Appends `bytes` to `buffer`, with [`FIRST_ROOM`] at least if it has none yet.
fn append(buffer: &mut Vec<u8>, bytes: &[u8]) {
    if buffer.capacity() == 0 {
        buffer.reserve(bytes.len().max(FIRST_ROOM));
    }
    buffer.extend_from_slice(bytes);
}

/// A transaction's buffers, kept by the session from one transaction to the next when the
/// client's next message is already there, so back-to-back transactions do not allocate
/// them anew; given back while the client makes the session wait.
#[derive(Debug, Default)]
pub struct Buffers {
    expected: VecDeque<Expect>,
    to_server: Vec<u8>,
}

/// The client's side of a transaction-mode session: its statements, settings, pin and
/// split state, and the bytes due to it.
#[derive(Debug)]
pub struct Conversation {
    /// The client's named prepared statements.
    pub statements: ClientStatements,
    /// Why the client is tied to its server connection, once it is.
    pub pinned: Option<PinReason>,
    /// The client's session settings, replayed on each connection it uses.
    pub settings: SessionSettings,
    /// The read/write split's view of the client, made when first needed (boxed: most
    /// pooled clients have no split, and the session is what an idle one keeps).
    split: Option<Box<SplitState>>,
    /// Bytes due to the client, sent (and emptied) by the session.
    pub to_client: Vec<u8>,
}

impl Conversation {
    /// A client with `settings` from its startup, nothing prepared, not pinned.
    pub fn new(settings: SessionSettings) -> Self {
        Self {
            statements: ClientStatements::default(),
            pinned: None,
            settings,
            split: None,
            to_client: Vec::new(),
        }
    }

    /// The split's view of the client, made on first use; it lasts as the session does
    /// (see `memory`).
    fn split_state(&mut self) -> &mut SplitState {
        self.split
            .get_or_insert_with(|| crate::memory::lasting(Box::default))
    }

    /// With the read/write split on: classifies the statement that opens a lease (a
    /// simple query, a Parse, or the Bind of a named statement; anything else is unknown
    /// and goes to the primary) and decides the server role.
    pub fn plan(
        &mut self,
        split: Option<&SplitConfig>,
        first: Message<'_>,
    ) -> Option<(Classification, Target)> {
        let split = split?;
        let sql = match first.tag() {
            b'Q' => frames::query_text(first.body()).ok(),
            b'P' => Parse::read(first.body()).ok().map(|parse| parse.query),
            b'B' => frames::bind_statement(first.body())
                .ok()
                .and_then(|name| self.statements.get(name))
                .map(|statement| statement.query.as_bytes()),
            _ => None,
        };
        let class = match sql.map(std::str::from_utf8) {
            Some(Ok(text)) => split.classifier.classify(text),
            _ => Classification::unknown(None),
        };
        let now = std::time::Instant::now();
        let target = self
            .split_state()
            .target(&class, now, split.sticky_after_write);
        Some((class, target))
    }

    /// `SET switchyard.route = ...` on its own, between transactions: answered by the
    /// proxy (the session's routing changes; no server is involved). True when answered.
    pub fn answer_route_setting(&mut self, class: &Classification) -> bool {
        let [change] = class.session.as_slice() else {
            return false;
        };
        let answer = match change {
            SessionChange::Route(_) => {
                self.split_state()
                    .after(class, false, std::time::Instant::now());
                Frame::new(b'C', b"SET\0")
            }
            SessionChange::BadRoute(value) => frames::error(
                "22023",
                &format!(
                    "invalid value for parameter \"switchyard.route\": \"{value}\" (primary, replica or auto)"
                ),
            ),
            _ => return false,
        };
        self.to_client.extend_from_slice(&answer.0);
        self.to_client
            .extend_from_slice(&frames::ready_for_query(b'I').0);
        true
    }

    /// What a freshly leased connection must run before this client uses it: `DISCARD
    /// ALL` for one in an unknown state (its statements are forgotten here), a reset of
    /// the settings for one holding another client's. Run it, then [`Self::reset_done`].
    pub fn reset_for(&self, conn: &mut Tracked) -> Option<&'static str> {
        match conn.applied {
            0 => None,
            applied if applied == self.settings.id() => None,
            settings::UNKNOWN => {
                // DISCARD ALL deallocates every prepared statement.
                conn.prepared.clear();
                Some(settings::RESET)
            }
            _ => Some(settings::RESET_SETTINGS),
        }
    }

    /// The reset [`Self::reset_for`] asked for ran: `ok` when it succeeded. A connection
    /// whose reset failed is closed; nothing is answered in its place either.
    pub fn reset_done(conn: &mut Tracked, ok: bool) {
        if ok {
            conn.applied = 0;
        } else {
            conn.applied = settings::UNKNOWN;
            conn.prepared.clear();
        }
    }

    /// Readies a leased connection (reset if it needed one) for this client: closes
    /// statements beyond its bound and replays the client's settings.
    pub fn ready_connection(&self, hold: &mut Hold, conn: &mut Tracked) {
        for name in conn.prepared.excess() {
            hold.send(&frames::statement_message(b'C', &name).0);
            hold.expect(Expect::Injected(Kind::Close, None));
            hold.send(&frames::sync().0);
            hold.expect(Expect::Injected(Kind::UntilReady, None));
        }
        let settings = &self.settings;
        if conn.applied != settings.id() {
            if let Some(sql) = settings.replay_sql() {
                hold.send(&frames::query(&sql).0);
                hold.expect(Expect::Injected(Kind::UntilReady, None));
            }
            conn.applied = settings.id();
        }
    }

    /// Whether the transaction is over and the connection can go back to the pool.
    pub fn can_give_back(&self, hold: &Hold) -> bool {
        hold.finished() && self.pinned.is_none()
    }

    /// One client message while a connection is held: rename, inject, queue, forward.
    /// `Err`: the message is malformed (the session ends).
    pub fn client_message(
        &mut self,
        hold: &mut Hold,
        conn: &mut Tracked,
        frame: Message<'_>,
    ) -> Result<(), CodecError> {
        if hold.skipping {
            // The server discards everything up to Sync after an error; so do we.
            if frame.tag() == b'S' {
                hold.skipping = false;
                hold.pending += 1;
                hold.expect(Expect::Client(Kind::UntilReady, None));
            }
            hold.send(frame.0);
            return Ok(());
        }
        match frame.tag() {
            b'Q' => {
                let sql = frames::query_text(frame.body())?;
                self.note_sql(hold, sql);
                hold.pending += 1;
                hold.expect(Expect::Client(Kind::UntilReady, None));
                hold.send(frame.0);
            }
            b'P' => {
                let parse = Parse::read(frame.body())?;
                if parse.name.is_empty() {
                    // Run by the Bind and Execute that follow, on this connection.
                    self.note_sql(hold, parse.query);
                    hold.expect(Expect::Client(Kind::Parse, None));
                    hold.send(frame.0);
                } else {
                    let statement = self.statements.prepare(&parse);
                    if conn.prepared.touch(&statement.server_name) {
                        // Already there: answer in its place.
                        hold.expect(Expect::Synthetic(parse_complete()));
                    } else {
                        // Counted as prepared from now on, so the rest of the batch does
                        // not prepare it again; forgotten if the Parse fails.
                        conn.prepared.insert(&statement.server_name);
                        hold.expect(Expect::Client(
                            Kind::Parse,
                            Some(statement.server_name.clone()),
                        ));
                        hold.send(&statement.parse.0);
                    }
                }
            }
            b'B' => {
                let name = frames::bind_statement(frame.body())?;
                match self.statements.get(name).cloned() {
                    Some(statement) => {
                        // A named statement runs wherever it is bound, maybe in a later
                        // transaction on another connection than its Parse.
                        self.note_effects(hold, &statement.effects);
                        ensure_prepared(hold, conn, &statement);
                        let renamed = frames::bind_renamed(frame.body(), &statement.server_name)?;
                        hold.send(&renamed.0);
                    }
                    None => hold.send(frame.0),
                }
                hold.expect(Expect::Client(Kind::Bind, None));
            }
            b'D' => {
                let (target, name) = frames::target(frame.body())?;
                match (target, self.statements.get(name)) {
                    (b'S', Some(statement)) if !name.is_empty() => {
                        ensure_prepared(hold, conn, statement);
                        hold.send(&frames::statement_message(b'D', &statement.server_name).0);
                    }
                    _ => hold.send(frame.0),
                }
                hold.expect(Expect::Client(Kind::Describe, None));
            }
            b'C' => {
                let (target, name) = frames::target(frame.body())?;
                let closed = (target == b'S' && !name.is_empty())
                    .then(|| self.statements.close(name))
                    .flatten();
                match closed {
                    Some(statement) => {
                        // Other clients' copies are prepared again where needed.
                        conn.prepared.remove(&statement.server_name);
                        hold.send(&frames::statement_message(b'C', &statement.server_name).0);
                    }
                    None => hold.send(frame.0),
                }
                hold.expect(Expect::Client(Kind::Close, None));
            }
            b'E' => {
                hold.expect(Expect::Client(Kind::Execute, None));
                hold.send(frame.0);
            }
            b'S' | b'F' => {
                // A FunctionCall names its function by OID: what it does is unknown.
                hold.untracked |= frame.tag() == b'F';
                hold.pending += 1;
                hold.expect(Expect::Client(Kind::UntilReady, None));
                hold.send(frame.0);
            }
            // Flush, COPY data/done/fail, and anything else the server judges.
            _ => hold.send(frame.0),
        }
        self.emit_synthetic(hold);
        Ok(())
    }

    /// Notes what the statement text `sql` does to the session (see [`Self::note_effects`]).
    fn note_sql(&mut self, hold: &mut Hold, sql: &[u8]) {
        if self.pinned.is_some() {
            // The connection is the client's until it leaves, then reset whatever it holds.
            return;
        }
        self.note_effects(hold, &classify::session_effects(sql));
    }

    /// Notes what a statement about to run does to the session: changes to replay later,
    /// state that ties the client to this connection, and effects nobody can see, for
    /// which the connection is reset before its next use.
    fn note_effects(&mut self, hold: &mut Hold, effects: &SessionEffects) {
        if self.pinned.is_some() {
            return;
        }
        let pin = match effects.pins {
            Some(reason) => Some(reason),
            // The proxy cannot read this client's text as the server will.
            None if !self.settings.readable() => Some(PinReason::Unreadable),
            None => None,
        };
        if let Some(reason) = pin {
            tracing::debug!(?reason, "client pinned to its server connection");
            self.pinned = Some(reason);
            return;
        }
        hold.changes.extend(effects.changes.iter().cloned());
        hold.untracked |= effects.untracked;
    }

    /// One whole server message while the connection is held; true when it was a
    /// ReadyForQuery answering the client (a query done, for the pool's statistics).
    pub fn server_message(
        &mut self,
        hold: &mut Hold,
        conn: &mut Tracked,
        frame: Message<'_>,
    ) -> bool {
        let tag = frame.tag();
        if tag == b'E' {
            self.server_error(hold, conn, frame);
            return false;
        }
        let Some(front) = hold.expected.front() else {
            // Notices, notifications, parameter changes between answers.
            if tag == b'S' {
                Self::parameter_status(hold, frame);
            }
            append(&mut self.to_client, frame.0);
            return false;
        };
        let (kind, injected) = match front {
            Expect::Client(kind, _) => (*kind, false),
            Expect::Injected(kind, _) => (*kind, true),
            Expect::Synthetic(_) => (Kind::UntilReady, false),
        };
        if tag == b'S' && !injected {
            Self::parameter_status(hold, frame);
        }
        if !injected {
            append(&mut self.to_client, frame.0);
        }
        if !kind.ended_by(tag) {
            return false;
        }
        hold.expected.pop_front();
        let answered = tag == b'Z' && !injected;
        if tag == b'Z' {
            let status = frame.body().first().copied().unwrap_or(b'I');
            self.ready(hold, conn, status, injected);
        }
        self.emit_synthetic(hold);
        answered
    }

    /// The backstop for what no statement showed: the server reports a change of a
    /// reported parameter (`application_name`, `client_encoding`, `DateStyle`, `TimeZone`,
    /// `IntervalStyle`, `standard_conforming_strings`, `is_superuser`,
    /// `session_authorization`, `search_path` from PostgreSQL 18...) while a client's
    /// statements run. One no recorded `SET`, `RESET`, `RESET ALL` or `DISCARD ALL` of this
    /// transaction explains (a function or trigger set it, or a `SET LOCAL` that ends with
    /// the transaction: resetting for those costs a reset, never a leak) marks the
    /// connection for a reset before its next use.
    fn parameter_status(hold: &mut Hold, frame: Message<'_>) {
        let body = frame.body();
        let name = body.split(|&b| b == 0).next().unwrap_or_default();
        let explained = hold.changes.iter().any(|change| match change {
            SessionChange::Set { name: set, .. } | SessionChange::Reset { name: set } => {
                set.as_bytes().eq_ignore_ascii_case(name)
            }
            SessionChange::ResetAll | SessionChange::DiscardAll => true,
            SessionChange::Route(_) | SessionChange::BadRoute(_) => false,
        });
        if !explained && !hold.untracked {
            tracing::debug!(
                parameter = %String::from_utf8_lossy(name),
                "the server reported a parameter change no statement explains; the connection will be reset"
            );
            hold.untracked = true;
        }
    }

    /// ReadyForQuery: the server is between transactions (`I`) or in one (`T`, `E`).
    fn ready(&mut self, hold: &mut Hold, conn: &mut Tracked, status: u8, injected: bool) {
        hold.status = status;
        hold.skipping = false;
        if injected {
            return;
        }
        hold.pending = hold.pending.saturating_sub(1);
        if let Some(class) = &hold.class {
            self.split_state()
                .after(class, status != b'I', std::time::Instant::now());
        }
        match status {
            b'E' => hold.failed = true,
            b'I' => {
                let changes = std::mem::take(&mut hold.changes);
                // Unknown stays unknown until a reset: a later transaction of the same
                // lease recording its own changes does not make the connection known.
                let unknown =
                    std::mem::take(&mut hold.untracked) || conn.applied == settings::UNKNOWN;
                if hold.failed {
                    hold.failed = false;
                    if unknown || !changes.is_empty() {
                        // Rolled back, but the connection may hold part of them (advisory
                        // locks taken in a failed transaction stay, for one).
                        conn.applied = settings::UNKNOWN;
                    }
                    return;
                }
                let settings = &mut self.settings;
                for change in changes {
                    match change {
                        SessionChange::Set { name, statement } => settings.set(&name, &statement),
                        SessionChange::Reset { name } => settings.reset(&name),
                        SessionChange::ResetAll => settings.reset_all(),
                        SessionChange::DiscardAll => {
                            settings.reset_all();
                            // The server deallocated every prepared statement.
                            conn.prepared.clear();
                        }
                        SessionChange::Route(_) | SessionChange::BadRoute(_) => {}
                    }
                }
                conn.applied = if unknown {
                    settings::UNKNOWN
                } else {
                    settings.id()
                };
            }
            _ => {}
        }
    }

    /// An ErrorResponse: it answers the message at the front of the queue; outside a
    /// simple query the server then skips to Sync, and so does the queue.
    fn server_error(&mut self, hold: &mut Hold, conn: &mut Tracked, frame: Message<'_>) {
        if let Some(Expect::Injected(Kind::UntilReady, _)) = hold.expected.front() {
            let field = |f| error_field(frame.body(), f).unwrap_or_default();
            let (code, message) = (field(b'C'), field(b'M'));
            tracing::warn!(code, message, "replaying session settings failed");
            conn.applied = settings::UNKNOWN;
            return;
        }
        // A server closing on its own (terminated, restarting) says FATAL; when the client can
        // go on without this connection it gets an ERROR instead (see `answer_lost`).
        match frames::downgrade_fatal(frame.body()) {
            Some(downgraded) if self.can_continue_without(hold) => {
                hold.server_fatal = true;
                self.to_client.extend_from_slice(&downgraded.0);
            }
            _ => append(&mut self.to_client, frame.0),
        }
        hold.failed = true;
        if let Some(Expect::Client(Kind::UntilReady, _)) | None = hold.expected.front() {
            return;
        }
        // The failed message and everything up to the next Sync are skipped by the
        // server: statements they were to prepare are not there.
        while let Some(front) = hold.expected.front() {
            match front {
                Expect::Client(Kind::UntilReady, _) | Expect::Injected(Kind::UntilReady, _) => {
                    return;
                }
                Expect::Client(_, Some(name)) | Expect::Injected(_, Some(name)) => {
                    conn.prepared.remove(name);
                }
                _ => {}
            }
            hold.expected.pop_front();
        }
        hold.skipping = true;
    }

    /// Sends the proxy's own answers that are due now.
    fn emit_synthetic(&mut self, hold: &mut Hold) {
        while let Some(Expect::Synthetic(_)) = hold.expected.front() {
            if let Some(Expect::Synthetic(frame)) = hold.expected.pop_front() {
                append(&mut self.to_client, &frame.0);
            }
        }
    }

    /// Whether the client's session survives losing its server connection: the server was
    /// between transactions at its last ReadyForQuery and holds no pinned state.
    pub fn can_continue_without(&self, hold: &Hold) -> bool {
        hold.status == b'I' && self.pinned.is_none()
    }

    /// The server connection broke while the client can go on without it
    /// ([`Self::can_continue_without`]): each answer the client waits for becomes an
    /// error `message`, followed by its ReadyForQuery.
    pub fn answer_lost(&mut self, hold: &Hold, message: &str) {
        for answer in 0..hold.pending {
            // The server's own (downgraded) FATAL already answered the first.
            if answer > 0 || !hold.server_fatal {
                let error = frames::error(sqlstate::CONNECTION_FAILURE, message);
                self.to_client.extend_from_slice(&error.0);
            }
            self.to_client
                .extend_from_slice(&frames::ready_for_query(b'I').0);
        }
    }

    /// The client leaves while holding the connection: the statements that take it back
    /// to a state another client may use, or `None` when it cannot be (an answer is still
    /// due) and must be closed.
    pub fn leaving_reset(&self, hold: &Hold) -> Option<Vec<&'static str>> {
        if hold.pending != 0 || !hold.expected.is_empty() {
            return None;
        }
        let mut reset = Vec::new();
        if hold.status != b'I' {
            reset.push("ROLLBACK");
        }
        if self.pinned.is_some() {
            reset.push(settings::RESET);
        }
        Some(reset)
    }

    /// The reset [`Self::leaving_reset`] gave ran and succeeded: what the connection holds
    /// now, as it goes back to the pool.
    pub fn left_clean(&self, hold: &Hold, conn: &mut Tracked) {
        if self.pinned.is_some() {
            conn.prepared.clear();
            conn.applied = 0;
        } else if hold.untracked {
            // The rollback undoes settings, not everything an unseen effect may leave.
            conn.applied = settings::UNKNOWN;
        }
    }
}

/// Prepares `statement` on the held connection first if it is not there yet.
fn ensure_prepared(hold: &mut Hold, conn: &mut Tracked, statement: &Statement) {
    if conn.prepared.touch(&statement.server_name) {
        return;
    }
    conn.prepared.insert(&statement.server_name);
    hold.send(&statement.parse.0);
    hold.expect(Expect::Injected(
        Kind::Parse,
        Some(statement.server_name.clone()),
    ));
}

/// ParseComplete, answered by the proxy for every Parse of a statement the connection
/// has: a static message, not a new buffer each time.
fn parse_complete() -> Frame {
    Frame(bytes::Bytes::from_static(b"1\0\0\0\x04"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pg_session::Sessions;

    #[test]
    fn the_static_parse_complete_is_a_framed_parse_complete() {
        assert_eq!(parse_complete(), Frame::new(b'1', &[]));
    }

    /// Two clients preparing the same SQL on one connection, one after the other: the
    /// second's Parse is answered by the proxy, and only its Sync reaches the server.
    #[test]
    fn a_statement_another_client_prepared_is_answered_in_its_place() {
        let mut sessions = Sessions::new(vec![SessionSettings::default(); 2], 0, 10, None);
        let parse = Parse {
            name: b"s1",
            query: b"SELECT 1",
            types: b"\0\0",
        };
        let batch = [parse.renamed("s1").0, frames::sync().0].concat();
        sessions.client_bytes(0, &batch);
        let answer = [Frame::new(b'1', &[]).0, frames::ready_for_query(b'I').0].concat();
        sessions.server_bytes(0, &answer);
        assert_eq!(sessions.given_back, vec![(0, 0)]);
        let first = std::mem::take(&mut sessions.conns[0].to_server);
        let server_name = &sessions.clients[0]
            .conv
            .statements
            .get(b"s1")
            .expect("s1")
            .server_name;
        assert_eq!(
            first,
            [parse.renamed(server_name).0, frames::sync().0].concat()
        );
        sessions.client_bytes(1, &batch);
        assert_eq!(sessions.leases[1].conn, 0);
        assert_eq!(sessions.conns[0].to_server, frames::sync().0);
        assert_eq!(sessions.clients[1].conv.to_client, parse_complete().0);
    }
}
