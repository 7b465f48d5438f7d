//! The client's answer to the greeting: an SSLRequest (the 32-byte head of a
//! HandshakeResponse41 with `CLIENT_SSL`, after which TLS starts) or the
//! HandshakeResponse41 itself (user, auth response, database, plugin, attributes).

use super::CodecError;
use super::flags::capabilities as cap;
use super::lenenc::{Cursor, put_cstr, put_lenenc_bytes, put_lenenc_int, utf8};

/// The fixed head both packets share: capabilities, max packet size, collation, filler.
const HEAD_LEN: usize = 32;

/// The fixed head of an SSLRequest or HandshakeResponse41.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHead {
    /// The capabilities the client asks for (a subset of the server's, in practice).
    pub capabilities: u32,
    /// The largest packet the client will send.
    pub max_packet: u32,
    /// The client's collation id.
    pub charset: u8,
    /// MariaDB's extended capabilities, in the last 4 filler bytes when `CLIENT_MYSQL`
    /// ([`cap::LONG_PASSWORD`]) is clear; 0 otherwise.
    pub mariadb_capabilities: u32,
}

impl ClientHead {
    fn parse(c: &mut Cursor<'_>) -> Result<Self, CodecError> {
        let capabilities = c.u32("client capabilities")?;
        if capabilities & cap::PROTOCOL_41 == 0 {
            return Err(CodecError::Malformed("pre-4.1 client handshake"));
        }
        let max_packet = c.u32("client max packet size")?;
        let charset = c.u8("client charset")?;
        let filler = c.take(23, "client handshake filler")?;
        let mariadb_capabilities = if capabilities & cap::LONG_PASSWORD == 0 {
            u32::from_le_bytes([filler[19], filler[20], filler[21], filler[22]])
        } else {
            0
        };
        Ok(Self {
            capabilities,
            max_packet,
            charset,
            mariadb_capabilities,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.capabilities.to_le_bytes());
        out.extend_from_slice(&self.max_packet.to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&[0; 19]);
        let extended = if self.capabilities & cap::LONG_PASSWORD == 0 {
            self.mariadb_capabilities
        } else {
            0
        };
        out.extend_from_slice(&extended.to_le_bytes());
    }

    /// An SSLRequest payload: this head with `CLIENT_SSL` set.
    pub fn ssl_request(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD_LEN);
        Self {
            capabilities: self.capabilities | cap::SSL,
            ..*self
        }
        .encode(&mut out);
        out
    }
}

/// A HandshakeResponse41.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// Capabilities, max packet size, collation.
    pub head: ClientHead,
    /// The user name.
    pub user: String,
    /// The auth plugin's first answer (a scramble, a signature, or empty).
    pub auth_response: Vec<u8>,
    /// The database asked for (`CLIENT_CONNECT_WITH_DB`); `None` when absent or empty.
    pub database: Option<String>,
    /// The plugin `auth_response` was made by (`CLIENT_PLUGIN_AUTH`).
    pub auth_plugin: Option<String>,
    /// Connection attributes (`CLIENT_CONNECT_ATTRS`) in the order sent.
    pub attributes: Vec<(String, String)>,
}

/// What a client sends after the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientReply {
    /// Start TLS, then send the HandshakeResponse41 over it.
    SslRequest(ClientHead),
    /// The login itself.
    Response(HandshakeResponse),
}

/// Parses the client's first packet: a 32-byte packet with `CLIENT_SSL` is an SSLRequest.
pub fn parse_client_reply(payload: &[u8]) -> Result<ClientReply, CodecError> {
    let mut c = Cursor::new(payload);
    let head = ClientHead::parse(&mut c)?;
    if c.is_empty() {
        if head.capabilities & cap::SSL != 0 {
            return Ok(ClientReply::SslRequest(head));
        }
        return Err(CodecError::Malformed("handshake response without a user"));
    }
    HandshakeResponse::parse_rest(head, &mut c).map(ClientReply::Response)
}

impl HandshakeResponse {
    /// Parses a HandshakeResponse41 payload.
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        match parse_client_reply(payload)? {
            ClientReply::Response(response) => Ok(response),
            ClientReply::SslRequest(_) => {
                Err(CodecError::Malformed("SSLRequest where the login was due"))
            }
        }
    }

    fn parse_rest(head: ClientHead, c: &mut Cursor<'_>) -> Result<Self, CodecError> {
        let caps = head.capabilities;
        let user = utf8(c.cstr("handshake response user")?, "user name")?.to_string();
        let auth_response = if caps & cap::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            c.lenenc_bytes("auth response")?
        } else if caps & cap::SECURE_CONNECTION != 0 {
            let length = c.u8("auth response length")?;
            c.take(length.into(), "auth response")?
        } else {
            c.cstr("auth response")?
        }
        .to_vec();
        let mut response = Self {
            head,
            user,
            auth_response,
            database: None,
            auth_plugin: None,
            attributes: Vec::new(),
        };
        // A field the flags announce may be missing at the end of the packet (old
        // clients); MySQL accepts that, and so does switchyard.
        if caps & cap::CONNECT_WITH_DB != 0 && !c.is_empty() {
            let database = utf8(c.cstr("database")?, "database name")?;
            response.database = (!database.is_empty()).then(|| database.to_string());
        }
        if caps & cap::PLUGIN_AUTH != 0 && !c.is_empty() {
            let plugin = utf8(c.cstr_or_rest(), "auth plugin name")?;
            response.auth_plugin = (!plugin.is_empty()).then(|| plugin.to_string());
        }
        if caps & cap::CONNECT_ATTRS != 0 && !c.is_empty() {
            let mut attrs = Cursor::new(c.lenenc_bytes("connection attributes")?);
            while !attrs.is_empty() {
                let key = utf8(attrs.lenenc_bytes("attribute name")?, "attribute name")?;
                let value = utf8(attrs.lenenc_bytes("attribute value")?, "attribute value")?;
                response
                    .attributes
                    .push((key.to_string(), value.to_string()));
            }
        }
        Ok(response)
    }

    /// The payload as sent, with each field in the form `head.capabilities` calls for (an
    /// auth response over 255 bytes needs `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`; without
    /// it the response is cut there).
    pub fn encode(&self) -> Vec<u8> {
        let caps = self.head.capabilities;
        let mut out =
            Vec::with_capacity(HEAD_LEN + 64 + self.user.len() + self.auth_response.len());
        self.head.encode(&mut out);
        put_cstr(&mut out, self.user.as_bytes());
        if caps & cap::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            put_lenenc_bytes(&mut out, &self.auth_response);
        } else if caps & cap::SECURE_CONNECTION != 0 {
            let response = &self.auth_response[..self.auth_response.len().min(255)];
            out.push(response.len() as u8);
            out.extend_from_slice(response);
        } else {
            put_cstr(&mut out, &self.auth_response);
        }
        if caps & cap::CONNECT_WITH_DB != 0 {
            put_cstr(
                &mut out,
                self.database.as_deref().unwrap_or_default().as_bytes(),
            );
        }
        if caps & cap::PLUGIN_AUTH != 0 {
            put_cstr(
                &mut out,
                self.auth_plugin.as_deref().unwrap_or_default().as_bytes(),
            );
        }
        if caps & cap::CONNECT_ATTRS != 0 {
            let mut attrs = Vec::new();
            for (key, value) in &self.attributes {
                put_lenenc_bytes(&mut attrs, key.as_bytes());
                put_lenenc_bytes(&mut attrs, value.as_bytes());
            }
            put_lenenc_int(&mut out, attrs.len() as u64);
            out.extend_from_slice(&attrs);
        }
        out
    }

    /// A connection attribute's value (`_client_name`, `program_name`...).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::testdata::{CLI_NATIVE_CLIENT, PYMYSQL_CLIENT, packets};

    #[test]
    fn parses_the_mariadb_clis_login() {
        let login = packets(CLI_NATIVE_CLIENT)[0].payload.clone();
        let response = HandshakeResponse::parse(&login).expect("response");
        assert_eq!(response.user, "native_user");
        assert_eq!(response.auth_response.len(), 20);
        assert_eq!(
            response.auth_plugin.as_deref(),
            Some("mysql_native_password")
        );
        assert_eq!(response.database, None);
        assert_eq!(response.attribute("_client_name"), Some("libmariadb"));
        assert_eq!(response.attribute("program_name"), Some("mysql"));
        let caps = response.head.capabilities;
        assert_eq!(
            caps & cap::LONG_PASSWORD,
            0,
            "a MariaDB client clears CLIENT_MYSQL"
        );
        assert_ne!(response.head.mariadb_capabilities, 0);
        assert_ne!(caps & cap::SESSION_TRACK, 0);
        assert_eq!(
            caps & cap::DEPRECATE_EOF,
            0,
            "the 10.11 CLI reads EOF packets"
        );
        assert_eq!(response.encode(), &login[..], "re-encodes byte for byte");
    }

    #[test]
    fn parses_pymysqls_login_with_a_database() {
        let login = packets(PYMYSQL_CLIENT)[0].payload.clone();
        let response = HandshakeResponse::parse(&login).expect("response");
        assert_eq!(response.user, "native_user");
        assert_eq!(response.database.as_deref(), Some("mysql"));
        assert_eq!(response.head.charset, 45);
        assert_eq!(response.head.max_packet, 0xFF_FFFF);
        assert_ne!(response.head.capabilities & cap::LONG_PASSWORD, 0);
        assert_eq!(response.attribute("_client_name"), Some("pymysql"));
        assert_eq!(response.attribute("program_name"), Some("capture"));
        assert_eq!(response.encode(), &login[..], "re-encodes byte for byte");
    }

    #[test]
    fn ssl_requests_and_the_one_byte_auth_length() {
        let head = ClientHead {
            capabilities: cap::LOGIN,
            max_packet: 1 << 24,
            charset: 45,
            mariadb_capabilities: 0,
        };
        let ssl = head.ssl_request();
        assert_eq!(ssl.len(), 32);
        let Ok(ClientReply::SslRequest(parsed)) = parse_client_reply(&ssl) else {
            panic!("an SSLRequest");
        };
        assert_eq!(parsed.capabilities, cap::LOGIN | cap::SSL);
        assert!(parse_client_reply(&head.ssl_request()[..31]).is_err());
        // Without CLIENT_SSL a bare head is not a login.
        let mut bare = Vec::new();
        head.encode(&mut bare);
        assert!(parse_client_reply(&bare).is_err());
        // The 1-byte length form (CLIENT_SECURE_CONNECTION without LENENC_CLIENT_DATA).
        let response = HandshakeResponse {
            head: ClientHead {
                capabilities: cap::PROTOCOL_41
                    | cap::SECURE_CONNECTION
                    | cap::CONNECT_WITH_DB
                    | cap::PLUGIN_AUTH,
                ..head
            },
            user: "app".into(),
            auth_response: vec![7; 20],
            database: Some("shop".into()),
            auth_plugin: Some("mysql_native_password".into()),
            attributes: Vec::new(),
        };
        let encoded = response.encode();
        assert_eq!(&encoded[32..37], b"app\0\x14");
        assert_eq!(HandshakeResponse::parse(&encoded).ok(), Some(response));
    }

    #[test]
    fn malformed_responses_are_errors() {
        let login = packets(PYMYSQL_CLIENT)[0].payload.clone();
        for end in [0, 4, 31, 33, 40, 60] {
            assert!(HandshakeResponse::parse(&login[..end]).is_err(), "{end}");
        }
        let mut old = login.to_vec();
        old[1] &= !2; // CLIENT_PROTOCOL_41
        assert!(HandshakeResponse::parse(&old).is_err());
    }
}
