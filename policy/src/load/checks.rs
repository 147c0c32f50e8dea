//! Small value checks shared by every section.

use super::*;

pub(super) fn positive(
    value: Option<u32>,
    default: u32,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> u32 {
    let value = value.unwrap_or(default);
    if value == 0 {
        sink.at(path, "must be at least 1");
    }
    value
}

pub(super) fn nonzero_duration(
    value: Option<crate::duration::Duration>,
    default: Duration,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Duration {
    let value = value.map_or(default, |d| d.get());
    if value.is_zero() {
        sink.at(path, "must be more than zero");
    }
    value
}

pub(super) fn percent(value: Option<f64>, path: &KeyPath, sink: &mut ErrorSink<'_>) -> f64 {
    let value = value.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&value) {
        sink.at(path, "a percentage must be between 0 and 100");
    }
    value
}

pub(super) fn check_name(name: &str, path: &KeyPath, sink: &mut ErrorSink<'_>) {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid {
        sink.at(
            path,
            format!("invalid name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
}

pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("invalid address {text:?}: expected IP:port, such as \"127.0.0.1:8080\" or \"[::1]:8080\"")
    })
}

/// Checks the `name` of element `index` of the top-level array `array` (`routes`…): its
/// characters, and that no earlier element (recorded in `seen`) has it; `what` names the
/// elements in the message (`route`, `TCP route`…).
pub(super) fn check_unique_name(
    seen: &mut HashMap<String, usize>,
    name: &str,
    index: usize,
    (array, what): (&str, &str),
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) {
    check_name(name, path, sink);
    if let Some(first) = seen.insert(name.to_owned(), index) {
        sink.at(
            path,
            format!("duplicate {what} name {name:?} (first at {array}[{first}])"),
        );
    }
}
