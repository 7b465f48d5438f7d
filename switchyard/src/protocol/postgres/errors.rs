//! ErrorResponse messages the proxy sends itself, so that clients see a PostgreSQL error
//! with a SQLSTATE (and drivers map it to their error types) instead of a bare close.

use super::codec::{self, with_length};

/// SQLSTATE codes the proxy reports.
pub mod sqlstate {
    /// protocol_violation: malformed startup or message.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// connection_failure: the server could not be reached.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// cannot_connect_now: no server of the asked role is up.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// invalid_catalog_name: no route for the database.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// feature_not_supported: e.g. a protocol major version other than 3.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// invalid_authorization_specification: e.g. TLS required.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// too_many_connections: the pool's queue is full or timed out.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
}

/// A FATAL ErrorResponse (`S`everity, non-localized `V`, `C`ode, `M`essage).
pub fn fatal(code: &str, message: &str) -> Vec<u8> {
    error_response("FATAL", code, message)
}

/// An ErrorResponse of `severity` (`ERROR`: the statement failed, the session goes on;
/// `FATAL`: the session ends).
pub fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 32);
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        // A NUL inside a value would end the field early; none of ours has one, but a
        // message quoting client input might.
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    with_length(Some(b'E'), &body)
}

/// The value of one field (`C` SQLSTATE, `M` message...) of an ErrorResponse or
/// NoticeResponse body; `None` when absent or malformed.
pub fn error_field(body: &[u8], wanted: u8) -> Option<&str> {
    let mut fields = body;
    while let Some((&field, rest)) = fields.split_first() {
        let (value, after) = codec::cstring(rest).ok()?;
        if field == wanted {
            return Some(value);
        }
        fields = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_is_a_framed_error_response() {
        let bytes = fatal(sqlstate::INVALID_CATALOG_NAME, "no route for db\0x");
        assert_eq!(bytes[0], b'E');
        let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(length, bytes.len() - 1);
        let text = String::from_utf8_lossy(&bytes[5..]);
        assert!(
            text.contains("SFATAL\0VFATAL\0C3D000\0Mno route for dbx\0"),
            "{text}"
        );
        assert!(bytes.ends_with(&[0, 0]));
    }
}
