//! Request ids: every request carries `x-request-id`, kept from a trusted client when it is
//! well formed, otherwise made here. It goes upstream, back to the client, into the access
//! log, the span and the gateway's own answers.

use pingora::http::RequestHeader;

/// The header that carries the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id kept from a client.
const MAX_LENGTH: usize = 128;

/// The request's id: the client's own when `trusted` and well formed, else a new one.
pub fn request_id(header: &RequestHeader, trusted: bool) -> http::HeaderValue {
    if trusted {
        if let Some(value) = header.headers.get(REQUEST_ID_HEADER) {
            if well_formed(value.as_bytes()) {
                // Shared with the request's header map, not copied.
                return value.clone();
            }
        }
    }
    generate()
}

/// 1 to 128 characters of letters, digits and `-._:+/=@`: what UUIDs, hex, base64 and the
/// ids of the usual tracing systems are made of, and nothing a log or a JSON body would
/// have to escape.
pub fn well_formed(value: &[u8]) -> bool {
    (1..=MAX_LENGTH).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:+/=@".contains(b))
}

/// A new random id in the form of a version 4 UUID, written by hand: formatting a `u128`
/// through `format!` costs several times as much on every request.
pub fn generate() -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    // Only hex digits and dashes: always a valid header value.
    http::HeaderValue::from_bytes(&text).unwrap_or(http::HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuids_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert!(well_formed(a.as_bytes()));
        let dashes: Vec<usize> = text.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, vec![8, 13, 18, 23]);
    }

    #[test]
    fn only_plain_ids_are_well_formed() {
        assert!(well_formed(b"abc-123_X.y:z"));
        assert!(!well_formed(b""));
        assert!(!well_formed(b"has space"));
        assert!(!well_formed(b"quote\""));
        assert!(!well_formed(&[b'a'; 129]));
    }

    #[test]
    fn a_client_id_is_kept_only_when_trusted_and_well_formed() {
        let mut header = RequestHeader::build("GET", b"/", None).unwrap();
        header
            .insert_header(REQUEST_ID_HEADER, "client-id-1")
            .unwrap();
        assert_eq!(request_id(&header, true), "client-id-1");
        assert_ne!(request_id(&header, false), "client-id-1");
        header.insert_header(REQUEST_ID_HEADER, "bad id").unwrap();
        assert_ne!(request_id(&header, true), "bad id");
    }
}
