//! `compress` on a route or a listener.

use super::*;
use crate::compress::{Compress, CompressSection, DEFAULT_MIN_SIZE, DEFAULT_TYPES};

pub(super) fn compile_compress(
    spec: &CompressSection,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<Compress> {
    let errors_before = sink.errors.len();
    let types: Vec<String> = match &spec.types {
        Some(types) => types.iter().map(|t| t.to_ascii_lowercase()).collect(),
        None => DEFAULT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
    };
    if types.is_empty() {
        sink.at(
            &at.key("types"),
            "types must not be empty; use enabled = false to turn compression off",
        );
    }
    for (i, media) in types.iter().enumerate() {
        let valid = media.split_once('/').is_some_and(|(kind, sub)| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            token(kind) && (sub == "*" || token(sub))
        });
        if !valid {
            sink.at(
                &at.key("types").index(i),
                format!("{media:?} is not a media type: write such as \"application/json\" or \"text/*\""),
            );
        }
    }
    (sink.errors.len() == errors_before).then(|| Compress {
        types,
        min_size: spec.min_size.map_or(DEFAULT_MIN_SIZE, |size| size.bytes()),
        enabled: spec.enabled.unwrap_or(true),
    })
}
