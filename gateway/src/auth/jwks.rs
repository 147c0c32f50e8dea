//! Keys fetched from a `jwks_url`. Each URL has one [`RemoteKeys`], shared by every route and
//! snapshot that names it, and one background task that fetches it: again after the answer's
//! `Cache-Control: max-age` (kept within `min_refresh` and `max_refresh`), or after
//! `max_refresh` when it has none. A failed fetch keeps the keys already fetched and is tried
//! again sooner (1 s, doubling up to `min_refresh`). The task ends once no snapshot uses the
//! URL any more.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::BytesMut;
use meshgate_policy::compiled::UpstreamTls;
use meshgate_policy::jwt::{read_jwks, JwksUrl, ASYMMETRIC_ALGORITHMS};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntCounter;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::KeySet;
use crate::telemetry::Metrics;
use crate::tls::{TlsRegistry, UpstreamTlsState};

/// The longest a fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS document read.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// The first wait after a failed fetch; it doubles up to `min_refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The keys of one `jwks_url`, as last fetched.
pub struct RemoteKeys {
    url: JwksUrl,
    keys: ArcSwapOption<KeySet>,
    /// Bumped after each store into `keys`.
    generation: std::sync::atomic::AtomicUsize,
    tls: Option<Arc<UpstreamTlsState>>,
    fetched_ok: IntCounter,
    fetch_failed: IntCounter,
}

impl RemoteKeys {
    /// The keys of the last good fetch; `None` before the first.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Counts the key sets stored: tokens verified with older keys are verified again.
    pub fn generation(&self) -> usize {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Every `jwks_url` in use, and the channel through which new ones get their fetch task.
pub struct JwksRegistry {
    sources: Mutex<HashMap<JwksUrl, Weak<RemoteKeys>>>,
    new_sources: UnboundedSender<Weak<RemoteKeys>>,
    receiver: Mutex<Option<UnboundedReceiver<Weak<RemoteKeys>>>>,
    tls: Arc<TlsRegistry>,
}

impl JwksRegistry {
    /// An empty registry; `tls` loads the `jwks_ca` files.
    pub fn new(tls: Arc<TlsRegistry>) -> JwksRegistry {
        let (new_sources, receiver) = tokio::sync::mpsc::unbounded_channel();
        JwksRegistry {
            sources: Mutex::new(HashMap::new()),
            new_sources,
            receiver: Mutex::new(Some(receiver)),
            tls,
        }
    }

    /// The keys of `url`: the live ones when a snapshot already uses it, else new ones
    /// (starting with the keys of the same URL fetched under other settings, if any), whose
    /// fetch task starts with [`JwksRegistry::run`].
    pub fn source(&self, url: &JwksUrl, metrics: &Metrics) -> Arc<RemoteKeys> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.retain(|_, weak| weak.strong_count() > 0);
        if let Some(live) = sources.get(url).and_then(Weak::upgrade) {
            return live;
        }
        let seed = sources
            .iter()
            .filter(|(other, _)| other.url == url.url)
            .find_map(|(_, weak)| weak.upgrade()?.keys());
        let tls = url.ca.as_ref().map(|ca| {
            self.tls.upstream(&UpstreamTls {
                sni: Some(url.host.clone()),
                ca: Some(ca.clone()),
                client_cert: None,
            })
        });
        let counter = |result: &str| {
            metrics
                .jwks_fetches
                .with_label_values(&[url.url.as_str(), result])
        };
        let source = Arc::new(RemoteKeys {
            url: url.clone(),
            keys: ArcSwapOption::new(seed),
            generation: std::sync::atomic::AtomicUsize::new(0),
            tls,
            fetched_ok: counter("ok"),
            fetch_failed: counter("error"),
        });
        sources.insert(url.clone(), Arc::downgrade(&source));
        let _ = self.new_sources.send(Arc::downgrade(&source));
        source
    }

    /// Runs a fetch task for every URL in use, now and later. Call once, from the runtime
    /// that serves (after a daemon fork).
    pub async fn run(self: Arc<Self>) {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut receiver) = receiver else {
            return;
        };
        let connector = Arc::new(Connector::new(None));
        while let Some(source) = receiver.recv().await {
            tokio::spawn(keep_fetching(source, Arc::clone(&connector)));
        }
    }
}

/// Fetches `source` until it is no longer used.
async fn keep_fetching(source: Weak<RemoteKeys>, connector: Arc<Connector>) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(keys) = source.upgrade() else {
            return;
        };
        let url = &keys.url;
        let wait = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&keys, &connector)).await {
            Ok(Ok((set, max_age))) => {
                keys.fetched_ok.inc();
                let count = set.len();
                let before = keys.keys.swap(Some(Arc::new(set)));
                keys.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                if before.is_none_or(|b| b.len() != count) {
                    tracing::info!("jwks {}: {count} signing key(s)", url.url);
                }
                retry = FIRST_RETRY;
                max_age
                    .unwrap_or(url.max_refresh)
                    .clamp(url.min_refresh, url.max_refresh)
            }
            Ok(Err(e)) => {
                keys.fetch_failed.inc();
                tracing::warn!("jwks {}: {e}; keeping the keys fetched before", url.url);
                failed_wait(&mut retry, url.min_refresh)
            }
            Err(_) => {
                keys.fetch_failed.inc();
                tracing::warn!(
                    "jwks {}: no answer within {}s; keeping the keys fetched before",
                    url.url,
                    FETCH_TIMEOUT.as_secs()
                );
                failed_wait(&mut retry, url.min_refresh)
            }
        };
        drop(keys);
        tokio::time::sleep(wait).await;
    }
}

/// The wait after a failure: `retry`, which then doubles up to `ceiling`.
fn failed_wait(retry: &mut Duration, ceiling: Duration) -> Duration {
    let wait = (*retry).min(ceiling);
    *retry = (*retry * 2).min(ceiling);
    wait
}

/// One fetch: the usable keys and the answer's `max-age`.
async fn fetch(
    source: &RemoteKeys,
    connector: &Connector,
) -> Result<(KeySet, Option<Duration>), String> {
    let url = &source.url;
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .collect();
    let mut last_error = format!("{} resolves to no address", url.host);
    for address in addresses {
        match fetch_from(source, connector, address).await {
            Ok(answer) => return Ok(answer),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

async fn fetch_from(
    source: &RemoteKeys,
    connector: &Connector,
    address: SocketAddr,
) -> Result<(KeySet, Option<Duration>), String> {
    let url = &source.url;
    let mut peer = HttpPeer::new(address, url.https, url.host.clone());
    peer.options.connection_timeout = Some(FETCH_TIMEOUT);
    if let Some(tls) = &source.tls {
        let material = tls.material();
        peer.options.ca = material.ca.clone();
        peer.group_key = material.group_key();
    }
    let failed = |e: Box<pingora::Error>| format!("fetch from {address} failed: {e}");
    let (mut http, _reused) = connector.get_http_session(&peer).await.map_err(failed)?;
    let mut request =
        RequestHeader::build("GET", url.path_and_query.as_bytes(), None).map_err(failed)?;
    let default_port = if url.https { 443 } else { 80 };
    let host = match (url.host.contains(':'), url.port == default_port) {
        (true, true) => format!("[{}]", url.host),
        (true, false) => format!("[{}]:{}", url.host, url.port),
        (false, true) => url.host.clone(),
        (false, false) => format!("{}:{}", url.host, url.port),
    };
    request.insert_header("host", host).map_err(failed)?;
    request
        .insert_header("accept", "application/json")
        .map_err(failed)?;
    http.write_request_header(Box::new(request))
        .await
        .map_err(failed)?;
    http.finish_request_body().await.map_err(failed)?;
    http.read_response_header().await.map_err(failed)?;
    let head = http
        .response_header()
        .ok_or_else(|| "no answer".to_owned())?;
    let status = head.status.as_u16();
    let max_age = head
        .headers
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| max_age(v.as_bytes()));
    if status != 200 {
        return Err(format!("answered {status}"));
    }
    let mut document = BytesMut::new();
    while let Some(chunk) = http.read_response_body().await.map_err(failed)? {
        if document.len() + chunk.len() > MAX_DOCUMENT {
            return Err(format!("the document is over {MAX_DOCUMENT} bytes"));
        }
        document.extend_from_slice(&chunk);
    }
    let read = read_jwks(&document, &ASYMMETRIC_ALGORITHMS)?;
    for why in &read.left_out {
        tracing::warn!("jwks {}: key left out: {why}", url.url);
    }
    Ok((KeySet::new(&read.keys), max_age))
}

/// The `max-age` of a `Cache-Control` value; `no-cache` and `no-store` count as zero.
fn max_age(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?;
    let mut age = None;
    for directive in text.split(',') {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store")
        {
            return Some(Duration::ZERO);
        }
        if let Some((name, seconds)) = directive.split_once('=') {
            if name.trim().eq_ignore_ascii_case("max-age") {
                age = seconds
                    .trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs);
            }
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_max_age() {
        assert_eq!(
            max_age(b"public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age(b"no-store"), Some(Duration::ZERO));
        assert_eq!(max_age(b"private"), None);
        assert_eq!(max_age(b"max-age=x"), None);
    }

    #[test]
    fn failures_back_off_up_to_the_ceiling() {
        let mut retry = FIRST_RETRY;
        let ceiling = Duration::from_secs(5);
        let waits: Vec<u64> = (0..5)
            .map(|_| failed_wait(&mut retry, ceiling).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }
}
