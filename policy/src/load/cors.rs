//! A route's `cors`.

use super::*;
use crate::cors::{Cors, CorsSection};

/// Whether `origin` is written as `scheme://host[:port]`, as browsers send it.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    (scheme == "http" || scheme == "https")
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// Joins header names after checking each one.
fn header_list(
    names: &[String],
    star_allowed: bool,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<String> {
    for (i, name) in names.iter().enumerate() {
        if !(is_header_name(name) || (star_allowed && name == "*")) {
            sink.at(&at.index(i), format!("{name:?} is not a valid header name"));
        }
    }
    (!names.is_empty()).then(|| names.join(", "))
}

pub(super) fn compile_cors(
    spec: &CorsSection,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<Cors> {
    let errors_before = sink.errors.len();
    let any_origin = spec.allow_origins.iter().any(|o| o == "*");
    if spec.allow_origins.is_empty() {
        sink.at(
            &at.key("allow_origins"),
            "allow_origins must not be empty: list the origins, or [\"*\"] for any",
        );
    }
    if any_origin && spec.allow_origins.len() > 1 {
        sink.at(
            &at.key("allow_origins"),
            "\"*\" allows every origin; it can't be listed with others",
        );
    }
    for (i, origin) in spec.allow_origins.iter().enumerate() {
        if origin != "*" && !is_origin(origin) {
            sink.at(
                &at.key("allow_origins").index(i),
                format!("{origin:?} is not an origin: write scheme://host[:port], such as \"https://app.example\", without a path"),
            );
        }
    }
    let allow_credentials = spec.allow_credentials.unwrap_or(false);
    if allow_credentials && any_origin {
        sink.at(
            &at.key("allow_credentials"),
            "browsers refuse credentials with any origin (\"*\"): list the origins allowed",
        );
    }
    let methods = spec
        .allow_methods
        .clone()
        .unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()]);
    if methods.is_empty() {
        sink.at(&at.key("allow_methods"), "allow_methods must not be empty");
    }
    for (i, method) in methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            sink.at(
                &at.key("allow_methods").index(i),
                format!("{method:?} is not a method; write it in upper case, such as \"PUT\""),
            );
        }
    }
    let allow_headers = spec
        .allow_headers
        .as_ref()
        .and_then(|names| header_list(names, true, &at.key("allow_headers"), sink));
    let expose_headers = spec
        .expose_headers
        .as_ref()
        .and_then(|names| header_list(names, true, &at.key("expose_headers"), sink));
    (sink.errors.len() == errors_before).then(|| Cors {
        origins: if any_origin {
            Vec::new()
        } else {
            spec.allow_origins.clone()
        },
        allow_methods: methods.join(", "),
        methods,
        allow_headers,
        expose_headers,
        max_age: spec.max_age.map(|d| d.get().as_secs()),
        allow_credentials,
    })
}
