//! A route's `mirror`.

use super::*;
use crate::mirror::{Mirror, MirrorSection, DEFAULT_MAX_IN_FLIGHT};

/// The route's mirrors; `upstreams` are the compiled upstreams and `upstream_names` every
/// name the file declares.
pub(super) fn compile_mirrors(
    entries: &[MirrorSection],
    upstreams: &[Option<UpstreamSpec>],
    upstream_names: &HashSet<String>,
    at: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Vec<Mirror> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            let entry_at = at.index(i);
            let percent = entry.percent.unwrap_or(100.0);
            if !(0.0..=100.0).contains(&percent) {
                sink.at(
                    &entry_at.key("percent"),
                    "percent must be between 0 and 100",
                );
            }
            let max_in_flight = entry.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
            if max_in_flight == 0 {
                sink.at(
                    &entry_at.key("max_in_flight"),
                    "max_in_flight must be at least 1",
                );
            }
            let found = upstreams
                .iter()
                .position(|u| u.as_ref().is_some_and(|u| u.name == entry.upstream));
            if found.is_none() && !upstream_names.contains(&entry.upstream) {
                sink.at(
                    &entry_at.key("upstream"),
                    format!("unknown upstream {:?}", entry.upstream),
                );
            }
            Some(Mirror {
                upstream: found?,
                percent,
                max_in_flight,
            })
        })
        .collect()
}
