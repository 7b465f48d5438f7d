//! Transaction-mode sessions driven without sockets, for fuzzing and tests: clients'
//! bytes and their servers' replies go through the pooler's own state
//! (`protocol::postgres::conversation`) in the order `transaction::Session` feeds it —
//! lease on a client's first message, reset and replay, client messages, server messages,
//! give the connection back when the transaction is over, leave with a reset. Resets and
//! writes always succeed; a discarded connection is replaced by a fresh one.

use crate::protocol::postgres::codec::CodecError;
use crate::protocol::postgres::conversation::Buffers;
pub use crate::protocol::postgres::conversation::{Conversation, Hold, Tracked};
use crate::protocol::postgres::errors::{fatal, sqlstate};
use crate::protocol::postgres::frames::{FrameReader, Message};
use crate::protocol::postgres::settings::SessionSettings;
use crate::protocol::postgres::split::SplitConfig;

/// The message size limit of every reader here.
const LIMIT: usize = 1 << 20;

/// One client of the pool.
#[derive(Debug)]
pub struct Client {
    /// Its session state.
    pub conv: Conversation,
    /// The connection it holds (an index into [`Sessions::conns`]) and the hold's state.
    pub held: Option<(usize, Hold)>,
    /// Whether its session ended (it left, sent a bad message, or lost its server inside a
    /// transaction); nothing it sends is read any more.
    pub ended: bool,
    reader: FrameReader,
    buffers: Buffers,
}

/// One server connection of the pool.
#[derive(Debug)]
pub struct Conn {
    /// Its session state as the pooler tracks it.
    pub tracked: Tracked,
    /// Everything sent to it since the caller last took it.
    pub to_server: Vec<u8>,
    /// The resets run on it since the caller last took them.
    pub resets: Vec<&'static str>,
    reader: FrameReader,
    max_prepared: usize,
}

impl Conn {
    fn new(max_prepared: usize) -> Self {
        Self {
            tracked: Tracked::new(max_prepared),
            to_server: Vec::new(),
            resets: Vec::new(),
            reader: FrameReader::new(LIMIT),
            max_prepared,
        }
    }
}

/// What the last lease found, for checks of the reset it chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The client.
    pub client: usize,
    /// The connection.
    pub conn: usize,
    /// The settings the connection had (`Tracked::applied`) before the lease.
    pub applied_before: u64,
    /// The client's settings id.
    pub client_settings: u64,
    /// The reset run, if any.
    pub reset: Option<&'static str>,
}

/// Clients sharing a pool of server connections, at least one per client (nobody waits).
#[derive(Debug)]
pub struct Sessions {
    /// The clients.
    pub clients: Vec<Client>,
    /// The server connections.
    pub conns: Vec<Conn>,
    /// Every lease so far, oldest first (the caller may clear it).
    pub leases: Vec<Lease>,
    /// Every connection given back so far, as (client, connection), oldest first.
    pub given_back: Vec<(usize, usize)>,
    split: Option<SplitConfig>,
}

impl Sessions {
    /// Clients with `settings` (from their startups) over as many connections plus
    /// `spare`, each keeping at most `max_prepared` statements; `split`: the read/write
    /// split's settings, when on.
    pub fn new(
        settings: Vec<SessionSettings>,
        spare: usize,
        max_prepared: usize,
        split: Option<SplitConfig>,
    ) -> Self {
        let conns = (0..settings.len() + spare)
            .map(|_| Conn::new(max_prepared))
            .collect();
        let clients = settings
            .into_iter()
            .map(|settings| Client {
                conv: Conversation::new(settings),
                held: None,
                ended: false,
                reader: FrameReader::new(LIMIT),
                buffers: Buffers::default(),
            })
            .collect();
        Self {
            clients,
            conns,
            leases: Vec::new(),
            given_back: Vec::new(),
            split,
        }
    }

    /// Bytes from client `who`: every whole message is handled as the session would.
    pub fn client_bytes(&mut self, who: usize, bytes: &[u8]) {
        if self.clients[who].ended {
            return;
        }
        self.clients[who].reader.feed(bytes);
        self.client_frames(who);
    }

    /// Client `who` closes its connection.
    pub fn client_leaves(&mut self, who: usize) {
        if !self.clients[who].ended {
            self.end(who);
        }
    }

    /// Bytes from the server connection client `who` holds (dropped when it holds none:
    /// the proxy reads an idle connection only to check it).
    pub fn server_bytes(&mut self, who: usize, bytes: &[u8]) {
        let Some((index, _)) = &self.clients[who].held else {
            return;
        };
        let index = *index;
        self.conns[index].reader.feed(bytes);
        loop {
            let frame = match self.conns[index].reader.next_frame() {
                Ok(Some(message)) => message.to_frame(),
                Ok(None) => break,
                Err(error) => {
                    self.server_lost(who, &format!("bad message from the server: {error}"));
                    return;
                }
            };
            let client = &mut self.clients[who];
            let Some((_, hold)) = client.held.as_mut() else {
                return;
            };
            let conn = &mut self.conns[index];
            client
                .conv
                .server_message(hold, &mut conn.tracked, frame.message());
            if hold.server_fatal() {
                self.server_lost(who, "the server ended the session");
                return;
            }
        }
        if self.give_back_if_done(who) {
            self.client_frames(who);
        }
    }

    /// Handles client `who`'s whole messages, opening a transaction when it holds no
    /// connection.
    fn client_frames(&mut self, who: usize) {
        loop {
            // Owned: a message that opens a transaction is looked at while `self` changes.
            let frame = match self.clients[who].reader.next_frame() {
                Ok(Some(message)) => message.to_frame(),
                Ok(None) => break,
                Err(error) => return self.malformed(who, error),
            };
            if frame.tag() == b'X' {
                return self.end(who);
            }
            if self.clients[who].held.is_none() && !self.open(who, frame.message()) {
                continue;
            }
            let client = &mut self.clients[who];
            let Some((index, hold)) = client.held.as_mut() else {
                continue;
            };
            let conn = &mut self.conns[*index];
            let sent = client
                .conv
                .client_message(hold, &mut conn.tracked, frame.message());
            conn.to_server.append(&mut hold.to_server);
            if let Err(error) = sent {
                return self.malformed(who, error);
            }
        }
        self.give_back_if_done(who);
    }

    /// Between transactions, `first` from client `who`: the split's plan, the proxy's own
    /// answer to a route setting, or a lease. True when a connection is now held.
    fn open(&mut self, who: usize, first: Message<'_>) -> bool {
        let client = &mut self.clients[who];
        let plan = client.conv.plan(self.split.as_ref(), first);
        if let Some((class, _)) = &plan
            && client.conv.answer_route_setting(class)
        {
            return false;
        }
        let busy: Vec<usize> = self
            .clients
            .iter()
            .filter_map(|c| c.held.as_ref().map(|(i, _)| *i))
            .collect();
        let Some(index) = (0..self.conns.len()).find(|i| !busy.contains(i)) else {
            return false;
        };
        let client = &mut self.clients[who];
        let conn = &mut self.conns[index];
        let mut hold = Hold::new(std::mem::take(&mut client.buffers));
        hold.class = plan.map(|(class, _)| class);
        let applied_before = conn.tracked.applied;
        let reset = client.conv.reset_for(&mut conn.tracked);
        if let Some(reset) = reset {
            conn.resets.push(reset);
            Conversation::reset_done(&mut conn.tracked, true);
        }
        client.conv.ready_connection(&mut hold, &mut conn.tracked);
        conn.to_server.append(&mut hold.to_server);
        self.leases.push(Lease {
            client: who,
            conn: index,
            applied_before,
            client_settings: client.conv.settings.id(),
            reset,
        });
        client.held = Some((index, hold));
        true
    }

    /// Gives client `who`'s connection back when its transaction is over; true if it did.
    fn give_back_if_done(&mut self, who: usize) -> bool {
        let client = &mut self.clients[who];
        match client.held.take() {
            Some((index, mut hold)) if client.conv.can_give_back(&hold) => {
                client.buffers = hold.take_buffers();
                self.given_back.push((who, index));
                true
            }
            held => {
                client.held = held;
                false
            }
        }
    }

    /// A malformed client message: FATAL, and the session ends.
    fn malformed(&mut self, who: usize, error: CodecError) {
        let message = format!("invalid message: {error}");
        let bytes = fatal(sqlstate::PROTOCOL_VIOLATION, &message);
        self.clients[who].conv.to_client.extend_from_slice(&bytes);
        self.end(who);
    }

    /// The session of client `who` ends; a connection it holds goes back clean, or is
    /// replaced.
    fn end(&mut self, who: usize) {
        let client = &mut self.clients[who];
        client.ended = true;
        let Some((index, hold)) = client.held.take() else {
            return;
        };
        let conn = &mut self.conns[index];
        match client.conv.leaving_reset(&hold) {
            Some(reset) => {
                conn.resets.extend(reset);
                client.conv.left_clean(&hold, &mut conn.tracked);
                self.given_back.push((who, index));
            }
            None => self.conns[index] = Conn::new(conn.max_prepared),
        }
    }

    /// The server connection client `who` holds broke: the client goes on without it
    /// when it can, else its session ends; the connection is replaced.
    fn server_lost(&mut self, who: usize, detail: &str) {
        let client = &mut self.clients[who];
        let Some((index, mut hold)) = client.held.take() else {
            return;
        };
        let message = format!("server connection lost: {detail}");
        if client.conv.can_continue_without(&hold) {
            client.conv.answer_lost(&hold, &message);
            client.buffers = hold.take_buffers();
        } else {
            let bytes = fatal(sqlstate::CONNECTION_FAILURE, &message);
            client.conv.to_client.extend_from_slice(&bytes);
            client.ended = true;
        }
        let max_prepared = self.conns[index].max_prepared;
        self.conns[index] = Conn::new(max_prepared);
    }
}
