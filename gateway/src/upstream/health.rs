//! Active health checks: one task per upstream that has `health_check`, probing every
//! endpoint each `interval` with an HTTP GET (or a TCP connect). The task holds only a weak
//! reference, so it ends by itself when a reload drops the upstream.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use meshgate_policy::compiled::HealthCheckSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::UpstreamState;

/// One probe: true when the endpoint answered in time (HTTP: with a 2xx or 3xx status).
async fn probe(addr: SocketAddr, spec: &HealthCheckSpec) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let Some(path) = &spec.path else {
            return Some(true);
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: meshgate-health-check\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 16];
        let mut read = 0;
        while read < 12 {
            let n = stream.read(&mut head[read..]).await.ok()?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let status = std::str::from_utf8(&head[..read.min(12)]).ok()?;
        let code: u16 = status.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    matches!(
        tokio::time::timeout(spec.timeout, attempt).await,
        Ok(Some(true))
    )
}

/// Runs the checks of one upstream until it is dropped.
pub async fn run(upstream: Weak<UpstreamState>) {
    let (spec, addrs, name) = match upstream.upgrade() {
        Some(state) => match &state.spec.health_check {
            Some(spec) => (
                spec.clone(),
                state.endpoints.iter().map(|e| e.addr).collect::<Vec<_>>(),
                state.spec.name.clone(),
            ),
            None => return,
        },
        None => return,
    };
    let mut passes = vec![0u32; addrs.len()];
    let mut failures = vec![0u32; addrs.len()];
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut probes = tokio::task::JoinSet::new();
        for (index, addr) in addrs.iter().copied().enumerate() {
            let spec = spec.clone();
            probes.spawn(async move { (index, probe(addr, &spec).await) });
        }
        let results = probes.join_all().await;
        // Holding the pool only between probes lets a reload drop it.
        let Some(state) = upstream.upgrade() else {
            return;
        };
        for (index, ok) in results {
            let endpoint = &state.endpoints[index];
            if ok {
                passes[index] += 1;
                failures[index] = 0;
            } else {
                failures[index] += 1;
                passes[index] = 0;
            }
            let healthy = endpoint.healthy.load(Ordering::Relaxed);
            if healthy && failures[index] >= spec.unhealthy_threshold {
                endpoint.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(upstream = %name, endpoint = %endpoint.addr, "endpoint unhealthy");
            } else if !healthy && passes[index] >= spec.healthy_threshold {
                endpoint.healthy.store(true, Ordering::Relaxed);
                tracing::info!(upstream = %name, endpoint = %endpoint.addr, "endpoint healthy again");
            }
        }
    }
}

/// Runs every health check task registered through `registrations`.
pub async fn supervise(
    mut registrations: tokio::sync::mpsc::UnboundedReceiver<Weak<UpstreamState>>,
) {
    while let Some(upstream) = registrations.recv().await {
        tokio::spawn(run(upstream));
    }
}
