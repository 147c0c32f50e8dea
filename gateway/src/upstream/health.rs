//! Active health checks: one task per upstream that has `health_check`, probing every
//! endpoint each `interval` with an HTTP GET (or a TCP connect). The task holds only a weak
//! reference, so it ends by itself when a reload drops the upstream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use meshgate_policy::compiled::HealthCheckSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::UpstreamState;

/// One probe: `Ok` when the endpoint answered in time (HTTP: with a 2xx or 3xx status), else
/// what went wrong, in a few words.
async fn probe(addr: SocketAddr, spec: &HealthCheckSpec) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        let Some(path) = &spec.path else {
            return Ok(());
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: meshgate-health-check\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("request not sent: {e}"))?;
        let mut head = [0u8; 16];
        let mut read = 0;
        while read < 12 {
            let n = stream
                .read(&mut head[read..])
                .await
                .map_err(|e| format!("answer not read: {e}"))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let code: Option<u16> = std::str::from_utf8(&head[..read.min(12)])
            .ok()
            .and_then(|status| status.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok());
        match code {
            Some(code) if (200..400).contains(&code) => Ok(()),
            Some(code) => Err(format!("{path} answered {code}")),
            None => Err(format!("{path} did not answer HTTP")),
        }
    };
    match tokio::time::timeout(spec.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(spec.timeout)
        )),
    }
}

/// Runs the checks of one upstream until it is dropped. Each round probes the endpoints the
/// upstream has then, so endpoints that DNS adds are checked from their first round.
pub async fn run(upstream: Weak<UpstreamState>) {
    let (spec, name) = match upstream.upgrade() {
        Some(state) => match &state.spec.health_check {
            Some(spec) => (spec.clone(), state.spec.name.clone()),
            None => return,
        },
        None => return,
    };
    // Passes and failures in a row, by address.
    let mut streaks: HashMap<SocketAddr, (u32, u32)> = HashMap::new();
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let endpoints = match upstream.upgrade() {
            Some(state) => state.endpoints().endpoints.clone(),
            None => return,
        };
        streaks.retain(|addr, _| endpoints.iter().any(|e| e.addr == *addr));
        let mut probes = tokio::task::JoinSet::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let spec = spec.clone();
            let addr = endpoint.addr;
            probes.spawn(async move { (index, probe(addr, &spec).await) });
        }
        let results = probes.join_all().await;
        // Holding the pool only between probes lets a reload drop it.
        if upstream.strong_count() == 0 {
            return;
        }
        for (index, result) in results {
            let endpoint = &endpoints[index];
            let ok = result.is_ok();
            *endpoint
                .last_check
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((
                result.err().unwrap_or_else(|| "passed".to_owned()),
                std::time::SystemTime::now(),
            ));
            let (passes, failures) = streaks.entry(endpoint.addr).or_default();
            if ok {
                *passes += 1;
                *failures = 0;
            } else {
                *failures += 1;
                *passes = 0;
            }
            let healthy = endpoint.healthy.load(Ordering::Relaxed);
            if healthy && *failures >= spec.unhealthy_threshold {
                endpoint.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(upstream = %name, endpoint = %endpoint.addr, "endpoint unhealthy");
            } else if !healthy && *passes >= spec.healthy_threshold {
                endpoint.healthy.store(true, Ordering::Relaxed);
                tracing::info!(upstream = %name, endpoint = %endpoint.addr, "endpoint healthy again");
            }
        }
    }
}
