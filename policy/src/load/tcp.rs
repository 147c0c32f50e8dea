//! `[[tcp_routes]]`: the routes of `tcp` and `tls_passthrough` listeners.

use super::*;
use crate::tcp::{TcpRateLimit, TcpRoute, TcpRouteSection};

/// How long a TCP connection may pass no byte before it is closed, by default.
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Compiler<'_, '_> {
    pub(super) fn compile_tcp_routes(
        &self,
        routes: &[Option<TcpRouteSection>],
        context: &RouteContext<'_>,
        sink: &mut ErrorSink<'_>,
    ) -> Vec<Option<TcpRoute>> {
        let base = KeyPath::root().key("tcp_routes");
        let mut names = HashMap::new();
        routes
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let spec = spec.as_ref()?;
                let path = base.index(i);
                check_unique_name(&mut names, &spec.name, i, ("tcp_routes", "TCP route"), &path.key("name"), sink);
                let errors_before = sink.errors.len();
                let listeners = spec.listeners.as_ref().map(|wanted| {
                    compile_route_listeners(
                        wanted,
                        ListenerProtocol::Tcp,
                        context.listeners,
                        context.listener_names,
                        &path.key("listeners"),
                        sink,
                    )
                });
                // The listeners named, as far as they compiled: what `sni` and `allow` need of
                // them is checked against these.
                let named: Vec<&Listener> = listeners
                    .iter()
                    .flatten()
                    .filter_map(|&l| context.listeners[l].as_ref())
                    .collect();
                let sni_names = spec
                    .matcher
                    .as_ref()
                    .and_then(|m| m.sni.as_ref())
                    .map(|names| {
                        let at = path.key("match").key("sni");
                        if names.is_empty() {
                            sink.at(&at, "sni must not be empty; leave it out to take any name");
                        }
                        if let Some(plain) = named.iter().find(|l| {
                            l.protocol == ListenerProtocol::Tcp && l.tls.is_none()
                        }) {
                            sink.at(
                                &at,
                                format!(
                                    "listener {:?} sees no TLS handshake, so no server name: match on sni needs protocol = \"tls_passthrough\", or \"tcp\" with [listeners.tls]",
                                    plain.name
                                ),
                            );
                        }
                        names
                            .iter()
                            .enumerate()
                            .filter_map(|(j, name)| compile_host_pattern(name, &at.index(j), sink))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                if spec.split.is_empty() {
                    sink.at(&path.key("split"), "a TCP route needs at least one split");
                }
                let splits = compile_splits(
                    &spec.split,
                    context.upstreams,
                    context.upstream_names,
                    &path.key("split"),
                    sink,
                );
                let allow = spec.allow.as_ref().map(|entries| {
                    let at = path.key("allow");
                    if let Some(blind) = named.iter().find(|l| {
                        l.tls.as_ref().is_none_or(|tls| tls.client_ca.is_none())
                    }) {
                        sink.at(
                            &at,
                            format!(
                                "listener {:?} has no client certificates (a tcp listener with [listeners.tls] client_ca), so no caller there has an identity to allow",
                                blind.name
                            ),
                        );
                    }
                    let patterns = compile_allow(entries, false, &at, sink);
                    if patterns.iter().any(IdentityPattern::is_jwt) {
                        sink.at(&at, "a TCP route has no tokens: allow certificate identities only");
                    }
                    patterns
                });
                let idle_timeout = nonzero_duration(
                    spec.idle_timeout,
                    DEFAULT_TCP_IDLE_TIMEOUT,
                    &path.key("idle_timeout"),
                    sink,
                );
                let rate_limit = spec.rate_limit.as_ref().and_then(|limit| {
                    let at = path.key("rate_limit");
                    let rate = limit.connections_per_second;
                    if !(rate.is_finite() && rate > 0.0 && rate <= 1e9) {
                        sink.at(
                            &at.key("connections_per_second"),
                            "connections_per_second must be a number above 0",
                        );
                        return None;
                    }
                    let per_client = match limit.key.as_deref() {
                        None | Some("client_ip") => true,
                        Some("route") => false,
                        Some(other) => {
                            sink.at(
                                &at.key("key"),
                                format!("unknown key {other:?}: expected \"client_ip\" or \"route\""),
                            );
                            return None;
                        }
                    };
                    let burst = match limit.burst {
                        Some(0) => {
                            sink.at(&at.key("burst"), "burst must be at least 1");
                            return None;
                        }
                        Some(burst) => burst,
                        None => (rate.ceil() as u32).max(1),
                    };
                    Some(TcpRateLimit {
                        connections_per_second: rate,
                        burst,
                        per_client,
                    })
                });
                if sink.errors.len() != errors_before {
                    return None;
                }
                let splits = splits?;
                let weights: Vec<u32> = splits.iter().map(|s| s.weight).collect();
                Some(TcpRoute {
                    name: spec.name.clone(),
                    listeners,
                    sni: sni_names,
                    split_schedule: smooth_weighted_schedule(&weights),
                    splits,
                    allow,
                    idle_timeout,
                    rate_limit,
                })
            })
            .collect()
    }
}
