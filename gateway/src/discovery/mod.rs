//! Endpoints from DNS. Each upstream with names (`discovery`, or endpoints written as
//! `host:port`) has a background task that resolves them, never on the request path, and
//! swaps the upstream's endpoint set when the answer changes: endpoints that stay keep their
//! state, new ones join, gone ones finish what they have.
//!
//! A failure is not an outage: a timeout, SERVFAIL or unreachable resolver keeps the last good
//! answer; NXDOMAIN or an empty answer empties a name only after `[discovery].empty_after` of
//! them in a row. The last answer of every name is kept here, so that an upstream a reload
//! builds afresh starts with its endpoints instead of waiting for its first resolution, and so
//! that `/upstreams` can say where endpoints came from.

mod resolve;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use meshgate_admin::NameStatus;
use meshgate_policy::discovery::{DiscoverySettings, NamedSource};
use prometheus::IntCounterVec;

use crate::upstream::{EndpointEntry, UpstreamState};
pub use resolve::FailureKind;
use resolve::{Failure, Resolved};

/// The resolver in use and the settings it was built from.
struct ResolverState {
    settings: DiscoverySettings,
    resolver: Result<TokioResolver, String>,
}

/// What is known of one name.
#[derive(Debug, Clone, Default)]
struct NameState {
    /// The endpoints the name gives now (the last good answer, until emptied).
    endpoints: Vec<EndpointEntry>,
    /// When the last good answer came.
    answered_at: Option<(Instant, SystemTime)>,
    /// Its time to live.
    ttl: Duration,
    /// The last failure, while failing: kind, message, since when.
    failing: Option<(FailureKind, String, SystemTime)>,
    /// Since when answers have been NXDOMAIN or empty, in a row.
    empty_since: Option<Instant>,
}

/// Endpoint discovery: the resolver, and the last answer of every name.
pub struct Discovery {
    resolver: ArcSwap<ResolverState>,
    names: Mutex<HashMap<NamedSource, NameState>>,
    errors: IntCounterVec,
}

impl Discovery {
    /// Discovery with `settings`; `errors` is `meshgate_discovery_errors_total`.
    pub fn new(settings: &DiscoverySettings, errors: IntCounterVec) -> Discovery {
        Discovery {
            resolver: ArcSwap::from_pointee(ResolverState {
                settings: settings.clone(),
                resolver: resolve::build_resolver(settings),
            }),
            names: Mutex::new(HashMap::new()),
            errors,
        }
    }

    /// Applies `[discovery]` from a reload; the resolver is rebuilt when it changed.
    pub fn configure(&self, settings: &DiscoverySettings) {
        if self.resolver.load().settings == *settings {
            return;
        }
        self.resolver.store(Arc::new(ResolverState {
            settings: settings.clone(),
            resolver: resolve::build_resolver(settings),
        }));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NamedSource, NameState>> {
        self.names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The endpoints `upstream` has from its policy and what its names gave last.
    fn entries_of(&self, upstream: &UpstreamState) -> Vec<EndpointEntry> {
        let mut entries = UpstreamState::literal_entries(&upstream.spec);
        let names = self.lock();
        for source in &upstream.spec.names {
            if let Some(state) = names.get(source) {
                entries.extend_from_slice(&state.endpoints);
            }
        }
        entries
    }

    /// Gives an upstream that a reload built afresh the endpoints its names gave last.
    pub fn seed(&self, upstream: &UpstreamState) {
        if !upstream.spec.names.is_empty() {
            upstream.set_endpoints(&self.entries_of(upstream));
        }
    }

    /// What is known of `upstream`'s names.
    pub fn views(&self, upstream: &UpstreamState) -> Vec<NameStatus> {
        let names = self.lock();
        upstream
            .spec
            .names
            .iter()
            .map(|source| {
                let state = names.get(source).cloned().unwrap_or_default();
                NameStatus {
                    kind: source.query.kind().to_owned(),
                    name: source.query.name().to_owned(),
                    endpoints: state.endpoints.iter().map(|e| e.addr.to_string()).collect(),
                    age_seconds: state.answered_at.map(|(at, _)| at.elapsed().as_secs_f64()),
                    ttl_seconds: state.ttl.as_secs_f64(),
                    last_error: state
                        .failing
                        .as_ref()
                        .map(|(kind, message, _)| format!("{}: {message}", kind.label())),
                    failing_since: state.failing.as_ref().and_then(|(_, _, since)| {
                        since
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs())
                    }),
                }
            })
            .collect()
    }

    /// Records one resolution of `source` for `upstream`; returns how long to wait before
    /// the next one.
    fn record(
        &self,
        upstream: &str,
        source: &NamedSource,
        outcome: Result<Resolved, Failure>,
        settings: &DiscoverySettings,
    ) -> Duration {
        let mut names = self.lock();
        let state = names.entry(source.clone()).or_default();
        let name = source.query.name();
        match outcome {
            Ok(resolved) => {
                if let Some((kind, _, _)) = state.failing.take() {
                    tracing::info!(upstream, name, after = kind.label(), "name resolves again");
                }
                state.empty_since = None;
                state.endpoints = resolved
                    .endpoints
                    .iter()
                    .map(|&(addr, weight, priority)| EndpointEntry {
                        addr,
                        weight: weight.unwrap_or(source.weight),
                        priority: priority.unwrap_or(source.priority),
                        zone: source.zone.as_deref().map(Arc::from),
                    })
                    .collect();
                state.answered_at = Some((Instant::now(), SystemTime::now()));
                state.ttl = resolved.ttl;
                settings.refresh_after(resolved.ttl)
            }
            Err(failure) => {
                self.errors
                    .with_label_values(&[upstream, failure.kind.label()])
                    .inc();
                let kept = state.endpoints.len();
                if state.failing.as_ref().map(|(kind, _, _)| *kind) != Some(failure.kind) {
                    tracing::warn!(
                        upstream,
                        name,
                        kind = failure.kind.label(),
                        error = %failure.message,
                        kept,
                        "name does not resolve; the last good endpoints stay"
                    );
                    state.failing = Some((failure.kind, failure.message, SystemTime::now()));
                }
                if failure.kind.is_empty_answer() {
                    let since = *state.empty_since.get_or_insert_with(Instant::now);
                    if kept > 0 && since.elapsed() >= settings.empty_after {
                        tracing::warn!(
                            upstream,
                            name,
                            dropped = kept,
                            "name answered nothing for empty_after; its endpoints are dropped"
                        );
                        state.endpoints.clear();
                    }
                } else {
                    state.empty_since = None;
                }
                settings.refresh_after(Duration::ZERO)
            }
        }
    }
}

/// Resolves `upstream`'s names until the upstream is dropped (a reload that changes or
/// removes it), and keeps its endpoint set in step with the answers.
pub async fn run(upstream: Weak<UpstreamState>, discovery: Arc<Discovery>) {
    loop {
        let Some(state) = upstream.upgrade() else {
            return;
        };
        let sources = state.spec.names.clone();
        let name = state.spec.name.clone();
        drop(state);
        let resolver = discovery.resolver.load_full();
        let settings = &resolver.settings;
        let mut wait = settings.max_refresh;
        for source in &sources {
            let outcome = match &resolver.resolver {
                Ok(resolver) => resolve::resolve(resolver, &source.query, settings.timeout).await,
                Err(message) => Err(Failure {
                    kind: FailureKind::Unreachable,
                    message: message.clone(),
                }),
            };
            wait = wait.min(discovery.record(&name, source, outcome, settings));
        }
        let Some(state) = upstream.upgrade() else {
            return;
        };
        let entries = discovery.entries_of(&state);
        let before = state.endpoints().entries();
        if state.set_endpoints(&entries) {
            let added: Vec<String> = entries
                .iter()
                .filter(|e| !before.iter().any(|b| b.addr == e.addr))
                .map(|e| e.addr.to_string())
                .collect();
            let removed: Vec<String> = before
                .iter()
                .filter(|b| !entries.iter().any(|e| e.addr == b.addr))
                .map(|b| b.addr.to_string())
                .collect();
            tracing::info!(
                upstream = %name,
                endpoints = entries.len(),
                added = ?added,
                removed = ?removed,
                "endpoints changed"
            );
        }
        drop(state);
        tokio::time::sleep(wait).await;
    }
}
