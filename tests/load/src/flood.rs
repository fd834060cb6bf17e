//! Hostile traffic against the keybroker port while `kbs-load` measures
//! genuine launches:
//!
//! - an idle flood: TCP connections that never send a byte, each holding one
//!   of the broker's connection places until its handshake deadline;
//! - a stream flood: HTTP/2 connections, each with as many GetBundle calls as
//!   the broker allows, that announce a gRPC message (a length prefix) and
//!   send it as flow control lets them, all but its last byte. A message
//!   announced above the broker's --max-message-bytes is refused at its
//!   prefix: those calls end at once and are replaced, a flood of calls. One
//!   announced within the limit is buffered by the broker until it would be
//!   complete: those calls stay, a flood of the broker's memory.
//!
//! Both are kept up for the whole run: whatever the broker closes (or answers,
//! for a stream) is reopened after a pause, as an attacker holding the port
//! would. Both come from loopback addresses 127.0.0.2 onwards, a fixed number
//! of connections from each, so that the broker's per-source cap does not
//! simply refuse them and its total cap is what they meet; genuine launches
//! come from 127.0.0.1.

use bytes::Bytes;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// The first address the floods come from; 127.0.0.1 is left to the genuine
/// launches, so that the per-source cap counts them apart.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// How long a flood connection may take to connect. A full listen backlog
/// drops SYNs, which the kernel retries for minutes; past this the attempt
/// counts as a connect error and is retried after the pause.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection the broker closes sooner than this after it was made was
/// refused at accept (a cap was full); one closed later was closed at a
/// deadline (10 s for the first bytes by default, far above this).
const REFUSED_WITHIN: Duration = Duration::from_secs(1);
/// How long a stream-flood connection at the broker's stream cap waits for a
/// call to end before it looks at the cap again (and, the first time, takes
/// it that the flood is established on it).
const STREAM_CAP_WAIT: Duration = Duration::from_millis(200);
/// Calls a stream-flood connection holds if the broker sets no limit.
const STREAMS_IF_UNLIMITED: usize = 1000;
/// Zeros to send as the body of unfinished messages, without allocating per
/// chunk (flow control grants at most a window at a time).
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The source address of the `i`-th of the flood's connections, `per_source`
/// to an address, counting addresses from `first_index` past 127.0.0.2.
fn source(first_index: usize, i: usize, per_source: usize) -> Ipv4Addr {
    let index = first_index.saturating_add(i / per_source.max(1));
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    // Anything in 127/8 is loopback on Linux, without configuration.
    Ipv4Addr::from(u32::from(FIRST_SOURCE).saturating_add(index))
}

/// Source addresses `n` connections take at `per_source` each.
pub fn sources_for(n: usize, per_source: usize) -> usize {
    n.div_ceil(per_source.max(1))
}

/// A TCP connection from `from` (an ephemeral port on it) to `to`: binding
/// before connecting is what sets the source address.
async fn connect_from(from: Ipv4Addr, to: SocketAddr, probe: bool) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(from, 0)))?;
    if probe {
        probe_liveness(&socket)?;
    }
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// TCP keepalive probes after a second of silence. When the broker's listen
/// queue (128, tokio's backlog) overflows under the flood, the kernel drops
/// the handshake's last ACK, or answered the SYN with a cookie and kept no
/// state: the client then takes the connection as made though the broker
/// never accepts it, and a client that never sends would never learn. A
/// probe gets a reset for such a connection, so the flood reopens it. Probes
/// carry no data: to the broker's deadlines a real connection stays idle.
fn probe_liveness(socket: &TcpSocket) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(socket, true)?;
    sockopt::set_tcp_keepidle(socket, Duration::from_secs(1))?;
    sockopt::set_tcp_keepintvl(socket, Duration::from_secs(1))?;
    sockopt::set_tcp_keepcnt(socket, 2)?;
    Ok(())
}

/// Waits (at most `within`) until `counter` reaches `n`, then `settle` more.
async fn wait_for(counter: &AtomicU64, n: usize, within: Duration, settle: Duration) {
    let until = Instant::now() + within;
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    while load(counter) < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(settle).await;
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn sub(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

/// What the idle flood has seen so far.
#[derive(Debug, Default)]
struct IdleCounters {
    /// Connected and not closed yet.
    open: AtomicU64,
    /// Connections made.
    connects: AtomicU64,
    /// Connects that failed or timed out.
    connect_errors: AtomicU64,
    /// Closed by the broker within [`REFUSED_WITHIN`]: refused at accept.
    refused: AtomicU64,
    /// Closed by the broker later: at its handshake deadline.
    expired: AtomicU64,
    /// Ended with an error (a reset, or probes unanswered): connections the
    /// broker's kernel never handed to it (see [`probe_liveness`]).
    lost: AtomicU64,
    /// Connections that have made their first attempt.
    first_attempts: AtomicU64,
}

/// The idle flood's counters at one moment; counts since it started.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleSnapshot {
    /// Connections open at that moment (made, not yet closed by the broker).
    pub open: u64,
    /// Connections made.
    pub connects: u64,
    /// Connects that failed or timed out.
    pub connect_errors: u64,
    /// Connections the broker closed within a second: refused at accept.
    pub refused: u64,
    /// Connections the broker closed later: at its handshake deadline.
    pub expired: u64,
    /// Connections that ended in a reset: never handed to the broker.
    pub lost: u64,
}

impl IdleSnapshot {
    /// The counts from `earlier` to this one (`open` is this one's).
    pub fn since(self, earlier: IdleSnapshot) -> IdleSnapshot {
        IdleSnapshot {
            open: self.open,
            connects: self.connects.saturating_sub(earlier.connects),
            connect_errors: self.connect_errors.saturating_sub(earlier.connect_errors),
            refused: self.refused.saturating_sub(earlier.refused),
            expired: self.expired.saturating_sub(earlier.expired),
            lost: self.lost.saturating_sub(earlier.lost),
        }
    }
}

/// Idle TCP connections to the keybroker port, reopened as the broker closes
/// them; stopped when dropped.
#[derive(Debug)]
pub struct IdleFlood {
    counters: Arc<IdleCounters>,
    connections: usize,
    _tasks: JoinSet<()>,
}

impl IdleFlood {
    /// Opens `n` connections to `to`, `per_source` from each address from the
    /// `first_source`-th past 127.0.0.2; each is reopened `reopen` after the
    /// broker closes it.
    pub fn start(
        to: SocketAddr,
        n: usize,
        per_source: usize,
        first_source: usize,
        reopen: Duration,
    ) -> IdleFlood {
        let counters = Arc::new(IdleCounters::default());
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let from = source(first_source, i, per_source);
            tasks.spawn(idle_connection(to, from, reopen, Arc::clone(&counters)));
        }
        IdleFlood {
            counters,
            connections: n,
            _tasks: tasks,
        }
    }

    /// Waits (at most `within`) until every connection has been tried once,
    /// then as long again as the broker takes to refuse what it refuses.
    pub async fn wait_established(&self, within: Duration) {
        wait_for(
            &self.counters.first_attempts,
            self.connections,
            within,
            REFUSED_WITHIN,
        )
        .await;
    }

    /// The counters now.
    pub fn snapshot(&self) -> IdleSnapshot {
        let c = &self.counters;
        IdleSnapshot {
            open: load(&c.open),
            connects: load(&c.connects),
            connect_errors: load(&c.connect_errors),
            refused: load(&c.refused),
            expired: load(&c.expired),
            lost: load(&c.lost),
        }
    }
}

/// One connection of the idle flood: connect, never send, read until the
/// broker closes, pause, again.
async fn idle_connection(to: SocketAddr, from: Ipv4Addr, reopen: Duration, c: Arc<IdleCounters>) {
    let mut first = true;
    loop {
        match connect_from(from, to, true).await {
            Ok(mut stream) => {
                let opened = Instant::now();
                add(&c.connects);
                add(&c.open);
                if std::mem::take(&mut first) {
                    add(&c.first_attempts);
                }
                // Reading sends nothing, so the connection stays idle to the
                // broker; the server's HTTP/2 SETTINGS may arrive first and
                // are discarded. EOF is the broker closing it.
                let mut buf = [0u8; 512];
                let eof = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break true,
                        Ok(_) => {}
                        Err(_) => break false,
                    }
                };
                sub(&c.open);
                if !eof {
                    add(&c.lost);
                } else if opened.elapsed() < REFUSED_WITHIN {
                    add(&c.refused);
                } else {
                    add(&c.expired);
                }
            }
            Err(_) => {
                add(&c.connect_errors);
                if std::mem::take(&mut first) {
                    add(&c.first_attempts);
                }
            }
        }
        tokio::time::sleep(reopen).await;
    }
}

/// What the stream flood has seen so far.
#[derive(Debug, Default)]
struct StreamCounters {
    /// HTTP/2 connections up and not closed yet.
    open: AtomicU64,
    /// HTTP/2 connections made.
    connects: AtomicU64,
    /// Connects or HTTP/2 handshakes that failed.
    connect_errors: AtomicU64,
    /// Connections that ended after their handshake (the broker closed them).
    closed: AtomicU64,
    /// Calls sent (within the broker's stream cap) and not ended.
    calls_open: AtomicU64,
    /// Calls sent.
    calls_sent: AtomicU64,
    /// Calls the broker answered or reset before their message was complete
    /// (it never is): refused.
    calls_answered: AtomicU64,
    /// Message bytes sent (prefixes and bodies), as flow control let them.
    bytes_sent: AtomicU64,
    /// Connections that have filled the broker's stream cap once, or failed.
    settled: AtomicU64,
}

/// The stream flood's counters at one moment; counts since it started.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamSnapshot {
    /// HTTP/2 connections up at that moment.
    pub open: u64,
    /// HTTP/2 connections made.
    pub connects: u64,
    /// Connects or handshakes that failed.
    pub connect_errors: u64,
    /// Connections the broker closed after the handshake.
    pub closed: u64,
    /// Calls open at that moment (sent within the broker's stream cap, not
    /// ended): with a message within the broker's limit, calls it holds.
    pub calls_open: u64,
    /// Calls sent.
    pub calls_sent: u64,
    /// Calls the broker answered or reset (refused) before their end.
    pub calls_answered: u64,
    /// Message bytes sent within flow control.
    pub bytes_sent: u64,
}

impl StreamSnapshot {
    /// The counts from `earlier` to this one (the gauges are this one's).
    pub fn since(self, earlier: StreamSnapshot) -> StreamSnapshot {
        StreamSnapshot {
            open: self.open,
            connects: self.connects.saturating_sub(earlier.connects),
            connect_errors: self.connect_errors.saturating_sub(earlier.connect_errors),
            closed: self.closed.saturating_sub(earlier.closed),
            calls_open: self.calls_open,
            calls_sent: self.calls_sent.saturating_sub(earlier.calls_sent),
            calls_answered: self.calls_answered.saturating_sub(earlier.calls_answered),
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
        }
    }
}

/// HTTP/2 connections holding unfinished GetBundle calls, reopened as the
/// broker ends them; stopped when dropped.
#[derive(Debug)]
pub struct StreamFlood {
    counters: Arc<StreamCounters>,
    connections: usize,
    _tasks: JoinSet<()>,
}

impl StreamFlood {
    /// Opens `n` HTTP/2 connections to `to`, `per_source` from each address
    /// from the `first_source`-th past 127.0.0.2, each with as many GetBundle
    /// calls as the broker allows, each announcing `announce` bytes. A call
    /// the broker ends is replaced, and a connection it closes reopened,
    /// `reopen` later.
    pub fn start(
        to: SocketAddr,
        n: usize,
        per_source: usize,
        first_source: usize,
        announce: u32,
        reopen: Duration,
    ) -> StreamFlood {
        let counters = Arc::new(StreamCounters::default());
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let from = source(first_source, i, per_source);
            tasks.spawn(stream_connection(
                to,
                from,
                announce,
                reopen,
                Arc::clone(&counters),
            ));
        }
        StreamFlood {
            counters,
            connections: n,
            _tasks: tasks,
        }
    }

    /// Waits (at most `within`) until every connection has filled the
    /// broker's stream cap once (or failed), then a moment for the data flow
    /// control lets through to arrive.
    pub async fn wait_established(&self, within: Duration) {
        wait_for(
            &self.counters.settled,
            self.connections,
            within,
            Duration::from_millis(500),
        )
        .await;
    }

    /// The counters now.
    pub fn snapshot(&self) -> StreamSnapshot {
        let c = &self.counters;
        StreamSnapshot {
            open: load(&c.open),
            connects: load(&c.connects),
            connect_errors: load(&c.connect_errors),
            closed: load(&c.closed),
            calls_open: load(&c.calls_open),
            calls_sent: load(&c.calls_sent),
            calls_answered: load(&c.calls_answered),
            bytes_sent: load(&c.bytes_sent),
        }
    }
}

/// One connection of the stream flood, reopened after a pause whenever it
/// ends.
async fn stream_connection(
    to: SocketAddr,
    from: Ipv4Addr,
    announce: u32,
    reopen: Duration,
    c: Arc<StreamCounters>,
) {
    let mut settled = false;
    loop {
        match h2_connect(from, to).await {
            Ok((client, connection)) => {
                add(&c.connects);
                add(&c.open);
                // The connection's frames move only while it is polled.
                let mut driver = tokio::spawn(async move {
                    let _ = connection.await;
                });
                tokio::select! {
                    _ = &mut driver => {}
                    () = hold_streams(client, to, announce, reopen, &c, &mut settled) => {}
                }
                driver.abort();
                sub(&c.open);
                add(&c.closed);
            }
            Err(_) => add(&c.connect_errors),
        }
        if !std::mem::replace(&mut settled, true) {
            add(&c.settled);
        }
        tokio::time::sleep(reopen).await;
    }
}

type H2Client = h2::client::SendRequest<Bytes>;
type H2Connection = h2::client::Connection<TcpStream, Bytes>;

async fn h2_connect(from: Ipv4Addr, to: SocketAddr) -> anyhow::Result<(H2Client, H2Connection)> {
    let tcp = connect_from(from, to, false).await?;
    // h2 lets a client open any number of streams until the server's
    // SETTINGS say how many it allows; one at a time until then.
    let handshake = h2::client::Builder::new()
        .initial_max_send_streams(1)
        .handshake(tcp);
    Ok(tokio::time::timeout(CONNECT_TIMEOUT, handshake).await??)
}

/// One call's place in `calls_open`: taken when the call is sent, given
/// back when it ends or its task is aborted with its connection.
#[derive(Debug)]
struct Held(Arc<StreamCounters>);

impl Held {
    fn new(counters: &Arc<StreamCounters>) -> Held {
        add(&counters.calls_open);
        add(&counters.calls_sent);
        Held(Arc::clone(counters))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        sub(&self.0.calls_open);
    }
}

/// Opens GetBundle calls on `client` up to the broker's stream cap (its
/// SETTINGS_MAX_CONCURRENT_STREAMS), then one more each time the broker ends
/// one, `reopen` after it ended; returns when the connection fails. The
/// calls' tasks end with it.
async fn hold_streams(
    mut client: H2Client,
    to: SocketAddr,
    announce: u32,
    reopen: Duration,
    c: &Arc<StreamCounters>,
    settled: &mut bool,
) {
    // A call's task lives on for `reopen` after the broker ended the call,
    // and there are never more tasks than the broker's cap: so every call
    // sent is open at the broker (none waits in h2's queue), and a refused
    // call is replaced after the pause, not in a tight loop.
    let mut streams = JoinSet::new();
    loop {
        while streams.try_join_next().is_some() {}
        // Until the broker's SETTINGS arrive this is 1 (see `h2_connect`).
        let cap = client.current_max_send_streams().min(STREAMS_IF_UNLIMITED);
        if streams.len() >= cap {
            // Wait for a call to end; look at the cap again meanwhile, as
            // the broker's SETTINGS may raise it.
            if tokio::time::timeout(STREAM_CAP_WAIT, streams.join_next())
                .await
                .is_err()
                && !std::mem::replace(settled, true)
            {
                // At the cap and nothing changed for a while: the flood is
                // established on this connection.
                add(&c.settled);
            }
            continue;
        }
        if poll_fn(|cx| client.poll_ready(cx)).await.is_err() {
            return;
        }
        let Ok(request) = http::Request::builder()
            .method("POST")
            .uri(format!("http://{to}/keybroker.KeyBrokerService/GetBundle"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
        else {
            return;
        };
        let Ok((response, send)) = client.send_request(request, false) else {
            return;
        };
        let held = Held::new(c);
        let c = Arc::clone(c);
        streams.spawn(async move {
            tokio::select! {
                _ = response => add(&c.calls_answered),
                () = feed(send, announce, &c) => {}
            }
            // The call is over: its place in `calls_open` goes back now,
            // its place among this connection's tasks after the pause.
            drop(held);
            tokio::time::sleep(reopen).await;
        });
    }
}

/// Sends a gRPC frame header announcing `announce` bytes, then the body as
/// flow control lets it through, all but its last byte; then holds the
/// stream. Returns only if the stream fails.
async fn feed(mut send: h2::SendStream<Bytes>, announce: u32, c: &StreamCounters) {
    // Uncompressed flag, then the length, big-endian.
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&announce.to_be_bytes());
    let body = usize::try_from(announce).unwrap_or(usize::MAX);
    let mut left = prefix.len().saturating_add(body.saturating_sub(1));
    let mut prefix = Some(Bytes::from(prefix));
    // Ask for everything: the broker's windows decide what is granted, and
    // nothing is buffered here beyond what was granted.
    send.reserve_capacity(left);
    while left > 0 {
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            _ => return,
        }
        while send.capacity() > 0 && left > 0 {
            let chunk = match prefix.take() {
                Some(p) => p,
                None => {
                    let n = send.capacity().min(left).min(ZEROS.len());
                    Bytes::from_static(ZEROS.get(..n).unwrap_or(&ZEROS))
                }
            };
            let n = chunk.len();
            if send.send_data(chunk, false).is_err() {
                return;
            }
            left = left.saturating_sub(n);
            c.bytes_sent
                .fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
        }
    }
    // Never the last byte: the call stays unfinished until the broker ends it.
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_start_at_127_0_0_2_and_take_per_source_each() {
        assert_eq!(source(0, 0, 100), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source(0, 99, 100), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source(0, 100, 100), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source(40, 0, 100), Ipv4Addr::new(127, 0, 0, 42));
        assert_eq!(source(254, 0, 100), Ipv4Addr::new(127, 0, 1, 0));
        assert_eq!(sources_for(4000, 100), 40);
        assert_eq!(sources_for(4001, 100), 41);
    }
}
