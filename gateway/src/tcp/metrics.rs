//! The TCP proxy's metric families.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

/// `meshgate_tcp_*`.
#[derive(Clone)]
pub struct TcpMetrics {
    /// `meshgate_tcp_connections_total{listener,route,upstream,result}`: connections ended,
    /// by how (`closed`, `idle_timeout`, `reset`, or why one was refused).
    pub connections: IntCounterVec,
    /// `meshgate_tcp_active_connections{listener}`: connections open now.
    pub active: IntGaugeVec,
    /// `meshgate_tcp_bytes_total{listener,route,direction}`: bytes from clients (`received`)
    /// and to clients (`sent`).
    pub bytes: IntCounterVec,
    /// `meshgate_tcp_connection_duration_seconds{listener,route}`.
    pub duration: HistogramVec,
}

impl TcpMetrics {
    /// The families, not registered yet.
    pub fn new() -> TcpMetrics {
        TcpMetrics {
            connections: IntCounterVec::new(
                Opts::new(
                    "meshgate_tcp_connections_total",
                    "TCP connections ended, by listener, route, upstream and result (closed, idle_timeout, reset, no_route, denied, rate_limited, overflow, no_endpoint, connect_failed, bad_handshake).",
                ),
                &["listener", "route", "upstream", "result"],
            )
            .expect("static metric definition"),
            active: IntGaugeVec::new(
                Opts::new(
                    "meshgate_tcp_active_connections",
                    "TCP connections open now, by listener.",
                ),
                &["listener"],
            )
            .expect("static metric definition"),
            bytes: IntCounterVec::new(
                Opts::new(
                    "meshgate_tcp_bytes_total",
                    "Bytes proxied on TCP routes: received from clients, sent to clients.",
                ),
                &["listener", "route", "direction"],
            )
            .expect("static metric definition"),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "meshgate_tcp_connection_duration_seconds",
                    "How long proxied TCP connections lasted.",
                )
                .buckets(vec![
                    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0,
                ]),
                &["listener", "route"],
            )
            .expect("static metric definition"),
        }
    }

    /// Every family, for the registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.connections.clone()),
            Box::new(self.active.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.duration.clone()),
        ]
    }
}

impl Default for TcpMetrics {
    fn default() -> Self {
        Self::new()
    }
}
