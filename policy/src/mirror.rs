//! A route's `mirror`: copies of requests sent to other upstreams, fire and forget. The
//! schema type (as written) and the compiled one.

use serde::Deserialize;

/// One `mirror` entry as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MirrorSection {
    /// The upstream that gets the copies.
    pub upstream: String,
    /// Share of requests copied, 0 to 100 (default 100).
    pub percent: Option<f64>,
    /// Most copies in flight at once (default 100); more are dropped and counted.
    pub max_in_flight: Option<u32>,
}

/// One mirror, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// Upstream index.
    pub upstream: usize,
    /// Share of requests copied, 0 to 100.
    pub percent: f64,
    /// Most copies in flight at once.
    pub max_in_flight: u32,
}

/// `max_in_flight` when not given.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 100;
