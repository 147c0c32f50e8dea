//! Certificates, keys and CA bundles loaded from their files, ready for handshakes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use meshgate_policy::compiled::{ClientAuth, ListenerTls, UpstreamTls};
use meshgate_policy::pem;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::telemetry::Metrics;

/// The crypto provider Pingora's rustls backend uses.
pub fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A TLS listener's certificates and client verifier.
pub struct ListenerMaterial {
    /// The settings it was loaded from.
    pub spec: ListenerTls,
    /// Hash of every file's bytes: a reload that reads the same bytes changes nothing.
    pub fingerprint: [u8; 32],
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", cert)` for `*.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    /// Whether clients are asked for a certificate.
    pub client_auth: ClientAuth,
    /// Verifies client certificates against `client_ca`.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl ListenerMaterial {
    /// Loads every file of `spec`, or says which one is wrong.
    pub fn load(spec: &ListenerTls, metrics: &Metrics) -> Result<ListenerMaterial, String> {
        let mut fingerprint = Sha256::new();
        let mut load_pair = |cert: &Path, key: &Path| -> Result<Arc<CertifiedKey>, String> {
            fingerprint.update(read(cert)?);
            fingerprint.update(read(key)?);
            let certified = pem::read_certified_key(cert, key)?;
            record_expiry(cert, certified.cert.first().map(|c| c.as_ref()), metrics);
            Ok(certified)
        };
        let default = load_pair(&spec.default_cert.cert, &spec.default_cert.key)?;
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for (names, files) in &spec.sni {
            let certified = load_pair(&files.cert, &files.key)?;
            for name in names {
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_owned(), Arc::clone(&certified))),
                    None => {
                        exact.insert(name.clone(), Arc::clone(&certified));
                    }
                }
            }
        }
        let client_verifier =
            match &spec.client_ca {
                None => None,
                Some(ca) => {
                    fingerprint.update(read(ca)?);
                    let roots = root_store(ca, metrics)?;
                    let builder = WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider().clone(),
                    );
                    let builder = match spec.client_auth {
                        ClientAuth::Optional => builder.allow_unauthenticated(),
                        _ => builder,
                    };
                    Some(builder.build().map_err(|e| {
                        format!("cannot verify clients against {}: {e}", ca.display())
                    })?)
                }
            };
        Ok(ListenerMaterial {
            spec: spec.clone(),
            fingerprint: fingerprint.finalize().into(),
            default,
            exact,
            wildcard,
            client_auth: spec.client_auth,
            client_verifier,
        })
    }

    /// The certificate for a client's SNI: an exact name, then the longest wildcard, then the
    /// default.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return Arc::clone(&self.default);
        };
        let name = name.to_ascii_lowercase();
        if let Some(certified) = self.exact.get(&name) {
            return Arc::clone(certified);
        }
        self.wildcard
            .iter()
            .filter(|(suffix, _)| {
                name.ends_with(suffix.as_str())
                    && !name[..name.len() - suffix.len()].contains('.')
                    && name.len() > suffix.len()
            })
            .max_by_key(|(suffix, _)| suffix.len())
            .map_or_else(|| Arc::clone(&self.default), |(_, c)| Arc::clone(c))
    }
}

/// What connections to a TLS upstream present and trust.
pub struct UpstreamMaterial {
    /// Hash of every file's bytes; also the pool's group key, so connections made with old
    /// material are not reused after a rotation.
    pub fingerprint: [u8; 32],
    /// CAs the upstream's certificate must chain to; the system's when `None`.
    pub ca: Option<Arc<CaType>>,
    /// The gateway's client certificate.
    pub client_cert: Option<Arc<CertKey>>,
}

impl UpstreamMaterial {
    /// Loads every file of `spec`.
    pub fn load(spec: &UpstreamTls, metrics: &Metrics) -> Result<UpstreamMaterial, String> {
        let mut fingerprint = Sha256::new();
        let ca = match &spec.ca {
            None => None,
            Some(path) => {
                fingerprint.update(read(path)?);
                let certs = pem::read_certificates(path)?;
                record_bundle_expiry(path, &certs, metrics);
                let wrapped: Vec<WrappedX509> = certs
                    .iter()
                    .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
                    .collect();
                Some(Arc::from(wrapped.into_boxed_slice()))
            }
        };
        let client_cert = match &spec.client_cert {
            None => None,
            Some(files) => {
                fingerprint.update(read(&files.cert)?);
                fingerprint.update(read(&files.key)?);
                // Checks that the key belongs to the certificate.
                pem::read_certified_key(&files.cert, &files.key)?;
                let chain = pem::read_certificates(&files.cert)?;
                record_expiry(&files.cert, chain.first().map(|c| c.as_ref()), metrics);
                let key = pem::read_private_key(&files.key)?;
                Some(Arc::new(CertKey::new(
                    chain.iter().map(|c| c.to_vec()).collect(),
                    key.secret_der().to_vec(),
                )))
            }
        };
        Ok(UpstreamMaterial {
            fingerprint: fingerprint.finalize().into(),
            ca,
            client_cert,
        })
    }

    /// Material whose files could not be loaded: trusts nothing, so connections fail.
    pub fn broken(spec: &UpstreamTls) -> UpstreamMaterial {
        let _ = spec;
        UpstreamMaterial {
            fingerprint: [0; 32],
            ca: Some(Arc::from(Vec::<WrappedX509>::new().into_boxed_slice())),
            client_cert: None,
        }
    }

    /// The pool group key of connections made with this material.
    pub fn group_key(&self) -> u64 {
        u64::from_le_bytes(self.fingerprint[..8].try_into().unwrap_or_default())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn root_store(path: &Path, metrics: &Metrics) -> Result<RootCertStore, String> {
    let certs = pem::read_certificates(path)?;
    record_bundle_expiry(path, &certs, metrics);
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            format!(
                "{} holds a CA certificate rustls refuses: {e}",
                path.display()
            )
        })?;
    }
    Ok(roots)
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

fn record_expiry(path: &Path, leaf: Option<&[u8]>, metrics: &Metrics) {
    if let Some(expiry) = leaf.and_then(not_after) {
        metrics
            .tls_certificate_expiry
            .with_label_values(&[&path.display().to_string()])
            .set(expiry);
    }
}

/// A bundle expires, for alerting, when its first certificate does.
fn record_bundle_expiry(
    path: &Path,
    certs: &[rustls::pki_types::CertificateDer<'_>],
    metrics: &Metrics,
) {
    if let Some(expiry) = certs.iter().filter_map(|c| not_after(c)).min() {
        metrics
            .tls_certificate_expiry
            .with_label_values(&[&path.display().to_string()])
            .set(expiry);
    }
}
