//! `[fleet]`: a node's part of a fleet whose shared policy lives in etcd. The schema type (as
//! written in the node's local file) and the compiled one; which sections each document holds.

use std::path::PathBuf;

use serde::Deserialize;

/// Sections that, with `[fleet]`, come from the fleet document and not from the local file.
pub const FLEET_SECTIONS: &[&str] = &[
    "upstreams",
    "routes",
    "tcp_routes",
    "rate_limit_store",
    "discovery",
];

/// `[telemetry]` keys that stay in the local file with `[fleet]` (the rest come from the fleet
/// document).
pub const LOCAL_TELEMETRY_KEYS: &[&str] = &["metrics_listen"];

/// Default `[fleet].history`.
pub const DEFAULT_HISTORY: u32 = 50;

/// `[fleet]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// etcd endpoints, `http://host:port` or `https://host:port`.
    pub etcd: Vec<String>,
    /// The key prefix every fleet key lives under, such as `/meshgate/prod`.
    pub prefix: String,
    /// This node's name, unique in the fleet; the host name when absent.
    pub node: Option<String>,
    /// Committed documents kept for history and rollback (default 50).
    pub history: Option<u32>,
    /// TLS to etcd.
    pub tls: Option<FleetTlsSection>,
    /// etcd user name.
    pub username: Option<String>,
    /// File holding the etcd user's password.
    pub password_file: Option<PathBuf>,
    /// The folder whose files the fleet document may name (certificates, JWKS files, the
    /// access log); without it the fleet document may name no file.
    pub files_dir: Option<PathBuf>,
}

/// `[fleet.tls]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetTlsSection {
    /// PEM bundle of the CAs etcd's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for etcd's client certificate auth.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
}

/// `[fleet]`, compiled; paths resolved against the policy file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
    /// This node's name.
    pub node: String,
    /// Committed documents kept.
    pub history: u32,
    /// CA bundle for etcd's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// etcd user name and the file of its password.
    pub credentials: Option<(String, PathBuf)>,
    /// `files_dir`, resolved: the folder whose files the fleet document may name.
    pub files_dir: Option<PathBuf>,
}

/// Which document an error is in, when a node's policy is its local file and the fleet
/// document together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// The node's local policy file.
    Local,
    /// The fleet document from etcd.
    Fleet,
}
