//! Connections to the keybroker port, which every guest and node reaches
//! without credentials: a cap in total and per source address, a deadline
//! for the first bytes and an idle deadline after them, and an accept loop
//! that backs off when the process runs out of file descriptors instead of
//! spinning on the error.
//!
//! At the total cap a new connection does not simply lose: the connection
//! that has been silent the longest (at least [`EVICT_AFTER`]) is closed to
//! make room for it. Many sources holding silent connections would
//! otherwise keep every genuine launch out until their deadlines; a genuine
//! client sends its request at once and is done in milliseconds.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Silent the longest when the total cap was reached: closed to make
    /// room for a new connection.
    Evicted,
}

impl Closed {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Closed::TotalCap => "total_cap",
            Closed::SourceCap => "source_cap",
            Closed::Timeout => "timeout",
            Closed::Evicted => "evicted",
        }
    }
}

/// How long a connection must have been silent before a new one may take
/// its place at the total cap. The one silent the longest goes, so a
/// genuine client waiting for its answer (tens of milliseconds) is chosen
/// only if every other connection spoke more recently; this floor keeps it
/// from being chosen even then. A flood that reconnects fast enough keeps
/// every place younger than the floor: measured at about 2,000 connections
/// a second against the 1,024 places, a floor of one second let it lock
/// genuine launches out; with 100 ms it would take about ten times that.
pub const EVICT_AFTER: Duration = Duration::from_millis(100);

/// What the accept loop and a connection share: when it last sent bytes,
/// and whether it has been told to go.
#[derive(Debug)]
struct ConnState {
    /// Milliseconds since the accept loop's epoch at the last bytes read.
    last_read_ms: AtomicU64,
    evicted: AtomicBool,
    /// Its place in the counts has been given back.
    released: AtomicBool,
    /// Lock-free: it is registered every time a read would block.
    waker: atomic_waker::AtomicWaker,
    source: IpAddr,
    /// The accept loop's epoch, which `last_read_ms` counts from.
    epoch: Instant,
}

#[derive(Debug)]
struct Counts {
    epoch: Instant,
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    next_id: u64,
    live: HashMap<u64, Arc<ConnState>>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            epoch: Instant::now(),
            total: 0,
            per_source: HashMap::new(),
            next_id: 0,
            live: HashMap::new(),
        }
    }
}

impl Counts {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Gives back the place of a connection, once.
    fn release(&mut self, state: &ConnState) {
        if state.released.swap(true, Ordering::AcqRel) {
            return;
        }
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&state.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&state.source);
            }
        }
    }

    /// Closes the connection silent the longest, if one has been silent
    /// for [`EVICT_AFTER`], and gives back its place at once.
    fn evict_one(&mut self) -> bool {
        let now = self.now_ms();
        let after = u64::try_from(EVICT_AFTER.as_millis()).unwrap_or(u64::MAX);
        let oldest = self
            .live
            .iter()
            .filter(|(_, s)| !s.released.load(Ordering::Acquire))
            .map(|(id, s)| (*id, s.last_read_ms.load(Ordering::Acquire)))
            .filter(|(_, last)| now.saturating_sub(*last) >= after)
            .min_by_key(|(_, last)| *last);
        let Some(state) = oldest.and_then(|(id, _)| self.live.remove(&id)) else {
            return false;
        };
        state.evicted.store(true, Ordering::Release);
        self.release(&state);
        state.waker.wake();
        true
    }
}

/// Holds one connection's place in the counts; gives it back when dropped.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    id: u64,
    state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.live.remove(&self.id);
        c.release(&self.state);
    }
}

/// Takes a place for `source`, or says which cap is full. At the total
/// cap, the connection silent the longest makes room (counted as evicted
/// through `on_evict`) if there is one.
fn admit(
    counts: &Arc<Mutex<Counts>>,
    source: IpAddr,
    limits: &ConnectionLimits,
    on_evict: impl FnOnce(),
) -> Result<Slot, Closed> {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    if c.per_source.get(&source).copied().unwrap_or(0) >= limits.max_per_source {
        return Err(Closed::SourceCap);
    }
    if c.total >= limits.max_total {
        if !c.evict_one() {
            return Err(Closed::TotalCap);
        }
        on_evict();
    }
    *c.per_source.entry(source).or_insert(0) += 1;
    c.total += 1;
    let id = c.next_id;
    c.next_id = c.next_id.wrapping_add(1);
    let state = Arc::new(ConnState {
        last_read_ms: AtomicU64::new(c.now_ms()),
        evicted: AtomicBool::new(false),
        released: AtomicBool::new(false),
        waker: atomic_waker::AtomicWaker::new(),
        source,
        epoch: c.epoch,
    });
    c.live.insert(id, Arc::clone(&state));
    Ok(Slot {
        counts: Arc::clone(counts),
        id,
        state,
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

/// The read error of an evicted connection, which makes the server drop it.
fn evicted() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "closed to make room for a new connection",
    )
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        if this._slot.state.evicted.load(Ordering::Acquire) {
            return Poll::Ready(Err(evicted()));
        }
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                    let state = &this._slot.state;
                    let ms = u64::try_from(state.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                    state.last_read_ms.store(ms, Ordering::Release);
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
                Poll::Pending => {
                    // Registered before the flag is read again, so that an
                    // eviction between the first check and now is not lost.
                    this._slot.state.waker.register(cx.waker());
                    if this._slot.state.evicted.load(Ordering::Acquire) {
                        return Poll::Ready(Err(evicted()));
                    }
                    Poll::Pending
                }
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
            let slot = match admit(&counts, peer.ip(), &limits, || {
                metrics.connection_closed(Closed::Evicted.label());
            }) {
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
        let never = || panic!("nothing has been silent long enough to be evicted");
        let a1 = admit(&counts, a, &limits, never).unwrap();
        let _a2 = admit(&counts, a, &limits, never).unwrap();
        assert_eq!(
            admit(&counts, a, &limits, never).unwrap_err(),
            Closed::SourceCap
        );
        let _b1 = admit(&counts, b, &limits, never).unwrap();
        assert_eq!(
            admit(&counts, b, &limits, never).unwrap_err(),
            Closed::TotalCap
        );
        drop(a1);
        admit(&counts, b, &limits, never).unwrap();
    }

    #[test]
    fn at_the_total_cap_the_connection_silent_longest_makes_room() {
        // An accept loop that has run for a minute.
        let counts = Arc::new(Mutex::new(Counts {
            epoch: Instant::now().checked_sub(Duration::from_secs(60)).unwrap(),
            ..Counts::default()
        }));
        let limits = ConnectionLimits {
            max_total: 2,
            max_per_source: 2,
            ..ConnectionLimits::default()
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let old = admit(&counts, a, &limits, || {}).unwrap();
        let recent = admit(&counts, b, &limits, || {}).unwrap();
        // Both silent for longer than EVICT_AFTER, `recent` less so.
        let past = |ms: u64| {
            let now = counts.lock().unwrap().now_ms();
            now.saturating_sub(ms)
        };
        old.state.last_read_ms.store(past(5_000), Ordering::Release);
        recent
            .state
            .last_read_ms
            .store(past(2_000), Ordering::Release);
        let mut evictions = 0;
        let new = admit(&counts, c, &limits, || evictions += 1).unwrap();
        assert_eq!(evictions, 1);
        assert!(old.state.evicted.load(Ordering::Acquire));
        assert!(!recent.state.evicted.load(Ordering::Acquire));
        // The evicted one's place went to the new one, and is not given
        // back twice when the evicted connection is finally dropped.
        drop(old);
        assert_eq!(counts.lock().unwrap().total, 2);
        assert_eq!(counts.lock().unwrap().per_source.get(&a), None);
        // A connection that spoke within EVICT_AFTER is never evicted.
        recent.state.last_read_ms.store(past(0), Ordering::Release);
        new.state.last_read_ms.store(past(0), Ordering::Release);
        assert_eq!(
            admit(&counts, a, &limits, || panic!("evicted a live connection")).unwrap_err(),
            Closed::TotalCap
        );
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
