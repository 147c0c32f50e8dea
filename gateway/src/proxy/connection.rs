//! Client connections before and between requests: the whole-head deadline
//! (`[server].client_header_timeout`), the idle time between requests
//! (`[server].client_idle_timeout`) and each listener's `max_connections`.
//!
//! Pingora times each read of a request head on its own (60 s), so a client that sends one
//! byte every few seconds holds a connection forever: 300 such clients were all still
//! connected after 100 s. [`super::guarded::GuardedApp`] wraps each accepted
//! stream in a [`HeadTimedStream`] whose deadline covers the whole head: it starts when the
//! connection is accepted (for its first request) or when the first byte of a later request
//! arrives, and stops when the proxy has the head (`early_request_filter`). When it runs out
//! the client gets `408` and the connection closes, as NGINX's `client_header_timeout` does.
//!
//! HTTP/2 connections are not timed here: their streams are framed by the h2 codec, which
//! has its own flow control and keepalive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use prometheus::IntGauge;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::lifecycle::{Lifecycle, DRAIN_IDLE};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// What a timed-out client is told before the connection closes.
const REQUEST_TIMEOUT_ANSWER: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nx-meshgate-reason: client-timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The HTTP/2 connection preface (h2c with prior knowledge).
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One listener's connection limit.
///
/// Over the limit the listener stops accepting, so new connections wait in the kernel's
/// backlog, as NGINX's and HAProxy's do, instead of holding a file descriptor and a task in
/// the gateway. A connection still in its TLS handshake counts as one served: it will need a
/// place, and a crowd of clients that never finish their handshakes must not push the
/// listener past its limit. The one connection accepted when the limit was reached waits in
/// the gateway, counted by `waiting`.
pub struct ConnectionLimit {
    /// Places under `max_connections`.
    places: Semaphore,
    /// Connections accepted and still in their handshake (each will take a place after it).
    handshaking: std::sync::atomic::AtomicUsize,
    /// Signalled each time a served connection closes and frees a place.
    freed: Notify,
    /// Connections being served.
    served: IntGauge,
    /// Connections accepted and waiting for a place.
    waiting: IntGauge,
}

impl ConnectionLimit {
    /// A limit of `max_connections` places, counted in the `served` and `waiting` gauges.
    pub fn new(max_connections: usize, served: IntGauge, waiting: IntGauge) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            places: Semaphore::new(max_connections),
            handshaking: std::sync::atomic::AtomicUsize::new(0),
            freed: Notify::new(),
            served,
            waiting,
        })
    }

    /// Counts a connection's handshake until the returned hold is dropped.
    pub fn handshake_started(self: &Arc<Self>) -> HandshakeHold {
        self.handshaking.fetch_add(1, Ordering::AcqRel);
        HandshakeHold(Arc::clone(self))
    }

    /// Whether a new connection may be accepted: a place is free for it beyond those the
    /// handshakes in progress will take.
    fn has_room(&self) -> bool {
        self.places.available_permits() > self.handshaking.load(Ordering::Acquire)
    }

    /// Takes a place for a connection, waiting for one if there is none.
    pub(crate) async fn take_place(&self) -> Option<Place<'_>> {
        let permit = {
            let _waiting = GaugeHold::new(&self.waiting);
            self.places.acquire().await.ok()?
        };
        Some(Place {
            limit: self,
            permit: Some(permit),
            _served: GaugeHold::new(&self.served),
        })
    }
}

/// A served connection's place under its listener's limit; frees it when dropped.
pub(crate) struct Place<'a> {
    limit: &'a ConnectionLimit,
    permit: Option<SemaphorePermit<'a>>,
    _served: GaugeHold<'a>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        // The place is given back before the accept loop is woken to take it.
        drop(self.permit.take());
        self.limit.freed.notify_waiters();
    }
}

/// A handshake in progress, counted under its listener's limit until dropped.
pub struct HandshakeHold(Arc<ConnectionLimit>);

impl Drop for HandshakeHold {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::AcqRel);
        // A handshake that failed leaves its place free: the accept loop may go on.
        self.0.freed.notify_waiters();
    }
}

/// Pauses a listener's accept loop while its connections are all in use.
///
/// Pingora calls it after each `accept()`, before the TLS handshake; while it waits, the
/// loop accepts nothing more and new connections stay in the kernel's backlog.
#[derive(Clone)]
pub struct AcceptGate(pub Arc<ConnectionLimit>);

impl std::fmt::Debug for AcceptGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptGate")
            .field("places", &self.0.places.available_permits())
            .finish()
    }
}

#[async_trait]
impl ConnectionFilter for AcceptGate {
    async fn should_accept(&self, _peer: Option<&std::net::SocketAddr>) -> bool {
        let limit = &self.0;
        if limit.has_room() {
            return true;
        }
        let _waiting = GaugeHold::new(&limit.waiting);
        loop {
            let freed = limit.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before the check, so a place freed in between is not missed.
            freed.as_mut().enable();
            if limit.has_room() {
                return true;
            }
            freed.await;
        }
    }
}

/// Takes a gauge down when dropped.
struct GaugeHold<'a>(&'a IntGauge);

impl<'a> GaugeHold<'a> {
    fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        GaugeHold(gauge)
    }
}

impl Drop for GaugeHold<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where a connection is in its request cycle.
mod phase {
    /// Waiting for (the rest of) a request head: the deadline runs.
    pub const HEAD: u8 = 0;
    /// The head arrived; the request is being served.
    pub const REQUEST: u8 = 1;
    /// Between requests: the deadline starts again with the next byte.
    pub const IDLE: u8 = 2;
    /// Not timed (HTTP/2 with prior knowledge).
    pub const OFF: u8 = 3;
}

/// A client stream whose request heads must arrive within a deadline.
#[derive(Debug)]
pub struct HeadTimedStream {
    inner: Stream,
    timeout: Duration,
    /// How long the connection may stay idle between requests (`client_idle_timeout`).
    idle_timeout: Duration,
    phase: AtomicU8,
    /// When the current head must have arrived.
    head_deadline: tokio::time::Instant,
    /// Wakes the connection at `head_deadline`, or at the end of its idle time between
    /// requests. Armed only when a read has to wait: most heads arrive in one read, and
    /// arming a timer per request costs a lock in tokio's timer wheel.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The phase `deadline` is armed for (`phase::HEAD` for the current head, `phase::IDLE`
    /// for the current idle time), if any.
    deadline_armed_for: Option<u8>,
    /// Whether the drain signal has been polled once: its waker stays registered, so later
    /// polls only read the flag below.
    closing_registered: bool,
    lifecycle: Arc<Lifecycle>,
    /// Whether any byte of the current head arrived (a silent connection is closed without
    /// an answer, as after a keepalive timeout).
    head_started: bool,
    /// How many bytes of the connection matched the h2c preface so far; `None` once they
    /// did not (or once the whole preface came, and timing stopped).
    preface_matched: Option<usize>,
    /// Bytes of the `408` answer written, once the deadline ran out.
    answer_written: Option<usize>,
    /// Bytes read by [`Peek::try_peek`], served again by the next reads.
    peeked: Vec<u8>,
    /// Resolves when a drain or upgrade starts; `None` once it has.
    closing: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// When the connection opened.
    opened: tokio::time::Instant,
    /// When it last became idle, in milliseconds after `opened` (written through `&self` by
    /// [`Self::request_done`]).
    idle_since_ms: AtomicU64,
    /// When idle connections are being closed: the deadline of this one's idleness.
    drain_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HeadTimedStream {
    /// Times `inner`'s request heads with `timeout` and its idle time between requests with
    /// `idle_timeout`.
    pub(super) fn new(
        inner: Stream,
        timeout: Duration,
        idle_timeout: Duration,
        lifecycle: &Arc<Lifecycle>,
    ) -> Self {
        let now = tokio::time::Instant::now();
        HeadTimedStream {
            head_deadline: now + timeout,
            deadline_armed_for: None,
            closing_registered: false,
            lifecycle: Arc::clone(lifecycle),
            closing: Some(Box::pin(lifecycle.closing())),
            opened: now,
            idle_since_ms: AtomicU64::new(0),
            drain_deadline: None,
            inner,
            timeout,
            idle_timeout,
            phase: AtomicU8::new(phase::HEAD),
            deadline: Box::pin(tokio::time::sleep_until(now + timeout)),
            head_started: false,
            preface_matched: Some(0),
            answer_written: None,
            peeked: Vec::new(),
        }
    }

    /// The guarded stream under a session's stream, if it is one.
    pub fn of(stream: &Stream) -> Option<&HeadTimedStream> {
        stream.as_any().downcast_ref::<HeadTimedStream>()
    }

    /// Gives `bytes`, read from this stream, back to it: the next reads return them first.
    pub(super) fn unread(&mut self, bytes: &[u8]) {
        self.peeked.splice(0..0, bytes.iter().copied());
    }

    /// The proxy has the whole head: stop the deadline.
    pub fn head_received(&self) {
        let _ = self.phase.compare_exchange(
            phase::HEAD,
            phase::REQUEST,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Whether the connection has no request under way: between requests, or opened and
    /// silent.
    fn is_idle(&self) -> bool {
        match self.phase.load(Ordering::Relaxed) {
            phase::IDLE => true,
            phase::HEAD => !self.head_started,
            _ => false,
        }
    }

    /// During a drain or upgrade, whether this idle connection has been idle for
    /// [`DRAIN_IDLE`] and is to be closed. Registers the wake-ups that get it there.
    fn poll_drained(&mut self, cx: &mut Context<'_>) -> bool {
        // Only an idle connection waits on the drain: a busy one sees it in its response
        // (`Connection: close`), and skipping the wait keeps the request path cheap.
        if !self.is_idle() {
            self.drain_deadline = None;
            return false;
        }
        if let Some(closing) = self.closing.as_mut() {
            // The connection's task stays the same for its whole life, so the waker of the
            // first poll stays good: after it, an atomic load says whether to look again.
            if self.closing_registered && !self.lifecycle.is_draining() {
                return false;
            }
            self.closing_registered = true;
            if closing.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.closing = None;
        }
        let idle_since =
            self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        let deadline = self
            .drain_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(idle_since + DRAIN_IDLE)));
        deadline.as_mut().poll(cx).is_ready()
    }

    /// The request is answered: the next byte starts the next head's deadline.
    pub fn request_done(&self) {
        // The deadline, if armed for the head, is armed again for the idle time by the next
        // read that has to wait.
        self.idle_since_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        let _ = self.phase.compare_exchange(
            phase::REQUEST,
            phase::IDLE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Writes the `408` answer, then fails the read so that Pingora closes the connection.
    fn poll_time_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.head_started {
            // Nothing was asked: close quietly.
            return Poll::Ready(Ok(()));
        }
        let mut written = self.answer_written.unwrap_or(0);
        while written < REQUEST_TIMEOUT_ANSWER.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &REQUEST_TIMEOUT_ANSWER[written..]) {
                Poll::Ready(Ok(0)) => break,
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.answer_written = Some(written);
                    return Poll::Pending;
                }
            }
        }
        self.answer_written = Some(written);
        if Pin::new(&mut self.inner).poll_flush(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client_header_timeout: the request head did not arrive in time",
        )))
    }
}

impl AsyncRead for HeadTimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if this.answer_written.is_some() {
            return this.poll_time_out(cx);
        }
        if this.poll_drained(cx) {
            // Idle through a drain: end the connection as a client closing would, so no
            // request can be on its way on it.
            return Poll::Ready(Ok(()));
        }
        let current = this.phase.load(Ordering::Relaxed);
        if current == phase::REQUEST || current == phase::OFF {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if current == phase::HEAD && tokio::time::Instant::now() >= this.head_deadline {
            this.answer_written = Some(0);
            return this.poll_time_out(cx);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if result.is_pending() && current == phase::IDLE {
            // Idle between requests: close quietly at the end of `client_idle_timeout`, as
            // after a keepalive timeout.
            if this.deadline_armed_for != Some(phase::IDLE) {
                let idle_since =
                    this.opened + Duration::from_millis(this.idle_since_ms.load(Ordering::Relaxed));
                this.deadline.as_mut().reset(idle_since + this.idle_timeout);
                this.deadline_armed_for = Some(phase::IDLE);
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
        if result.is_pending() && this.phase.load(Ordering::Relaxed) == phase::HEAD {
            // The head is not all here: wake up at its deadline if nothing else comes.
            if this.deadline_armed_for != Some(phase::HEAD) {
                this.deadline.as_mut().reset(this.head_deadline);
                this.deadline_armed_for = Some(phase::HEAD);
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                this.answer_written = Some(0);
                return this.poll_time_out(cx);
            }
        }
        if let Poll::Ready(Ok(())) = result {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                if let Some(matched) = this.preface_matched {
                    let expected = &H2_PREFACE[matched..];
                    let n = read.len().min(expected.len());
                    this.preface_matched = (read[..n] == expected[..n])
                        .then_some(matched + n)
                        .filter(|&m| m < H2_PREFACE.len());
                    if matched + n == H2_PREFACE.len() && read[..n] == expected[..n] {
                        this.phase.store(phase::OFF, Ordering::Relaxed);
                        return result;
                    }
                }
                if current == phase::IDLE {
                    this.phase.store(phase::HEAD, Ordering::Relaxed);
                    this.head_started = true;
                    this.head_deadline = tokio::time::Instant::now() + this.timeout;
                    this.deadline_armed_for = None;
                } else {
                    this.head_started = true;
                }
            }
        }
        result
    }
}

impl AsyncWrite for HeadTimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadTimedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadTimedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadTimedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadTimedStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadTimedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadTimedStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Pingora peeks at the first bytes of a plain connection for the h2c preface. The stream
/// below would wait for all of them (24 bytes) without a deadline, so a slow client could
/// stall there: peek through the timed reads instead, stop as soon as the bytes can't be the
/// preface, and keep them for the reads that follow.
#[async_trait]
impl Peek for HeadTimedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        // Bytes peeked before (or given back by `unread`) come first, and stay first for the
        // reads that follow.
        let mut peeked = std::mem::take(&mut self.peeked);
        let held = peeked.len().min(buf.len());
        buf[..held].copy_from_slice(&peeked[..held]);
        let mut filled = held;
        let mut result = Ok(true);
        while filled < buf.len() && H2_PREFACE.starts_with(&buf[..filled]) {
            let read = std::future::poll_fn(|cx| {
                let mut read_buf = ReadBuf::new(&mut buf[filled..]);
                match Pin::new(&mut *self).poll_read(cx, &mut read_buf) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(read_buf.filled().len())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match read {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if filled > held {
            peeked.extend_from_slice(&buf[held..filled]);
        }
        self.peeked = peeked;
        result
    }
}
