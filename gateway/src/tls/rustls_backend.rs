//! The rustls backend: certificates, keys and CA bundles loaded for rustls, a certificate
//! resolver and a client verifier that read the listener's current material on every
//! handshake.

use std::any::Any;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use meshgate_policy::compiled::{ClientAuth, ListenerTls, UpstreamTls};
use meshgate_policy::pem;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::{
    ClientCertVerified, ClientCertVerifier, ClientHello, DigitallySignedStruct, ResolvesServerCert,
    SignatureScheme,
};
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, RootCertStore};
use sha2::{Digest, Sha256};

use super::failures::client_left;
use super::files::{read, record_bundle_expiry, record_expiry, uri_san, SniTable};
use super::{HandshakeFailure, ListenerTlsState, PeerTls, UpstreamMaterial};
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
    certificates: SniTable<CertifiedKey>,
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
        let mut certificates =
            SniTable::new(load_pair(&spec.default_cert.cert, &spec.default_cert.key)?);
        for (names, files) in &spec.sni {
            certificates.insert(names, load_pair(&files.cert, &files.key)?);
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
            certificates,
            client_auth: spec.client_auth,
            client_verifier,
        })
    }

    /// The certificate for a client's SNI.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        Arc::clone(self.certificates.lookup(server_name))
    }
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

/// Pingora's TLS settings for a listener, backed by its swappable state.
pub fn listener_settings(state: &Arc<ListenerTlsState>) -> pingora::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(HandshakeObserver {
        state: Arc::clone(state),
    }))?;
    settings.set_cert_resolver(Arc::new(SniResolver(Arc::clone(state))));
    settings.set_client_cert_verifier(Arc::new(ClientVerifier(Arc::clone(state))));
    settings.enable_h2();
    Ok(settings)
}

/// Picks the certificate for a ClientHello from the listener's current material.
struct SniResolver(Arc<ListenerTlsState>);

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SniResolver({})", self.0.listener)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().certificate_for(hello.server_name()))
    }
}

/// Verifies client certificates against the listener's current CA bundle and client_auth.
struct ClientVerifier(Arc<ListenerTlsState>);

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientVerifier({})", self.0.listener)
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.material().client_auth != ClientAuth::None
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.material().client_auth == ClientAuth::Require
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from material that a rotation may replace; clients choose
        // their certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let material = self.0.material();
        let Some(verifier) = &material.client_verifier else {
            return Err(rustls::Error::General(
                "client certificates are not accepted".into(),
            ));
        };
        verifier
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| self.0.client_certificate_refused(failure_reason(e)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a client's handshake failed, from the root cause of Pingora's error: the I/O error that
/// carries rustls's own.
pub(super) fn handshake_failure(cause: &(dyn std::error::Error + 'static)) -> HandshakeFailure {
    let Some(io) = cause.downcast_ref::<std::io::Error>() else {
        return HandshakeFailure::new("protocol", cause);
    };
    if client_left(io) {
        return HandshakeFailure::new("closed", io);
    }
    let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return HandshakeFailure::new("protocol", io);
    };
    match tls {
        // The verifier counted it, with its reason.
        rustls::Error::InvalidCertificate(_) => HandshakeFailure {
            counted: true,
            ..HandshakeFailure::new(failure_reason(tls), tls)
        },
        rustls::Error::NoCertificatesPresented => HandshakeFailure::new("no-certificate", tls),
        rustls::Error::PeerIncompatible(_) => HandshakeFailure::new("incompatible", tls),
        rustls::Error::AlertReceived(rustls::AlertDescription::CloseNotify) => {
            HandshakeFailure::new("closed", tls)
        }
        _ => HandshakeFailure::new("protocol", tls),
    }
}

fn failure_reason(error: &rustls::Error) -> &'static str {
    use rustls::CertificateError;
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not-yet-valid"
            }
            CertificateError::UnknownIssuer => "unknown-ca",
            CertificateError::Revoked => "revoked",
            _ => "bad-certificate",
        },
        _ => "bad-certificate",
    }
}

/// Counts completed handshakes and attaches the caller's identity to the connection.
struct HandshakeObserver {
    state: Arc<ListenerTlsState>,
}

#[async_trait]
impl TlsAccept for HandshakeObserver {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        self.state.handshake_completed();
        let leaf = tls.peer_certificate_der();
        Some(Arc::new(PeerTls {
            identity: leaf.and_then(uri_san),
            cert_hash: leaf.map(|leaf| hex::encode(Sha256::digest(leaf))),
            server_name: tls.server_name().map(str::to_ascii_lowercase),
        }))
    }
}
