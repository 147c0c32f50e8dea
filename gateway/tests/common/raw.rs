//! Raw sockets for tests where a well-behaved client or server can't misbehave enough:
//! scripted upstreams that cut a response short, and a client that reads exactly what came.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted upstream does with one request.
pub struct Reply {
    /// Bytes written back.
    pub bytes: Vec<u8>,
    /// Close the connection after writing them.
    pub close: bool,
    /// Wait this long before writing.
    pub delay: Duration,
}

impl Reply {
    /// Writes `bytes` and keeps the connection.
    pub fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: false,
            delay: Duration::ZERO,
        }
    }

    /// Writes `bytes` and closes the connection.
    pub fn close(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: true,
            delay: Duration::ZERO,
        }
    }
}

/// A complete `200` with `body` and a `Content-Length`.
pub fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A scripted upstream's counters.
#[derive(Clone, Default)]
pub struct Counts {
    /// Request heads read.
    pub requests: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Connections whose peer closed while the upstream waited to answer.
    pub closed_early: Arc<AtomicUsize>,
    /// The `Content-Length` body of each request read whole, in order, as its length.
    pub bodies: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Counts {
    /// Request heads read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The lengths of the request bodies read whole so far.
    pub fn bodies(&self) -> Vec<usize> {
        self.bodies.lock().unwrap().clone()
    }
}

/// Starts an upstream that answers its `n`-th request (counting from 0, across connections)
/// with `script(n, head)`, where `head` is the request head as text.
pub async fn scripted_upstream<F>(script: F) -> (SocketAddr, Counts)
where
    F: Fn(usize, &str) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Counts::default();
    let script = Arc::new(script);
    let task_counts = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            task_counts.connections.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            let counts = task_counts.clone();
            tokio::spawn(async move { serve_connection(stream, &*script, &counts).await });
        }
    });
    (addr, counts)
}

async fn serve_connection<F>(mut stream: TcpStream, script: &F, counts: &Counts)
where
    F: Fn(usize, &str) -> Reply,
{
    let mut buffered = Vec::new();
    loop {
        let head = loop {
            if let Some(end) = find(&buffered, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffered[..end + 4]).into_owned();
                buffered.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buffered.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let n = counts.requests.fetch_add(1, Ordering::SeqCst);
        let declared = content_length(&head);
        while buffered.len() < declared {
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buffered.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        if declared > 0 {
            buffered.drain(..declared);
            counts.bodies.lock().unwrap().push(declared);
        }
        let reply = script(n, &head);
        if !reply.delay.is_zero() {
            // Watch the connection while waiting: a peer that closes is counted.
            let mut probe = [0u8; 1];
            tokio::select! {
                _ = tokio::time::sleep(reply.delay) => {}
                read = stream.read(&mut probe) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        counts.closed_early.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }
        if stream.write_all(&reply.bytes).await.is_err() {
            return;
        }
        if reply.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// The `Content-Length` of a request head, 0 when it has none.
fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a raw client read: every byte until the server closed (or the time ran out).
pub struct RawAnswer {
    /// All bytes received.
    pub bytes: Vec<u8>,
    /// Whether the server closed the connection (as opposed to the read timing out).
    pub closed: bool,
}

impl RawAnswer {
    /// The received bytes as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status codes of every response in the bytes, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.text()
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| self.text()[i + 9..].get(..3)?.parse().ok())
            .collect()
    }

    /// The first response's body (everything after its head).
    pub fn body(&self) -> Vec<u8> {
        match find(&self.bytes, b"\r\n\r\n") {
            Some(end) => self.bytes[end + 4..].to_vec(),
            None => Vec::new(),
        }
    }

    /// A header of the first response, by lower-case name.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Writes `request` to `addr` and reads until the server closes or `limit` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> RawAnswer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_closed(&mut stream, limit).await
}

/// Reads from `stream` until the peer closes or `limit` passes.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> RawAnswer {
    let deadline = tokio::time::Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return RawAnswer {
                    bytes,
                    closed: true,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => {
                return RawAnswer {
                    bytes,
                    closed: false,
                }
            }
        }
    }
}
