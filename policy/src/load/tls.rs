//! TLS material named by listeners and upstreams: PEM files, SNI names, client verification.

use super::*;

impl Compiler<'_, '_> {
    /// Resolves a PEM file's path and checks it holds certificates (`certs`) or a key.
    pub(super) fn pem_file(
        &self,
        file: &Path,
        certs: bool,
        path: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> std::path::PathBuf {
        let resolved = self.resolve_path(file);
        if !self.file_allowed(&resolved, path, sink) {
            return resolved;
        }
        let checked = if certs {
            crate::pem::read_certificates(&resolved).map(|_| ())
        } else {
            crate::pem::read_private_key(&resolved).map(|_| ())
        };
        if let Err(message) = checked {
            sink.at(path, message);
        }
        resolved
    }

    pub(super) fn cert_files(
        &self,
        cert: &Path,
        key: &Path,
        path: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> CertFiles {
        let errors_before = sink.errors.len();
        let files = CertFiles {
            cert: self.pem_file(cert, true, &path.key("cert"), sink),
            key: self.pem_file(key, false, &path.key("key"), sink),
        };
        if sink.errors.len() == errors_before {
            if let Err(message) = crate::pem::read_certified_key(&files.cert, &files.key) {
                sink.at(&path.key("key"), message);
            }
        }
        files
    }

    pub(super) fn compile_listener_tls(
        &self,
        spec: &ListenerTlsSection,
        path: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> ListenerTls {
        let default_cert = self.cert_files(&spec.cert, &spec.key, path, sink);
        let mut seen: HashMap<String, usize> = HashMap::new();
        let sni = spec
            .sni
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let entry_path = path.key("sni").index(i);
                if entry.server_names.is_empty() {
                    sink.at(&entry_path.key("server_names"), "server_names must not be empty");
                }
                let names = entry
                    .server_names
                    .iter()
                    .enumerate()
                    .map(|(j, name)| {
                        let name = name.to_ascii_lowercase();
                        if !is_server_name_pattern(&name) {
                            sink.at(
                                &entry_path.key("server_names").index(j),
                                format!("invalid server name {name:?}: expected a DNS name such as \"api.example.com\" or \"*.example.com\""),
                            );
                        } else if let Some(first) = seen.insert(name.clone(), i) {
                            sink.at(
                                &entry_path.key("server_names").index(j),
                                format!("server name {name:?} is already in sni[{first}]"),
                            );
                        }
                        name
                    })
                    .collect();
                (names, self.cert_files(&entry.cert, &entry.key, &entry_path, sink))
            })
            .collect();
        let client_ca = spec
            .client_ca
            .as_ref()
            .map(|ca| self.pem_file(ca, true, &path.key("client_ca"), sink));
        match (spec.client_auth, &client_ca) {
            (ClientAuth::None, Some(_)) => sink.at(
                &path.key("client_auth"),
                "client_ca is set but client_auth is \"none\", so no client would be asked for a certificate: set client_auth = \"optional\" or \"require\"",
            ),
            (ClientAuth::Optional | ClientAuth::Require, None) => sink.at(
                &path.key("client_ca"),
                "client_auth asks for client certificates, so client_ca must name the CA bundle they are verified against",
            ),
            _ => {}
        }
        ListenerTls {
            default_cert,
            sni,
            client_ca,
            client_auth: spec.client_auth,
        }
    }

    pub(super) fn compile_upstream_tls(
        &self,
        spec: &UpstreamTlsSection,
        path: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> UpstreamTls {
        if let Some(sni) = &spec.sni {
            if !is_server_name_pattern(&sni.to_ascii_lowercase()) || sni.starts_with('*') {
                sink.at(
                    &path.key("sni"),
                    format!("invalid server name {sni:?}: expected a DNS name such as \"orders.internal\""),
                );
            }
        }
        let ca = spec
            .ca
            .as_ref()
            .map(|ca| self.pem_file(ca, true, &path.key("ca"), sink));
        let client_cert = match (&spec.cert, &spec.key) {
            (Some(cert), Some(key)) => Some(self.cert_files(cert, key, path, sink)),
            (None, None) => None,
            (Some(_), None) => {
                sink.at(
                    &path.key("key"),
                    "cert needs key: the private key of the client certificate",
                );
                None
            }
            (None, Some(_)) => {
                sink.at(
                    &path.key("cert"),
                    "key needs cert: the client certificate chain",
                );
                None
            }
        };
        UpstreamTls {
            sni: spec.sni.as_ref().map(|s| s.to_ascii_lowercase()),
            ca,
            client_cert,
        }
    }
}

/// A DNS name, or `*.` followed by one.
pub(super) fn is_server_name_pattern(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
