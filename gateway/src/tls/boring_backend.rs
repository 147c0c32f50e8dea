//! The BoringSSL backend: certificates, keys and CA bundles loaded for BoringSSL. The
//! certificate callback reads the listener's current material on every handshake: it picks
//! the certificate by SNI and sets the client verification of that connection.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use meshgate_policy::compiled::{ClientAuth, ListenerTls, UpstreamTls};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext::{
    ssl_add_chain_cert, ssl_set_verify_cert_store, ssl_use_certificate, ssl_use_private_key,
};
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::{NameType, SslVerifyMode, SslVersion};
use pingora::tls::x509::store::{X509Store, X509StoreBuilder};
use pingora::tls::x509::{X509VerifyError, X509};
use pingora::utils::tls::CertKey;
use sha2::{Digest, Sha256};

use super::failures::client_left;
use super::files::{read, record_bundle_expiry, record_expiry, uri_san, SniTable};
use super::{HandshakeFailure, ListenerTlsState, PeerTls, UpstreamMaterial};
use crate::telemetry::Metrics;

/// A chain (leaf first) and its key.
struct Pair {
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// A TLS listener's certificates and client CA store.
pub struct ListenerMaterial {
    /// The settings it was loaded from.
    pub spec: ListenerTls,
    /// Hash of every file's bytes: a reload that reads the same bytes changes nothing.
    pub fingerprint: [u8; 32],
    certificates: SniTable<Pair>,
    /// Whether clients are asked for a certificate.
    pub client_auth: ClientAuth,
    client_store: Option<X509Store>,
}

fn load_pair(
    cert: &Path,
    key: &Path,
    fingerprint: &mut Sha256,
    metrics: &Metrics,
) -> Result<Arc<Pair>, String> {
    // The policy crate checks PEM syntax and that the key belongs to the leaf.
    meshgate_policy::pem::read_certified_key(cert, key)?;
    let cert_bytes = read(cert)?;
    let key_bytes = read(key)?;
    fingerprint.update(&cert_bytes);
    fingerprint.update(&key_bytes);
    let chain = X509::stack_from_pem(&cert_bytes)
        .map_err(|e| format!("{}: BoringSSL refuses the certificate: {e}", cert.display()))?;
    let key = PKey::private_key_from_pem(&key_bytes)
        .map_err(|e| format!("{}: BoringSSL refuses the key: {e}", key.display()))?;
    let leaf_der = chain.first().and_then(|c| c.to_der().ok());
    record_expiry(cert, leaf_der.as_deref(), metrics);
    Ok(Arc::new(Pair { chain, key }))
}

fn load_store(
    path: &Path,
    fingerprint: &mut Sha256,
    metrics: &Metrics,
) -> Result<X509Store, String> {
    let bytes = read(path)?;
    fingerprint.update(&bytes);
    let certs = X509::stack_from_pem(&bytes)
        .map_err(|e| format!("{}: BoringSSL refuses the CA bundle: {e}", path.display()))?;
    let ders: Vec<Vec<u8>> = certs.iter().filter_map(|c| c.to_der().ok()).collect();
    record_bundle_expiry(path, &ders, metrics);
    let mut builder = X509StoreBuilder::new().map_err(|e| e.to_string())?;
    for cert in certs {
        builder
            .add_cert(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(builder.build())
}

impl ListenerMaterial {
    /// Loads every file of `spec`, or says which one is wrong.
    pub fn load(spec: &ListenerTls, metrics: &Metrics) -> Result<ListenerMaterial, String> {
        let mut fingerprint = Sha256::new();
        let mut certificates = SniTable::new(load_pair(
            &spec.default_cert.cert,
            &spec.default_cert.key,
            &mut fingerprint,
            metrics,
        )?);
        for (names, files) in &spec.sni {
            certificates.insert(
                names,
                load_pair(&files.cert, &files.key, &mut fingerprint, metrics)?,
            );
        }
        let client_store = spec
            .client_ca
            .as_ref()
            .map(|ca| load_store(ca, &mut fingerprint, metrics))
            .transpose()?;
        Ok(ListenerMaterial {
            spec: spec.clone(),
            fingerprint: fingerprint.finalize().into(),
            certificates,
            client_auth: spec.client_auth,
            client_store,
        })
    }
}

impl UpstreamMaterial {
    /// Loads every file of `spec`.
    pub fn load(spec: &UpstreamTls, metrics: &Metrics) -> Result<UpstreamMaterial, String> {
        let mut fingerprint = Sha256::new();
        let ca = match &spec.ca {
            None => None,
            Some(path) => {
                let bytes = read(path)?;
                fingerprint.update(&bytes);
                let certs = X509::stack_from_pem(&bytes).map_err(|e| {
                    format!("{}: BoringSSL refuses the CA bundle: {e}", path.display())
                })?;
                let ders: Vec<Vec<u8>> = certs.iter().filter_map(|c| c.to_der().ok()).collect();
                record_bundle_expiry(path, &ders, metrics);
                Some(Arc::new(certs.into_boxed_slice()))
            }
        };
        let client_cert = match &spec.client_cert {
            None => None,
            Some(files) => {
                let pair = load_pair(&files.cert, &files.key, &mut fingerprint, metrics)?;
                Some(Arc::new(CertKey::new(pair.chain.clone(), pair.key.clone())))
            }
        };
        Ok(UpstreamMaterial {
            fingerprint: fingerprint.finalize().into(),
            ca,
            client_cert,
        })
    }

    /// Material whose files could not be loaded: trusts nothing, so connections fail.
    pub fn broken(_spec: &UpstreamTls) -> UpstreamMaterial {
        UpstreamMaterial {
            fingerprint: [0; 32],
            ca: Some(Arc::new(Vec::new().into_boxed_slice())),
            client_cert: None,
        }
    }
}

/// Pingora's TLS settings for a listener, backed by its swappable state.
pub fn listener_settings(state: &Arc<ListenerTlsState>) -> pingora::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(Handshakes {
        state: Arc::clone(state),
    }))?;
    settings
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| {
            pingora::Error::because(pingora::ErrorType::InternalError, "TLS 1.2 minimum", e)
        })?;
    settings.enable_h2();
    Ok(settings)
}

/// Why a client's handshake failed, from the root cause of Pingora's error: BoringSSL's.
pub(super) fn handshake_failure(cause: &(dyn std::error::Error + 'static)) -> HandshakeFailure {
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        let reason = if client_left(io) {
            "closed"
        } else {
            "protocol"
        };
        return HandshakeFailure::new(reason, io);
    }
    let Some(ssl) = cause.downcast_ref::<pingora::tls::ssl::Error>() else {
        return HandshakeFailure::new("protocol", cause);
    };
    if let Some(io) = ssl.io_error() {
        let reason = if client_left(io) {
            "closed"
        } else {
            "protocol"
        };
        return HandshakeFailure::new(reason, io);
    }
    let Some(first) = ssl.ssl_error().and_then(|stack| stack.errors().first()) else {
        // No error queued: the client closed the connection mid-handshake.
        return HandshakeFailure::new("closed", "the client closed the connection");
    };
    let detail = first.reason().unwrap_or("TLS error").to_ascii_lowercase();
    match first.reason().unwrap_or_default() {
        // The verify callback counted it, with its reason.
        "CERTIFICATE_VERIFY_FAILED" => HandshakeFailure {
            counted: true,
            ..HandshakeFailure::new("bad-certificate", detail)
        },
        "PEER_DID_NOT_RETURN_A_CERTIFICATE" => HandshakeFailure::new("no-certificate", detail),
        "UNSUPPORTED_PROTOCOL"
        | "NO_SHARED_CIPHER"
        | "NO_SHARED_GROUP"
        | "NO_COMMON_SIGNATURE_ALGORITHMS" => HandshakeFailure::new("incompatible", detail),
        _ => HandshakeFailure::new("protocol", detail),
    }
}

fn failure_reason(error: X509VerifyError) -> &'static str {
    match error {
        X509VerifyError::CERT_HAS_EXPIRED => "expired",
        X509VerifyError::CERT_NOT_YET_VALID => "not-yet-valid",
        X509VerifyError::CERT_REVOKED => "revoked",
        X509VerifyError::UNABLE_TO_GET_ISSUER_CERT
        | X509VerifyError::UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        | X509VerifyError::DEPTH_ZERO_SELF_SIGNED_CERT
        | X509VerifyError::SELF_SIGNED_CERT_IN_CHAIN => "unknown-ca",
        _ => "bad-certificate",
    }
}

/// Picks the certificate and the client verification of each handshake, counts completed
/// handshakes and attaches the caller's identity.
struct Handshakes {
    state: Arc<ListenerTlsState>,
}

#[async_trait]
impl TlsAccept for Handshakes {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let material = self.state.material();
        let pair = Arc::clone(
            material
                .certificates
                .lookup(ssl.servername(NameType::HOST_NAME)),
        );
        let mut chain = pair.chain.iter();
        if let Some(leaf) = chain.next() {
            if let Err(e) = ssl_use_certificate(ssl, leaf) {
                tracing::warn!(listener = %self.state.listener, "cannot use the certificate: {e}");
            }
        }
        for intermediate in chain {
            let _ = ssl_add_chain_cert(ssl, intermediate);
        }
        if let Err(e) = ssl_use_private_key(ssl, &pair.key) {
            tracing::warn!(listener = %self.state.listener, "cannot use the key: {e}");
        }
        let mode = match material.client_auth {
            ClientAuth::None => SslVerifyMode::NONE,
            ClientAuth::Optional => SslVerifyMode::PEER,
            ClientAuth::Require => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        };
        if let Some(store) = &material.client_store {
            let _ = ssl_set_verify_cert_store(ssl, store);
        }
        let state = Arc::clone(&self.state);
        ssl.set_verify_callback(mode, move |verified, context| {
            if !verified {
                if let Err(error) = context.verify_result() {
                    state.client_certificate_refused(failure_reason(error));
                }
            }
            verified
        });
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        self.state.handshake_completed();
        let leaf = ssl.peer_certificate().and_then(|cert| cert.to_der().ok());
        Some(Arc::new(PeerTls {
            identity: leaf.as_deref().and_then(uri_san),
            cert_hash: leaf.map(|leaf| hex::encode(Sha256::digest(&leaf))),
            server_name: ssl
                .servername(NameType::HOST_NAME)
                .map(str::to_ascii_lowercase),
        }))
    }
}
