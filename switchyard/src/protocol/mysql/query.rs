//! COM_QUERY and a minimal reader of its answer: an OK, an ERR, or a text result set
//! (column count, column definitions, rows; an EOF after the columns and at the end, or
//! only a 0xFE OK at the end under `CLIENT_DEPRECATE_EOF`). Enough for switchyard's own
//! queries on its own connections (the health check's role and replica lag); clients'
//! result sets are relayed, never read whole.

use tokio::io::{AsyncRead, AsyncWrite};

use super::eof::EofPacket;
use super::err::{ERR, ErrPacket};
use super::flags::{capabilities as cap, status};
use super::lenenc::Cursor;
use super::login::ServerConnection;
use super::ok::{OK, OkPacket};
use super::packet::{CodecError, Packet, write_packet};

/// COM_QUERY.
pub const COM_QUERY: u8 = 0x03;
/// COM_QUIT: the polite end of a session.
pub const COM_QUIT: u8 = 0x01;
/// Most columns a table can have in MySQL, and so in a result set read here.
const MAX_COLUMNS: u64 = 4096;
/// Most rows read from one result: switchyard's own queries return a few.
const MAX_ROWS: usize = 10_000;

/// A text result set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultSet {
    /// Column names (aliases), in order.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL. Values are text as the server sent them (lossy UTF-8).
    pub rows: Vec<Vec<Option<String>>>,
    /// Status flags from the packet that ended the result set.
    pub status: u16,
}

impl ResultSet {
    /// The value of the first of `names` that is a column, in `row`.
    pub fn value<'a>(&self, row: &'a [Option<String>], names: &[&str]) -> Option<&'a str> {
        names
            .iter()
            .find_map(|name| {
                self.columns
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(name))
            })
            .and_then(|i| row.get(i)?.as_deref())
    }
}

/// What a query returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryResult {
    /// A statement without a result set.
    Ok(OkPacket),
    /// A result set.
    Rows(ResultSet),
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The connection failed, or the server sent something that is not the protocol.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The server answered with an ERR (syntax error, unknown variable, no privilege...).
    #[error("{0}")]
    Server(ErrPacket),
    /// An answer switchyard does not take from its own queries (LOCAL INFILE, too many
    /// rows or columns).
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Runs `sql` and reads its answer. Further results (a multi-result `CALL`) are read and
/// dropped, so the connection is ready for the next command.
pub async fn query<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut ServerConnection<S>,
    sql: &str,
) -> Result<QueryResult, QueryError> {
    let mut command = Vec::with_capacity(sql.len() + 1);
    command.push(COM_QUERY);
    command.extend_from_slice(sql.as_bytes());
    write_packet(&mut connection.stream, 0, &command)
        .await
        .map_err(CodecError::Io)?;
    let first = read_result(connection).await?;
    let mut more = result_status(&first) & status::MORE_RESULTS_EXISTS != 0;
    while more {
        more = result_status(&read_result(connection).await?) & status::MORE_RESULTS_EXISTS != 0;
    }
    Ok(first)
}

/// Sends COM_QUIT (the server closes the connection without logging an abort).
pub async fn quit<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut ServerConnection<S>,
) -> std::io::Result<()> {
    write_packet(&mut connection.stream, 0, &[COM_QUIT])
        .await
        .map(drop)
}

fn result_status(result: &QueryResult) -> u16 {
    match result {
        QueryResult::Ok(ok) => ok.status,
        QueryResult::Rows(rows) => rows.status,
    }
}

async fn read_result<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut ServerConnection<S>,
) -> Result<QueryResult, QueryError> {
    let capabilities = connection.session.capabilities;
    let mut next = async || connection.reader.read(&mut connection.stream).await;
    let first = next().await?;
    let count = match first.header() {
        Some(OK) => {
            return Ok(QueryResult::Ok(OkPacket::parse(
                &first.payload,
                capabilities,
            )?));
        }
        Some(ERR) => return Err(QueryError::Server(ErrPacket::parse(&first.payload)?)),
        Some(0xFB) => {
            return Err(QueryError::Unsupported(
                "the server asks for a LOCAL INFILE",
            ));
        }
        _ => Cursor::new(&first.payload).lenenc_int("column count")?,
    };
    if count == 0 || count > MAX_COLUMNS {
        return Err(QueryError::Unsupported(
            "a result set with no or too many columns",
        ));
    }
    let mut set = ResultSet::default();
    for _ in 0..count {
        set.columns.push(column_name(&next().await?)?);
    }
    let deprecate_eof = capabilities & cap::DEPRECATE_EOF != 0;
    if !deprecate_eof {
        EofPacket::parse(&next().await?.payload)?;
    }
    loop {
        let packet = next().await?;
        let payload = &packet.payload;
        match packet.header() {
            Some(0xFE) if deprecate_eof && payload.len() < 0xFF_FFFF => {
                set.status = OkPacket::parse(payload, capabilities)?.status;
                return Ok(QueryResult::Rows(set));
            }
            Some(0xFE) if !deprecate_eof && EofPacket::is_eof(payload) => {
                set.status = EofPacket::parse(payload)?.status;
                return Ok(QueryResult::Rows(set));
            }
            Some(ERR) => return Err(QueryError::Server(ErrPacket::parse(payload)?)),
            _ => {}
        }
        if set.rows.len() == MAX_ROWS {
            return Err(QueryError::Unsupported(
                "more rows than switchyard reads itself",
            ));
        }
        let mut c = Cursor::new(payload);
        let mut row = Vec::with_capacity(set.columns.len());
        for _ in 0..set.columns.len() {
            row.push(
                c.lenenc_or_null("row value")?
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            );
        }
        if !c.is_empty() {
            return Err(CodecError::Malformed("bytes after a row's values").into());
        }
        set.rows.push(row);
    }
}

/// The name (alias) in a column definition: the fifth length-encoded string, after
/// catalog, schema, table and original table.
fn column_name(packet: &Packet) -> Result<String, CodecError> {
    let mut c = Cursor::new(&packet.payload);
    for _ in 0..4 {
        c.lenenc_bytes("column definition")?;
    }
    Ok(String::from_utf8_lossy(c.lenenc_bytes("column name")?).into_owned())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio_util::either::Either;

    use super::*;
    use crate::protocol::mysql::PacketReader;
    use crate::protocol::mysql::auth::Plugin;
    use crate::protocol::mysql::login::Session;
    use crate::protocol::mysql::testdata::{CLI_NATIVE_SERVER, PYMYSQL_SERVER, packets};

    /// A connection whose server plays back `server` packets (from a capture).
    async fn playback(
        server: &[crate::protocol::mysql::Packet],
        capabilities: u32,
    ) -> (
        ServerConnection<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        for packet in server {
            let framed = crate::protocol::mysql::packet::packet(packet.sequence, &packet.payload);
            theirs.write_all(&framed).await.expect("write");
        }
        let connection = ServerConnection {
            stream: Either::Left(ours),
            reader: PacketReader::new(1 << 20),
            session: Session {
                connection_id: 1,
                server_version: "test".into(),
                server_capabilities: capabilities,
                mariadb_capabilities: 0,
                capabilities,
                status: 2,
                tls: false,
                auth_plugin: Plugin::Native,
            },
        };
        (connection, theirs)
    }

    #[tokio::test]
    async fn reads_captured_eof_style_result_sets_and_errors() {
        let server = packets(CLI_NATIVE_SERVER);
        // SELECT 1 AS one, NULL AS nothing (packets 2..=7), then SELECT DATABASE().
        let caps = cap::PROTOCOL_41 | cap::SESSION_TRACK;
        let (mut connection, _theirs) = playback(&server[2..13], caps).await;
        let Ok(QueryResult::Rows(set)) =
            query(&mut connection, "SELECT 1 AS one, NULL AS nothing").await
        else {
            panic!("rows");
        };
        assert_eq!(set.columns, ["one", "nothing"]);
        assert_eq!(set.rows, [vec![Some("1".to_string()), None]]);
        assert_eq!(set.value(&set.rows[0], &["missing", "ONE"]), Some("1"));
        assert_eq!(set.status, status::AUTOCOMMIT);
        let Ok(QueryResult::Rows(set)) = query(&mut connection, "SELECT DATABASE()").await else {
            panic!("rows");
        };
        assert_eq!(set.rows, [vec![None]]);
        let (mut connection, _theirs) = playback(&server[server.len() - 1..], caps).await;
        let Err(QueryError::Server(err)) = query(&mut connection, "SELECT nosuchcolumn").await
        else {
            panic!("an error");
        };
        assert_eq!(err.code, 1054);
        // PyMySQL's SET AUTOCOMMIT = 0: an OK.
        let server = packets(PYMYSQL_SERVER);
        let (mut connection, _theirs) = playback(&server[3..4], cap::PROTOCOL_41).await;
        assert!(
            matches!(query(&mut connection, "SET AUTOCOMMIT = 0").await, Ok(QueryResult::Ok(ok)) if ok.status == 0)
        );
    }

    #[tokio::test]
    async fn deprecate_eof_result_sets() {
        let caps = cap::PROTOCOL_41 | cap::DEPRECATE_EOF | cap::SESSION_TRACK;
        let server = packets(CLI_NATIVE_SERVER);
        // The same column definitions and row, no EOFs, a 0xFE OK at the end.
        let end = OkPacket {
            status: status::AUTOCOMMIT,
            ..OkPacket::default()
        }
        .encode(0xFE, caps);
        let script: Vec<_> = [&server[2], &server[3], &server[4], &server[6]]
            .into_iter()
            .cloned()
            .chain([crate::protocol::mysql::Packet {
                sequence: 5,
                payload: end.into(),
            }])
            .collect();
        let (mut connection, _theirs) = playback(&script, caps).await;
        let Ok(QueryResult::Rows(set)) =
            query(&mut connection, "SELECT 1 AS one, NULL AS nothing").await
        else {
            panic!("rows");
        };
        assert_eq!(set.rows, [vec![Some("1".to_string()), None]]);
        assert_eq!(set.status, status::AUTOCOMMIT);
    }

    #[tokio::test]
    async fn malformed_results_are_errors() {
        let caps = cap::PROTOCOL_41;
        for bad in [&b"\x00"[..], b"\x02", b"\xfb", b"\x01\x03def"] {
            let script = [crate::protocol::mysql::Packet {
                sequence: 1,
                payload: bytes::Bytes::copy_from_slice(bad),
            }];
            let (mut connection, theirs) = playback(&script, caps).await;
            drop(theirs);
            assert!(query(&mut connection, "SELECT 1").await.is_err(), "{bad:?}");
        }
    }
}
