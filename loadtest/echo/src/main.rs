use std::net::SocketAddr;

use clap::Parser;
use meshgate_echo::{serve, Config};

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

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = Config::new(&args.name, args.body_size);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut servers = Vec::new();
        for addr in args.listen {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            eprintln!("echo {} listening on {addr}", config.name);
            servers.push(tokio::spawn(serve(listener, config.clone())));
        }
        for server in servers {
            server.await.map_err(std::io::Error::other)??;
        }
        Ok(())
    })
}
