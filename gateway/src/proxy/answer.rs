//! The gateway's own answers: an empty response with its reason token, and the reasons
//! Pingora's errors stand for.

use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{ErrorSource, ErrorType};

use crate::upstream::Overflow;

use super::context::RequestCtx;
use super::{Reason, OVERFLOW_HEADER, REASON_HEADER};

/// Writes a gateway-made, empty response with its reason token.
pub(super) async fn respond_with_reason(
    session: &mut Session,
    status: u16,
    reason: Reason,
    extra_headers: &[(http::HeaderName, http::HeaderValue)],
    closing: bool,
) -> Result<()> {
    respond(session, status, Some(reason), extra_headers, None, closing).await
}

/// Writes a gateway-made response: with `reason` in `x-meshgate-reason` when given, and
/// `body` (with its content type) when given; a `HEAD` request gets the head only.
pub(super) async fn respond(
    session: &mut Session,
    status: u16,
    reason: Option<Reason>,
    extra_headers: &[(http::HeaderName, http::HeaderValue)],
    body: Option<(bytes::Bytes, http::HeaderValue)>,
    closing: bool,
) -> Result<()> {
    let mut response = ResponseHeader::build(status, Some(4))?;
    if let Some(reason) = reason {
        response.insert_header(REASON_HEADER, reason.token())?;
    }
    // Tell an HTTP/1.1 client when the connection ends with this answer, so that it does not
    // send its next request on a connection about to close.
    if closing && !session.as_downstream().is_http2() {
        response.insert_header(http::header::CONNECTION, "close")?;
    }
    for (name, value) in extra_headers {
        response.insert_header(name.clone(), value.clone())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let body = match body {
        Some((bytes, content_type)) => {
            response.insert_header(http::header::CONTENT_TYPE, content_type)?;
            response.insert_header(http::header::CONTENT_LENGTH, bytes.len())?;
            Some(bytes).filter(|b| !head_only && !b.is_empty())
        }
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
