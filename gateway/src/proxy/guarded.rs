//! Each client connection's life: its place under the listener's `max_connections`, the
//! head deadline, and the HTTP/1.1 keepalive loop.
//!
//! meshgate drives the connection loops itself instead of Pingora's
//! `ServerApp for HttpServerApp`, for two reasons:
//!
//! - Memory per idle connection. Pingora reads the next request head inside the per-request
//!   future (about 10 KB), so that future and its buffers stay allocated for as long as a
//!   keepalive connection waits. Here the HTTP/1.1 loop waits for the next request's first
//!   bytes with a read into the stack, holding no buffer and no per-request state, and hands
//!   those bytes to the new session as the start of its request (Pingora's pipelined-request
//!   prefix), so they are read from the socket once.
//! - Instructions per request. Pingora boxes each request's future through `async_trait`,
//!   which builds it on the stack and copies it into the box (about 10,000 instructions per
//!   request, HTTP/1.1 and each HTTP/2 stream alike). Here the box is allocated first and the
//!   future built in it ([`boxed_in_place`]).
//!
//! HTTP/2 (by ALPN, or h2c with prior knowledge) uses Pingora's handshake and accept loop,
//! with two bounds Pingora leaves out: the first stream must open within
//! `client_header_timeout` of the connection's start (the TLS handshake included), and a
//! connection with no open stream for `client_idle_timeout` is closed with a `GOAWAY`. Without
//! them a client that sent the preface and SETTINGS and then nothing kept its connection, and
//! its place under `max_connections`, forever.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::{v2, ServerSession};
use pingora::protocols::{Digest, Ssl, Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, ReadBuf};

use super::connection::{ConnectionLimit, HeadTimedStream, H2_PREFACE};
use crate::lifecycle::Lifecycle;
use meshgate_policy::compiled::ServerSettings;

/// The most bytes one wait for a request reads: Pingora's first read of a head reads as much
/// (its initial head buffer), so the heads that fit in one read are the same.
const FIRST_READ: usize = 4096;

/// How long the first request of a connection may keep it idle, as in Pingora's loop (the
/// head deadline, `client_header_timeout`, is shorter unless configured otherwise).
const FIRST_REQUEST_KEEPALIVE_SECONDS: u64 = 60;

/// Pingora's HTTP application, with a listener's connection limit, the head deadline and
/// the idle timeout in front of it. Each listener has its own, sharing one application.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// `[server].preserve_header_case`: without it, request heads are read without the
    /// second map that keeps each name's case.
    preserve_header_case: bool,
    limit: Arc<ConnectionLimit>,
    lifecycle: Arc<Lifecycle>,
}

impl<A> GuardedApp<A> {
    /// Guards `inner` with `server`'s settings: heads must arrive within
    /// `client_header_timeout`, a connection may stay idle between requests for
    /// `client_idle_timeout`, and the listener serves at most `limit`'s number of connections
    /// at once.
    pub fn new(
        inner: Arc<A>,
        server: &ServerSettings,
        limit: Arc<ConnectionLimit>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        GuardedApp {
            inner,
            header_timeout: server.client_header_timeout,
            idle_timeout: server.client_idle_timeout,
            preserve_header_case: server.preserve_header_case,
            limit,
            lifecycle,
        }
    }

    /// A fresh HTTP/1.1 session on `stream`, reading heads as `[server]` says.
    fn http1_session(&self, stream: Stream) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        if let ServerSession::H1(h1) = &mut session {
            h1.set_preserve_header_case(self.preserve_header_case);
        }
        session
    }
}

#[async_trait]
impl<A: InPlaceHttpApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = self.lifecycle.open_connection();
        let _place = self.limit.take_place().await?;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // Boxed apart: inline, the HTTP/2 state (about 4 KB) would size every
            // connection's future, HTTP/1.1 ones included.
            boxed_in_place(|| self.serve_http2(stream, shutdown)).await;
            return None;
        }
        let mut timed = HeadTimedStream::new(
            stream,
            self.header_timeout,
            self.idle_timeout,
            &self.lifecycle,
        );
        let first = next_request_bytes(&mut timed).await?;
        let h2c = timed.get_ssl_digest().is_none()
            && self
                .inner
                .server_options()
                .is_some_and(|options| options.h2c);
        let head = &first[..first.len().min(H2_PREFACE.len())];
        if h2c && H2_PREFACE.starts_with(head) {
            // The stream reads these bytes again first, for the HTTP/2 handshake.
            timed.unread(&first);
            if head.len() == H2_PREFACE.len() {
                boxed_in_place(|| self.serve_http2(Box::new(timed), shutdown)).await;
                return None;
            }
            // Too few bytes yet to tell: Pingora peeks until it can.
            return self.inner.process_new(Box::new(timed), shutdown).await;
        }
        self.serve_http1(Box::new(timed), first, shutdown).await;
        None
    }

    /// Pingora's HTTP cleanup aborts every idle keepalive connection the moment the listeners
    /// stop, racing with requests already on the wire. It is left out: [`HeadTimedStream`]
    /// closes idle connections after [`crate::lifecycle::DRAIN_IDLE`] instead.
    async fn cleanup(&self) {}
}

impl<A: InPlaceHttpApp + Send + Sync + 'static> GuardedApp<A> {
    /// Serves an HTTP/2 connection as Pingora does (its handshake and accept loop), each
    /// stream in a task of its own whose request future is built in its box.
    async fn serve_http2(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let timing_digest = stream.get_timing_digest();
        // Counted from the connection's start: a TLS handshake spends the same time.
        let since_start = timing_digest
            .iter()
            .flatten()
            .next()
            .and_then(|timing| timing.established_ts.elapsed().ok())
            .unwrap_or_default();
        let first_request_deadline =
            tokio::time::Instant::now() + self.header_timeout.saturating_sub(since_start);
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest,
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let handshake = v2::server::handshake(stream, self.inner.h2_options());
        let connection = match tokio::time::timeout_at(first_request_deadline, handshake).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                tracing::debug!("HTTP/2 handshake with a client failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("HTTP/2 client sent no preface within client_header_timeout");
                return;
            }
        };
        v2::server::accept_downstream_sessions_until(
            connection,
            digest,
            shutdown.clone(),
            Some(self.idle_timeout),
            Some(first_request_deadline),
            |h2_stream, guard| {
                let app = self.inner.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    // Held for the stream's life: the accept loop's idle timeout sees the
                    // connection as busy.
                    let _guard = guard;
                    let session = ServerSession::new_http2(h2_stream);
                    boxed_in_place(|| app.process_request(session, &shutdown)).await;
                });
            },
        )
        .await;
    }

    /// Serves HTTP/1.1 requests on `stream` until it closes or is not reusable; `first` holds
    /// the first bytes of the first request.
    async fn serve_http1(
        self: &Arc<Self>,
        stream: Stream,
        first: BytesMut,
        shutdown: &ShutdownWatch,
    ) {
        let mut session = self.http1_session(stream);
        if *shutdown.borrow() {
            // Stop a client from reusing the connection if the service is shutting down soon.
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(FIRST_REQUEST_KEEPALIVE_SECONDS));
        }
        let request_limit = self
            .inner
            .server_options()
            .and_then(|options| options.keepalive_request_limit);
        session.set_keepalive_reuses_remaining(request_limit);
        session.set_pipelined_prefix(first);
        loop {
            let request = boxed_in_place(|| self.inner.process_request(session, shutdown));
            let Some(reused) = request.await else {
                return;
            };
            let (mut stream, settings) = reused.consume();
            // A pipelined request already read is served at once; otherwise wait for the next
            // request's first bytes without holding anything for it.
            let prefix = if settings
                .as_ref()
                .is_some_and(HttpPersistentSettings::has_pipelined_prefix)
            {
                None
            } else {
                match next_request_bytes(&mut stream).await {
                    Some(bytes) => Some(bytes),
                    None => return,
                }
            };
            session = self.http1_session(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            if let Some(prefix) = prefix {
                session.set_pipelined_prefix(prefix);
            }
        }
    }
}

/// Waits for a request's first bytes and returns them, or `None` when the connection ends
/// first (closed, failed, timed out or drained). While it waits it holds no buffer: each
/// attempt reads into the stack, and only bytes that arrived are copied to the heap.
async fn next_request_bytes<S: AsyncRead + Unpin>(stream: &mut S) -> Option<BytesMut> {
    std::future::poll_fn(|cx| {
        let mut space = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut space);
        match Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let mut bytes = BytesMut::with_capacity(FIRST_READ);
                bytes.extend_from_slice(read.filled());
                Poll::Ready(Some(bytes))
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!("client connection ended while idle: {e}");
                Poll::Ready(None)
            }
        }
    })
    .await
}

/// An HTTP application whose per-request future the caller places itself.
pub trait InPlaceHttpApp: HttpServerApp {
    /// What [`HttpServerApp::process_new_http`] does, as a future not boxed yet.
    fn process_request<'a>(
        self: &'a Arc<Self>,
        session: ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<ReusedHttpStream>> + Send + 'a;
}

impl<SV, C> InPlaceHttpApp for pingora::proxy::HttpProxy<SV, C>
where
    SV: pingora::proxy::ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
    C: pingora::connectors::http::custom::Connector,
{
    fn process_request<'a>(
        self: &'a Arc<Self>,
        session: ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<ReusedHttpStream>> + Send + 'a {
        self.process_new_http_unboxed(session, shutdown)
    }
}

/// Boxes the future `make` builds, building it in its box.
///
/// The per-request future is about 10 KB. `Box::pin(make())` builds it on the stack and
/// copies it into the box (one instruction per byte); allocating first and building into the
/// allocation lets the compiler write it in place.
pub(crate) fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), build(make)))
}

/// Calls `make`. Not inlined, so its result is returned through a pointer the caller gives,
/// which can be the box's.
#[inline(never)]
fn build<F>(make: impl FnOnce() -> F) -> F {
    make()
}
