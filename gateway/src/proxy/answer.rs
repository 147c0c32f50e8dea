//! The gateway's own answers: a response with its reason token and a small body naming it,
//! and the reasons Pingora's errors stand for.

use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{ErrorSource, ErrorType};

use crate::upstream::Overflow;

use super::context::RequestCtx;
use super::request_id::REQUEST_ID_HEADER;
use super::{Reason, OVERFLOW_HEADER, REASON_HEADER};

/// Writes a gateway-made answer with its reason token and a small body that names it.
pub(super) async fn respond_with_reason(
    session: &mut Session,
    status: u16,
    reason: Reason,
    extra_headers: &[(http::HeaderName, http::HeaderValue)],
    request_id: Option<&http::HeaderValue>,
    closing: bool,
) -> Result<()> {
    let answer = Answered {
        status,
        reason: Some(reason),
        detail: None,
        request_id,
        closing,
    };
    respond(session, &answer, extra_headers, None).await
}

/// Writes a gateway-made answer that has no reason token (an error inside the gateway): the
/// body names the status instead.
pub(super) async fn respond_without_reason(
    session: &mut Session,
    status: u16,
    request_id: Option<&http::HeaderValue>,
) -> Result<()> {
    let answer = Answered {
        status,
        reason: None,
        detail: None,
        request_id,
        closing: true,
    };
    let accept = session.req_header().headers.get(http::header::ACCEPT);
    let name = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "-");
    let id = request_id.and_then(|id| id.to_str().ok());
    let body = reason_body(status, &name, None, id, accept);
    respond(session, &answer, &[], Some(body)).await
}

/// What every gateway-made answer says of itself.
pub(super) struct Answered<'a> {
    /// The status.
    pub status: u16,
    /// The reason sent in `x-meshgate-reason` (none for a route's own `redirect` and
    /// `respond`).
    pub reason: Option<Reason>,
    /// What went wrong, in a few words, for the body (`token expired`).
    pub detail: Option<&'a str>,
    /// The request's id, sent in `x-request-id` and in the body.
    pub request_id: Option<&'a http::HeaderValue>,
    /// Whether the connection ends with this answer.
    pub closing: bool,
}

/// Writes a gateway-made response: with its reason in `x-meshgate-reason` when it has one,
/// and `body` (with its content type) when given, else, for an answer with a reason, a small
/// JSON (or, when the client prefers it, plain text) body naming status, reason and request
/// id. A `HEAD` request gets the head only.
pub(super) async fn respond(
    session: &mut Session,
    answer: &Answered<'_>,
    extra_headers: &[(http::HeaderName, http::HeaderValue)],
    body: Option<(bytes::Bytes, http::HeaderValue)>,
) -> Result<()> {
    let status = answer.status;
    let mut response = ResponseHeader::build(status, Some(6))?;
    if let Some(reason) = answer.reason {
        response.insert_header(REASON_HEADER, reason.token())?;
    }
    if let Some(id) = answer.request_id {
        response.insert_header(REQUEST_ID_HEADER, id.clone())?;
    }
    // Tell an HTTP/1.1 client when the connection ends with this answer, so that it does not
    // send its next request on a connection about to close.
    if answer.closing && !session.as_downstream().is_http2() {
        response.insert_header(http::header::CONNECTION, "close")?;
    }
    for (name, value) in extra_headers {
        response.append_header(name.clone(), value.clone())?;
    }
    let body = body.or_else(|| {
        let reason = answer.reason?;
        let accept = session.req_header().headers.get(http::header::ACCEPT);
        let id = answer.request_id.and_then(|id| id.to_str().ok());
        Some(reason_body(
            status,
            reason.token(),
            answer.detail,
            id,
            accept,
        ))
    });
    let head_only = session.req_header().method == http::Method::HEAD;
    let body = match body {
        Some((bytes, content_type)) => {
            response.insert_header(http::header::CONTENT_TYPE, content_type)?;
            response.insert_header(http::header::CONTENT_LENGTH, bytes.len())?;
            Some(bytes).filter(|b| !head_only && !b.is_empty())
        }
        // A 204 or 304 has no body and no `Content-Length` (RFC 9110 §8.6).
        None if status == 204 || status == 304 => None,
        None => {
            response.insert_header(http::header::CONTENT_LENGTH, "0")?;
            None
        }
    };
    session
        .write_response_header(Box::new(response), body.is_none())
        .await?;
    if let Some(bytes) = body {
        session.write_response_body(Some(bytes), true).await?;
    }
    // The proxy session drops `end_of_stream` when it writes a header, so end the body as
    // Pingora does for its own error answers. Otherwise, after an upstream failure (where
    // Pingora does not finish the session) an HTTP/2 client got RST_STREAM, not this answer.
    session.as_downstream_mut().finish_body().await
}

/// The body of a gateway-made answer: `{"status", "reason", "request_id"}` (and `detail` when
/// there is one) as JSON, or one line of plain text when the client's `Accept` ranks
/// `text/plain` above JSON.
pub(super) fn reason_body(
    status: u16,
    reason: &str,
    detail: Option<&str>,
    request_id: Option<&str>,
    accept: Option<&http::HeaderValue>,
) -> (bytes::Bytes, http::HeaderValue) {
    let id = request_id.unwrap_or("");
    if accept.is_some_and(|accept| prefers_plain_text(accept.as_bytes())) {
        let text = match detail {
            Some(detail) => format!("{status} {reason}: {detail} (request id {id})\n"),
            None => format!("{status} {reason} (request id {id})\n"),
        };
        return (
            bytes::Bytes::from(text),
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    // The reason is a fixed token and the id is letters, digits and `-._:+/=@` only: nothing
    // to escape.
    let json = match detail {
        Some(detail) => {
            let detail = serde_json::Value::from(detail);
            format!("{{\"status\":{status},\"reason\":\"{reason}\",\"detail\":{detail},\"request_id\":\"{id}\"}}\n")
        }
        None => {
            format!("{{\"status\":{status},\"reason\":\"{reason}\",\"request_id\":\"{id}\"}}\n")
        }
    };
    (
        bytes::Bytes::from(json),
        http::HeaderValue::from_static("application/json"),
    )
}

/// Whether an `Accept` value gives `text/plain` a higher weight than `application/json`
/// (each by its most specific range: the type itself, `type/*`, then `*/*`).
fn prefers_plain_text(accept: &[u8]) -> bool {
    let Ok(accept) = std::str::from_utf8(accept) else {
        return false;
    };
    // (specificity, q) of the best range for each type.
    let mut json: Option<(u8, f32)> = None;
    let mut text: Option<(u8, f32)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let range = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let rank = |exact: &str, family: &str| match range.as_str() {
            r if r == exact => Some(3),
            r if r == family => Some(2),
            "*/*" => Some(1),
            _ => None,
        };
        for (slot, exact, family) in [
            (&mut json, "application/json", "application/*"),
            (&mut text, "text/plain", "text/*"),
        ] {
            if let Some(specificity) = rank(exact, family) {
                if slot.is_none_or(|(best, _)| specificity > best) {
                    *slot = Some((specificity, q));
                }
            }
        }
    }
    let weight = |slot: Option<(u8, f32)>| slot.map_or(0.0, |(_, q)| q);
    weight(text) > weight(json)
}

pub(super) fn overflow_header(overflow: Overflow) -> Vec<(http::HeaderName, http::HeaderValue)> {
    vec![(
        http::HeaderName::from_static(OVERFLOW_HEADER),
        http::HeaderValue::from_static(overflow.limit()),
    )]
}

pub(super) fn reason_for_error(error: &Error) -> Option<Reason> {
    if error.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match error.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::SocketError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::ConnectProxyFailure => Reason::ConnectFailure,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Reason::UpstreamTimeout,
        ErrorType::InvalidHTTPHeader => Reason::UpstreamBadResponse,
        _ => Reason::UpstreamReset,
    })
}

pub(super) fn refuse_overflow(ctx: &mut RequestCtx, overflow: Overflow) -> Result<Box<HttpPeer>> {
    ctx.reason = Some(Reason::Overflow);
    ctx.overflow = Some(overflow);
    Error::e_explain(
        ErrorType::HTTPStatus(Reason::Overflow.status()),
        "the upstream's circuit breaker is full",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_unless_plain_text_is_preferred() {
        let plain = |accept: &str| prefers_plain_text(accept.as_bytes());
        assert!(!plain("*/*"));
        assert!(!plain("application/json"));
        assert!(plain("text/plain"));
        assert!(plain("text/*"));
        assert!(!plain("text/plain;q=0.5, application/json"));
        assert!(plain("text/plain, application/json;q=0.9"));
        assert!(plain("text/html, text/plain, */*;q=0.1"));
        let (body, kind) = reason_body(404, "no-route", None, Some("id-1"), None);
        assert_eq!(kind, "application/json");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"status": 404, "reason": "no-route", "request_id": "id-1"})
        );
    }
}
