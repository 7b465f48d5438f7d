//! `KILL [QUERY|CONNECTION] n` through the proxy. MySQL clients cancel a query by sending
//! `KILL QUERY <id>` on a second connection, `<id>` being the connection id of the
//! greeting. Behind a proxy that is the proxy's id, not the server's thread id: each session
//! registers the pair here, and the client side of every session is watched for a
//! COM_QUERY that is a `KILL` of an id, which is rewritten to the server's thread id when
//! the target session is on the same server. Any other id (unknown, or a session on
//! another server, which this connection cannot reach) becomes 0, which the server answers
//! with ERR 1094 "Unknown thread id": never a thread of someone else.
//!
//! The watch costs one look at the first bytes of each command; packets are otherwise
//! passed on as they come (whole chunks, unparsed), and only a short COM_QUERY starting a
//! command is held until whole.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::packet::{MAX_PIECE, packet};
use super::query::COM_QUERY;
use crate::relay::Rewrite;
use crate::upstream::Server;

/// The longest COM_QUERY payload looked at: `KILL` statements are short.
const MAX_KILL: usize = 128;

/// Proxy connection ids of live sessions, with their server and thread.
#[derive(Debug, Default)]
pub struct KillTable {
    sessions: Mutex<HashMap<u32, (Arc<Server>, u32)>>,
}

impl KillTable {
    /// Records that proxy id `id` is thread `thread` on `server` until the registration
    /// is dropped.
    pub fn register(self: &Arc<Self>, id: u32, server: &Arc<Server>, thread: u32) -> Registration {
        self.lock().insert(id, (server.clone(), thread));
        Registration {
            table: self.clone(),
            id,
        }
    }

    /// The thread of proxy id `id`, if that session is on `server`.
    fn thread_on(&self, id: u32, server: &Arc<Server>) -> Option<u32> {
        self.lock()
            .get(&id)
            .filter(|(on, _)| Arc::ptr_eq(on, server))
            .map(|(_, thread)| *thread)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Arc<Server>, u32)>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A session's entry in the [`KillTable`], removed on drop.
#[derive(Debug)]
pub struct Registration {
    table: Arc<KillTable>,
    id: u32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

/// Where the id of a `KILL` statement is: the byte range of its digits and its value.
/// `KILL [HARD|SOFT] [CONNECTION|QUERY] <id>` with an optional `;`, in any case; `KILL
/// QUERY ID` (MariaDB's query ids) and `KILL USER` are not connection ids and give `None`.
pub fn kill_id(sql: &[u8]) -> Option<(std::ops::Range<usize>, u32)> {
    let mut words = Words { sql, at: 0 };
    if !words.next()?.eq_ignore_ascii_case(b"KILL") {
        return None;
    }
    let mut word = words.next()?;
    if word.eq_ignore_ascii_case(b"HARD") || word.eq_ignore_ascii_case(b"SOFT") {
        word = words.next()?;
    }
    if word.eq_ignore_ascii_case(b"CONNECTION") || word.eq_ignore_ascii_case(b"QUERY") {
        word = words.next()?;
    }
    let digits = word.strip_suffix(b";").unwrap_or(word);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let start = words.at - word.len();
    let id = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let rest = words.next();
    if rest.is_some_and(|rest| rest != b";") || words.next().is_some() {
        return None;
    }
    Some((start..start + digits.len(), id))
}

/// Whitespace-separated words.
struct Words<'a> {
    sql: &'a [u8],
    at: usize,
}

impl<'a> Words<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        while self.sql.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
        let start = self.at;
        while self
            .sql
            .get(self.at)
            .is_some_and(|b| !b.is_ascii_whitespace())
        {
            self.at += 1;
        }
        (self.at > start).then(|| &self.sql[start..self.at])
    }
}

/// The watch on one session's client bytes.
#[derive(Debug)]
pub struct KillRewrite {
    table: Arc<KillTable>,
    server: Arc<Server>,
    /// Bytes of the current packet still to pass on unlooked at.
    remaining: usize,
    /// The next packet continues a payload of 16 MiB or more (its first byte is data).
    continued: bool,
    /// Bytes of a packet start not yet whole enough to decide on.
    held: Vec<u8>,
}

impl KillRewrite {
    /// Watches a session on `server` for `KILL`s of ids in `table`.
    pub fn new(table: &Arc<KillTable>, server: &Arc<Server>) -> Self {
        Self {
            table: table.clone(),
            server: server.clone(),
            remaining: 0,
            continued: false,
            held: Vec::new(),
        }
    }

    /// Goes through `chunk`, which starts where the last one ended (nothing held).
    fn scan<'a>(&mut self, chunk: &'a [u8]) -> Cow<'a, [u8]> {
        // `None`: what goes on so far is `chunk[..at]` unchanged.
        let mut out: Option<Vec<u8>> = None;
        let mut at = 0;
        while at < chunk.len() {
            let rest = &chunk[at..];
            if self.remaining > 0 {
                let take = self.remaining.min(rest.len());
                if let Some(out) = &mut out {
                    out.extend_from_slice(&rest[..take]);
                }
                self.remaining -= take;
                at += take;
                continue;
            }
            let Some(header) = rest.first_chunk::<4>() else {
                return self.hold(chunk, at, out);
            };
            let length =
                usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            let command = !self.continued && header[3] == 0 && length > 0;
            self.continued = length == MAX_PIECE;
            if !(command && length <= MAX_KILL) {
                self.remaining = 4 + length;
                continue;
            }
            let Some(whole) = rest.get(..4 + length) else {
                return self.hold(chunk, at, out);
            };
            match self.rewritten(&whole[4..]) {
                Some(replaced) => {
                    out.get_or_insert_with(|| chunk[..at].to_vec())
                        .extend_from_slice(&replaced);
                }
                None => {
                    if let Some(out) = &mut out {
                        out.extend_from_slice(whole);
                    }
                }
            }
            at += whole.len();
        }
        match out {
            Some(out) => Cow::Owned(out),
            None => Cow::Borrowed(chunk),
        }
    }

    /// Keeps `chunk[at..]` for the next chunk; what goes on now is what came before.
    fn hold<'a>(&mut self, chunk: &'a [u8], at: usize, out: Option<Vec<u8>>) -> Cow<'a, [u8]> {
        self.held.extend_from_slice(&chunk[at..]);
        match out {
            Some(out) => Cow::Owned(out),
            None => Cow::Borrowed(&chunk[..at]),
        }
    }

    /// The packet to send instead of a COM_QUERY `payload` that kills a connection id.
    fn rewritten(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let replaced = rewrite_kill(&self.table, &self.server, payload)?;
        Some(packet(0, &replaced))
    }
}

/// The COM_QUERY payload to send to `server` instead of `payload` when it is a `KILL` of
/// a proxy connection id: the id of that session's thread when it is on `server`, else 0.
/// `None` for any other command.
pub fn rewrite_kill(table: &KillTable, server: &Arc<Server>, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > MAX_KILL {
        return None;
    }
    let sql = payload.strip_prefix(&[COM_QUERY])?;
    let (digits, id) = kill_id(sql)?;
    let thread = table.thread_on(id, server).unwrap_or(0);
    let mut replaced = Vec::with_capacity(payload.len() + 10);
    replaced.push(COM_QUERY);
    replaced.extend_from_slice(&sql[..digits.start]);
    replaced.extend_from_slice(thread.to_string().as_bytes());
    replaced.extend_from_slice(&sql[digits.end..]);
    Some(replaced)
}

impl Rewrite for KillRewrite {
    fn rewrite<'a>(&mut self, chunk: &'a [u8]) -> Cow<'a, [u8]> {
        if self.held.is_empty() {
            return self.scan(chunk);
        }
        let mut joined = std::mem::take(&mut self.held);
        joined.extend_from_slice(chunk);
        Cow::Owned(self.scan(&joined).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::two_server_pool;

    #[test]
    fn kill_statements_and_their_ids() {
        for (sql, id) in [
            (&b"KILL 12"[..], Some(12)),
            (b"kill query 7;", Some(7)),
            (b"  KILL  CONNECTION\t42 ; ", Some(42)),
            (b"KILL HARD QUERY 3", Some(3)),
            (b"KILL QUERY ID 3", None),
            (b"KILL USER bob", None),
            (b"KILL 12 13", None),
            (b"KILL -1", None),
            (b"KILLQUERY 1", None),
            (b"SELECT 1", None),
            (b"KILL 99999999999", None),
        ] {
            assert_eq!(
                kill_id(sql).map(|(_, id)| id),
                id,
                "{:?}",
                String::from_utf8_lossy(sql)
            );
        }
        let (digits, _) = kill_id(b"kill query 7;").expect("kill");
        assert_eq!(digits, 11..12);
    }

    /// Feeds `bytes` in chunks of `size`; returns what went on.
    fn feed(rewrite: &mut KillRewrite, bytes: &[u8], size: usize) -> Vec<u8> {
        bytes
            .chunks(size)
            .flat_map(|chunk| rewrite.rewrite(chunk).into_owned())
            .collect()
    }

    #[test]
    fn kills_are_mapped_to_the_servers_thread_in_any_chunking() {
        let pool = two_server_pool("");
        let (here, there) = (&pool.servers[0], &pool.servers[1]);
        let table = Arc::new(KillTable::default());
        let _a = table.register(5, here, 1234);
        let _b = table.register(6, there, 77);
        let big = vec![b'x'; 300];
        let mut stream = Vec::new();
        stream.extend(packet(0, b"\x03SELECT 1"));
        stream.extend(packet(0, &[&[COM_QUERY][..], &big].concat()));
        stream.extend(packet(0, b"\x03KILL QUERY 5"));
        stream.extend(packet(0, b"\x03KILL 6"));
        stream.extend(packet(0, b"\x03KILL 8"));
        stream.extend(packet(0, b"\x0e"));
        let mut expected = Vec::new();
        expected.extend(packet(0, b"\x03SELECT 1"));
        expected.extend(packet(0, &[&[COM_QUERY][..], &big].concat()));
        expected.extend(packet(0, b"\x03KILL QUERY 1234"));
        expected.extend(packet(0, b"\x03KILL 0"));
        expected.extend(packet(0, b"\x03KILL 0"));
        expected.extend(packet(0, b"\x0e"));
        for size in [1, 2, 3, 5, 7, 16, 100, stream.len()] {
            let mut rewrite = KillRewrite::new(&table, here);
            assert_eq!(
                feed(&mut rewrite, &stream, size),
                expected,
                "chunks of {size}"
            );
        }
        // Unchanged traffic is passed on as read, without a copy.
        let mut rewrite = KillRewrite::new(&table, here);
        let plain = packet(0, b"\x03SELECT 1");
        assert!(matches!(rewrite.rewrite(&plain), Cow::Borrowed(_)));
        drop(_a);
        let mut rewrite = KillRewrite::new(&table, here);
        assert_eq!(
            feed(&mut rewrite, &packet(0, b"\x03KILL QUERY 5"), 64),
            packet(0, b"\x03KILL QUERY 0"),
            "a session gone is unknown"
        );
    }

    #[test]
    fn continuation_and_data_packets_are_not_commands() {
        let pool = two_server_pool("");
        let table = Arc::new(KillTable::default());
        let _a = table.register(5, &pool.servers[0], 1234);
        let mut rewrite = KillRewrite::new(&table, &pool.servers[0]);
        // A LOAD DATA LOCAL file packet (sequence 2) that reads like a KILL.
        let data = packet(2, b"\x03KILL 5");
        assert_eq!(feed(&mut rewrite, &data, 3), data);
        // A payload of 16 MiB: its continuation packet is data.
        let mut big = Vec::new();
        super::super::packet::encode_packet(0, &vec![0u8; MAX_PIECE + 10], &mut big);
        assert_eq!(feed(&mut rewrite, &big, 1 << 20), big);
    }
}
