//! Bytes both ways between a client and an upstream until both directions end, with
//! half-close carried across, an idle timeout, and byte counts kept as they flow (so a
//! connection cut by its idle timeout still reports what it moved).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Each direction's buffer: large reads keep bulk transfers to few system calls.
const BUFFER: usize = 64 * 1024;

/// How a spliced connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides closed (each direction ended with a FIN).
    Closed,
    /// No byte either way for the route's `idle_timeout`.
    IdleTimeout,
    /// A read or write failed (a reset, most often).
    Reset,
}

impl SpliceEnd {
    /// The `result` label and access log `close` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SpliceEnd::Closed => "closed",
            SpliceEnd::IdleTimeout => "idle_timeout",
            SpliceEnd::Reset => "reset",
        }
    }
}

/// What one connection moved, counted as it flows.
#[derive(Debug, Default)]
pub struct Flow {
    /// Bytes read from the client.
    pub received: AtomicU64,
    /// Bytes read from the upstream (and written to the client).
    pub sent: AtomicU64,
    /// When a byte last moved, in ms after the splice started.
    last_activity_ms: AtomicU64,
}

/// A stream whose reads are counted into one of [`Flow`]'s totals.
struct Metered<'a, S> {
    inner: S,
    total: &'a AtomicU64,
    last_activity_ms: &'a AtomicU64,
    started: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.total.fetch_add(read as u64, Ordering::Relaxed);
            let now = self.started.elapsed().as_millis() as u64;
            self.last_activity_ms.store(now, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Moves bytes between `client` and `upstream` until both directions have ended (a side's
/// end of stream is passed on as a shutdown of the other's write half) or nothing moved for
/// `idle_timeout`.
pub async fn splice<C, U>(client: C, upstream: U, idle_timeout: Duration, flow: &Flow) -> SpliceEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut client = Metered {
        inner: client,
        total: &flow.received,
        last_activity_ms: &flow.last_activity_ms,
        started,
    };
    let mut upstream = Metered {
        inner: upstream,
        total: &flow.sent,
        last_activity_ms: &flow.last_activity_ms,
        started,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER);
    tokio::select! {
        result = copy => match result {
            Ok(_) => SpliceEnd::Closed,
            Err(e) => {
                tracing::debug!("TCP connection ended with an error: {e}");
                SpliceEnd::Reset
            }
        },
        () = idle(started, &flow.last_activity_ms, idle_timeout) => SpliceEnd::IdleTimeout,
    }
}

/// Resolves once nothing has moved for `idle_timeout`.
async fn idle(started: Instant, last_activity_ms: &AtomicU64, idle_timeout: Duration) {
    loop {
        let last = Duration::from_millis(last_activity_ms.load(Ordering::Relaxed));
        let deadline = started + last + idle_timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}
