//! Passthrough authentication: the server checks the client's password, and the proxy
//! only carries the exchange.
//!
//! A client's first auth response is bound to the scramble of the greeting it answered,
//! which was the proxy's (sent before the proxy knew where the client would go). So once
//! the server's greeting is in, the proxy hands the client the server's scramble and
//! plugin in an AuthSwitchRequest; the client's answer becomes the auth response of the
//! HandshakeResponse41 sent to the server. What the server says next (OK, ERR, another
//! AuthSwitchRequest, AuthMoreData of `caching_sha2_password`: fast-auth result, full
//! authentication, its RSA public key) is relayed packet by packet with the sequence ids
//! of each side, until the OK or ERR.

use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::{caching_sha2, native};
use super::auth_switch::{AUTH_MORE_DATA, AUTH_SWITCH, AuthSwitch};
use super::err::{ERR, ErrPacket};
use super::ok::OK;
use super::packet::{CodecError, PacketReader, write_packet};
use super::response::HandshakeResponse;

/// One side of the exchange: its stream, what was read from it, and the sequence id of
/// the next packet the proxy sends it.
#[derive(Debug)]
pub struct Side<'a, S> {
    /// The stream.
    pub stream: &'a mut S,
    /// Packets read from it.
    pub reader: &'a mut PacketReader,
    /// The sequence id of the next packet sent to it.
    pub sequence: u8,
}

/// How the relayed authentication ended.
#[derive(Debug)]
pub enum Outcome {
    /// The server sent OK (relayed): the session is logged in.
    LoggedIn,
    /// The server refused with this ERR (relayed): wrong password, unknown database...
    Refused(ErrPacket),
}

/// Why the exchange broke off, and on which side.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    /// The client closed or sent something that is not the protocol.
    #[error("client: {0}")]
    Client(CodecError),
    /// The server closed or sent something that is not the protocol.
    #[error("server: {0}")]
    Server(CodecError),
}

/// Bytes moved during the exchange, for the connection's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// Bytes sent to the server.
    pub to_server: u64,
    /// Bytes sent to the client.
    pub to_client: u64,
}

/// The AuthSwitchRequest that hands the client the server's greeting challenge: the
/// scramble NUL-terminated as servers send it for the scramble-based plugins, else as is.
pub fn switch_to_server(plugin: &str, scramble: &[u8]) -> AuthSwitch {
    let plugin = if plugin.is_empty() {
        native::NAME
    } else {
        plugin
    };
    let mut data = scramble.to_vec();
    if plugin == native::NAME || plugin == caching_sha2::NAME {
        data.push(0);
    }
    AuthSwitch {
        plugin: plugin.to_string(),
        data,
    }
}

/// Runs the exchange: `response` (routed and rewritten) goes to the server with the
/// client's answer to `switch`; returns at the server's OK or ERR, both relayed.
pub async fn relay_login<C, S>(
    client: Side<'_, C>,
    server: Side<'_, S>,
    switch: &AuthSwitch,
    mut response: HandshakeResponse,
    moved: &mut Moved,
) -> Result<Outcome, Broken>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Side {
        stream: client,
        reader: client_reader,
        sequence: to_client,
    } = client;
    let Side {
        stream: server,
        reader: server_reader,
        sequence: to_server,
    } = server;
    let send = |payload: &[u8]| payload.len() as u64 + 4;
    let switch = switch.encode();
    write_packet(client, to_client, &switch)
        .await
        .map_err(|e| Broken::Client(e.into()))?;
    moved.to_client += send(&switch);
    let answer = client_reader.read(client).await.map_err(Broken::Client)?;
    let mut to_client = answer.next();
    response.auth_response = answer.payload.to_vec();
    response.auth_plugin = AuthSwitch::parse(&switch).ok().map(|s| s.plugin);
    let login = response.encode();
    write_packet(server, to_server, &login)
        .await
        .map_err(|e| Broken::Server(e.into()))?;
    moved.to_server += send(&login);
    loop {
        let packet = server_reader.read(server).await.map_err(Broken::Server)?;
        to_client = write_packet(client, to_client, &packet.payload)
            .await
            .map_err(|e| Broken::Client(e.into()))?;
        moved.to_client += send(&packet.payload);
        match packet.header() {
            Some(OK) => return Ok(Outcome::LoggedIn),
            Some(ERR) => {
                let err = ErrPacket::parse(&packet.payload).map_err(Broken::Server)?;
                return Ok(Outcome::Refused(err));
            }
            // caching_sha2_password's fast path succeeded: the OK follows, unasked.
            Some(AUTH_MORE_DATA) if packet.payload[1..] == [caching_sha2::FAST_AUTH_SUCCESS] => {}
            Some(AUTH_SWITCH | AUTH_MORE_DATA) => {
                let reply = client_reader.read(client).await.map_err(Broken::Client)?;
                to_client = reply.next();
                write_packet(server, packet.next(), &reply.payload)
                    .await
                    .map_err(|e| Broken::Server(e.into()))?;
                moved.to_server += send(&reply.payload);
            }
            _ => {
                return Err(Broken::Server(CodecError::Malformed(
                    "unexpected packet during authentication",
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::protocol::mysql::flags::capabilities as cap;
    use crate::protocol::mysql::packet::packet;
    use crate::protocol::mysql::response::ClientHead;
    use crate::protocol::mysql::testdata::{CLI_ED25519_SERVER, packets};

    fn response() -> HandshakeResponse {
        HandshakeResponse {
            head: ClientHead {
                capabilities: cap::LOGIN,
                max_packet: 1 << 24,
                charset: 45,
                mariadb_capabilities: 0,
            },
            user: "ed_user".into(),
            auth_response: b"bound to the proxy's scramble".to_vec(),
            database: None,
            auth_plugin: Some("mysql_native_password".into()),
            attributes: Vec::new(),
        }
    }

    /// The exchange between two duplex ends, the client's next sequence id 2 (after
    /// greeting 0 and response 1), the server's 1.
    async fn relay(
        client: &mut tokio::io::DuplexStream,
        server: &mut tokio::io::DuplexStream,
        switch: &AuthSwitch,
        moved: &mut Moved,
    ) -> Result<Outcome, Broken> {
        let (mut client_reader, mut server_reader) =
            (PacketReader::new(1 << 20), PacketReader::new(1 << 20));
        relay_login(
            Side {
                stream: client,
                reader: &mut client_reader,
                sequence: 2,
            },
            Side {
                stream: server,
                reader: &mut server_reader,
                sequence: 1,
            },
            switch,
            response(),
            moved,
        )
        .await
    }

    /// A captured MariaDB ed25519 login: the server's greeting names
    /// mysql_native_password, then switches to client_ed25519. The client is handed the
    /// greeting's scramble, answers; the server's switch is relayed with the client's
    /// sequence ids and the client's signature goes back with the server's.
    #[tokio::test]
    async fn a_captured_ed25519_switch_is_relayed_with_each_sides_sequence_ids() {
        let captured = packets(CLI_ED25519_SERVER);
        let greeting =
            super::super::handshake::Handshake::parse(&captured[0].payload).expect("greeting");
        let switch = switch_to_server(&greeting.auth_plugin, &greeting.scramble);
        assert_eq!(switch.data.len(), 21);
        assert_eq!(switch.data.last(), Some(&0));

        let (mut fake_client, mut client_end) = tokio::io::duplex(1 << 16);
        let (mut server_end, mut fake_server) = tokio::io::duplex(1 << 16);
        // The client answers at sequence 3 (after greeting 0, response 1, our switch 2),
        // then signs at 5.
        fake_client
            .write_all(&[packet(3, &[7; 20]), packet(5, &[9; 64])].concat())
            .await
            .expect("client");
        // The server: the ed25519 switch (sequence 2), then OK (4).
        let ok = [0u8, 0, 0, 2, 0, 0, 0];
        fake_server
            .write_all(&[packet(2, &captured[1].payload), packet(4, &ok)].concat())
            .await
            .expect("server");
        let mut moved = Moved::default();
        let outcome = relay(&mut client_end, &mut server_end, &switch, &mut moved)
            .await
            .expect("relayed");
        assert!(matches!(outcome, Outcome::LoggedIn));
        drop((client_end, server_end));
        let mut to_server = Vec::new();
        fake_server.read_to_end(&mut to_server).await.expect("read");
        let to_server = packets(&to_server);
        assert_eq!(to_server[0].sequence, 1);
        let login = HandshakeResponse::parse(&to_server[0].payload).expect("login");
        assert_eq!(login.auth_response, vec![7; 20], "the client's answer");
        assert_eq!(login.auth_plugin.as_deref(), Some("mysql_native_password"));
        assert_eq!(
            (to_server[1].sequence, &to_server[1].payload[..]),
            (3, &[9; 64][..])
        );
        let mut to_client = Vec::new();
        fake_client.read_to_end(&mut to_client).await.expect("read");
        let to_client = packets(&to_client);
        assert_eq!(to_client[0].sequence, 2);
        assert_eq!(
            AuthSwitch::parse(&to_client[0].payload).expect("switch"),
            switch
        );
        assert_eq!(to_client[1].sequence, 4);
        assert_eq!(to_client[1].payload, captured[1].payload);
        assert_eq!(
            (to_client[2].sequence, &to_client[2].payload[..]),
            (6, &ok[..])
        );
        assert_eq!(
            moved.to_server,
            (to_server[0].payload.len() + 4 + 68) as u64
        );
    }

    #[tokio::test]
    async fn a_fast_auth_success_is_not_answered_and_a_server_err_is_relayed() {
        let (mut fake_client, mut client_end) = tokio::io::duplex(1 << 16);
        let (mut server_end, mut fake_server) = tokio::io::duplex(1 << 16);
        fake_client
            .write_all(&packet(3, &[1; 32]))
            .await
            .expect("client");
        let denied = ErrPacket {
            code: 1045,
            sqlstate: "28000".into(),
            message: "Access denied".into(),
        };
        fake_server
            .write_all(&[packet(2, &[1, 3]), packet(3, &denied.encode())].concat())
            .await
            .expect("server");
        let switch = switch_to_server(caching_sha2::NAME, &[b'a'; 20]);
        let outcome = relay(
            &mut client_end,
            &mut server_end,
            &switch,
            &mut Moved::default(),
        )
        .await
        .expect("relayed");
        assert!(matches!(outcome, Outcome::Refused(err) if err == denied));
    }
}
