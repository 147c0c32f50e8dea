//! `meshgate-h2soak`: HTTP/2 (h2c) load that reconnects after GOAWAY; see
//! [`meshgate_echo::reconnecting_h2`]. Prints a summary on stdout and the path of each refused
//! or failed request on stderr.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "HTTP/2 (h2c) load that reconnects after GOAWAY")]
struct Args {
    /// The gateway's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Connections.
    #[arg(short = 'c', long, default_value_t = 8)]
    connections: usize,
    /// Streams in flight per connection.
    #[arg(short = 'm', long, default_value_t = 10)]
    streams: usize,
    /// How long to run, in seconds.
    #[arg(short = 'd', long, default_value_t = 10)]
    seconds: u64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let summary = runtime.block_on(meshgate_echo::reconnecting_h2::run(
        args.addr,
        args.connections,
        args.streams,
        Duration::from_secs(args.seconds),
    ));
    for problem in &summary.problems {
        eprintln!("{problem}");
    }
    println!("{summary}");
    Ok(())
}
