//! Proxy-side authentication: switchyard checks the client's password against `[[user]]`
//! itself, as a MySQL server would, then logs in to the server on the client's behalf
//! ([`super::login`]) with the user's `server_password` (or `password`).
//!
//! The client's first answer is bound to the proxy's own greeting scramble, so no switch
//! is needed when the client answered with the listener's plugin; otherwise it is sent an
//! AuthSwitchRequest to it. `mysql_native_password` checks the SHA-1 scramble;
//! `caching_sha2_password` checks the fast-path SHA-256 scramble (switchyard knows every
//! password, so its "cache" is always warm) and answers fast-auth success.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::{caching_sha2, native};
use super::auth_switch::{AuthSwitch, more_data};
use super::errors::ProxyError;
use super::handshake::Handshake;
use super::packet::{CodecError, PacketReader, write_packet};
use super::response::HandshakeResponse;
use crate::config::{Config, MysqlAuth};

/// The users a mysql listener with proxy-side authentication accepts: name → (password
/// clients prove, password switchyard logs in to servers with).
#[derive(Debug, Default)]
pub struct MysqlUsers {
    users: HashMap<String, (String, String)>,
}

impl MysqlUsers {
    /// The `[[user]]` entries with a `password` (the stored-hash forms are PostgreSQL's),
    /// their secrets resolved.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut users = HashMap::new();
        for user in &config.users {
            let Some(password) = &user.password else {
                continue;
            };
            let password = crate::secret::resolve(password)
                .map_err(|e| format!("user `{}`: {e}", user.name))?;
            let server = match &user.server_password {
                Some(spec) => crate::secret::resolve(spec)
                    .map_err(|e| format!("user `{}`: {e}", user.name))?,
                None => password.clone(),
            };
            users.insert(user.name.clone(), (password, server));
        }
        Ok(Self { users })
    }
}

/// Why proxy-side authentication did not let the client in.
#[derive(Debug)]
pub enum Denied {
    /// The client closed or sent a malformed packet.
    Codec(CodecError),
    /// A wrong password or unknown user: this ERR 1045 was sent (the packet, framed).
    Refused(ProxyError),
}

/// Checks the client's login against `users` with `method`'s plugin; `sequence` is the
/// HandshakeResponse41's. Returns the password to log in to servers with and the sequence
/// id of the proxy's next packet to the client (its OK, once the server login is done).
/// A refusal is returned with its ERR packet's sequence id for the caller to send.
#[allow(clippy::too_many_arguments)]
pub async fn authenticate<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    reader: &mut PacketReader,
    greeting: &Handshake,
    response: &HandshakeResponse,
    sequence: u8,
    method: MysqlAuth,
    users: &MysqlUsers,
    host: &str,
) -> Result<(String, u8), (Denied, u8)> {
    let plugin = match method {
        MysqlAuth::CachingSha2Password => caching_sha2::NAME,
        _ => native::NAME,
    };
    let mut next = sequence.wrapping_add(1);
    let answer = if response.auth_plugin.as_deref() == Some(plugin) {
        response.auth_response.clone()
    } else {
        let mut data = greeting.scramble.clone();
        data.push(0);
        let switch = AuthSwitch {
            plugin: plugin.to_string(),
            data,
        };
        write_packet(client, next, &switch.encode())
            .await
            .map_err(|e| (Denied::Codec(e.into()), next))?;
        let packet = reader
            .read(client)
            .await
            .map_err(|e| (Denied::Codec(e), next))?;
        next = packet.next();
        packet.payload.to_vec()
    };
    let secret = users.users.get(&response.user);
    let verified = secret.is_some_and(|(password, _)| {
        let password = password.as_bytes();
        if password.is_empty() {
            return answer.is_empty();
        }
        match method {
            MysqlAuth::CachingSha2Password => {
                let stored = caching_sha2::stage2(&caching_sha2::stage1(password));
                caching_sha2::verify(&stored, &greeting.scramble, &answer).is_some()
            }
            _ => {
                let stored = native::stage2(&native::stage1(password));
                native::verify(&stored, &greeting.scramble, &answer).is_some()
            }
        }
    });
    let Some((_, server_password)) = secret.filter(|_| verified) else {
        let denied = ProxyError::AccessDenied {
            user: response.user.clone(),
            host: host.to_string(),
            using_password: !answer.is_empty(),
        };
        return Err((Denied::Refused(denied), next));
    };
    if method == MysqlAuth::CachingSha2Password {
        let fast = more_data(&[caching_sha2::FAST_AUTH_SUCCESS]);
        next = write_packet(client, next, &fast)
            .await
            .map_err(|e| (Denied::Codec(e.into()), next))?;
    }
    Ok((server_password.clone(), next))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::protocol::mysql::packet::packet;
    use crate::protocol::mysql::response::ClientHead;
    use crate::protocol::mysql::testdata::packets;

    fn users() -> MysqlUsers {
        let mut users = MysqlUsers::default();
        users
            .users
            .insert("u".into(), ("pw".into(), "server-pw".into()));
        users
    }

    fn response(plugin: &str, answer: Vec<u8>) -> HandshakeResponse {
        HandshakeResponse {
            head: ClientHead {
                capabilities: crate::protocol::mysql::flags::capabilities::LOGIN,
                max_packet: 1 << 24,
                charset: 45,
                mariadb_capabilities: 0,
            },
            user: "u".into(),
            auth_response: answer,
            database: None,
            auth_plugin: Some(plugin.into()),
            attributes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn both_plugins_check_the_scramble_and_a_wrong_password_is_1045() {
        let greeting = Handshake::for_proxy("8.0.36", 1, false, native::NAME).expect("random");
        let users = users();
        for method in [
            MysqlAuth::MysqlNativePassword,
            MysqlAuth::CachingSha2Password,
        ] {
            for (password, ok) in [("pw", true), ("wrong", false)] {
                let (mut peer, mut ours) = tokio::io::duplex(4096);
                let mut reader = PacketReader::new(1 << 16);
                // The client answered native; caching_sha2 switches it.
                let first = native::answer(password.as_bytes(), &greeting.scramble);
                if method == MysqlAuth::CachingSha2Password {
                    let again = caching_sha2::answer(password.as_bytes(), &greeting.scramble);
                    peer.write_all(&packet(3, &again)).await.expect("write");
                }
                let result = authenticate(
                    &mut ours,
                    &mut reader,
                    &greeting,
                    &response(native::NAME, first),
                    1,
                    method,
                    &users,
                    "127.0.0.1",
                )
                .await;
                match result {
                    Ok((server, next)) => {
                        assert!(ok, "{method:?} {password}");
                        assert_eq!(server, "server-pw");
                        let expected = if method == MysqlAuth::CachingSha2Password {
                            5
                        } else {
                            2
                        };
                        assert_eq!(next, expected);
                    }
                    Err((Denied::Refused(error), next)) => {
                        assert!(!ok, "{method:?} {password}");
                        assert_eq!(error.code(), 1045);
                        let expected = if method == MysqlAuth::CachingSha2Password {
                            4
                        } else {
                            2
                        };
                        assert_eq!(next, expected);
                    }
                    Err((Denied::Codec(e), _)) => panic!("{e}"),
                }
                drop(ours);
                let mut sent = Vec::new();
                peer.read_to_end(&mut sent).await.expect("read");
                let sent = packets(&sent);
                if method == MysqlAuth::CachingSha2Password {
                    let switch = AuthSwitch::parse(&sent[0].payload).expect("switch");
                    assert_eq!(switch.plugin, caching_sha2::NAME);
                    assert_eq!(sent.len(), if ok { 2 } else { 1 });
                } else {
                    assert!(sent.is_empty(), "native: no switch, nothing sent yet");
                }
            }
        }
    }
}
