//! Warnings about what a policy's certificates and identity lists will do once it runs: a
//! certificate that has expired or expires within [`EXPIRY_WARNING`], a `client_ca` that is no
//! CA, an `allow` entry no caller's identity can be, a TCP route an earlier one shadows.

use std::time::{Duration, SystemTime};

use super::*;

/// How soon an expiry is worth a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Every warning of this module about `policy`.
pub(super) fn collect(policy: &CompiledPolicy, sink: &mut ErrorSink<'_>) {
    let root = KeyPath::root();
    for (i, listener) in policy.listeners.iter().enumerate() {
        let Some(tls) = &listener.tls else { continue };
        let at = root.key("listeners").index(i).key("tls");
        certificate_expiry(&tls.default_cert.cert, &at.key("cert"), sink);
        for (j, (_, files)) in tls.sni.iter().enumerate() {
            certificate_expiry(&files.cert, &at.key("sni").index(j).key("cert"), sink);
        }
        if let Some(ca) = &tls.client_ca {
            certificate_authority(ca, &at.key("client_ca"), sink);
            certificate_expiry(ca, &at.key("client_ca"), sink);
        }
    }
    for (i, upstream) in policy.upstreams.iter().enumerate() {
        let Some(tls) = &upstream.tls else { continue };
        let at = root.key("upstreams").index(i).key("tls");
        if let Some(files) = &tls.client_cert {
            certificate_expiry(&files.cert, &at.key("cert"), sink);
        }
    }
    for (i, route) in policy.routes.iter().enumerate() {
        let at = root.key("routes").index(i).key("allow");
        unmatchable_allow(route.allow.as_deref(), &at, sink);
    }
    for (i, route) in policy.tcp_routes.iter().enumerate() {
        let at = root.key("tcp_routes").index(i).key("allow");
        unmatchable_allow(route.allow.as_deref(), &at, sink);
        let shadowing = policy.tcp_routes[..i]
            .iter()
            .position(|earlier| tcp_covers(earlier, route));
        if let Some(j) = shadowing {
            sink.at(
                &root.key("tcp_routes").index(i).key("name"),
                format!(
                    "TCP route {:?} is never reached: TCP route {:?} (tcp_routes[{j}]) comes first on the same listeners and takes every server name it takes",
                    route.name, policy.tcp_routes[j].name
                ),
            );
        }
    }
}

/// `allow` entries no certificate identity can be: an identity is the URI in a client
/// certificate (`spiffe://…`), so an entry without a URI scheme, such as a bare service name,
/// never matches.
fn unmatchable_allow(allow: Option<&[IdentityPattern]>, at: &KeyPath, sink: &mut ErrorSink<'_>) {
    for (k, pattern) in allow.into_iter().flatten().enumerate() {
        let text = match pattern {
            IdentityPattern::Exact(text) | IdentityPattern::Prefix(text) => text,
            IdentityPattern::JwtSubject(_) | IdentityPattern::JwtClaim { .. } => continue,
        };
        if !has_uri_scheme(text) {
            sink.at(
                &at.index(k),
                format!(
                    "{text:?} can never match: a caller's identity is the URI in its client certificate, such as \"spiffe://prod.example/ns/shop/sa/{text}\" (or \"jwt:sub:…\" for a token's subject)"
                ),
            );
        }
    }
}

/// Whether `text` starts like a URI: a scheme (a letter, then letters, digits, `+`, `-`, `.`)
/// and a colon.
fn has_uri_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// Whether every connection `later` takes, `earlier` takes first: on each of its listeners,
/// for each server name (or with no name condition at all).
fn tcp_covers(earlier: &crate::tcp::TcpRoute, later: &crate::tcp::TcpRoute) -> bool {
    let listeners = match (&earlier.listeners, &later.listeners) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(mine), Some(theirs)) => theirs.iter().all(|l| mine.contains(l)),
    };
    let names = earlier.sni.is_empty()
        || (!later.sni.is_empty()
            && later.sni.iter().all(|name| {
                earlier.sni.iter().any(|mine| match (mine, name) {
                    (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
                    (HostMatch::Suffix(a), HostMatch::Exact(b)) => {
                        b.len() > a.len() && b.ends_with(a.as_str())
                    }
                    (HostMatch::Suffix(a), HostMatch::Suffix(b)) => b.ends_with(a.as_str()),
                    (HostMatch::Exact(_), HostMatch::Suffix(_)) => false,
                })
            }));
    listeners && names
}

/// A warning when the first certificate of `file` has expired or expires within
/// [`EXPIRY_WARNING`], with the date.
fn certificate_expiry(file: &std::path::Path, at: &KeyPath, sink: &mut ErrorSink<'_>) {
    let Ok(certs) = crate::pem::read_certificates(file) else {
        return;
    };
    let now = SystemTime::now();
    for cert in &certs {
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
            continue;
        };
        let Ok(seconds) = u64::try_from(parsed.validity().not_after.timestamp()) else {
            continue;
        };
        let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        let date = humantime::format_rfc3339_seconds(expiry);
        let subject = parsed.subject().to_string();
        match expiry.duration_since(now) {
            Err(_) => sink.at(
                at,
                format!(
                    "the certificate {subject:?} in {} expired on {date}",
                    file.display()
                ),
            ),
            Ok(left) if left < EXPIRY_WARNING => sink.at(
                at,
                format!(
                    "the certificate {subject:?} in {} expires on {date}, in {} day(s)",
                    file.display(),
                    left.as_secs() / 86_400
                ),
            ),
            Ok(_) => {}
        }
    }
}

/// A warning when no certificate of a `client_ca` file is a CA (basic constraints `CA:TRUE`):
/// no client certificate can then be verified against it.
fn certificate_authority(file: &std::path::Path, at: &KeyPath, sink: &mut ErrorSink<'_>) {
    let Ok(certs) = crate::pem::read_certificates(file) else {
        return;
    };
    let any_ca = certs.iter().any(|cert| {
        x509_parser::parse_x509_certificate(cert).is_ok_and(|(_, parsed)| parsed.is_ca())
    });
    if !any_ca {
        sink.at(
            at,
            format!(
                "{} holds no CA certificate (basic constraints CA:TRUE): client certificates are verified against a CA, so every client will be refused; name the CA that signs them",
                file.display()
            ),
        );
    }
}
