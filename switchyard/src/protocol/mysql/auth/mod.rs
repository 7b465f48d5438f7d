//! Authentication methods (plugins), both sides: answering a server's challenge when
//! switchyard logs in, and checking a client's answer when switchyard authenticates
//! clients itself. A client's answer to `mysql_native_password` or the fast path of
//! `caching_sha2_password` also gives back the password's first hash, which is all
//! switchyard then needs to log in to a server as that user without storing the password.

pub mod caching_sha2;
pub mod ed25519;
pub mod native;

/// The authentication plugins switchyard speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// `mysql_native_password`: SHA-1 challenge/response.
    Native,
    /// `caching_sha2_password`: SHA-256 challenge/response, full authentication with the
    /// password over TLS or RSA.
    CachingSha2,
    /// MariaDB `client_ed25519`: an Ed25519 signature of the nonce.
    Ed25519,
}

impl Plugin {
    /// The plugin by its protocol name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            native::NAME => Some(Self::Native),
            caching_sha2::NAME => Some(Self::CachingSha2),
            ed25519::NAME => Some(Self::Ed25519),
            _ => None,
        }
    }

    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => native::NAME,
            Self::CachingSha2 => caching_sha2::NAME,
            Self::Ed25519 => ed25519::NAME,
        }
    }
}

/// `a XOR b`, byte by byte.
fn xor<const N: usize>(a: &[u8; N], b: &[u8; N]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}
