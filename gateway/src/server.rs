//! Builds and runs the Pingora server: the proxy service on every listener, the admin API,
//! and the policy file watcher.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::admin::{load_admin_token, AdminService, GatewayAdmin};
use crate::discovery::Discovery;
use crate::lifecycle::{Lifecycle, SignalWatch};
use crate::proxy::connection::{AcceptGate, ConnectionLimit};
use crate::proxy::guarded::GuardedApp;
use crate::proxy::MeshProxy;
use crate::reload::{watch_policy_file, PolicyStore};
use crate::telemetry::Telemetry;
use crate::upstream::UpstreamState;
use meshgate_policy::tcp::ListenerProtocol;

/// How `meshgate run` was asked to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The policy file.
    pub policy: PathBuf,
    /// Detach into the background (Pingora's daemon mode).
    pub daemon: bool,
    /// Take the listening sockets over from a running instance.
    pub upgrade: bool,
    /// The socket through which listening sockets are handed over on upgrade.
    pub upgrade_sock: String,
    /// Where the process writes its PID (Pingora does it for a daemon; meshgate does it for
    /// a process in the foreground too, so that a hand upgrade can find the old process).
    pub pid_file: String,
}

/// Starts the access log, the health checks and the file watcher once Pingora has started (after a daemon fork,
/// so their threads live in the serving process).
struct ControlService {
    store: Arc<PolicyStore>,
    telemetry: Arc<Telemetry>,
    lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Some(settings) = self.store.snapshot().policy.fleet.clone() {
            tokio::spawn(crate::fleet::node::run(
                self.store.clone(),
                settings,
                self.store.fleet_node().clone(),
            ));
        }
        if let Some(registrations) = self.store.take_upstream_registrations() {
            tokio::spawn(run_upstream_tasks(
                registrations,
                self.store.discovery().clone(),
            ));
        }
        tokio::spawn(self.store.jwks.clone().run());
        self.telemetry
            .configure(&self.store.snapshot().policy.telemetry);
        let watcher = match watch_policy_file(self.store.clone()) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::error!(
                    "not watching {}: {e}; use POST /reload after editing it",
                    self.store.path().display()
                );
                None
            }
        };
        if let Err(e) = crate::tls::watch_files(self.store.tls.clone()) {
            tracing::error!(
                "not watching certificate files: {e}; reload the policy after replacing them"
            );
        }
        let _ = shutdown.changed().await;
        drop(watcher);
        // Pingora waits out the whole grace period before it exits; leave as soon as the
        // last client connection has ended instead.
        let grace = self.store.snapshot().policy.server.grace_period;
        let started = std::time::Instant::now();
        while !self.lifecycle.is_idle() && started.elapsed() < grace {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(
            open_connections = self.lifecycle.open_connections(),
            after = ?started.elapsed(),
            "every client connection has ended; exiting"
        );
        self.telemetry.shutdown(std::time::Duration::from_secs(3));
        std::process::exit(0);
    }
}

/// Loads the policy and runs the gateway until it is told to stop. Returns an error message
/// only for problems found before serving starts.
pub fn run(options: RunOptions) -> Result<(), String> {
    let telemetry = Arc::new(Telemetry::default());
    let store = Arc::new(PolicyStore::open(&options.policy, telemetry.clone())?);
    let snapshot = store.snapshot();
    let policy = &snapshot.policy;
    // Before the first line about this policy: its lines in its format.
    crate::telemetry::set_log_format(policy.telemetry.log_format);

    let token = load_admin_token(&policy.admin)?;
    // Outside an upgrade every address must be free. Pingora would otherwise panic in its
    // listener thread and leave a half-started process, and the admin and metrics sockets
    // (shared with SO_REUSEPORT for upgrades) would split their requests with whatever
    // gateway already holds them.
    if !options.upgrade {
        let listeners = policy
            .listeners
            .iter()
            .map(|l| (format!("listener {}", l.name), l.addr));
        let others = [("the admin API".to_owned(), policy.admin.listen)]
            .into_iter()
            .chain(
                policy
                    .telemetry
                    .metrics_listen
                    .map(|addr| ("metrics_listen".to_owned(), addr)),
            );
        for (what, addr) in listeners.chain(others) {
            std::net::TcpListener::bind(addr).map_err(|e| {
                format!("cannot listen on {addr} for {what}: {e} (another gateway running? to replace one, use --upgrade)")
            })?;
        }
    }
    let admin_listener = bind_shared(policy.admin.listen).map_err(|e| {
        format!(
            "cannot listen on the admin address {}: {e}",
            policy.admin.listen
        )
    })?;
    let metrics_listener = policy
        .telemetry
        .metrics_listen
        .map(|addr| {
            bind_shared(addr)
                .map_err(|e| format!("cannot listen on the metrics address {addr}: {e}"))
        })
        .transpose()?;
    let lifecycle = Arc::new(Lifecycle::new(policy.server.drain_delay));

    for file in [&options.upgrade_sock, &options.pid_file] {
        // The defaults live under /run/meshgate, which exists only under systemd
        // (RuntimeDirectory): make it, or say which option moves the file elsewhere.
        if let Some(folder) = std::path::Path::new(file).parent() {
            std::fs::create_dir_all(folder).map_err(|e| {
                format!(
                    "cannot create {} for {file}: {e}; choose another place with --upgrade-sock and --pid-file",
                    folder.display()
                )
            })?;
        }
    }
    let conf = ServerConf {
        threads: policy.server.threads,
        grace_period_seconds: Some(policy.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(policy.server.grace_period.as_secs().max(1)),
        upgrade_sock: options.upgrade_sock.clone(),
        pid_file: options.pid_file.clone(),
        daemon: options.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    if !options.daemon {
        // After bootstrap: an upgrading process has its sockets by then.
        if let Err(e) = std::fs::write(&options.pid_file, format!("{}\n", std::process::id())) {
            tracing::warn!("cannot write the PID file {}: {e}", options.pid_file);
        }
    }

    let mut proxy_app = pingora::proxy::http_proxy(
        &server.configuration,
        MeshProxy::new(store.clone(), telemetry.clone(), lifecycle.clone()),
    );
    let mut server_options = HttpServerOptions::default();
    server_options.h2c = true;
    proxy_app.server_options = Some(server_options);
    // One service per listener: Pingora gives a service's listeners one connection filter,
    // and each listener's accept loop pauses on its own `max_connections`.
    let proxy_app = Arc::new(proxy_app);
    for listener in &policy.listeners {
        let limit = ConnectionLimit::new(
            listener.max_connections as usize,
            telemetry
                .metrics
                .listener_connections
                .with_label_values(&[listener.name.as_str()]),
            telemetry
                .metrics
                .listener_connections_waiting
                .with_label_values(&[listener.name.as_str()]),
        );
        // A TLS handshake takes at most `client_header_timeout`; failures are counted and
        // logged by the gateway, not as Pingora's ERROR line per connection.
        let handshakes = Arc::new(crate::tls::HandshakeFailures::new(
            &listener.name,
            policy.server.client_header_timeout,
            limit.clone(),
            telemetry.clone(),
            lifecycle.clone(),
        ));
        if listener.protocol != ListenerProtocol::Http {
            let mut service = pingora::services::listening::Service::new(
                format!("meshgate tcp {}", listener.name),
                crate::tcp::TcpApp::new(
                    store.clone(),
                    telemetry.clone(),
                    lifecycle.clone(),
                    limit.clone(),
                    listener,
                    policy.server.client_header_timeout,
                ),
            );
            service.set_connection_filter(Arc::new(AcceptGate(limit)));
            service.set_handshake_observer(handshakes);
            // No read buffer: bytes go from the socket straight into the splice's buffers.
            let tcp = ListenerConfig::tcp(listener.addr.to_string())
                .l4_buffer(L4BufferSettings::default().read(0));
            match store.tls.listener(&listener.name) {
                Some(state) if listener.protocol == ListenerProtocol::Tcp => {
                    let settings = crate::tls::listener_settings(&state)
                        .map_err(|e| format!("listener {}: TLS: {e}", listener.name))?;
                    service.add_tls_with_settings(&listener.addr.to_string(), None, settings);
                }
                _ => service.add_listener(tcp),
            }
            server.add_service(service);
            continue;
        }
        let mut proxy = pingora::services::listening::Service::new(
            format!("meshgate proxy {}", listener.name),
            GuardedApp::new(
                proxy_app.clone(),
                &policy.server,
                limit.clone(),
                lifecycle.clone(),
            ),
        );
        proxy.set_connection_filter(Arc::new(AcceptGate(limit)));
        proxy.set_handshake_observer(handshakes);
        match store.tls.listener(&listener.name) {
            // No read buffer under a plain connection: Pingora reads heads and bodies into
            // buffers of its own, and the stream's 64 KiB read buffer would stay allocated
            // (and touched) for as long as a keepalive connection lives. The write buffer
            // (one segment) stays: it joins a response's head and body in one write.
            None => proxy.add_listener(
                ListenerConfig::tcp(listener.addr.to_string())
                    .l4_buffer(L4BufferSettings::default().read(0)),
            ),
            Some(state) => {
                let settings = crate::tls::listener_settings(&state)
                    .map_err(|e| format!("listener {}: TLS: {e}", listener.name))?;
                proxy.add_tls_with_settings(&listener.addr.to_string(), None, settings);
            }
        }
        server.add_service(proxy);
    }

    let admin = Arc::new(GatewayAdmin::new(
        store.clone(),
        telemetry.clone(),
        lifecycle.clone(),
    ));
    server.add_service(background_service(
        "admin api",
        AdminService {
            admin,
            listener: std::sync::Mutex::new(Some(admin_listener)),
            token,
            allowed_hosts: meshgate_admin::AllowedHosts::new(&policy.admin.allowed_hosts),
            // Probes are marked where they would otherwise count: on a TLS listener as a
            // failed handshake, on a plain TCP or passthrough one as a proxied connection. A
            // plain HTTP listener sees a connection that sent no request, which counts nowhere.
            proxy_listeners: policy
                .listeners
                .iter()
                .map(|l| {
                    let plain_http = l.protocol == ListenerProtocol::Http && l.tls.is_none();
                    (l.addr, !plain_http)
                })
                .collect(),
            metrics_listener: std::sync::Mutex::new(metrics_listener),
        },
    ));
    server.add_service(background_service(
        "policy control",
        ControlService {
            store: store.clone(),
            telemetry: telemetry.clone(),
            lifecycle: lifecycle.clone(),
        },
    ));
    let (_, hash, version) = store.active();
    let addresses: Vec<String> = policy
        .listeners
        .iter()
        .map(|l| l.addr.to_string())
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        tls_backend = crate::tls::BACKEND,
        policy = %options.policy.display(),
        policy_version = version,
        policy_hash = hash.get(..12).unwrap_or(&hash),
        listeners = policy.listeners.len(),
        routes = policy.routes.len(),
        upstreams = policy.upstreams.len(),
        addresses = addresses.join(" ").as_str(),
        admin = %policy.admin.listen,
        "meshgate {} starting",
        env!("CARGO_PKG_VERSION")
    );
    drop(snapshot);
    server.run(RunArgs {
        shutdown_signal: Box::new(SignalWatch(lifecycle)),
    });
    telemetry.shutdown(std::time::Duration::from_secs(3));
    std::process::exit(0)
}

/// Binds a TCP listener with `SO_REUSEPORT`, so that during an upgrade the new process can
/// bind the admin port while the old one still holds it. The kernel lets only processes of the
/// same user share a port this way.
fn bind_shared(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Starts the background tasks of every upstream registered through `registrations`: its
/// health checks and the resolution of its names. Each task ends when its upstream is dropped.
async fn run_upstream_tasks(
    mut registrations: tokio::sync::mpsc::UnboundedReceiver<std::sync::Weak<UpstreamState>>,
    discovery: Arc<Discovery>,
) {
    while let Some(weak) = registrations.recv().await {
        let Some(upstream) = weak.upgrade() else {
            continue;
        };
        if upstream.spec.health_check.is_some() {
            tokio::spawn(crate::upstream::health::run(weak.clone()));
        }
        if !upstream.spec.names.is_empty() {
            tokio::spawn(crate::discovery::run(weak, discovery.clone()));
        }
    }
}
