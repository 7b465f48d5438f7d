//! The MySQL/MariaDB client/server protocol: packets, the handshake, authentication, the
//! proxy's own errors, and switchyard logging in to a server as a client.
//!
//! The codecs are hand-written rather than taken from a driver crate because the proxy
//! must control the packets byte by byte: it answers the handshake itself (its own
//! HandshakeV10, the in-protocol SSL upgrade), rewrites the client's HandshakeResponse41
//! (database, user, capabilities), relays everything else untouched, enforces its own size
//! limits before buffering, and must turn every malformed packet into an ERR packet rather
//! than a panic. Parsers are pure functions over byte slices, one message per module, so
//! fuzz targets can drive them; crypto comes from well-kept crates (`sha1`, `sha2`,
//! `ed25519-dalek`, `rsa`).
//!
//! The listener front end (routing, relaying) plugs in on top of this once protocols
//! share the runtime's protocol interface; the `mysql` health check uses [`login`] and
//! [`query`] today.

pub mod auth;
pub mod auth_switch;
pub mod check;
pub mod eof;
pub mod err;
pub mod errors;
pub mod flags;
pub mod handshake;
pub mod lenenc;
pub mod login;
pub mod ok;
pub mod packet;
pub mod query;
pub mod response;
#[cfg(test)]
mod testdata;

pub use packet::{CodecError, Packet, PacketReader};

use std::sync::Arc;

use super::{Frontend, Pools};
use crate::config::{CheckKind, ListenerConfig, Protocol};
use crate::health::Check;
use crate::listener::Handler;

/// The `mysql` front end. Its listeners are not built yet (the config refuses them); its
/// health check is.
#[derive(Debug, Default)]
pub struct Mysql;

impl Frontend for Mysql {
    fn protocol(&self) -> Protocol {
        Protocol::Mysql
    }

    fn handler(&self, listener: &ListenerConfig, _: &Pools) -> Result<Arc<dyn Handler>, String> {
        Err(format!(
            "listener `{}`: mysql listeners are not available in this build yet",
            listener.name
        ))
    }

    fn checks(&self) -> Vec<(CheckKind, Arc<dyn Check>)> {
        vec![(CheckKind::Mysql, Arc::new(check::MysqlHealthCheck))]
    }
}
