//! The gateway's side of the admin API: [`AdminBackend`] over the policy store, the admin
//! listener as a Pingora background service, and the admin token.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meshgate_admin::*;
use meshgate_policy::compiled::AdminSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::lifecycle::Lifecycle;
use crate::reload::{Origin, PolicyStore};
use crate::telemetry::Telemetry;

mod tcp_views;
mod views;

/// Implements the admin API over the gateway's state.
pub struct GatewayAdmin {
    store: Arc<PolicyStore>,
    telemetry: Arc<Telemetry>,
    listeners_up: AtomicBool,
    lifecycle: Arc<Lifecycle>,
}

impl GatewayAdmin {
    /// An admin backend over `store`.
    pub fn new(
        store: Arc<PolicyStore>,
        telemetry: Arc<Telemetry>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        GatewayAdmin {
            store,
            telemetry,
            listeners_up: AtomicBool::new(false),
            lifecycle,
        }
    }

    /// Whether this is a fleet node that serves no fleet document yet (neither one committed
    /// in etcd nor its cache): its routes come from that document, so until then it would
    /// answer every request `404`, and a load balancer must not send it any.
    fn waits_for_fleet_document(&self) -> bool {
        self.store.snapshot().policy.fleet.is_some() && self.store.fleet_parts().1.is_none()
    }
}

impl AdminBackend for GatewayAdmin {
    fn policy(&self) -> ActivePolicy {
        let (source, hash, version) = self.store.active();
        let restart_required = self
            .store
            .snapshot()
            .listeners
            .restart_required
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        ActivePolicy {
            source,
            hash,
            version,
            restart_required,
        }
    }

    fn apply(&self, source: String, if_match: Option<&str>) -> Result<Applied, ApplyError> {
        self.store.apply(source, Origin::Api, if_match)
    }

    fn validate(&self, source: &str) -> Result<Validated, ApplyError> {
        self.store.validate(source)
    }

    fn dry_run(&self, source: &str) -> Result<meshgate_admin::DryRun, ApplyError> {
        self.store.dry_run(source)
    }

    fn set_endpoint_state(
        &self,
        upstream: &str,
        address: &str,
        state: &str,
        by: &str,
    ) -> Result<(), String> {
        let address: std::net::SocketAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an endpoint address (IP:port)"))?;
        let code = match state {
            "draining" => crate::upstream::ADMIN_DRAINING,
            "disabled" => crate::upstream::ADMIN_DISABLED,
            _ => crate::upstream::ADMIN_ENABLED,
        };
        let snapshot = self.store.snapshot();
        self.store
            .endpoint_controls
            .set_state(&snapshot.upstreams, upstream, address, code)?;
        tracing::info!(upstream, endpoint = %address, state, by, "endpoint state set");
        Ok(())
    }

    fn set_endpoint_weight(
        &self,
        upstream: &str,
        address: &str,
        weight: Option<u32>,
        by: &str,
    ) -> Result<(), String> {
        let address: std::net::SocketAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an endpoint address (IP:port)"))?;
        let snapshot = self.store.snapshot();
        self.store
            .endpoint_controls
            .set_weight(&snapshot.upstreams, upstream, address, weight)?;
        match weight {
            Some(weight) => {
                tracing::info!(upstream, endpoint = %address, weight, by, "endpoint weight set")
            }
            None => {
                tracing::info!(upstream, endpoint = %address, by, "endpoint weight override cleared")
            }
        }
        Ok(())
    }

    fn config(&self) -> serde_json::Value {
        meshgate_policy::effective::effective(&self.store.snapshot().policy)
    }

    fn reload(&self) -> Result<Applied, ApplyError> {
        self.store.reload_from_file()
    }

    fn rollback(&self, version: Option<u64>) -> Result<Applied, ApplyError> {
        self.store.rollback(version)
    }

    fn history(&self) -> HistoryBody {
        let (entries, active) = self.store.history();
        HistoryBody {
            history: entries
                .into_iter()
                .rev()
                .map(|entry| HistoryItem {
                    active: entry.version == active,
                    version: entry.version,
                    hash: entry.hash,
                    time: entry.time,
                    origin: entry.origin,
                })
                .collect(),
        }
    }

    fn upstreams(&self) -> UpstreamsBody {
        self.upstreams_body()
    }

    fn routes(&self) -> RoutesBody {
        self.routes_body()
    }

    fn explain(&self, query: &ExplainQuery) -> Result<Explanation, String> {
        self.explanation(query)
    }

    fn metrics(&self) -> String {
        let mut text = self.telemetry.metrics.render();
        crate::telemetry::upstream_state::render(&self.store.snapshot(), &mut text);
        text
    }

    fn ready(&self) -> bool {
        self.listeners_up.load(Ordering::Acquire)
            && !self.lifecycle.is_draining()
            && !self.waits_for_fleet_document()
    }

    fn drain(&self) -> u64 {
        tracing::info!("drain requested through the admin API");
        self.lifecycle.drain();
        self.store.snapshot().policy.server.grace_period.as_secs()
    }

    fn readiness_note(&self) -> Option<String> {
        if self.waits_for_fleet_document() {
            return Some(
                "fleet: no fleet document served yet (none is committed, or etcd is unreachable and there is no cache); routes come from it"
                    .to_owned(),
            );
        }
        crate::fleet::node::readiness_note(self.store.fleet_node())
    }

    fn fleet_status(&self) -> BoxFuture<(u16, serde_json::Value)> {
        let store = self.store.clone();
        Box::pin(async move { crate::fleet::api::status(&store).await })
    }

    fn push_fleet(&self, document: String) -> BoxFuture<(u16, serde_json::Value)> {
        let store = self.store.clone();
        Box::pin(async move { crate::fleet::api::push(&store, document).await })
    }
}

/// Reads the admin token, or creates one when the default token file is missing.
pub fn load_admin_token(settings: &AdminSettings) -> Result<String, String> {
    let path = &settings.token_file;
    if path.exists() || settings.token_file_explicit {
        let contents = meshgate_policy::files::read_named_file(path)?;
        return meshgate_policy::check_admin_token(path, &contents);
    }
    // The default file is missing: create it with a fresh token, readable by its owner only.
    use rand::Rng;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes: [u8; 24] = rand::rng().random();
    let token = hex::encode(bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create the admin token file {}: {e}", path.display()))?;
    writeln!(file, "{token}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::info!("created a new admin token in {}", path.display());
    Ok(token)
}

/// Serves the admin API inside Pingora's server, and marks the gateway ready once every
/// listener accepts connections.
pub struct AdminService {
    /// The backend.
    pub admin: Arc<GatewayAdmin>,
    /// The bound admin socket (bound before Pingora starts, so a taken port fails at once).
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// The bearer token.
    pub token: String,
    /// `[admin].allowed_hosts`: names the API answers besides IP literals and `localhost`.
    pub allowed_hosts: meshgate_admin::AllowedHosts,
    /// Addresses of the proxy listeners, probed for readiness, each with whether its probe
    /// is marked for the listener to recognize ([`Lifecycle::probe`]).
    pub proxy_listeners: Vec<(SocketAddr, bool)>,
    /// The bound `[telemetry].metrics_listen` socket, if any.
    pub metrics_listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

/// Resolves when the process hands its sockets to a new one (an upgrade). On a drain or
/// shutdown it never does: the API keeps answering, with readiness at 503, until the process
/// exits, so load balancers see the drain. On an upgrade the socket closes, so the new
/// process, which shares the port through SO_REUSEPORT, takes every new connection.
async fn until_handover(mut shutdown: ShutdownWatch, lifecycle: Arc<Lifecycle>) {
    let _ = shutdown.changed().await;
    if !lifecycle.is_upgrading() {
        std::future::pending::<()>().await;
    }
}

fn into_tokio(listener: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match into_tokio(std_listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("admin API cannot start: {e}");
                return;
            }
        };
        let admin = self.admin.clone();
        let probes = self.proxy_listeners.clone();
        let prober = self.admin.lifecycle.clone();
        tokio::spawn(async move {
            for (addr, marked) in probes {
                let target = if addr.ip().is_unspecified() {
                    SocketAddr::new(
                        if addr.is_ipv4() {
                            std::net::Ipv4Addr::LOCALHOST.into()
                        } else {
                            std::net::Ipv6Addr::LOCALHOST.into()
                        },
                        addr.port(),
                    )
                } else {
                    addr
                };
                while prober.probe(target, marked).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            admin.listeners_up.store(true, Ordering::Release);
            tracing::info!("listeners are up; ready");
        });
        let lifecycle = self.admin.lifecycle.clone();
        let stop = until_handover(shutdown.clone(), lifecycle.clone());
        let metrics_listener = self.metrics_listener.lock().ok().and_then(|mut l| l.take());
        if let Some(std_listener) = metrics_listener {
            match into_tokio(std_listener) {
                Ok(listener) => {
                    let backend = self.admin.clone();
                    let stop = until_handover(shutdown, lifecycle);
                    tokio::spawn(async move {
                        if let Err(e) = meshgate_admin::serve_metrics(listener, backend, stop).await
                        {
                            tracing::error!("metrics listener stopped: {e}");
                        }
                    });
                }
                Err(e) => tracing::error!("metrics listener cannot start: {e}"),
            }
        }
        let allowed_hosts = self.allowed_hosts.clone();
        if let Err(e) = meshgate_admin::serve(
            listener,
            self.admin.clone(),
            &self.token,
            allowed_hosts,
            stop,
        )
        .await
        {
            tracing::error!("admin API stopped: {e}");
        }
    }
}
