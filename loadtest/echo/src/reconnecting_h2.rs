//! An HTTP/2 (h2c) load client that keeps its load across GOAWAY, as browsers and gRPC
//! clients do: `h2load` stops using a connection once the server sends GOAWAY and never opens
//! another (and counts the requests it then could not start as errored, against NGINX too), so
//! it cannot hold load across a drain or a binary upgrade.
//!
//! Each of `connections` connections carries `streams` streams at a time. When a connection
//! goes away, a new one replaces it. A stream the server says it did not process (failed by
//! its GOAWAY, or `REFUSED_STREAM`) is counted as refused, and its work goes on as a new
//! request on the new connection, which RFC 9113 §6.8 makes safe. Any other failure counts as
//! failed. Every request's path is unique (`/soak/<n>`) and the paths of refused and failed
//! ones are kept: whether a gateway's access log has one tells a stream the gateway never saw
//! from one it processed and then cut (h2 reports a stream cut by the connection's end after a
//! GOAWAY with the GOAWAY's error too).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Answers with another status.
    pub non_2xx: u64,
    /// Streams that failed after the server may have processed them.
    pub failed: u64,
    /// Streams the server said it did not process, sent again as new requests.
    pub refused: u64,
    /// Connections made.
    pub connections: u64,
    /// Connections that could not be made.
    pub connect_errors: u64,
    /// The path of each refused or failed request, with what happened.
    pub problems: Vec<String>,
    /// How long the run took.
    pub elapsed: Duration,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    non_2xx: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    connections: AtomicU64,
    connect_errors: AtomicU64,
    next_id: AtomicU64,
    problems: Mutex<Vec<String>>,
}

impl Counts {
    fn problem(&self, text: String) {
        let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: the first ones tell the story.
        if problems.len() < 1000 {
            problems.push(text);
        }
    }
}

/// What became of one request.
enum Outcome {
    Answered(u16),
    /// Not processed by the server: safe to send again.
    Refused,
    Failed(String),
}

/// Runs `connections` × `streams` streams of `GET /soak/<n>` against `addr` for `duration`.
pub async fn run(
    addr: SocketAddr,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Summary {
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection_loop(addr, streams, deadline, counts.clone())))
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let problems = std::mem::take(&mut *counts.problems.lock().unwrap_or_else(|p| p.into_inner()));
    Summary {
        ok: get(&counts.ok),
        non_2xx: get(&counts.non_2xx),
        failed: get(&counts.failed),
        refused: get(&counts.refused),
        connections: get(&counts.connections),
        connect_errors: get(&counts.connect_errors),
        problems,
        elapsed: started.elapsed(),
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "requests: {} answered ({} 2xx, {} non-2xx), {} failed, {} refused and sent again; {} connections, {} connect errors; {:.0} req/s",
            self.ok + self.non_2xx,
            self.ok,
            self.non_2xx,
            self.failed,
            self.refused,
            self.connections,
            self.connect_errors,
            self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
        )
    }
}

/// Keeps one connection's worth of load until `deadline`, reconnecting when it goes away.
async fn connection_loop(addr: SocketAddr, streams: usize, deadline: Instant, counts: Arc<Counts>) {
    while Instant::now() < deadline {
        let send = match connect(addr).await {
            Ok(send) => send,
            Err(_) => {
                counts.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        counts.connections.fetch_add(1, Ordering::Relaxed);
        let mut loops = tokio::task::JoinSet::new();
        for _ in 0..streams {
            loops.spawn(stream_loop(send.clone(), deadline, counts.clone()));
        }
        while loops.join_next().await.is_some() {}
    }
}

async fn connect(
    addr: SocketAddr,
) -> Result<SendRequest<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// Sends requests one after another on `send` until the connection can't take more or the
/// time is up.
async fn stream_loop(mut send: SendRequest<Bytes>, deadline: Instant, counts: Arc<Counts>) {
    loop {
        if Instant::now() >= deadline {
            return;
        }
        send = match send.ready().await {
            Ok(send) => send,
            // Going away before a request was sent: nothing was lost.
            Err(_) => return,
        };
        let id = counts.next_id.fetch_add(1, Ordering::Relaxed);
        match request(&mut send, id).await {
            Outcome::Answered(status) if (200..300).contains(&status) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Answered(status) => {
                counts.non_2xx.fetch_add(1, Ordering::Relaxed);
                counts.problem(format!("/soak/{id}: status {status}"));
            }
            Outcome::Refused => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                counts.problem(format!("/soak/{id}: refused"));
                return;
            }
            Outcome::Failed(why) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                counts.problem(format!("/soak/{id}: failed: {why}"));
                return;
            }
        }
    }
}

async fn request(send: &mut SendRequest<Bytes>, id: u64) -> Outcome {
    let request = http::Request::get(format!("http://soak/soak/{id}"))
        .body(())
        .expect("a valid request");
    let response = match send.send_request(request, true) {
        Ok((response, _)) => response.await,
        Err(e) => Err(e),
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => return classify(e),
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(bytes) => {
                let _ = body.flow_control().release_capacity(bytes.len());
            }
            Err(e) => return Outcome::Failed(format!("body after {status}: {e}")),
        }
    }
    Outcome::Answered(status)
}

/// A stream the server did not process may be sent again: one it refused, or one cut by a
/// GOAWAY before any response (h2 fails the streams above the GOAWAY's last stream id with the
/// GOAWAY's error).
fn classify(e: h2::Error) -> Outcome {
    if e.reason() == Some(h2::Reason::REFUSED_STREAM)
        || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR))
    {
        Outcome::Refused
    } else {
        Outcome::Failed(e.to_string())
    }
}
