//! How the process ends: Unix signals and `POST /drain`, turned into Pingora's shutdown kinds,
//! the way load balancers and keepalive clients expect.
//!
//! - `SIGTERM` and `POST /drain`: a drain. `/readyz` answers 503 at once, while the listeners
//!   keep accepting and serving for `[server].drain_delay`, so that a load balancer polling
//!   readiness takes the gateway out before any connection is refused. Then the listeners
//!   stop accepting, in-flight requests finish (within `grace_period`), and the process exits
//!   as soon as the last connection has ended.
//! - `SIGQUIT`: a graceful upgrade. The listening sockets go to the new process (started with
//!   `--upgrade`), the admin API closes its socket so the new process's takes every new
//!   connection, and the old process finishes what it has, then exits.
//! - `SIGINT`: fast shutdown.
//!
//! From the start of a drain or an upgrade, keepalive clients are moved off the old process
//! without a request lost on the wire: every response says `Connection: close` (HTTP/2: a
//! GOAWAY with the last stream, from Pingora), and a connection idle between requests is closed
//! only after [`DRAIN_IDLE`] of idleness. Closing idle connections at once (Pingora's own
//! behaviour) raced with requests already sent: `wrk -c8` saw 8 read errors per upgrade.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a keepalive connection may sit idle between requests once a drain or upgrade has
/// started before the gateway closes it.
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// The process's shutdown state, shared by the signal watcher, the listeners and the admin API.
#[derive(Debug)]
pub struct Lifecycle {
    draining: AtomicBool,
    upgrading: AtomicBool,
    drain_requested: Notify,
    /// Cancelled when a drain or an upgrade starts: idle connections watch it.
    closing: CancellationToken,
    /// Client connections open now, on every listener.
    open_connections: AtomicUsize,
    /// Requests being served now. An HTTP/2 connection's streams run as tasks of their own,
    /// which can outlive the connection's accept loop, so connections alone do not say when
    /// the work is done.
    requests: AtomicUsize,
    /// `[server].drain_delay`.
    drain_delay: Duration,
    /// Local addresses of the readiness probes' connections to the proxy listeners, so that
    /// a TCP listener closes them instead of proxying them to an upstream.
    probes: std::sync::Mutex<Vec<std::net::SocketAddr>>,
    /// How many of `probes` no listener has taken yet.
    probes_pending: AtomicUsize,
}

impl Lifecycle {
    /// A running process whose drains keep serving for `drain_delay` before they stop
    /// accepting.
    pub fn new(drain_delay: Duration) -> Self {
        Lifecycle {
            draining: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            drain_requested: Notify::new(),
            closing: CancellationToken::new(),
            open_connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            drain_delay,
            probes: std::sync::Mutex::new(Vec::new()),
            probes_pending: AtomicUsize::new(0),
        }
    }

    /// Connects to `target` as a readiness probe. When `marked` (a listener where the probe
    /// would count: `tcp` without TLS and `tls_passthrough` would proxy it to an upstream, a
    /// TLS listener would count a failed handshake), the connection's address is recorded,
    /// so that the listener knows it and lets it go uncounted.
    pub async fn probe(&self, target: std::net::SocketAddr, marked: bool) -> std::io::Result<()> {
        if !marked {
            return tokio::net::TcpStream::connect(target).await.map(drop);
        }
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // From the listener's own address: the probe's address is known before it connects.
        socket.bind(std::net::SocketAddr::new(target.ip(), 0))?;
        let local = socket.local_addr()?;
        self.probes_mut().push(local);
        self.probes_pending.fetch_add(1, Ordering::AcqRel);
        let connected = socket.connect(target).await;
        if connected.is_err() {
            self.take_probe(local);
        }
        connected.map(drop)
    }

    /// Whether a connection from `peer` is a readiness probe (each is known once). Without
    /// a probe pending, as always after start, it takes no lock.
    pub fn take_probe(&self, peer: std::net::SocketAddr) -> bool {
        if self.probes_pending.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut probes = self.probes_mut();
        let before = probes.len();
        probes.retain(|p| *p != peer);
        let taken = probes.len() != before;
        if taken {
            self.probes_pending.fetch_sub(1, Ordering::AcqRel);
        }
        taken
    }

    fn probes_mut(&self) -> std::sync::MutexGuard<'_, Vec<std::net::SocketAddr>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the gateway is draining or shutting down (readiness fails).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the listening sockets are being handed to a new process.
    pub fn is_upgrading(&self) -> bool {
        self.upgrading.load(Ordering::Acquire)
    }

    /// Starts a graceful drain, as `SIGTERM` does.
    pub fn drain(&self) {
        self.start_closing();
        self.drain_requested.notify_one();
    }

    fn start_closing(&self) {
        self.draining.store(true, Ordering::Release);
        self.closing.cancel();
    }

    /// Resolves when a drain or an upgrade has started.
    pub fn closing(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.closing.clone().cancelled_owned()
    }

    /// Counts a client connection as open until the returned guard drops.
    pub fn open_connection(&self) -> OpenConnection<'_> {
        self.open_connections.fetch_add(1, Ordering::AcqRel);
        OpenConnection(self)
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Acquire)
    }

    /// Counts a request as being served until the returned guard drops.
    pub fn request_started(self: &Arc<Self>) -> RequestInFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        RequestInFlight(Arc::clone(self))
    }

    /// Whether no connection is open and no request is being served.
    pub fn is_idle(&self) -> bool {
        self.open_connections.load(Ordering::Acquire) == 0
            && self.requests.load(Ordering::Acquire) == 0
    }
}

/// A request counted as being served; see [`Lifecycle::request_started`].
#[derive(Debug)]
pub struct RequestInFlight(Arc<Lifecycle>);

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client connection counted as open; see [`Lifecycle::open_connection`].
pub struct OpenConnection<'a>(&'a Lifecycle);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Pingora's shutdown signal source: Unix signals plus `POST /drain`.
pub struct SignalWatch(pub std::sync::Arc<Lifecycle>);

#[async_trait]
impl ShutdownSignalWatch for SignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        let lifecycle = &self.0;
        let (Ok(mut quit), Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; only POST /drain stops the gateway");
            lifecycle.drain_requested.notified().await;
            lifecycle.start_closing();
            tokio::time::sleep(lifecycle.drain_delay).await;
            return ShutdownSignal::GracefulTerminate;
        };
        let kind = tokio::select! {
            _ = quit.recv() => {
                lifecycle.upgrading.store(true, Ordering::Release);
                ShutdownSignal::GracefulUpgrade
            }
            _ = terminate.recv() => ShutdownSignal::GracefulTerminate,
            _ = lifecycle.drain_requested.notified() => ShutdownSignal::GracefulTerminate,
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
        };
        lifecycle.start_closing();
        tracing::info!(?kind, "shutting down");
        if matches!(kind, ShutdownSignal::GracefulTerminate) {
            // Readiness fails now; keep accepting until load balancers have seen it.
            tracing::info!(delay = ?lifecycle.drain_delay, "draining: still accepting");
            tokio::select! {
                _ = tokio::time::sleep(lifecycle.drain_delay) => {}
                _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
            }
            tracing::info!("drain delay over: the listeners stop accepting");
        }
        kind
    }
}
