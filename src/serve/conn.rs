//! The dashboard's connections, bounded: at most so many open at once (the
//! rest wait in the kernel's accept queue, holding none of our descriptors),
//! and each closed after a while with nothing read or written.
//!
//! Without either, idle connections held open by anyone who can reach the
//! port used up the process's file descriptors; inside `mailroom run`
//! (`serve:`) the supervisor could then not read, lock or claim tasks.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How long a connection may go with nothing read or written after the
/// server last wrote (an answered request, a keep-alive between requests).
/// The event streams send a keep-alive comment every 15 s, so an open page
/// stays.
pub const IDLE: Duration = Duration::from_secs(60);

/// How long when the client wrote last: a request is being answered (a
/// slow page on a big tree computes without writing), or a request is
/// coming in very slowly. Long, but bounded.
pub const IN_FLIGHT: Duration = Duration::from_secs(600);

/// How many connections may be open at once: a quarter of the process's
/// open-file limit, between 16 and 512 (256 under the usual limit of 1024).
pub fn cap() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4).unwrap_or(512).clamp(16, 512)
}

/// How many of `cap` connections may carry an event stream at once: half,
/// so that streams held open leave the other half to pages and actions.
pub fn streams(cap: usize) -> usize {
    (cap / 2).max(1)
}

/// A listener that holds a permit for each open connection.
pub struct Capped {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: (Duration, Duration),
}

impl Capped {
    /// `idle`: after the server wrote last, and after the client did.
    pub fn new(inner: TcpListener, max: usize, idle: (Duration, Duration)) -> Capped {
        Capped {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
            idle,
        }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        // Not accepted before a permit is free: the connection waits in the
        // kernel's queue meanwhile.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    let _ = io.set_nodelay(true);
                    return (Guarded::new(io, permit, self.idle), addr);
                }
                // Out of descriptors (or another accept error): wait, as
                // axum's own listener does, rather than spin.
                Err(e) => {
                    tracing::debug!(error = %e, "dashboard: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: its permit goes when it closes, and a read that
/// has waited since the last byte either way (the first of `idle` when the
/// server wrote last or nothing moved yet, the second when the client did)
/// fails (TimedOut), which makes the HTTP server close it.
pub struct Guarded {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: (Duration, Duration),
    deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(io: TcpStream, permit: OwnedSemaphorePermit, idle: (Duration, Duration)) -> Guarded {
        Guarded {
            io,
            _permit: permit,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle.0)),
        }
    }

    /// Bytes moved: `read` when the client sent them.
    fn active(&mut self, read: bool) {
        let next = Instant::now() + if read { self.idle.1 } else { self.idle.0 };
        self.deadline.as_mut().reset(next);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active(true);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing read or written for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.active(false);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.active(false);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Two connections at most: a third waits until one closes; an idle one
    /// is closed after `idle`, one that keeps talking is not.
    #[tokio::test]
    async fn connections_are_capped_and_idle_ones_closed() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let idle = Duration::from_millis(300);
        let mut l = Capped::new(inner, 2, (idle, Duration::from_secs(3600)));
        let c1 = TcpStream::connect(addr).await.unwrap();
        let c2 = TcpStream::connect(addr).await.unwrap();
        let (mut s1, _) = l.accept().await;
        let (s2, _) = l.accept().await;
        let _c3 = TcpStream::connect(addr).await.unwrap();
        // The third is not accepted while two are open.
        let third = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(third.is_err(), "a third connection was accepted");
        // One closes: the third is accepted.
        drop(s2);
        drop(c2);
        let third = tokio::time::timeout(Duration::from_secs(5), l.accept()).await;
        assert!(third.is_ok(), "the third connection was not accepted");
        // The first talks: its reads succeed past the idle time.
        let mut c1 = c1;
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            c1.write_all(b"x").await.unwrap();
            assert_eq!(s1.read(&mut buf).await.unwrap(), 1);
        }
        // The client wrote last: a request is being answered, which may
        // take long: past the idle time, the read still waits.
        let waited = tokio::time::timeout(Duration::from_millis(600), s1.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "an answer in the making was cut: {waited:?}"
        );
        // The server answers, then the connection goes quiet: the read
        // fails after the idle time.
        s1.write_all(b"answer").await.unwrap();
        let started = std::time::Instant::now();
        let e = s1.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn the_cap_follows_the_open_file_limit() {
        let c = cap();
        assert!((16..=512).contains(&c), "{c}");
    }
}
