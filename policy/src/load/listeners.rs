//! `[[listeners]]`: names, addresses and their TLS settings.

use super::*;

impl Compiler<'_, '_> {
    pub(super) fn compile_listeners(
        &self,
        listeners: &[Option<ListenerSpec>],
        sink: &mut ErrorSink<'_>,
    ) -> Vec<Option<Listener>> {
        let base = KeyPath::root().key("listeners");
        let mut names = HashMap::new();
        let mut addrs = HashMap::new();
        listeners
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let spec = spec.as_ref()?;
                let path = base.index(i);
                check_unique_name(
                    &mut names,
                    &spec.name,
                    i,
                    ("listeners", "listener"),
                    &path.key("name"),
                    sink,
                );
                let addr = parse_socket_addr(&spec.listen)
                    .map_err(|message| sink.at(&path.key("listen"), message))
                    .ok()?;
                if let Some(first) = addrs.insert(addr, i) {
                    sink.at(
                        &path.key("listen"),
                        format!("address {addr} is already used by listeners[{first}]"),
                    );
                }
                let errors_before = sink.errors.len();
                if spec.protocol != ListenerProtocol::Http {
                    let protocol = spec.protocol.as_str();
                    if spec.protocol == ListenerProtocol::TlsPassthrough && spec.tls.is_some() {
                        sink.at(
                            &path.key("tls"),
                            "a tls_passthrough listener never decrypts, so it has no certificates: leave out [listeners.tls], or terminate TLS with protocol = \"tcp\"",
                        );
                    }
                    for (key, given) in [
                        ("compress", spec.compress.is_some()),
                        ("trust_request_id", spec.trust_request_id.is_some()),
                    ] {
                        if given {
                            sink.at(
                                &path.key(key),
                                format!("{key} applies to HTTP listeners; this one has protocol = {protocol:?}"),
                            );
                        }
                    }
                }
                let tls = spec
                    .tls
                    .as_ref()
                    .map(|t| self.compile_listener_tls(t, &path.key("tls"), sink));
                if sink.errors.len() != errors_before {
                    return None;
                }
                Some(Listener {
                    name: spec.name.clone(),
                    addr,
                    default_authz: spec
                        .tls
                        .as_ref()
                        .map_or(DefaultAuthz::Allow, |t| t.default_authz),
                    tls,
                    max_connections: positive(
                        spec.max_connections,
                        DEFAULT_MAX_CONNECTIONS,
                        &path.key("max_connections"),
                        sink,
                    ),
                    trust_request_id: spec.trust_request_id.unwrap_or(false),
                    compress: spec
                        .compress
                        .as_ref()
                        .and_then(|c| compile_compress(c, &path.key("compress"), sink)),
                    protocol: spec.protocol,
                })
            })
            .collect()
    }
}
