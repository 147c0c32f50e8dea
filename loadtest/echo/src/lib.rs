//! A small, fast echo upstream for meshgate's demo, tests and benchmarks.
//!
//! Every response carries `x-echo-server: <name>`. `GET /headers…` answers with the request
//! line and headers as text (tests use it to see what the gateway forwarded); every other
//! request gets a fixed body. HTTP/1.1 and h2c are both served.

use std::convert::Infallible;
use std::sync::Arc;

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
}

impl Config {
    /// A config with a body of `body_size` bytes.
    pub fn new(name: &str, body_size: usize) -> Arc<Config> {
        Arc::new(Config {
            name: name.to_owned(),
            body: Bytes::from(vec![b'x'; body_size]),
        })
    }
}

async fn handle(
    config: Arc<Config>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let builder = Response::builder()
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
