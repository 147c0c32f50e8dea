//! Checks of the PEM files a policy names: that they can be read and hold what their key says.
//! The gateway loads them again when it builds its TLS state, since their contents may change
//! on disk at any time; these checks let a bad file be refused with its key path and line.
//! Every file is read through [`crate::files::read_named_file`], so a device, a FIFO or a huge
//! file is refused instead of read.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads a PEM certificate chain: at least one certificate, each valid X.509.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let contents = crate::files::read_named_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&contents)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(path, e))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    for (i, cert) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(cert).map_err(|e| {
            format!(
                "certificate {} in {} is not valid X.509: {e}",
                i + 1,
                path.display()
            )
        })?;
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let contents = crate::files::read_named_file(path)?;
    PrivateKeyDer::from_pem_slice(&contents).map_err(|e| {
        // An encrypted key is no "key of the expected kind" to the PEM reader: say what it is.
        let text = String::from_utf8_lossy(&contents);
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || text.contains("Proc-Type: 4,ENCRYPTED")
        {
            format!(
                "{} is an encrypted private key, and the gateway has no passphrase to open it: write it decrypted (openssl pkey -in {} -out KEY.pem) and keep that file readable by the gateway only",
                path.display(),
                path.display()
            )
        } else {
            describe(path, e)
        }
    })
}

fn describe(path: &Path, error: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::Io(e) => format!("cannot read {}: {e}", path.display()),
        Error::NoItemsFound => format!("{} holds no PEM item of the expected kind", path.display()),
        other => format!("{} is not valid PEM: {other:?}", path.display()),
    }
}

/// Loads a certificate chain and its private key as one, checking that the key is one rustls
/// can sign with and that it belongs to the chain's leaf.
pub fn read_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>, String> {
    let chain = read_certificates(cert)?;
    let private_key = read_private_key(key)?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, private_key, &provider)
        .map(std::sync::Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the key in {} does not belong to the certificate in {}",
                key.display(),
                cert.display()
            ),
            other => format!(
                "cannot use {} with {}: {other}",
                key.display(),
                cert.display()
            ),
        })
}
