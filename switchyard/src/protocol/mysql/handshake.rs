//! HandshakeV10, the server's greeting: the first packet of every connection. Switchyard
//! parses the one a server sends when it logs in, and builds its own for clients.

use super::CodecError;
use super::flags::capabilities as cap;
use super::lenenc::{Cursor, put_cstr, utf8};

/// The only protocol version still spoken.
pub const PROTOCOL_VERSION: u8 = 10;
/// The length of the scramble (nonce) servers send and switchyard generates.
pub const SCRAMBLE_LEN: usize = 20;
/// `utf8mb4_general_ci`: a collation every MySQL (5.5.3+) and MariaDB knows.
pub const UTF8MB4_GENERAL_CI: u8 = 45;

/// A HandshakeV10 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Server version, e.g. `8.0.36` or `5.5.5-10.11.6-MariaDB` (MariaDB's prefix keeps
    /// old replication code happy).
    pub server_version: String,
    /// The server's thread id, what `KILL` takes.
    pub connection_id: u32,
    /// The auth plugin data (both parts, without the trailing NUL): the nonce the first
    /// auth response is computed from.
    pub scramble: Vec<u8>,
    /// The server's capability flags (`CLIENT_*`, low 32 bits).
    pub capabilities: u32,
    /// MariaDB's extended capabilities; 0 unless `CLIENT_MYSQL` is clear.
    pub mariadb_capabilities: u32,
    /// The server's default collation id.
    pub charset: u8,
    /// Server status flags.
    pub status: u16,
    /// The auth plugin the scramble is meant for; empty without `CLIENT_PLUGIN_AUTH`.
    pub auth_plugin: String,
}

impl Handshake {
    /// Parses a HandshakeV10 payload. Protocol 9 (pre-4.1 servers) is refused. Servers
    /// that end the plugin name with the packet instead of a NUL are accepted.
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        let mut c = Cursor::new(payload);
        if c.u8("empty handshake")? != PROTOCOL_VERSION {
            return Err(CodecError::Malformed(
                "handshake protocol version is not 10",
            ));
        }
        let server_version =
            utf8(c.cstr("handshake server version")?, "server version")?.to_string();
        let connection_id = c.u32("handshake connection id")?;
        let mut scramble = c.take(8, "handshake scramble")?.to_vec();
        c.u8("handshake filler")?;
        let mut capabilities = u32::from(c.u16("handshake capabilities")?);
        let mut handshake = Self {
            server_version,
            connection_id,
            scramble: Vec::new(),
            capabilities,
            mariadb_capabilities: 0,
            charset: 0,
            status: 0,
            auth_plugin: String::new(),
        };
        if c.is_empty() {
            handshake.scramble = scramble;
            return Ok(handshake);
        }
        handshake.charset = c.u8("handshake charset")?;
        handshake.status = c.u16("handshake status")?;
        capabilities |= u32::from(c.u16("handshake capabilities")?) << 16;
        handshake.capabilities = capabilities;
        let auth_len = usize::from(c.u8("handshake auth data length")?);
        let reserved = c.take(10, "handshake reserved bytes")?;
        if capabilities & cap::LONG_PASSWORD == 0 {
            handshake.mariadb_capabilities =
                u32::from_le_bytes([reserved[6], reserved[7], reserved[8], reserved[9]]);
        }
        if capabilities & cap::SECURE_CONNECTION != 0 {
            // Without CLIENT_PLUGIN_AUTH the length byte is a filler, and part 2 is 13.
            let part2_len = if capabilities & cap::PLUGIN_AUTH != 0 {
                auth_len.saturating_sub(8).max(13)
            } else {
                13
            };
            let part2 = c.take(part2_len, "handshake scramble part 2")?;
            scramble.extend_from_slice(part2);
            if capabilities & cap::PLUGIN_AUTH != 0 && auth_len > 8 {
                scramble.truncate(auth_len);
            }
            if scramble.len() > 8 && scramble.last() == Some(&0) {
                scramble.pop();
            }
        }
        handshake.scramble = scramble;
        if capabilities & cap::PLUGIN_AUTH != 0 {
            handshake.auth_plugin = utf8(c.cstr_or_rest(), "handshake auth plugin")?.to_string();
        }
        Ok(handshake)
    }

    /// The payload as sent (scramble part 2 NUL-terminated and at least 13 bytes, as
    /// servers send it).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.server_version.len());
        out.push(PROTOCOL_VERSION);
        put_cstr(&mut out, self.server_version.as_bytes());
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        let mut part1 = [0u8; 8];
        let head = self.scramble.len().min(8);
        part1[..head].copy_from_slice(&self.scramble[..head]);
        out.extend_from_slice(&part1);
        out.push(0);
        out.extend_from_slice(&(self.capabilities as u16).to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&((self.capabilities >> 16) as u16).to_le_bytes());
        let part2 = self.scramble.get(8..).unwrap_or_default();
        let auth_len = if self.capabilities & cap::PLUGIN_AUTH != 0 {
            (8 + part2.len() + 1).min(255) as u8
        } else {
            0
        };
        out.push(auth_len);
        out.extend_from_slice(&[0; 6]);
        let extended = if self.capabilities & cap::LONG_PASSWORD == 0 {
            self.mariadb_capabilities
        } else {
            0
        };
        out.extend_from_slice(&extended.to_le_bytes());
        if self.capabilities & cap::SECURE_CONNECTION != 0 {
            let part2 = &part2[..part2.len().min(246)];
            out.extend_from_slice(part2);
            out.push(0);
            out.resize(out.len() + 12usize.saturating_sub(part2.len()), 0);
        }
        if self.capabilities & cap::PLUGIN_AUTH != 0 {
            put_cstr(&mut out, self.auth_plugin.as_bytes());
        }
        out
    }

    /// Switchyard's own greeting: `server_version` as configured (clients read features
    /// from it, so it should be the backends'), the capabilities the proxy relays
    /// ([`cap::PROXY`], plus `CLIENT_SSL` when `tls` is offered), autocommit on, and a
    /// fresh scramble for `auth_plugin`. Fails only if the OS has no randomness to give.
    pub fn for_proxy(
        server_version: &str,
        connection_id: u32,
        tls: bool,
        auth_plugin: &str,
    ) -> Result<Self, getrandom::Error> {
        let mut capabilities = cap::PROXY;
        if tls {
            capabilities |= cap::SSL;
        }
        Ok(Self {
            server_version: server_version.to_string(),
            connection_id,
            scramble: new_scramble()?.to_vec(),
            capabilities,
            mariadb_capabilities: 0,
            charset: UTF8MB4_GENERAL_CI,
            status: super::flags::status::AUTOCOMMIT,
            auth_plugin: auth_plugin.to_string(),
        })
    }

    /// Whether the server is MariaDB (by its version string).
    pub fn is_mariadb(&self) -> bool {
        self.server_version.contains("MariaDB")
    }
}

/// A scramble from the OS CSPRNG, in the byte range MySQL servers use (7-bit, never NUL
/// or `$`), since some clients read the scramble as a C string.
pub fn new_scramble() -> Result<[u8; SCRAMBLE_LEN], getrandom::Error> {
    let mut scramble = [0u8; SCRAMBLE_LEN];
    getrandom::fill(&mut scramble)?;
    for byte in &mut scramble {
        *byte &= 0x7f;
        if *byte == 0 || *byte == b'$' {
            *byte += 1;
        }
    }
    Ok(scramble)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mysql::flags::mariadb;
    use crate::protocol::mysql::testdata::{CLI_NATIVE_SERVER, packets};

    fn greeting() -> Vec<u8> {
        packets(CLI_NATIVE_SERVER)[0].payload.to_vec()
    }

    #[test]
    fn parses_a_captured_mariadb_greeting() {
        let packet = &greeting()[..];
        let greeting = Handshake::parse(packet).expect("greeting");
        assert!(
            greeting.server_version.starts_with("5.5.5-10.11."),
            "{}",
            greeting.server_version
        );
        assert!(greeting.is_mariadb());
        assert_eq!(greeting.scramble.len(), SCRAMBLE_LEN);
        assert_eq!(greeting.auth_plugin, "mysql_native_password");
        assert_eq!(
            greeting.capabilities & cap::LONG_PASSWORD,
            0,
            "MariaDB clears CLIENT_MYSQL"
        );
        assert_ne!(greeting.mariadb_capabilities & mariadb::PROGRESS, 0);
        assert_ne!(greeting.capabilities & cap::PLUGIN_AUTH, 0);
        assert_ne!(greeting.capabilities & cap::DEPRECATE_EOF, 0);
        assert_eq!(greeting.encode(), packet, "re-encodes byte for byte");
    }

    #[test]
    fn the_proxys_greeting() {
        let plain = Handshake::for_proxy("8.0.36-switchyard", 7, false, "mysql_native_password")
            .expect("random");
        assert_eq!(plain.capabilities & cap::SSL, 0);
        assert_eq!(
            plain.capabilities & (cap::COMPRESS | cap::QUERY_ATTRIBUTES),
            0
        );
        let tls = Handshake::for_proxy("8.0.36", 8, true, "caching_sha2_password").expect("random");
        assert_ne!(tls.capabilities & cap::SSL, 0);
        assert_ne!(plain.scramble, tls.scramble, "fresh scramble");
        assert!(
            plain
                .scramble
                .iter()
                .all(|&b| b != 0 && b != b'$' && b < 0x80)
        );
        let again = Handshake::parse(&plain.encode()).expect("parses");
        assert_eq!(again, plain);
        // A MariaDB-style greeting carries the extended capabilities.
        let mut maria = plain.clone();
        maria.capabilities &= !cap::LONG_PASSWORD;
        maria.mariadb_capabilities = mariadb::STMT_BULK_OPERATIONS;
        assert_eq!(Handshake::parse(&maria.encode()).expect("parses"), maria);
    }

    #[test]
    fn old_and_truncated_greetings_are_errors() {
        let packet = &greeting()[..];
        for end in [0, 1, 10, 20, 40, 50] {
            assert!(Handshake::parse(&packet[..end]).is_err(), "{end}");
        }
        let mut v9 = packet.to_vec();
        v9[0] = 9;
        assert!(Handshake::parse(&v9).is_err());
        // Plugin name without its NUL (MySQL bug #59453): accepted.
        let mut no_nul = packet.to_vec();
        no_nul.pop();
        assert_eq!(
            Handshake::parse(&no_nul).expect("parses").auth_plugin,
            "mysql_native_password"
        );
    }
}
