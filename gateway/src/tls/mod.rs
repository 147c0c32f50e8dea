//! TLS: certificates of TLS listeners (chosen by SNI), client certificate verification, the
//! caller identity, and TLS to upstreams. Every certificate, key and CA bundle is held behind
//! an `ArcSwap`: a policy reload or a change of the file on disk builds the new material aside
//! and swaps it in, so new handshakes use it while established connections keep theirs. A file
//! that fails to load is refused, and the old material keeps serving.

#[cfg(all(feature = "rustls", feature = "boringssl"))]
compile_error!("choose one TLS backend: the `rustls` feature (the default) or `boringssl` (with --no-default-features)");
#[cfg(not(any(feature = "rustls", feature = "boringssl")))]
compile_error!("a TLS backend is needed: the `rustls` feature (the default) or `boringssl`");

#[cfg(feature = "boringssl")]
#[path = "boring_backend.rs"]
mod backend;
#[cfg(feature = "rustls")]
#[path = "rustls_backend.rs"]
mod backend;
mod failures;
mod files;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use meshgate_policy::compiled::{ListenerTls, UpstreamTls};
use prometheus::IntCounter;

use crate::telemetry::{Metrics, Telemetry};
pub use backend::{listener_settings, ListenerMaterial};
pub use failures::{HandshakeFailure, HandshakeFailures};
pub use watch::watch_files;

/// The TLS library this build uses.
pub const BACKEND: &str = if cfg!(feature = "boringssl") {
    "boringssl"
} else {
    "rustls"
};

/// What the gateway learned of a downstream TLS connection, attached to it after the
/// handshake.
#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    /// The client certificate's first URI SAN (a SPIFFE ID), when it sent one.
    pub identity: Option<String>,
    /// SHA-256 of the client's leaf certificate, hex, for `x-forwarded-client-cert`.
    pub cert_hash: Option<String>,
    /// The server name the client asked for (SNI), lower-case, for TCP routes' `match.sni`.
    pub server_name: Option<String>,
}

impl PeerTls {
    /// The `x-forwarded-client-cert` value (Envoy's format), when the client sent a
    /// certificate.
    pub fn forwarded_client_cert(&self) -> Option<String> {
        let hash = self.cert_hash.as_deref()?;
        Some(match &self.identity {
            Some(uri) => format!("Hash={hash};URI={uri}"),
            None => format!("Hash={hash}"),
        })
    }
}

/// What connections to a TLS upstream present and trust. Each backend loads it
/// (`UpstreamMaterial::load`) into its own certificate types.
pub struct UpstreamMaterial {
    /// Hash of every file's bytes; also the pool's group key, so connections made with old
    /// material are not reused after a rotation.
    pub fingerprint: [u8; 32],
    /// CAs the upstream's certificate must chain to; the system's when `None`.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// The gateway's client certificate.
    pub client_cert: Option<Arc<pingora::utils::tls::CertKey>>,
}

impl UpstreamMaterial {
    /// The pool group key of connections made with this material.
    pub fn group_key(&self) -> u64 {
        files::group_key(&self.fingerprint)
    }
}

/// The TLS state of one listener.
pub struct ListenerTlsState {
    /// The listener's name, for metrics and logs.
    pub listener: String,
    material: ArcSwap<ListenerMaterial>,
    handshakes: IntCounter,
    telemetry: Arc<Telemetry>,
}

impl ListenerTlsState {
    /// Counts a completed handshake.
    pub(crate) fn handshake_completed(&self) {
        self.handshakes.inc();
    }

    /// Counts a client certificate refused for `reason`.
    pub(crate) fn client_certificate_refused(&self, reason: &str) {
        self.telemetry
            .metrics
            .tls_handshake_failures
            .with_label_values(&[self.listener.as_str(), reason])
            .inc();
    }
}

impl ListenerTlsState {
    /// The material in use.
    pub fn material(&self) -> arc_swap::Guard<Arc<ListenerMaterial>> {
        self.material.load()
    }
}

/// The TLS state of one upstream's `[upstreams.tls]`.
pub struct UpstreamTlsState {
    /// The settings it was built from.
    pub spec: UpstreamTls,
    material: ArcSwap<UpstreamMaterial>,
}

impl UpstreamTlsState {
    /// The material in use.
    pub fn material(&self) -> arc_swap::Guard<Arc<UpstreamMaterial>> {
        self.material.load()
    }
}

impl std::fmt::Debug for UpstreamTlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsState")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Every piece of TLS state of the process: made once at start, updated by policy reloads
/// and by file changes.
pub struct TlsRegistry {
    telemetry: Arc<Telemetry>,
    listeners: Mutex<HashMap<String, Arc<ListenerTlsState>>>,
    upstreams: Mutex<Vec<Weak<UpstreamTlsState>>>,
}

impl TlsRegistry {
    /// An empty registry.
    pub fn new(telemetry: Arc<Telemetry>) -> Arc<TlsRegistry> {
        Arc::new(TlsRegistry {
            telemetry,
            listeners: Mutex::default(),
            upstreams: Mutex::default(),
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.telemetry.metrics
    }

    /// Builds the state of a TLS listener at start.
    pub fn add_listener(
        &self,
        listener: &str,
        spec: &ListenerTls,
    ) -> Result<Arc<ListenerTlsState>, String> {
        let material = ListenerMaterial::load(spec, self.metrics())?;
        let state = Arc::new(ListenerTlsState {
            listener: listener.to_owned(),
            material: ArcSwap::from_pointee(material),
            handshakes: self.metrics().tls_handshakes.with_label_values(&[listener]),
            telemetry: Arc::clone(&self.telemetry),
        });
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(listener.to_owned(), Arc::clone(&state));
        Ok(state)
    }

    /// Applies a reloaded policy's listener settings: listeners whose TLS settings changed load
    /// their files again. A listener whose files fail keeps its old material.
    pub fn apply_listener(&self, listener: &str, spec: &ListenerTls) {
        let Some(state) = self.listener(listener) else {
            return;
        };
        if state.material().spec == *spec {
            return;
        }
        self.reload_listener(&state, spec);
    }

    /// The TLS state of a listener, when it has TLS.
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerTlsState>> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn reload_listener(&self, state: &ListenerTlsState, spec: &ListenerTls) {
        match ListenerMaterial::load(spec, self.metrics()) {
            Ok(material) => {
                if material.fingerprint != state.material().fingerprint
                    || material.spec != state.material().spec
                {
                    tracing::info!(listener = %state.listener, "TLS certificates reloaded");
                    state.material.store(Arc::new(material));
                    self.metrics()
                        .tls_reloads
                        .with_label_values(&["applied"])
                        .inc();
                }
            }
            Err(e) => {
                tracing::error!(listener = %state.listener, "TLS files refused, the old certificates keep serving: {e}");
                self.metrics()
                    .tls_reloads
                    .with_label_values(&["refused"])
                    .inc();
            }
        }
    }

    /// The state of an upstream's TLS settings, shared by every upstream with the same
    /// settings.
    pub fn upstream(&self, spec: &UpstreamTls) -> Arc<UpstreamTlsState> {
        let mut upstreams = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        upstreams.retain(|weak| weak.strong_count() > 0);
        if let Some(existing) = upstreams
            .iter()
            .filter_map(Weak::upgrade)
            .find(|state| state.spec == *spec)
        {
            return existing;
        }
        let material = UpstreamMaterial::load(spec, self.metrics()).unwrap_or_else(|e| {
            // Validation loaded these files a moment ago; if they broke since, connections
            // fail with a TLS error until the files are fixed.
            tracing::error!("upstream TLS files: {e}");
            UpstreamMaterial::broken(spec)
        });
        let state = Arc::new(UpstreamTlsState {
            spec: spec.clone(),
            material: ArcSwap::from_pointee(material),
        });
        upstreams.push(Arc::downgrade(&state));
        state
    }

    /// Loads every file again; what changed is swapped in, what fails is refused.
    pub fn reload_files(&self) {
        let listeners: Vec<_> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for state in listeners {
            let spec = state.material().spec.clone();
            self.reload_listener(&state, &spec);
        }
        let upstreams: Vec<_> = self
            .upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for state in upstreams {
            match UpstreamMaterial::load(&state.spec, self.metrics()) {
                Ok(material) if material.fingerprint != state.material().fingerprint => {
                    tracing::info!("upstream TLS files reloaded");
                    state.material.store(Arc::new(material));
                    self.metrics()
                        .tls_reloads
                        .with_label_values(&["applied"])
                        .inc();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("upstream TLS files refused, the old ones stay: {e}");
                    self.metrics()
                        .tls_reloads
                        .with_label_values(&["refused"])
                        .inc();
                }
            }
        }
    }

    /// Every file the TLS state reads now.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|s| {
                s.material()
                    .spec
                    .files()
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        for state in self
            .upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
        {
            files.extend(state.spec.ca.iter().cloned());
            if let Some(cert) = &state.spec.client_cert {
                files.extend([cert.cert.clone(), cert.key.clone()]);
            }
        }
        files.sort();
        files.dedup();
        files
    }
}
