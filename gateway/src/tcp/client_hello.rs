//! The server name of a TLS connection the gateway does not terminate: the ClientHello is
//! read (and kept, to be replayed to the upstream), and parsed by rustls's `Acceptor`, which
//! stops at the ClientHello and decrypts nothing.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most ClientHello bytes read before giving up: a hello fits in one 16 KiB record, and
/// a few records more leave room for one split across them.
const MAX_HELLO: usize = 64 * 1024;

/// Why no server name could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// The client closed, or sent no TLS handshake.
    NotTls(String),
    /// The ClientHello has no `server_name` extension.
    NoServerName,
}

/// Reads the client's first bytes up to the end of its ClientHello. Returns the bytes read
/// (all of them go to the upstream first) and the server name, lower-case.
pub async fn read_server_name<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> (Vec<u8>, Result<String, HelloError>) {
    let mut read = Vec::with_capacity(2048);
    // On the heap, not in the connection's future, which every connection carries.
    let mut acceptor = Box::new(rustls::server::Acceptor::default());
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) => {
                return (
                    read,
                    Err(HelloError::NotTls("closed before its ClientHello".into())),
                )
            }
            Ok(n) => n,
            Err(e) => return (read, Err(HelloError::NotTls(e.to_string()))),
        };
        read.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if let Err(e) = acceptor.read_tls(&mut fresh) {
                return (read, Err(HelloError::NotTls(e.to_string())));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return (read, name.ok_or(HelloError::NoServerName));
            }
            Ok(None) if read.len() < MAX_HELLO => continue,
            Ok(None) => {
                return (
                    read,
                    Err(HelloError::NotTls(
                        "no ClientHello in the first 64 KiB".into(),
                    )),
                )
            }
            Err((e, _)) => return (read, Err(HelloError::NotTls(e.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls's client writes it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut client =
            rustls::ClientConnection::new(std::sync::Arc::new(config), server_name).unwrap();
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        bytes
    }

    #[tokio::test]
    async fn reads_the_name_and_keeps_every_byte() {
        let mut hello = client_hello("Shop.Example");
        hello.extend_from_slice(b"more");
        // Delivered a few bytes at a time, as a slow client would.
        let mut stream = tokio_test_stream(&hello, 7);
        let (read, name) = read_server_name(&mut stream).await;
        assert_eq!(name, Ok("shop.example".to_owned()));
        assert!(
            hello.starts_with(&read),
            "only bytes the client sent, in order"
        );
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_tls_handshake() {
        let mut stream = tokio_test_stream(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 64);
        let (read, name) = read_server_name(&mut stream).await;
        assert!(matches!(name, Err(HelloError::NotTls(_))), "{name:?}");
        assert!(!read.is_empty());
        let mut stream = tokio_test_stream(b"", 1);
        assert!(read_server_name(&mut stream).await.1.is_err());
    }

    #[tokio::test]
    async fn a_hello_without_a_name_is_told_apart() {
        let hello = client_hello("10.0.0.1");
        let mut stream = tokio_test_stream(&hello, 4096);
        assert_eq!(
            read_server_name(&mut stream).await.1,
            Err(HelloError::NoServerName)
        );
    }

    /// A reader that yields `bytes` in pieces of `piece` bytes.
    fn tokio_test_stream(bytes: &[u8], piece: usize) -> impl AsyncRead + Unpin {
        let mut builder = tokio_test::io::Builder::new();
        for part in bytes.chunks(piece) {
            builder.read(part);
        }
        builder.build()
    }
}
