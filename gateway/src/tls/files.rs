//! File reading and certificate facts shared by both TLS backends.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::telemetry::Metrics;

/// Reads a file a policy names, whole: a regular file of at most 1 MiB, else an error naming
/// it.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    meshgate_policy::files::read_named_file(path)
}

/// The first URI SAN of a DER certificate: the SPIFFE ID of a mesh workload.
pub fn uri_san(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => Some((*uri).to_owned()),
        _ => None,
    })
}

fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Sets the expiry gauge of a certificate file from its leaf.
pub fn record_expiry(path: &Path, leaf: Option<&[u8]>, metrics: &Metrics) {
    if let Some(expiry) = leaf.and_then(not_after) {
        metrics
            .tls_certificate_expiry
            .with_label_values(&[&path.display().to_string()])
            .set(expiry);
    }
}

/// A bundle expires, for alerting, when its first certificate does.
pub fn record_bundle_expiry<C: AsRef<[u8]>>(path: &Path, certs: &[C], metrics: &Metrics) {
    if let Some(expiry) = certs.iter().filter_map(|c| not_after(c.as_ref())).min() {
        metrics
            .tls_certificate_expiry
            .with_label_values(&[&path.display().to_string()])
            .set(expiry);
    }
}

/// A listener's certificates by server name: exact names, `*.suffix` wildcards, and the
/// default for every other name (or none).
pub struct SniTable<T> {
    default: Arc<T>,
    exact: HashMap<String, Arc<T>>,
    /// `(".example.com", cert)` for `*.example.com`.
    wildcard: Vec<(String, Arc<T>)>,
}

impl<T> SniTable<T> {
    /// A table that serves `default` to every name.
    pub fn new(default: Arc<T>) -> Self {
        SniTable {
            default,
            exact: HashMap::new(),
            wildcard: Vec::new(),
        }
    }

    /// Serves `cert` to `names` (lower-case; exact, or `*.suffix`).
    pub fn insert(&mut self, names: &[String], cert: Arc<T>) {
        for name in names {
            match name.strip_prefix('*') {
                Some(suffix) => self.wildcard.push((suffix.to_owned(), Arc::clone(&cert))),
                None => {
                    self.exact.insert(name.clone(), Arc::clone(&cert));
                }
            }
        }
    }

    /// The certificate for a client's SNI: an exact name, then the longest wildcard that
    /// covers one label, then the default.
    pub fn lookup(&self, server_name: Option<&str>) -> &Arc<T> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return &self.default;
        };
        if let Some(cert) = self.exact.get(&name) {
            return cert;
        }
        self.wildcard
            .iter()
            .filter(|(suffix, _)| {
                name.len() > suffix.len()
                    && name.ends_with(suffix.as_str())
                    && !name[..name.len() - suffix.len()].contains('.')
            })
            .max_by_key(|(suffix, _)| suffix.len())
            .map_or(&self.default, |(_, cert)| cert)
    }
}

/// The pool group key of upstream connections made with material of this fingerprint, so a
/// rotation never reuses a connection made with the old files.
pub fn group_key(fingerprint: &[u8; 32]) -> u64 {
    u64::from_le_bytes(fingerprint[..8].try_into().unwrap_or_default())
}
