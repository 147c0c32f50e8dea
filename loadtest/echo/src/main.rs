//! A small, fast echo upstream for meshgate's demo, tests and benchmarks.
//!
//! Every response carries `x-echo-server: <name>`. `GET /headers…` answers with the request
//! line and headers as text (tests use it to see what the gateway forwarded); every other
//! request gets a fixed body of `--body-size` bytes. HTTP/1.1 and h2c are both served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[derive(Debug, Parser)]
#[command(about = "meshgate's echo upstream")]
struct Args {
    /// Address to listen on; repeat for several.
    #[arg(short, long, required = true)]
    listen: Vec<SocketAddr>,
    /// Name sent in `x-echo-server`.
    #[arg(short, long, default_value = "echo")]
    name: String,
    /// Size of the fixed response body.
    #[arg(short, long, default_value_t = 1024)]
    body_size: usize,
    /// Worker threads.
    #[arg(short, long, default_value_t = 1)]
    threads: usize,
}

struct Config {
    name: String,
    body: Bytes,
}

async fn handle(config: Arc<Config>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
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
            text.push_str(&format!("{}: {}\n", name, String::from_utf8_lossy(value.as_bytes())));
        }
        return Ok(builder.body(Full::new(Bytes::from(text))).expect("valid response"));
    }
    // Read the request body to the end so keepalive connections stay usable.
    let _ = request.into_body().collect().await;
    Ok(builder
        .body(Full::new(config.body.clone()))
        .expect("valid response"))
}

async fn serve(addr: SocketAddr, config: Arc<Config>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("echo {} listening on {addr}", config.name);
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
            let service = hyper::service::service_fn(move |request| handle(config.clone(), request));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = Arc::new(Config {
        name: args.name,
        body: Bytes::from(vec![b'x'; args.body_size]),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let servers: Vec<_> = args
            .listen
            .into_iter()
            .map(|addr| tokio::spawn(serve(addr, config.clone())))
            .collect();
        for server in servers {
            match server.await {
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(std::io::Error::other(e)),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    })
}
