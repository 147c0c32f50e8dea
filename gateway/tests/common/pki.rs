//! A test PKI made with rcgen: a CA, a foreign CA, and leaves (servers and SPIFFE clients),
//! written as PEM files into a folder.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};

/// A certificate authority.
pub struct Authority {
    pub cert: Certificate,
    pub key: KeyPair,
    /// Its PEM file.
    pub file: PathBuf,
}

/// A leaf certificate's files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Authority {
    /// A self-signed CA named `name`, written to `dir/<name>.crt`.
    pub fn new(dir: &Path, name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let file = dir.join(format!("{name}.crt"));
        std::fs::write(&file, cert.pem()).unwrap();
        Authority { cert, key, file }
    }

    /// A server certificate for `names` (and 127.0.0.1), common name `cn`.
    pub fn server(&self, dir: &Path, file_stem: &str, cn: &str, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(dir, file_stem, params)
    }

    /// A client certificate whose URI SAN is `spiffe_id`; expired when `expired`.
    pub fn client(&self, dir: &Path, file_stem: &str, spiffe_id: &str, expired: bool) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.to_string().try_into().unwrap()));
        params
            .distinguished_name
            .push(DnType::CommonName, file_stem);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.issue(dir, file_stem, params)
    }

    /// A server certificate for `name` valid until `not_after` (seconds from now; negative:
    /// already expired).
    pub fn server_until(&self, dir: &Path, file_stem: &str, name: &str, not_after: i64) -> Leaf {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let now = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
        params.not_before = now - std::time::Duration::from_secs(400 * 86_400);
        params.not_after = if not_after >= 0 {
            now + std::time::Duration::from_secs(not_after as u64)
        } else {
            now - std::time::Duration::from_secs(not_after.unsigned_abs())
        };
        self.issue(dir, file_stem, params)
    }

    fn issue(&self, dir: &Path, file_stem: &str, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let leaf = Leaf {
            cert: dir.join(format!("{file_stem}.crt")),
            key: dir.join(format!("{file_stem}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}
