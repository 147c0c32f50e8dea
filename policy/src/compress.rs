//! `compress` on a route or a listener: responses compressed with gzip, br or zstd, as the
//! client's `Accept-Encoding` prefers. The schema type (as written) and the compiled one.

use serde::Deserialize;

use crate::size::ByteSize;

/// `compress = { … }` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompressSection {
    /// Media types compressed: `text/html` or a whole family, `text/*` (default: `text/*`,
    /// `application/json`, `application/javascript`, `application/xml`, `image/svg+xml`).
    pub types: Option<Vec<String>>,
    /// Smallest response compressed, when its length is known (default 1 KiB).
    pub min_size: Option<ByteSize>,
    /// `false` turns compression off on a route of a listener that has it (default true).
    pub enabled: Option<bool>,
}

/// Compression settings, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compress {
    /// Lower-case media types; a `type/*` entry covers the family.
    pub types: Vec<String>,
    /// Smallest response body compressed, when its length is known.
    pub min_size: u64,
    /// Whether responses are compressed at all.
    pub enabled: bool,
}

/// The types compressed when `types` is not given.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
];

/// Smallest response compressed when `min_size` is not given.
pub const DEFAULT_MIN_SIZE: u64 = 1024;

impl Compress {
    /// Whether a response with this `Content-Type` value is of a type compressed.
    pub fn covers(&self, content_type: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(content_type) else {
            return false;
        };
        let media = text.split(';').next().unwrap_or("").trim();
        let Some((kind, _)) = media.split_once('/') else {
            return false;
        };
        self.types
            .iter()
            .any(|wanted| match wanted.strip_suffix("/*") {
                Some(family) => family.eq_ignore_ascii_case(kind),
                None => wanted.eq_ignore_ascii_case(media),
            })
    }

    /// One line for `/routes`.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "off".to_owned();
        }
        format!("{} from {} bytes", self.types.join(" "), self.min_size)
    }
}

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `zstd`.
    Zstd,
    /// `br`.
    Brotli,
    /// `gzip`.
    Gzip,
}

impl Coding {
    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// The coding to answer with for an `Accept-Encoding` value: the one with the highest
/// q-value (`*` stands for any not named), ties going to zstd, then br, then gzip; `None`
/// when the client accepts none of them.
pub fn choose_coding(accept_encoding: &[u8]) -> Option<Coding> {
    let text = std::str::from_utf8(accept_encoding).ok()?;
    let codings = [Coding::Zstd, Coding::Brotli, Coding::Gzip];
    let mut named: [Option<f32>; 3] = [None; 3];
    let mut any: Option<f32> = None;
    for item in text.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                let (key, value) = p.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| value.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0);
        if token == "*" {
            any = Some(q);
        } else if let Some(i) = codings
            .iter()
            .position(|c| c.token().eq_ignore_ascii_case(token))
        {
            named[i] = Some(q);
        }
    }
    let mut best: Option<(Coding, f32)> = None;
    for (i, coding) in codings.into_iter().enumerate() {
        let q = named[i].or(any).unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(_, top)| q > top) {
            best = Some((coding, q));
        }
    }
    best.map(|(coding, _)| coding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_values_decide() {
        assert_eq!(choose_coding(b"gzip"), Some(Coding::Gzip));
        assert_eq!(choose_coding(b"gzip, br, zstd"), Some(Coding::Zstd));
        assert_eq!(choose_coding(b"gzip;q=1.0, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(choose_coding(b"br;q=0, gzip;q=0.1"), Some(Coding::Gzip));
        assert_eq!(choose_coding(b"*"), Some(Coding::Zstd));
        assert_eq!(choose_coding(b"*;q=0.5, zstd;q=0"), Some(Coding::Brotli));
        assert_eq!(choose_coding(b"identity"), None);
        assert_eq!(choose_coding(b"gzip;q=0"), None);
        assert_eq!(choose_coding(b""), None);
    }

    #[test]
    fn types_cover_families_and_ignore_parameters() {
        let compress = Compress {
            types: vec!["text/*".into(), "application/json".into()],
            min_size: 0,
            enabled: true,
        };
        assert!(compress.covers(b"text/html; charset=utf-8"));
        assert!(compress.covers(b"Application/JSON"));
        assert!(!compress.covers(b"application/octet-stream"));
        assert!(!compress.covers(b"image/png"));
    }
}
