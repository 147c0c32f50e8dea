//! A small, fast echo upstream for meshgate's demo, tests and benchmarks.
//!
//! Every response carries `x-echo-server: <name>`. `GET /headers…` answers with the request
//! line and headers as text (tests use it to see what the gateway forwarded); every other
//! request gets a fixed body. HTTP/1.1 and h2c are both served.

pub mod reconnecting_h2;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// What an echo server answers with.
pub struct Config {
    /// Sent in `x-echo-server`.
    pub name: String,
    /// The fixed response body.
    pub body: Bytes,
    /// Status of every response except `/headers` (200 unless set to fail).
    pub status: u16,
    /// Wait before answering.
    pub delay: Duration,
    /// Requests received.
    pub requests: AtomicU64,
}

impl Config {
    /// A healthy server with a body of `body_size` bytes.
    pub fn new(name: &str, body_size: usize) -> Arc<Config> {
        Self::with_behaviour(name, body_size, 200, Duration::ZERO)
    }

    /// A server that answers `status` after `delay`, to play a failing or slow upstream.
    pub fn with_behaviour(
        name: &str,
        body_size: usize,
        status: u16,
        delay: Duration,
    ) -> Arc<Config> {
        Arc::new(Config {
            name: name.to_owned(),
            body: Bytes::from(vec![b'x'; body_size]),
            status,
            delay,
            requests: AtomicU64::new(0),
        })
    }
}

async fn handle(
    config: Arc<Config>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    config.requests.fetch_add(1, Ordering::Relaxed);
    if !config.delay.is_zero() {
        tokio::time::sleep(config.delay).await;
    }
    let builder = Response::builder()
        .status(config.status)
        .header("x-echo-server", config.name.as_str())
        .header("content-type", "text/plain");
    if request.uri().path().starts_with("/headers") {
        let mut text = format!(
            "{} {} {:?}\n",
            request.method(),
            request.uri(),
            request.version()
        );
        for (name, value) in request.headers() {
            text.push_str(&format!(
                "{}: {}\n",
                name,
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        return Ok(builder
            .body(Full::new(Bytes::from(text)))
            .expect("valid response"));
    }
    // Read the request body to the end so keepalive connections stay usable.
    let _ = request.into_body().collect().await;
    Ok(builder
        .body(Full::new(config.body.clone()))
        .expect("valid response"))
}

/// Serves `config` on an already bound listener until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, config: Arc<Config>) -> std::io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let config = config.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| handle(config.clone(), request));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}
