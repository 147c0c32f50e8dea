//! A route's `jwt`.

use super::*;
use crate::jwt::{
    parse_algorithm, read_jwks, JwksSource, JwksUrl, Jwt, JwtSection, ASYMMETRIC_ALGORITHMS,
    DEFAULT_LEEWAY, DEFAULT_MAX_REFRESH, DEFAULT_MIN_REFRESH, SHORTEST_REFRESH,
};

/// Headers a claim may not be forwarded in: the framing and routing of the request, and the
/// token itself.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "authorization",
];

impl Compiler<'_, '_> {
    /// The route's JWT rules; `None` (with errors in `sink`) when they are wrong.
    pub(super) fn compile_jwt(
        &self,
        spec: &JwtSection,
        at: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> Option<Jwt> {
        let errors_before = sink.errors.len();
        if spec.issuer.as_deref().is_some_and(str::is_empty) {
            sink.at(
                &at.key("issuer"),
                "issuer must not be empty; leave it out to accept any",
            );
        }
        let audiences = spec.audiences.clone().unwrap_or_default();
        if spec.audiences.as_ref().is_some_and(Vec::is_empty) {
            sink.at(
                &at.key("audiences"),
                "audiences must not be empty; leave it out not to check `aud`",
            );
        }
        let algorithms = match &spec.algorithms {
            None => ASYMMETRIC_ALGORITHMS.to_vec(),
            Some(names) => {
                if names.is_empty() {
                    sink.at(&at.key("algorithms"), "algorithms must not be empty");
                }
                names
                    .iter()
                    .enumerate()
                    .filter_map(|(i, name)| {
                        parse_algorithm(name)
                            .map_err(|message| sink.at(&at.key("algorithms").index(i), message))
                            .ok()
                    })
                    .collect()
            }
        };
        let forward_claims = compile_forward_claims(spec, at, sink);
        let leeway = spec.leeway.map_or(DEFAULT_LEEWAY, |d| d.get());
        if leeway > std::time::Duration::from_secs(300) {
            sink.at(
                &at.key("leeway"),
                "leeway must be at most 5m: it lets expired tokens through",
            );
        }
        let keys = self.compile_jwks_source(spec, &algorithms, at, sink);
        if sink.errors.len() != errors_before {
            return None;
        }
        Some(Jwt {
            issuer: spec.issuer.clone(),
            audiences,
            keys: keys?,
            required: spec.required.unwrap_or(true),
            forward_claims,
            forward_token: spec.forward_token.unwrap_or(true),
            leeway,
            algorithms,
        })
    }

    fn compile_jwks_source(
        &self,
        spec: &JwtSection,
        algorithms: &[jsonwebtoken::Algorithm],
        at: &KeyPath,
        sink: &mut ErrorSink<'_>,
    ) -> Option<JwksSource> {
        let refresh_keys_given = spec.min_refresh.is_some() || spec.max_refresh.is_some();
        match (&spec.jwks_file, &spec.jwks_url) {
            (Some(_), Some(_)) => {
                sink.at(&at.key("jwks_url"), "give jwks_file or jwks_url, not both");
                None
            }
            (None, None) => {
                sink.at(
                    at,
                    "a jwt needs its keys: jwks_file = \"…\" or jwks_url = \"https://…\"",
                );
                None
            }
            (Some(file), None) => {
                for (key, given) in [
                    ("jwks_ca", spec.jwks_ca.is_some()),
                    ("min_refresh", spec.min_refresh.is_some()),
                    ("max_refresh", spec.max_refresh.is_some()),
                ] {
                    if given {
                        sink.at(&at.key(key), format!("{key} applies to jwks_url only"));
                    }
                }
                let path = self.resolve_path(file);
                if !self.file_allowed(&path, &at.key("jwks_file"), sink) {
                    return None;
                }
                let document = crate::files::read_named_file(&path)
                    .map_err(|message| sink.at(&at.key("jwks_file"), message))
                    .ok()?;
                match read_jwks(&document, algorithms) {
                    Ok(read) if read.left_out.is_empty() => Some(JwksSource::File {
                        path,
                        keys: read.keys,
                    }),
                    Ok(read) => {
                        for why in read.left_out {
                            sink.at(&at.key("jwks_file"), format!("{}: {why}", path.display()));
                        }
                        None
                    }
                    Err(why) => {
                        sink.at(&at.key("jwks_file"), format!("{}: {why}", path.display()));
                        None
                    }
                }
            }
            (None, Some(url)) => {
                let min_refresh = spec.min_refresh.map_or(DEFAULT_MIN_REFRESH, |d| d.get());
                let max_refresh = spec.max_refresh.map_or(DEFAULT_MAX_REFRESH, |d| d.get());
                if min_refresh < SHORTEST_REFRESH {
                    sink.at(&at.key("min_refresh"), "min_refresh must be at least 1s");
                }
                if refresh_keys_given && max_refresh < min_refresh {
                    sink.at(
                        &at.key("max_refresh"),
                        format!(
                            "max_refresh ({}) must not be below min_refresh ({})",
                            humantime::format_duration(max_refresh),
                            humantime::format_duration(min_refresh)
                        ),
                    );
                }
                let ca = spec.jwks_ca.as_ref().map(|file| {
                    let path = self.resolve_path(file);
                    if self.file_allowed(&path, &at.key("jwks_ca"), sink) {
                        if let Err(message) = crate::pem::read_certificates(&path) {
                            sink.at(&at.key("jwks_ca"), message);
                        }
                    }
                    path
                });
                let parsed = parse_jwks_url(url)
                    .map_err(|message| sink.at(&at.key("jwks_url"), message))
                    .ok()?;
                if ca.is_some() && !parsed.0 {
                    sink.at(&at.key("jwks_ca"), "jwks_ca needs an https jwks_url");
                }
                let (https, host, port, path_and_query) = parsed;
                Some(JwksSource::Url(JwksUrl {
                    url: url.clone(),
                    https,
                    host,
                    port,
                    path_and_query,
                    ca,
                    min_refresh,
                    max_refresh: max_refresh.max(min_refresh),
                }))
            }
        }
    }
}

/// `(https, host, port, path and query)` of a JWKS URL.
fn parse_jwks_url(text: &str) -> Result<(bool, String, u16, String), String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(format!(
                "{text:?}: the scheme must be https or http, not {other}"
            ))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{text:?}: credentials in the URL are not supported"
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(name)) => name.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(format!("{text:?} has no host")),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("{text:?} has no port"))?;
    let mut path_and_query = url.path().to_owned();
    if let Some(query) = url.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Ok((https, host, port, path_and_query))
}

fn compile_forward_claims(
    spec: &JwtSection,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Vec<(String, String)> {
    let Some(claims) = &spec.forward_claims else {
        return Vec::new();
    };
    let mut headers_seen = HashSet::new();
    claims
        .iter()
        .filter_map(|(claim, header)| {
            let key = at.key("forward_claims").key(claim);
            let header = header.to_ascii_lowercase();
            if claim.is_empty() {
                sink.at(&key, "a claim name must not be empty");
            }
            if !is_header_name(&header) {
                sink.at(&key, format!("{header:?} is not a valid header name"));
                return None;
            }
            if RESERVED_HEADERS.contains(&header.as_str()) {
                sink.at(&key, format!("a claim can't be forwarded in {header:?}"));
                return None;
            }
            if !headers_seen.insert(header.clone()) {
                sink.at(&key, format!("header {header:?} is given to two claims"));
                return None;
            }
            Some((claim.clone(), header))
        })
        .collect()
}
