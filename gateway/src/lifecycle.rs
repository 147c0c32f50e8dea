//! How the process ends: Unix signals and `POST /drain`, turned into Pingora's shutdown kinds.
//!
//! - `SIGTERM` and `POST /drain`: graceful. Readiness fails at once, the listeners stop
//!   accepting, in-flight requests get the grace period, then the process exits. The admin API
//!   keeps answering (with `/readyz` at 503) until the end, so a load balancer sees the drain.
//! - `SIGQUIT`: graceful upgrade. The listening sockets go to the new process (started with
//!   `--upgrade`), the admin API closes its socket so the new process's takes every new
//!   connection, and in-flight requests finish.
//! - `SIGINT`: fast shutdown.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

/// The process's shutdown state, shared by the signal watcher and the admin API.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    upgrading: AtomicBool,
    drain_requested: Notify,
}

impl Lifecycle {
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
        self.draining.store(true, Ordering::Release);
        self.drain_requested.notify_one();
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
        lifecycle.draining.store(true, Ordering::Release);
        tracing::info!(?kind, "shutting down");
        kind
    }
}
