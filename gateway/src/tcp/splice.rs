//! Bytes both ways between a client and an upstream until both directions end, with
//! half-close carried across, an idle timeout, and byte counts kept as they flow (so a
//! connection cut by its idle timeout still reports what it moved).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::task::ready;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Each direction's buffer to begin with: small enough for the allocator's thread cache, as
/// most connections move little. It is allocated without being zeroed (a zeroed 64 KiB pair
/// cost a short connection about 20 µs of CPU, a third more than HAProxy's whole connection).
const FIRST_BUFFER: usize = 8 * 1024;
/// The buffer of a direction whose reads fill what it has: large reads keep bulk transfers
/// to few system calls.
const BULK_BUFFER: usize = 64 * 1024;

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
    let mut to_upstream = Direction::new();
    let mut to_client = Direction::new();
    let copy = std::future::poll_fn(|cx| {
        let up = to_upstream.poll(cx, &mut client, &mut upstream)?;
        let down = to_client.poll(cx, &mut upstream, &mut client)?;
        match (up, down) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok::<(), std::io::Error>(())),
            _ => Poll::Pending,
        }
    });
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

/// One direction of a splice: what was read and not written yet, and how far it got.
struct Direction {
    buffer: BytesMut,
    /// The capacity the buffer is given back after each write: [`FIRST_BUFFER`], then
    /// [`BULK_BUFFER`] once a read filled it.
    capacity: usize,
    /// Whether written bytes may still sit in the writer's buffer.
    unflushed: bool,
    /// The reader ended: the writer is being shut down.
    reader_done: bool,
    /// Both ended.
    done: bool,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buffer: BytesMut::with_capacity(FIRST_BUFFER),
            capacity: FIRST_BUFFER,
            unflushed: false,
            reader_done: false,
            done: false,
        }
    }

    /// Moves what `reader` has to `writer` until the reader would block or ends; at its end
    /// the writer is shut down (the half-close passed on).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<std::io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while !self.buffer.is_empty() {
                let written = ready!(Pin::new(&mut *writer).poll_write(cx, &self.buffer))?;
                if written == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                self.buffer.advance(written);
                self.unflushed = true;
            }
            if self.reader_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            // Empty again: take the whole allocation back (advancing shrank the capacity),
            // without reallocating.
            self.buffer.clear();
            self.buffer.reserve(self.capacity);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, &mut self.buffer) {
                Poll::Ready(Ok(0)) => self.reader_done = true,
                Poll::Ready(Ok(read)) => {
                    if read >= self.capacity && self.capacity < BULK_BUFFER {
                        // A bulk transfer: larger reads from now on.
                        self.capacity = BULK_BUFFER;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read now: what was written must not wait in a buffer.
                    if self.unflushed {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
