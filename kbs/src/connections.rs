//! Connections to the keybroker port, which every guest and node reaches
//! without credentials: a cap in total and per source address, a deadline
//! for the first bytes and an idle deadline after them, and an accept loop
//! that backs off when the process runs out of file descriptors instead of
//! spinning on the error.
//!
//! The limits on what one connection may send (message size, streams, flow
//! control windows, header size) are set on the HTTP/2 server in `cli`; the
//! ones here bound how many connections there are and how long they stay.

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

/// How many connections there may be and how long they may stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, from everyone.
    pub max_total: usize,
    /// Connections open at once from one source address.
    pub max_per_source: usize,
    /// Time a new connection has to send its first bytes.
    pub handshake: Duration,
    /// Time a connection may stay without sending anything.
    pub idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_total: 1024,
            max_per_source: 128,
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// Why a connection was closed by these limits, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Over the total cap at accept.
    TotalCap,
    /// Over the per-source cap at accept.
    SourceCap,
    /// Nothing sent in time.
    Timeout,
}

impl Closed {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Closed::TotalCap => "total_cap",
            Closed::SourceCap => "source_cap",
            Closed::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Holds one connection's place in the counts; gives it back when dropped.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

/// Takes a place for `source`, or says which cap is full.
fn admit(
    counts: &Arc<Mutex<Counts>>,
    source: IpAddr,
    limits: &ConnectionLimits,
) -> Result<Slot, Closed> {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    if c.total >= limits.max_total {
        return Err(Closed::TotalCap);
    }
    let n = c.per_source.entry(source).or_insert(0);
    if *n >= limits.max_per_source {
        return Err(Closed::SourceCap);
    }
    *n += 1;
    c.total += 1;
    Ok(Slot {
        counts: Arc::clone(counts),
        source,
    })
}

/// An accepted connection under the limits: its reads fail with `TimedOut`
/// once the peer has sent nothing for the deadline, which makes the server
/// drop it.
#[derive(Debug)]
pub struct LimitedConn {
    stream: TcpStream,
    info: tonic::transport::server::TcpConnectInfo,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    metrics: Arc<Metrics>,
    expired: bool,
    _slot: Slot,
}

impl tonic::transport::server::Connected for LimitedConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    if !this.expired {
                        this.expired = true;
                        this.metrics.connection_closed(Closed::Timeout.label());
                    }
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "nothing received before the connection's deadline",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Whether an accept error means the process or system is out of a
/// resource (file descriptors, memory), which retrying at once cannot fix.
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
            || code == rustix::io::Errno::NOBUFS.raw_os_error()
            || code == rustix::io::Errno::NOMEM.raw_os_error()
    )
}

/// Accepts on `listener` under `limits` until `stop` completes, handing each
/// admitted connection to the server through the returned stream.
pub fn incoming<F>(
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stop: F,
) -> ReceiverStream<io::Result<LimitedConn>>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let mut backoff = Duration::from_millis(10);
        let mut last_warned: Option<Instant> = None;
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                () = &mut stop => return,
                r = listener.accept() => r,
            };
            let (stream, peer): (TcpStream, SocketAddr) = match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(e) => {
                    metrics.accept_error();
                    let quiet = last_warned.is_some_and(|t| t.elapsed() < Duration::from_secs(10));
                    if exhausted(&e) {
                        if !quiet {
                            last_warned = Some(Instant::now());
                            warn!(error = %e, max_connections = limits.max_total, "keybroker: cannot accept connections (out of file descriptors or memory); backing off. Raise the file limit (LimitNOFILE) above --max-connections, or lower it");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    } else if !quiet {
                        last_warned = Some(Instant::now());
                        warn!(error = %e, "keybroker: accept failed");
                    }
                    continue;
                }
            };
            let slot = match admit(&counts, peer.ip(), &limits) {
                Ok(s) => s,
                Err(why) => {
                    metrics.connection_closed(why.label());
                    drop(stream);
                    continue;
                }
            };
            // Without TCP_NODELAY a response split over several writes waits
            // for the client's delayed ACK: about 40 ms on every new connection.
            let _ = stream.set_nodelay(true);
            let conn = LimitedConn {
                info: tonic::transport::server::TcpConnectInfo {
                    local_addr: stream.local_addr().ok(),
                    remote_addr: Some(peer),
                },
                stream,
                deadline: Box::pin(tokio::time::sleep(limits.handshake)),
                idle: limits.idle,
                metrics: Arc::clone(&metrics),
                expired: false,
                _slot: slot,
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_per_source_and_in_total_and_given_back() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let limits = ConnectionLimits {
            max_total: 3,
            max_per_source: 2,
            ..ConnectionLimits::default()
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admit(&counts, a, &limits).unwrap();
        let _a2 = admit(&counts, a, &limits).unwrap();
        assert_eq!(admit(&counts, a, &limits).unwrap_err(), Closed::SourceCap);
        let _b1 = admit(&counts, b, &limits).unwrap();
        assert_eq!(admit(&counts, b, &limits).unwrap_err(), Closed::TotalCap);
        drop(a1);
        admit(&counts, b, &limits).unwrap();
    }

    #[test]
    fn out_of_descriptors_is_told_from_other_accept_errors() {
        assert!(exhausted(&io::Error::from_raw_os_error(
            rustix::io::Errno::MFILE.raw_os_error()
        )));
        assert!(!exhausted(&io::Error::from_raw_os_error(
            rustix::io::Errno::CONNABORTED.raw_os_error()
        )));
    }
}
