//! Where a server's reply to one command ends, read packet by packet as it is relayed:
//! the transaction pooler gives a connection back only once the reply is over, and reads
//! the status flags (`SERVER_STATUS_IN_TRANS`) and session state changes of the OK and EOF
//! packets on the way. Pure: the pooler feeds each payload and relays it.
//!
//! The shapes, by command (MySQL's client/server protocol, "Text Protocol" and "Prepared
//! Statements"):
//! - a text or binary result (`COM_QUERY`, `COM_STMT_EXECUTE`): an OK, an ERR, a LOCAL
//!   INFILE request (the client then sends the file, see [`Packet::LocalInfile`]), or a
//!   result set — column count, column definitions, an EOF unless `CLIENT_DEPRECATE_EOF`,
//!   rows, and an EOF (or a 0xFE OK under `CLIENT_DEPRECATE_EOF`) or ERR; with
//!   `SERVER_MORE_RESULTS_EXISTS` another result follows. A cursor (`COM_STMT_EXECUTE` with
//!   a cursor flag) ends after the column definitions, its rows come with `COM_STMT_FETCH`;
//! - `COM_STMT_PREPARE`: an ERR, or a prepare OK, its parameter and column definitions,
//!   each group followed by an EOF unless `CLIENT_DEPRECATE_EOF`;
//! - `COM_STMT_FETCH`: rows, then EOF or ERR; `COM_FIELD_LIST`: definitions, then EOF;
//! - `COM_STATISTICS`: one packet of text; most others: one OK, EOF or ERR.
//!
//! A row of a text result starts with a length-encoded string, so it begins with 0xFE only
//! when that string is longer than 2^24 bytes, and its packet is then at least that long:
//! a 0xFE packet shorter than that is the end of the rows, as MySQL's own clients decide.

use super::CodecError;
use super::eof::EofPacket;
use super::err::ERR;
use super::flags::status;
use super::lenenc::Cursor;
use super::ok::{OK, OkPacket};

/// COM_STMT_PREPARE.
pub const COM_STMT_PREPARE: u8 = 0x16;
/// COM_STMT_EXECUTE.
pub const COM_STMT_EXECUTE: u8 = 0x17;
/// COM_STMT_SEND_LONG_DATA (no reply).
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
/// COM_STMT_CLOSE (no reply).
pub const COM_STMT_CLOSE: u8 = 0x19;
/// COM_STMT_RESET.
pub const COM_STMT_RESET: u8 = 0x1A;
/// COM_STMT_FETCH.
pub const COM_STMT_FETCH: u8 = 0x1C;
/// COM_INIT_DB (`USE`).
pub const COM_INIT_DB: u8 = 0x02;
/// COM_FIELD_LIST.
pub const COM_FIELD_LIST: u8 = 0x04;
/// COM_STATISTICS.
pub const COM_STATISTICS: u8 = 0x09;
/// COM_PING.
pub const COM_PING: u8 = 0x0E;
/// COM_CHANGE_USER.
pub const COM_CHANGE_USER: u8 = 0x11;
/// COM_RESET_CONNECTION.
pub const COM_RESET_CONNECTION: u8 = 0x1F;
/// COM_SET_OPTION (multi-statements on or off).
pub const COM_SET_OPTION: u8 = 0x1B;

/// The shortest payload a 0xFE row can have (a length-encoded string of 2^24 bytes or
/// more); anything shorter that starts with 0xFE ends the rows.
const LONGEST_END: usize = 0xFF_FFFF;

/// What a command's reply looks like, by command byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A text or binary result (COM_QUERY, COM_STMT_EXECUTE).
    Result,
    /// A prepare OK and its definitions.
    Prepare,
    /// Rows up to EOF (COM_STMT_FETCH).
    Fetch,
    /// Definitions up to EOF (COM_FIELD_LIST).
    FieldList,
    /// One packet of any content (COM_STATISTICS).
    Text,
    /// One OK, EOF or ERR.
    Status,
    /// No reply at all (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA, COM_QUIT).
    Nothing,
}

impl Shape {
    /// The shape of the reply to the command whose first payload byte is `command`.
    pub fn of(command: u8) -> Self {
        match command {
            super::query::COM_QUERY | COM_STMT_EXECUTE => Self::Result,
            COM_STMT_PREPARE => Self::Prepare,
            COM_STMT_FETCH => Self::Fetch,
            COM_FIELD_LIST => Self::FieldList,
            COM_STATISTICS => Self::Text,
            COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA | super::query::COM_QUIT => Self::Nothing,
            _ => Self::Status,
        }
    }
}

/// One packet of a reply, as far as the pooler cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A row, a definition, a column count: relayed as is.
    Data,
    /// An OK (also the 0xFE OK ending rows under `CLIENT_DEPRECATE_EOF`).
    Ok(OkPacket),
    /// An EOF (status flags, no session state).
    Eof(EofPacket),
    /// An ERR: the reply (and any further results) ends.
    Err,
    /// The server asks the client for a LOCAL INFILE file: the client's packets go to the
    /// server up to an empty one, then the reply goes on.
    LocalInfile,
    /// The prepare OK of COM_STMT_PREPARE.
    Prepared(PrepareOk),
}

/// The first packet of a successful COM_STMT_PREPARE reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOk {
    /// The statement's id on the server.
    pub statement: u32,
    /// Columns of its result.
    pub columns: u16,
    /// Parameters it takes.
    pub params: u16,
}

impl PrepareOk {
    /// Reads a prepare OK payload.
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        let mut c = Cursor::new(payload);
        if c.u8("empty prepare OK")? != OK {
            return Err(CodecError::Malformed("not a prepare OK"));
        }
        let statement = c.u32("prepare OK statement id")?;
        let columns = c.u16("prepare OK columns")?;
        let params = c.u16("prepare OK params")?;
        Ok(Self {
            statement,
            columns,
            params,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first packet of a result (or of the next one).
    First,
    /// Column definitions still due, then an EOF unless deprecated, then rows.
    Columns(u64),
    /// The EOF after the column definitions.
    ColumnsEof,
    /// Rows, up to the EOF/OK or ERR.
    Rows,
    /// Prepare: parameter definitions, then columns.
    PrepareParams { params: u16, columns: u16 },
    /// Prepare: the EOF after parameter definitions, then columns.
    PrepareParamsEof { columns: u16 },
    /// Prepare: column definitions.
    PrepareColumns(u16),
    /// Prepare: the EOF after column definitions.
    PrepareColumnsEof,
    /// Definitions up to an EOF (COM_FIELD_LIST).
    Definitions,
    /// One packet of any kind.
    Single,
    /// The reply is over.
    Done,
}

/// Follows one command's reply to its end.
#[derive(Debug, Clone)]
pub struct Reply {
    state: State,
    shape: Shape,
    capabilities: u32,
    /// The status flags of the last OK or EOF.
    status: u16,
    /// Rows seen in the last result set.
    rows: u64,
    /// The last result was a result set (not an OK).
    result_set: bool,
}

impl Reply {
    /// The reply to a command of `shape`, on a session with `capabilities`.
    pub fn new(shape: Shape, capabilities: u32) -> Self {
        let state = match shape {
            Shape::Result | Shape::Prepare | Shape::Status => State::First,
            Shape::Fetch => State::Rows,
            Shape::FieldList => State::Definitions,
            Shape::Text => State::Single,
            Shape::Nothing => State::Done,
        };
        Self {
            state,
            shape,
            capabilities,
            status: 0,
            rows: 0,
            result_set: shape == Shape::Fetch,
        }
    }

    /// Whether the reply is over.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The status flags of the last OK or EOF seen.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Rows in the last result set.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the last result was a result set rather than an OK (what `ROW_COUNT()`
    /// reports as -1).
    pub fn result_set(&self) -> bool {
        self.result_set
    }

    fn deprecate_eof(&self) -> bool {
        self.capabilities & super::flags::capabilities::DEPRECATE_EOF != 0
    }

    /// Takes the next packet of the reply.
    pub fn feed(&mut self, payload: &[u8]) -> Result<Packet, CodecError> {
        let header = payload.first().copied();
        let is_end = |limit: usize| header == Some(0xFE) && payload.len() < limit;
        let packet = match self.state {
            State::Done => return Err(CodecError::Malformed("a packet after the reply ended")),
            State::Single => {
                self.state = State::Done;
                match header {
                    Some(ERR) if self.shape != Shape::Text => Packet::Err,
                    _ => Packet::Data,
                }
            }
            State::First => match header {
                Some(OK) if self.shape == Shape::Prepare => {
                    let ok = PrepareOk::parse(payload)?;
                    // A group of definitions that is empty is left out, with its EOF.
                    self.state = if ok.params > 0 {
                        State::PrepareParams {
                            params: ok.params,
                            columns: ok.columns,
                        }
                    } else {
                        self.prepare_columns(ok.columns)
                    };
                    Packet::Prepared(ok)
                }
                Some(OK) => {
                    let ok = OkPacket::parse(payload, self.capabilities)?;
                    self.result_set = false;
                    self.end_result(ok.status);
                    Packet::Ok(ok)
                }
                Some(ERR) => {
                    self.state = State::Done;
                    Packet::Err
                }
                Some(0xFE) if self.shape == Shape::Status => {
                    let status = end_status(payload, self.capabilities)?;
                    self.state = State::Done;
                    self.status = status.0;
                    status.1
                }
                Some(0xFB) if self.shape == Shape::Result => Packet::LocalInfile,
                _ if self.shape == Shape::Result => {
                    let count = Cursor::new(payload).lenenc_int("column count")?;
                    if count == 0 {
                        return Err(CodecError::Malformed("a result set of no columns"));
                    }
                    self.rows = 0;
                    self.result_set = true;
                    self.state = State::Columns(count);
                    Packet::Data
                }
                _ => return Err(CodecError::Malformed("an unexpected reply to the command")),
            },
            State::Columns(left) => {
                self.state = match (left - 1, self.deprecate_eof()) {
                    (0, true) => State::Rows,
                    (0, false) => State::ColumnsEof,
                    (left, _) => State::Columns(left),
                };
                Packet::Data
            }
            State::ColumnsEof => {
                if !is_end(9) {
                    return Err(CodecError::Malformed("no EOF after column definitions"));
                }
                let eof = EofPacket::parse(payload)?;
                self.status = eof.status;
                // A cursor's rows come later, with COM_STMT_FETCH.
                self.state = if eof.status & status::CURSOR_EXISTS != 0 {
                    State::Done
                } else {
                    State::Rows
                };
                Packet::Eof(eof)
            }
            State::Rows => match header {
                Some(ERR) => {
                    self.state = State::Done;
                    Packet::Err
                }
                Some(0xFE) if is_end(LONGEST_END) => {
                    let (status, packet) = end_status(payload, self.capabilities)?;
                    if self.shape == Shape::Fetch {
                        self.status = status;
                        self.state = State::Done;
                    } else {
                        self.end_result(status);
                    }
                    packet
                }
                _ => {
                    self.rows += 1;
                    Packet::Data
                }
            },
            State::PrepareParams { params, columns } => {
                self.state = if params > 1 {
                    State::PrepareParams {
                        params: params - 1,
                        columns,
                    }
                } else if self.deprecate_eof() {
                    self.prepare_columns(columns)
                } else {
                    State::PrepareParamsEof { columns }
                };
                Packet::Data
            }
            State::PrepareParamsEof { columns } => {
                let eof = EofPacket::parse(payload)?;
                self.state = self.prepare_columns(columns);
                Packet::Eof(eof)
            }
            State::PrepareColumns(left) => {
                self.state = if left > 1 {
                    State::PrepareColumns(left - 1)
                } else if self.deprecate_eof() {
                    State::Done
                } else {
                    State::PrepareColumnsEof
                };
                Packet::Data
            }
            State::PrepareColumnsEof => {
                let eof = EofPacket::parse(payload)?;
                self.state = State::Done;
                Packet::Eof(eof)
            }
            State::Definitions => match header {
                Some(ERR) => {
                    self.state = State::Done;
                    Packet::Err
                }
                Some(0xFE) if is_end(LONGEST_END) => {
                    let (status, packet) = end_status(payload, self.capabilities)?;
                    self.status = status;
                    self.state = State::Done;
                    packet
                }
                _ => Packet::Data,
            },
        };
        Ok(packet)
    }

    /// The end of one result with `status`: another follows when the server says so.
    fn end_result(&mut self, status: u16) {
        self.status = status;
        self.state = if status & status::MORE_RESULTS_EXISTS != 0 {
            State::First
        } else {
            State::Done
        };
    }

    /// The state before a prepare reply's column definitions (none: the reply is over).
    fn prepare_columns(&self, columns: u16) -> State {
        if columns == 0 {
            State::Done
        } else {
            State::PrepareColumns(columns)
        }
    }
}

/// The status flags of a 0xFE packet that ends rows or definitions: an OK under
/// `CLIENT_DEPRECATE_EOF`, else an EOF.
fn end_status(payload: &[u8], capabilities: u32) -> Result<(u16, Packet), CodecError> {
    if capabilities & super::flags::capabilities::DEPRECATE_EOF != 0 && payload.len() > 5 {
        let ok = OkPacket::parse(payload, capabilities)?;
        Ok((ok.status, Packet::Ok(ok)))
    } else {
        let eof = EofPacket::parse(payload)?;
        Ok((eof.status, Packet::Eof(eof)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::handshake::Handshake;
    use crate::protocol::mysql::response::HandshakeResponse;
    use crate::protocol::mysql::testdata::{
        CLI_NATIVE_CLIENT, CLI_NATIVE_SERVER, CONNECTOR_PREPARED_CLIENT, CONNECTOR_PREPARED_SERVER,
        PYMYSQL_CLIENT, PYMYSQL_MULTI_CLIENT, PYMYSQL_MULTI_SERVER, PYMYSQL_SERVER, packets,
    };

    /// Follows every command of a captured session with a [`Reply`]: each reply must end
    /// exactly where the next one begins, and the whole capture must be read. Returns,
    /// per command, its byte and what the reply's packets were.
    fn replay(client: &[u8], server: &[u8]) -> Vec<(u8, Vec<Packet>)> {
        let client = packets(client);
        let server = packets(server);
        let greeting = Handshake::parse(&server[0].payload).expect("greeting");
        let response = HandshakeResponse::parse(&client[0].payload).expect("response");
        let capabilities = greeting.capabilities & response.head.capabilities;
        // The login ends with the server's first OK.
        let login = server
            .iter()
            .position(|p| p.header() == Some(OK))
            .expect("a login OK");
        let mut replies = server[login + 1..].iter();
        let mut seen = Vec::new();
        for command in client.iter().filter(|p| p.sequence == 0) {
            let kind = command.payload[0];
            let mut reply = Reply::new(Shape::of(kind), capabilities);
            let mut packets = Vec::new();
            while !reply.done() {
                let packet = replies.next().expect("the reply goes on");
                packets.push(reply.feed(&packet.payload).expect("a reply packet"));
            }
            seen.push((kind, packets));
        }
        assert!(
            replies.next().is_none(),
            "every server packet belongs to a reply"
        );
        seen
    }

    fn kinds(packets: &[Packet]) -> String {
        packets
            .iter()
            .map(|p| match p {
                Packet::Data => 'd',
                Packet::Ok(_) => 'o',
                Packet::Eof(_) => 'e',
                Packet::Err => 'x',
                Packet::LocalInfile => 'l',
                Packet::Prepared(_) => 'p',
            })
            .collect()
    }

    #[test]
    fn text_results_with_eof_packets_and_an_error() {
        let seen = replay(CLI_NATIVE_CLIENT, CLI_NATIVE_SERVER);
        let shapes: Vec<(u8, String)> = seen.iter().map(|(k, p)| (*k, kinds(p))).collect();
        let expected: Vec<(u8, String)> = [
            // SELECT 1 AS one, NULL AS nothing: count, two definitions, EOF, row, EOF.
            (0x03, "dddede"),
            // USE mysql: the CLI sends `SELECT DATABASE()` then COM_INIT_DB.
            (0x03, "ddede"),
            (0x02, "o"),
            // BEGIN, SELECT 2, COMMIT, an unknown column (ERR 1054), COM_QUIT.
            (0x03, "o"),
            (0x03, "ddede"),
            (0x03, "o"),
            (0x03, "x"),
            (0x01, ""),
        ]
        .into_iter()
        .map(|(k, s)| (k, s.to_string()))
        .collect();
        assert_eq!(shapes, expected);
    }

    #[test]
    fn binary_results_and_prepares() {
        let seen = replay(CONNECTOR_PREPARED_CLIENT, CONNECTOR_PREPARED_SERVER);
        let prepares: Vec<&PrepareOk> = seen
            .iter()
            .flat_map(|(_, p)| p)
            .filter_map(|p| match p {
                Packet::Prepared(ok) => Some(ok),
                _ => None,
            })
            .collect();
        assert_eq!(prepares.len(), 2, "{seen:?}");
        assert_eq!((prepares[0].params, prepares[0].columns), (1, 2));
        assert_eq!((prepares[1].params, prepares[1].columns), (1, 0));
        let executes: Vec<String> = seen
            .iter()
            .filter(|(k, _)| *k == COM_STMT_EXECUTE)
            .map(|(_, p)| kinds(p))
            .collect();
        // Two rows, then one, then the INSERT's OK: column count, definitions, EOF, rows
        // (binary, starting 0x00), EOF (MariaDB 10.11 offers no CLIENT_DEPRECATE_EOF).
        assert_eq!(executes, ["dddedde", "dddede", "o"], "{seen:?}");
        assert!(
            seen.iter()
                .any(|(k, p)| *k == COM_STMT_CLOSE && p.is_empty())
        );
    }

    #[test]
    fn several_results_of_one_query() {
        let seen = replay(PYMYSQL_MULTI_CLIENT, PYMYSQL_MULTI_SERVER);
        let first = seen
            .iter()
            .find(|(k, p)| *k == 0x03 && p.len() > 3)
            .map(|(_, p)| kinds(p));
        // SELECT 1 (more results), SET @x (OK, more results), SELECT v.
        assert_eq!(first.as_deref(), Some("ddedeoddede"));
    }

    #[test]
    fn pymysql_session_replies() {
        let seen = replay(PYMYSQL_CLIENT, PYMYSQL_SERVER);
        assert!(!seen.is_empty());
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let mut reply = Reply::new(Shape::Result, 0);
        assert!(reply.feed(&[]).is_err(), "an empty first packet");
        let mut reply = Reply::new(Shape::Result, 0);
        assert!(reply.feed(&[0]).is_err(), "a truncated OK");
        let mut reply = Reply::new(Shape::Prepare, 0);
        assert!(reply.feed(&[0, 1]).is_err(), "a truncated prepare OK");
        let mut reply = Reply::new(Shape::Result, 0);
        assert!(reply.feed(&[1]).is_ok());
        assert!(reply.feed(&[3, b'd', b'e', b'f']).is_ok());
        assert!(reply.feed(&[1, 2]).is_err(), "no EOF after the definitions");
        let mut done = Reply::new(Shape::Nothing, 0);
        assert!(done.done());
        assert!(done.feed(&[0]).is_err(), "nothing is due");
    }
}
