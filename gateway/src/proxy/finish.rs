//! The end of a request (`logging`): what it held is given back, then it is counted in the
//! metrics, its span ends and its access log line is written.

use pingora::proxy::Session;

use crate::snapshot::TrafficMetrics;
use crate::telemetry::access_log::{millis, non_empty, AccessRecord, Shown};
use crate::telemetry::{RequestSpan, SpanEnd};

use super::connection::HeadTimedStream;
use super::context::RequestCtx;
use super::request::request_host;
use super::{client_ip, MeshProxy, Reason};

impl MeshProxy {
    /// The `logging` phase: gives back what the request held, then records it in the
    /// metrics, its span and the access log.
    pub(super) fn finish_request(&self, session: &mut Session, ctx: &mut RequestCtx) {
        ctx.end_request();
        if let Some(stream) = session
            .as_downstream()
            .stream()
            .and_then(HeadTimedStream::of)
        {
            stream.request_done();
        }
        let Some(snapshot) = ctx.snapshot.as_ref() else {
            return;
        };
        let status = session
            .response_written()
            .map_or(ctx.error_status, |r| r.status.as_u16());
        let listener = ctx
            .listener
            .map_or("", |i| snapshot.policy.listeners[i].name.as_str());
        let route = ctx
            .route
            .map_or("", |i| snapshot.policy.routes[i].name.as_str());
        let upstream_state = ctx.upstream.map(|i| &snapshot.upstreams[i]);
        let upstream = upstream_state.map_or("", |u| u.spec.name.as_str());
        let reason = ctx.reason.map_or("", Reason::token);
        // A request its side's upstream could not take went to a failover: the handles made
        // for the side name the wrong upstream.
        let failed_over = match (ctx.route, ctx.split) {
            (Some(route), Some(split)) => {
                ctx.upstream != Some(snapshot.policy.routes[route].splits[split].upstream)
            }
            _ => false,
        };
        let failover_traffic;
        if let Some(route_index) = ctx.route {
            let route_state = &snapshot.routes[route_index];
            route_state.in_flight.dec();
            let traffic = if failed_over {
                failover_traffic = TrafficMetrics::new(&self.telemetry.metrics, route, upstream);
                &failover_traffic
            } else {
                ctx.split
                    .and_then(|split| route_state.traffic.get(split))
                    .unwrap_or(&route_state.gateway_traffic)
            };
            traffic
                .duration
                .observe(ctx.started.elapsed().as_secs_f64());
            let downstream = session.as_downstream();
            traffic
                .request_bytes
                .inc_by(downstream.body_bytes_read() as u64);
            traffic
                .response_bytes
                .inc_by(downstream.body_bytes_sent() as u64);
        }
        let resolved = match (ctx.reason, ctx.listener, ctx.route, ctx.split) {
            (None, Some(listener), Some(route), Some(split)) if !failed_over => snapshot.routes
                [route]
                .counters(listener, split, snapshot.policy.routes[route].splits.len()),
            _ => None,
        };
        match resolved {
            Some(counters) => counters.inc(status),
            // Gateway-made answers carry a reason token; they are the rare path.
            None => {
                let status_code = http::StatusCode::from_u16(status).ok();
                let code = status_code.as_ref().map_or("0", |s| s.as_str());
                self.telemetry
                    .metrics
                    .requests_total
                    .with_label_values(&[listener, route, upstream, code, reason])
                    .inc();
            }
        }

        let header = session.req_header();
        let host = request_host(header);
        let client = ctx.client_ip.or_else(|| client_ip(session));
        let request_id = ctx.request_id.as_ref().and_then(|id| id.to_str().ok());
        let span = ctx.span.take();
        let trace_id = span.as_ref().map(RequestSpan::trace_id);
        if let Some(span) = span {
            span.finish(
                header,
                &SpanEnd {
                    route: non_empty(route),
                    upstream: non_empty(upstream),
                    endpoint: ctx.last_endpoint,
                    host,
                    status,
                    reason: non_empty(reason),
                    retries: ctx.retries,
                    client,
                    identity: ctx.identity(),
                    request_id,
                },
            );
        }

        if let Some(log) = self.telemetry.access_log().as_ref() {
            let downstream = session.as_downstream();
            let record = AccessRecord {
                time: Shown(humantime::format_rfc3339_millis(
                    std::time::SystemTime::now(),
                )),
                listener: non_empty(listener),
                route: non_empty(route),
                upstream: non_empty(upstream),
                endpoint: ctx.last_endpoint.map(Shown),
                method: header.method.as_str(),
                host,
                path: header.uri.path(),
                query: header.uri.query(),
                protocol: if downstream.is_http2() {
                    "HTTP/2"
                } else {
                    "HTTP/1.1"
                },
                status,
                reason: non_empty(reason),
                request_bytes: downstream.body_bytes_read() as u64,
                response_bytes: downstream.body_bytes_sent() as u64,
                duration_ms: millis(ctx.started.elapsed()),
                upstream_ms: ctx.upstream_time.map(millis),
                retries: ctx.retries,
                client: client.map(Shown),
                identity: ctx.identity(),
                request_id,
                upstream_path: ctx.upstream_path.as_deref(),
                trace_id: trace_id.or_else(|| crate::telemetry::trace::caller_trace_id(header)),
                rate_limit: (ctx.rate_limit != "-").then_some(ctx.rate_limit),
            };
            // A record is 350 to 500 bytes: one allocation, not a series of regrowths.
            let mut line = Vec::with_capacity(512);
            match serde_json::to_writer(&mut line, &record) {
                Ok(()) => log.log(String::from_utf8(line).unwrap_or_default()),
                Err(e) => tracing::debug!("access log record not written: {e}"),
            }
        }
    }
}
