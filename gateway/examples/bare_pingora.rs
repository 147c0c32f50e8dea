//! A bare Pingora proxy with one fixed upstream and no policy: the benchmark's baseline, so
//! that meshgate's own cost per request can be told apart from Pingora's.
//!
//!   bare_pingora LISTEN UPSTREAM THREADS

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

struct Bare {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream, threads) = match args.as_slice() {
        [_, listen, upstream, threads] => (listen.clone(), upstream.clone(), threads.clone()),
        _ => {
            eprintln!("usage: bare_pingora LISTEN UPSTREAM THREADS");
            std::process::exit(2);
        }
    };
    let conf = pingora::server::configuration::ServerConf {
        threads: threads.parse().unwrap_or(1),
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: upstream.parse().expect("UPSTREAM is IP:port"),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
