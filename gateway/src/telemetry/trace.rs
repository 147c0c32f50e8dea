//! Distributed tracing: W3C trace context in, a server span per request, its context out to
//! the upstream, and spans exported over OTLP/HTTP in batches.
//!
//! The exporter runs on its own thread behind a bounded queue (the SDK's batch processor), so
//! a slow or dead collector costs the request path nothing: spans that don't fit are dropped.
//! Sampling follows the caller's decision when it sent a `traceparent`, and
//! `trace_sample_ratio` otherwise. Unsampled requests still get a span id of their own, so
//! the upstream always sees the gateway as its parent.

use std::time::{Duration, SystemTime};

use meshgate_policy::compiled::TraceSettings;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use pingora::http::RequestHeader;

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans waiting for export; past this, new spans are dropped rather than held.
const QUEUE_SPANS: usize = 8192;
/// How often queued spans are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// A running tracer for one [`TraceSettings`].
pub struct Tracing {
    settings: TraceSettings,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracing {
    /// Starts an exporter and batch processor for `settings`.
    pub fn start(settings: &TraceSettings) -> Result<Self, String> {
        let owned = settings.clone();
        // The blocking HTTP client must be built and dropped outside the async runtime.
        let provider = std::thread::Builder::new()
            .name("otlp-setup".into())
            .spawn(move || build_provider(&owned))
            .map_err(|e| format!("cannot start the trace exporter: {e}"))?
            .join()
            .map_err(|_| "the trace exporter setup panicked".to_owned())??;
        let tracer = provider.tracer("meshgate");
        Ok(Tracing {
            settings: settings.clone(),
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The settings this tracer runs with.
    pub fn settings(&self) -> &TraceSettings {
        &self.settings
    }

    /// Starts the server span of a request, continuing the caller's trace when its
    /// `traceparent` is valid.
    pub fn start_span(&self, request: &RequestHeader) -> RequestSpan {
        let parent = self.propagator.extract(&RequestHeaders(&request.headers));
        // Named when it ends, and only if it is sampled: most spans are not, and this name
        // costs no allocation.
        let span = self
            .tracer
            .span_builder("HTTP")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        RequestSpan { span }
    }

    /// Exports what is queued and stops the exporter thread, waiting at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::debug!("trace exporter shutdown: {e}");
        }
    }
}

fn build_provider(settings: &TraceSettings) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.traces_url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE_SPANS)
                .with_scheduled_delay(EXPORT_EVERY)
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build())
}

/// What a finished request tells its span.
pub struct SpanEnd<'a> {
    /// The matched route's name, if any.
    pub route: Option<&'a str>,
    /// The upstream's name, if any.
    pub upstream: Option<&'a str>,
    /// The last endpoint tried.
    pub endpoint: Option<std::net::SocketAddr>,
    /// The request's host.
    pub host: Option<&'a str>,
    /// The status sent to the client.
    pub status: u16,
    /// The reason token of a gateway-made answer.
    pub reason: Option<&'a str>,
    /// Retries taken.
    pub retries: u32,
    /// The client's address.
    pub client: Option<std::net::IpAddr>,
    /// The caller's certificate identity.
    pub identity: Option<&'a str>,
    /// The request's `x-request-id`.
    pub request_id: Option<&'a str>,
}

/// The gateway's span of one request.
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
}

impl RequestSpan {
    /// The trace id, as 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex::encode(self.span.span_context().trace_id().to_bytes())
    }

    /// Writes `traceparent` (and `tracestate`) naming this span as the upstream's parent.
    ///
    /// Formatted by hand into a fixed buffer: through the SDK's propagator (a `format!`, then
    /// a header name parsed from a `String`) this took 8,700 instructions per request.
    pub fn inject(&self, upstream_request: &mut RequestHeader) {
        let context = self.span.span_context();
        // "00-" trace id "-" span id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 bytes.
        let mut value = [b'-'; 55];
        value[..2].copy_from_slice(b"00");
        let encoded = hex::encode_to_slice(context.trace_id().to_bytes(), &mut value[3..35])
            .and_then(|()| hex::encode_to_slice(context.span_id().to_bytes(), &mut value[36..52]))
            .and_then(|()| {
                hex::encode_to_slice([context.trace_flags().to_u8() & 1], &mut value[53..55])
            });
        let header = encoded
            .ok()
            .and_then(|()| http::HeaderValue::from_bytes(&value).ok());
        let Some(header) = header else {
            return;
        };
        if let Err(e) = upstream_request.insert_header(TRACEPARENT, header) {
            tracing::debug!("traceparent not set: {e}");
        }
        let state = context.trace_state().header();
        if !state.is_empty() {
            if let Err(e) = upstream_request.insert_header(TRACESTATE, state) {
                tracing::debug!("tracestate not set: {e}");
            }
        }
    }

    /// Ends the span with what the request did; it is queued for export if sampled.
    pub fn finish(mut self, request: &RequestHeader, end: &SpanEnd<'_>) {
        if !self.span.is_recording() {
            return;
        }
        let method = request.method.as_str();
        self.span.update_name(match end.route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        });
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("url.path", request.uri.path().to_owned()),
            KeyValue::new("http.response.status_code", i64::from(end.status)),
            KeyValue::new("meshgate.retries", i64::from(end.retries)),
        ];
        let mut text = |key: &'static str, value: Option<String>| {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value));
            }
        };
        text("server.address", end.host.map(str::to_owned));
        text("http.route", end.route.map(str::to_owned));
        text("meshgate.upstream", end.upstream.map(str::to_owned));
        text("network.peer.address", end.endpoint.map(|a| a.to_string()));
        text("meshgate.reason", end.reason.map(str::to_owned));
        text("client.address", end.client.map(|ip| ip.to_string()));
        text("meshgate.identity", end.identity.map(str::to_owned));
        text("meshgate.request_id", end.request_id.map(str::to_owned));
        self.span.set_attributes(attributes);
        if end.status >= 500 {
            self.span.set_status(Status::error(
                end.reason
                    .map_or_else(|| format!("status {}", end.status), str::to_owned),
            ));
        }
        self.span.end_with_timestamp(SystemTime::now());
    }
}

/// The trace id (32 hex digits) of the caller's `traceparent`, when it is valid; for the
/// access log when no span is made.
pub fn caller_trace_id(request: &RequestHeader) -> Option<String> {
    if !request.headers.contains_key(TRACEPARENT) {
        return None;
    }
    let context = TraceContextPropagator::new().extract(&RequestHeaders(&request.headers));
    let caller = context.span().span_context().clone();
    caller
        .is_valid()
        .then(|| hex::encode(caller.trace_id().to_bytes()))
}

struct RequestHeaders<'a>(&'a http::HeaderMap);

impl Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
