//! Failed downstream TLS handshakes: counted by listener and reason in
//! `meshgate_tls_handshake_failures_total` and logged at most once a second per listener and
//! reason. Pingora logged an ERROR line per failed connection, so any port scanner or client
//! with a wrong CA could fill the log.

use std::sync::Arc;
use std::time::Duration;

use pingora::services::listening::HandshakeObserver;

use crate::lifecycle::Lifecycle;
use crate::telemetry::Telemetry;

/// Why a handshake failed, as counted and logged.
pub struct HandshakeFailure {
    /// The reason token: a certificate's (`expired`, `unknown-ca`…), `no-certificate`,
    /// `incompatible` (no TLS version or cipher in common), `closed` (the client left),
    /// `timeout` or `protocol` (anything else the client sent wrong).
    pub reason: &'static str,
    /// Whether the certificate verification already counted it.
    pub counted: bool,
    /// What failed, in words.
    pub detail: String,
}

impl HandshakeFailure {
    /// A failure the verification did not count.
    pub(super) fn new(reason: &'static str, detail: impl ToString) -> Self {
        HandshakeFailure {
            reason,
            counted: false,
            detail: detail.to_string(),
        }
    }
}

/// Whether an I/O error means the client went away.
pub(super) fn client_left(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// One listener's handshakes: held to its timeout, their failures counted and logged.
pub struct HandshakeFailures {
    listener: String,
    telemetry: Arc<Telemetry>,
    /// Knows the readiness probes, which connect and leave without a handshake.
    lifecycle: Arc<Lifecycle>,
    /// How long a handshake may take: `[server].client_header_timeout`, as NGINX counts its
    /// handshake in `client_header_timeout`.
    timeout: Duration,
    /// The listener's connection limit, under which handshakes in progress count.
    limit: Arc<crate::proxy::connection::ConnectionLimit>,
}

impl HandshakeFailures {
    /// The failures of listener `listener`, whose handshakes may take `timeout`.
    pub fn new(
        listener: &str,
        timeout: Duration,
        limit: Arc<crate::proxy::connection::ConnectionLimit>,
        telemetry: Arc<Telemetry>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        HandshakeFailures {
            listener: listener.to_owned(),
            telemetry,
            lifecycle,
            timeout,
            limit,
        }
    }
}

impl HandshakeObserver for HandshakeFailures {
    fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A handshake in progress holds a place under the listener's `max_connections`.
    fn started(&self) -> Option<Box<dyn Send>> {
        Some(Box::new(self.limit.handshake_started()))
    }

    /// Counts and (throttled) logs a handshake from `peer` that failed with `error`, or did
    /// not finish in time (`None`).
    fn failed(
        &self,
        peer: Option<&pingora::protocols::l4::socket::SocketAddr>,
        error: Option<&pingora::Error>,
    ) {
        if peer
            .and_then(|p| p.as_inet())
            .is_some_and(|p| self.lifecycle.take_probe(*p))
        {
            return;
        }
        let failure = match error {
            Some(error) => super::backend::handshake_failure(error.root_cause()),
            None => HandshakeFailure::new(
                "timeout",
                format_args!(
                    "no TLS handshake within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
        };
        if !failure.counted {
            self.telemetry
                .metrics
                .tls_handshake_failures
                .with_label_values(&[self.listener.as_str(), failure.reason])
                .inc();
        }
        let throttle = &self.telemetry.handshake_failures;
        if let Some(suppressed) = throttle.admit(&self.listener, failure.reason) {
            let client = peer.map(|p| p.to_string()).unwrap_or_default();
            tracing::info!(
                listener = self.listener.as_str(),
                reason = failure.reason,
                client = client.as_str(),
                suppressed,
                "TLS handshake failed: {}",
                failure.detail
            );
        }
    }
}
