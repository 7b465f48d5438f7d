//! The errors switchyard answers MySQL clients with itself, as ERR packets with the codes,
//! SQLSTATEs and wording MySQL uses, so that drivers map them to the errors they know
//! (a retryable connection failure, access denied...) instead of seeing a bare close.

use super::err::ErrPacket;
use super::packet::packet;
use super::response::HandshakeResponse;

/// The client's library, as far as the error numbers it accepts from a server go.
///
/// MySQL's own client reports an unreachable server as 2003 (CR_CONN_HOST_ERROR), so
/// drivers and people recognise it. libmariadb (MariaDB Connector/C: the `mariadb` CLI,
/// and drivers built on it) refuses the client-only numbers (2001–2061, 5001–…) in a
/// server's ERR since its 3.3.9 (December 2023) and reports "2027 Received malformed
/// packet" instead, losing the message: it gets 1105 (ER_UNKNOWN_ERROR) with the same
/// SQLSTATE and wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLibrary {
    /// libmariadb (`_client_name = libmariadb` among the connection attributes).
    Libmariadb,
    /// Any other (PyMySQL, mysql-connector-python, MySQL's libmysqlclient, JDBC...).
    Other,
}

impl ClientLibrary {
    /// The library named by the login's `_client_name` attribute.
    pub fn of(response: &HandshakeResponse) -> Self {
        match response.attribute("_client_name") {
            Some("libmariadb") => Self::Libmariadb,
            _ => Self::Other,
        }
    }
}

/// MySQL's client error "Can't connect to MySQL server on ...".
pub const CR_CONN_HOST_ERROR: u16 = 2003;
/// The server error for what has no number of its own.
pub const ER_UNKNOWN_ERROR: u16 = 1105;

/// An error the proxy reports to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No server could be reached (or used): 2003 "Can't connect to MySQL server on
    /// '<pool or server>' (<reason>)", 08S01 (a connection failure to drivers); 1105 to
    /// libmariadb ([`ClientLibrary`]).
    CantConnect {
        /// The client's library, which decides the number.
        library: ClientLibrary,
        /// The pool (no server of it available) or server (it failed) named.
        on: String,
        /// Why.
        reason: String,
    },
    /// No route for the database (1049 / 42000).
    UnknownDatabase(String),
    /// The pool's queue is full or timed out (1040 / 08004).
    TooManyConnections,
    /// Proxy-side authentication failed (1045 / 28000).
    AccessDenied {
        /// The user the client gave.
        user: String,
        /// The client's address as MySQL shows it.
        host: String,
        /// Whether the client sent a password.
        using_password: bool,
    },
    /// The listener requires TLS and the client did not ask for it (3159 / HY000).
    InsecureTransport,
    /// A packet that does not follow the protocol (1156 / 08S01), with what was wrong.
    MalformedPacket(String),
    /// The client cannot answer the server's authentication plugin: it did not announce
    /// `CLIENT_PLUGIN_AUTH` (1251 / 08004).
    AuthNotSupported,
}

impl ProxyError {
    /// The MySQL error number.
    pub fn code(&self) -> u16 {
        match self {
            Self::CantConnect {
                library: ClientLibrary::Libmariadb,
                ..
            } => ER_UNKNOWN_ERROR,
            Self::CantConnect { .. } => CR_CONN_HOST_ERROR,
            Self::UnknownDatabase(_) => 1049,
            Self::TooManyConnections => 1040,
            Self::AccessDenied { .. } => 1045,
            Self::InsecureTransport => 3159,
            Self::MalformedPacket(_) => 1156,
            Self::AuthNotSupported => 1251,
        }
    }

    /// The SQLSTATE.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::CantConnect { .. } | Self::MalformedPacket(_) => "08S01",
            Self::UnknownDatabase(_) => "42000",
            Self::TooManyConnections | Self::AuthNotSupported => "08004",
            Self::AccessDenied { .. } => "28000",
            Self::InsecureTransport => "HY000",
        }
    }

    /// The message, worded as MySQL words it where MySQL has the error.
    pub fn message(&self) -> String {
        match self {
            Self::CantConnect { on, reason, .. } => {
                format!("Can't connect to MySQL server on '{on}' ({reason})")
            }
            Self::UnknownDatabase(database) => format!("Unknown database '{database}'"),
            Self::TooManyConnections => "Too many connections".to_string(),
            Self::AccessDenied {
                user,
                host,
                using_password,
            } => format!(
                "Access denied for user '{user}'@'{host}' (using password: {})",
                if *using_password { "YES" } else { "NO" }
            ),
            Self::InsecureTransport => "Connections using insecure transport are prohibited while --require_secure_transport=ON.".to_string(),
            Self::MalformedPacket(what) => format!("Got packets out of order or malformed: {what}"),
            Self::AuthNotSupported => "Client does not support authentication protocol requested by server; consider upgrading MySQL client".to_string(),
        }
    }

    /// The ERR packet.
    pub fn to_err(&self) -> ErrPacket {
        ErrPacket {
            code: self.code(),
            sqlstate: self.sqlstate().to_string(),
            message: self.message(),
        }
    }

    /// The ERR packet framed with sequence id `sequence` (the one after the client's
    /// last packet; 0 when answering before the greeting's reply is read).
    pub fn packet(&self, sequence: u8) -> Vec<u8> {
        packet(sequence, &self.to_err().encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_states_and_wording() {
        let denied = ProxyError::AccessDenied {
            user: "native_user".into(),
            host: "127.0.0.1".into(),
            using_password: true,
        };
        let framed = denied.packet(2);
        assert_eq!(framed[3], 2, "sequence id");
        // Byte for byte what MariaDB itself sent for a wrong password (testdata).
        let captured = crate::protocol::mysql::testdata::packets(
            crate::protocol::mysql::testdata::CLI_WRONG_PASSWORD_SERVER,
        );
        assert_eq!(&framed[4..], &captured[1].payload[..]);
        let cant = |library| ProxyError::CantConnect {
            library,
            on: "127.0.0.1:3306".into(),
            reason: "Connection refused (os error 111)".into(),
        };
        assert_eq!(
            cant(ClientLibrary::Other).message(),
            "Can't connect to MySQL server on '127.0.0.1:3306' (Connection refused (os error 111))"
        );
        for (error, code, state) in [
            (cant(ClientLibrary::Other), 2003, "08S01"),
            (cant(ClientLibrary::Libmariadb), 1105, "08S01"),
            (ProxyError::UnknownDatabase("shop".into()), 1049, "42000"),
            (ProxyError::TooManyConnections, 1040, "08004"),
            (ProxyError::InsecureTransport, 3159, "HY000"),
            (
                ProxyError::MalformedPacket("short handshake".into()),
                1156,
                "08S01",
            ),
        ] {
            let err = ErrPacket::parse(&error.packet(0)[4..]).expect("err");
            assert_eq!((err.code, err.sqlstate.as_str()), (code, state));
            assert_eq!(err.message, error.message());
        }
    }

    #[test]
    fn the_library_is_read_from_the_connection_attributes() {
        use crate::protocol::mysql::testdata::{CLI_NATIVE_CLIENT, PYMYSQL_CLIENT, packets};
        // The logins the `mariadb` CLI and PyMySQL sent to MariaDB (testdata).
        let login = |capture| {
            packets(capture)
                .iter()
                .find_map(|p| HandshakeResponse::parse(&p.payload).ok())
                .expect("a HandshakeResponse41")
        };
        assert_eq!(
            ClientLibrary::of(&login(CLI_NATIVE_CLIENT)),
            ClientLibrary::Libmariadb
        );
        assert_eq!(
            ClientLibrary::of(&login(PYMYSQL_CLIENT)),
            ClientLibrary::Other
        );
        let mut bare = login(CLI_NATIVE_CLIENT);
        bare.attributes.clear();
        assert_eq!(ClientLibrary::of(&bare), ClientLibrary::Other);
    }
}
