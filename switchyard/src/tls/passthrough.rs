//! `tls_passthrough`: the SNI from a client's ClientHello, read without terminating TLS.
//! rustls's `Acceptor` parses the hello; this only feeds it bytes, keeps a copy of every
//! byte for the server, and bounds how many bytes and how long a client may take.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest ClientHello accepted (a hello with post-quantum key shares is under 2 KiB; TLS
/// allows records of 16 KiB).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;
/// Time a client has to send its whole ClientHello.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads until `Acceptor` has the whole ClientHello; returns the SNI (if any) and every
/// byte read, `already_read` included, to forward untouched.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    already_read: Bytes,
) -> Result<(Option<String>, Bytes), String> {
    let mut buffer = BytesMut::from(&already_read[..]);
    let read = async {
        let mut acceptor = Acceptor::default();
        let mut fed = 0;
        loop {
            while fed < buffer.len() {
                let mut rest = &buffer[fed..];
                match acceptor.read_tls(&mut rest) {
                    Ok(0) => break,
                    Ok(n) => fed += n,
                    Err(e) => return Err(format!("not a TLS ClientHello: {e}")),
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    return Ok(accepted.client_hello().server_name().map(str::to_string));
                }
                Ok(None) => {}
                Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
            }
            if buffer.len() >= MAX_CLIENT_HELLO {
                return Err(format!("ClientHello larger than {MAX_CLIENT_HELLO} bytes"));
            }
            let mut chunk = [0u8; 2048];
            let want = chunk.len().min(MAX_CLIENT_HELLO - buffer.len());
            match stream.read(&mut chunk[..want]).await {
                Ok(0) => return Err("connection closed during the ClientHello".to_string()),
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading the ClientHello: {e}")),
            }
        }
    };
    let sni = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, read)
        .await
        .map_err(|_| "timed out waiting for the ClientHello".to_string())??;
    Ok((sni, buffer.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls sends it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(super::super::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut connection =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
        let mut hello = Vec::new();
        connection.write_tls(&mut hello).expect("hello");
        hello
    }

    #[tokio::test]
    async fn reads_the_sni_from_a_hello_split_anywhere() {
        let hello = client_hello("a.example");
        for split in [0, 1, 5, 6, hello.len() / 2, hello.len() - 1] {
            let (head, tail) = hello.split_at(split);
            let mut rest = tail;
            let (sni, bytes) = read_client_hello(&mut rest, Bytes::copy_from_slice(head))
                .await
                .expect("hello");
            assert_eq!(sni.as_deref(), Some("a.example"));
            assert_eq!(&bytes[..], &hello[..], "split at {split}");
        }
    }

    /// A ClientHello captured from `openssl s_client -tls1_2 -servername captured.example`.
    const OPENSSL_HELLO: &[u8] = include_bytes!("testdata/openssl-client-hello.bin");

    #[tokio::test]
    async fn reads_a_captured_openssl_hello() {
        let mut rest = OPENSSL_HELLO;
        let (sni, bytes) = read_client_hello(&mut rest, Bytes::new())
            .await
            .expect("hello");
        assert_eq!(sni.as_deref(), Some("captured.example"));
        assert_eq!(&bytes[..], OPENSSL_HELLO);
    }

    /// A small deterministic fuzz pass over mutated real hellos, checking what the fuzz
    /// target checks: no panic, and on success exactly the bytes read are handed back.
    #[tokio::test]
    async fn mutated_hellos_never_panic() {
        let mut mutator = crate::testing::Mutator::new();
        let seeds = [OPENSSL_HELLO.to_vec(), client_hello("a.example")];
        for round in 0..5_000 {
            let mut input = seeds[round % seeds.len()].clone();
            mutator.mutate(&mut input);
            let split = (mutator.next() as usize) % (input.len() + 1);
            let mut rest = &input[split..];
            let head = Bytes::copy_from_slice(&input[..split]);
            if let Ok((_, bytes)) = read_client_hello(&mut rest, head).await {
                assert!(input.starts_with(&bytes));
            }
        }
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_hello() {
        for input in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[0x16, 3, 1, 0, 4, 9, 9, 9, 9],
            &[0x16, 3],
        ] {
            let mut rest = input;
            assert!(read_client_hello(&mut rest, Bytes::new()).await.is_err());
        }
        let mut endless = tokio::io::repeat(0x16);
        assert!(read_client_hello(&mut endless, Bytes::new()).await.is_err());
    }
}
