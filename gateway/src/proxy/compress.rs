//! `compress`: response bodies compressed with gzip, br or zstd by the encoders of Pingora's
//! compression module, the coding chosen from the client's `Accept-Encoding` with its
//! q-values (Pingora's own module takes the first listed coding, ignoring q-values, and has
//! its own list of types).

use meshgate_policy::compress::{choose_coding, Coding, Compress};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::compression::{Algorithm, Encode};
use pingora::proxy::Session;
use pingora::ErrorType;

/// Compression levels: fast settings that still shrink text several times, as NGINX's and
/// Envoy's defaults do.
const GZIP_LEVEL: u32 = 6;
const BROTLI_LEVEL: u32 = 4;
const ZSTD_LEVEL: u32 = 3;

/// One response's encoder.
pub struct Compressor {
    /// The coding it produces.
    pub coding: Coding,
    encoder: Box<dyn Encode + Send + Sync>,
}

impl Compressor {
    /// Replaces `body` with its compressed bytes; at the end of the stream, flushes the rest.
    pub fn encode(&mut self, body: &mut Option<bytes::Bytes>, end_of_stream: bool) -> Result<()> {
        let input = body.as_deref().unwrap_or(&[]);
        if input.is_empty() && !end_of_stream {
            return Ok(());
        }
        let output = self.encoder.encode(input, end_of_stream).map_err(|e| {
            Error::explain(ErrorType::InternalError, format!("compression failed: {e}"))
        })?;
        *body = Some(output);
        Ok(())
    }
}

/// Decides whether this response is compressed and, when it is, adjusts its head and returns
/// its encoder. Left alone: `HEAD`, statuses without a body, ranges, responses already
/// encoded or marked `no-transform`, types not listed, lengths under `min_size`, and clients
/// that accept none of the codings.
pub fn start(
    settings: &Compress,
    session: &Session,
    response: &mut ResponseHeader,
) -> Result<Option<Compressor>> {
    if !settings.enabled {
        return Ok(None);
    }
    let status = response.status.as_u16();
    let request = session.req_header();
    if request.method == http::Method::HEAD || matches!(status, 100..=199 | 204 | 206 | 304) {
        return Ok(None);
    }
    let headers = &response.headers;
    let covered = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| settings.covers(t.as_bytes()));
    if !covered
        || headers.contains_key(http::header::CONTENT_ENCODING)
        || headers.contains_key(http::header::CONTENT_RANGE)
        || headers.get(http::header::CACHE_CONTROL).is_some_and(|c| {
            c.to_str()
                .is_ok_and(|c| c.to_ascii_lowercase().contains("no-transform"))
        })
    {
        return Ok(None);
    }
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|l| l.to_str().ok()?.trim().parse::<u64>().ok());
    if length.is_some_and(|l| l < settings.min_size) {
        return Ok(None);
    }
    // The answer depends on `Accept-Encoding` from here on, whatever the client sent.
    response.append_header(http::header::VARY, "Accept-Encoding")?;
    let Some(coding) = request
        .headers
        .get(http::header::ACCEPT_ENCODING)
        .and_then(|accept| choose_coding(accept.as_bytes()))
    else {
        return Ok(None);
    };
    let (algorithm, level) = match coding {
        Coding::Zstd => (Algorithm::Zstd, ZSTD_LEVEL),
        Coding::Brotli => (Algorithm::Brotli, BROTLI_LEVEL),
        Coding::Gzip => (Algorithm::Gzip, GZIP_LEVEL),
    };
    let Some(encoder) = algorithm.compressor(level) else {
        return Ok(None);
    };
    response.insert_header(http::header::CONTENT_ENCODING, coding.token())?;
    response.remove_header(&http::header::CONTENT_LENGTH);
    response.remove_header(&http::header::ACCEPT_RANGES);
    if !session.as_downstream().is_http2() {
        response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    // Another representation of the same resource: a strong validator becomes weak, as
    // NGINX's gzip filter does; one that is not a quoted string is dropped.
    if let Some(etag) = response.headers.get(http::header::ETAG).cloned() {
        let bytes = etag.as_bytes();
        if bytes.starts_with(b"\"") {
            let weak = http::HeaderValue::from_bytes(&[b"W/", bytes].concat())
                .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
            response.insert_header(http::header::ETAG, weak)?;
        } else if !bytes.starts_with(b"W/") {
            response.remove_header(&http::header::ETAG);
        }
    }
    Ok(Some(Compressor { coding, encoder }))
}
