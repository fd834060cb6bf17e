//! Living under systemd: readiness and status notifications, the watchdog, and
//! logging to the journal or to a terminal.
//!
//! The notification side speaks the `sd_notify(3)` datagram protocol directly, so
//! no C library is needed; outside systemd every notification is a no-op. The
//! logging side picks journald's native protocol when stderr is the journal
//! (fields stay fields), and readable lines otherwise.

use anyhow::Context as _;
use std::io::IsTerminal as _;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// Longest STATUS= text sent, in bytes. systemd drops a notification larger than
/// its buffer (4 KiB) entirely, and an error chain can be longer than that.
const STATUS_MAX: usize = 2048;

/// Sends state changes to the service manager that started this process (the
/// `sd_notify` protocol): readiness, a one-line status, stopping, watchdog pings.
///
/// Made once at start-up. When the process was not started by systemd with
/// `Type=notify` (no `NOTIFY_SOCKET`), every method does nothing. Failures to
/// send are logged at debug level and otherwise ignored: losing a notification
/// must never stop the daemon.
#[derive(Debug, Clone)]
pub struct Notifier {
    /// The manager's notification socket; `None` outside systemd or when the
    /// address is not one we can use.
    target: Option<SocketAddr>,
    /// How often to ping the watchdog, when systemd asked this process to.
    watchdog_interval: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for through the environment (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC`, `WATCHDOG_PID`). Reads the variables and leaves them set.
    pub fn from_env() -> Notifier {
        // A value that is not UTF-8 cannot be one systemd wrote: treated as unset.
        let var = |name: &str| std::env::var(name).ok();
        Notifier::new(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
        )
    }

    /// The notifier for explicit values of `NOTIFY_SOCKET` (a path, or an
    /// abstract socket name after `@`), `WATCHDOG_USEC` and `WATCHDOG_PID`, as
    /// systemd would set them for this process. Values that cannot be used are
    /// logged at debug level and treated as unset.
    pub fn new(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Notifier {
        Notifier {
            target: notify_socket.and_then(parse_notify_socket),
            watchdog_interval: watchdog_interval(watchdog_usec, watchdog_pid, std::process::id()),
        }
    }

    /// Whether notifications go anywhere, i.e. systemd started this process with
    /// a notification socket.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up is complete (`READY=1`): systemd starts the units ordered after
    /// this one and `systemctl start` returns.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line description of what the daemon is doing (`STATUS=`), shown by
    /// `systemctl status`. Line breaks and other control characters become
    /// single spaces, and text beyond 2 KiB is cut off, since systemd would drop
    /// the whole message.
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", one_line(text, STATUS_MAX)));
    }

    /// The daemon is shutting down (`STOPPING=1`).
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// The daemon is alive (`WATCHDOG=1`); send every [`Notifier::watchdog_interval`].
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Asks for `by` more time to finish starting or stopping
    /// (`EXTEND_TIMEOUT_USEC=`), counted from now; for units with a finite
    /// start or stop timeout that must wait on something slow.
    pub fn extend_timeout(&self, by: Duration) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    /// How often to call [`Notifier::watchdog`]: half the watchdog timeout, as
    /// systemd recommends, when the unit has `WatchdogSec=` and the timeout is
    /// meant for this process (`WATCHDOG_PID` absent or ours). Never zero.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    /// Sends one notification, from a fresh socket: nothing to keep open or
    /// recover, and notifications are rare.
    fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        // Non-blocking: a notify socket whose queue is full (a reader that
        // stopped reading) must cost a lost notification, never a stuck daemon.
        let sent = UnixDatagram::unbound().and_then(|s| {
            s.set_nonblocking(true)?;
            s.send_to_addr(message.as_bytes(), target)
        });
        match sent {
            Ok(n) if n == message.len() => {}
            Ok(n) => tracing::debug!(
                notification = message,
                sent = n,
                "notification to systemd cut short"
            ),
            Err(e) => tracing::debug!(notification = message, error = %e, "cannot notify systemd"),
        }
    }
}

/// The socket address in `NOTIFY_SOCKET`, if it is one we can use.
fn parse_notify_socket(value: &str) -> Option<SocketAddr> {
    let parsed = if let Some(name) = value.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value)
    } else {
        // Empty, relative, or a kind of socket this code does not speak (newer
        // systemd also offers "vsock:CID:PORT" to virtual machines).
        if !value.is_empty() {
            tracing::debug!(
                notify_socket = value,
                "unsupported NOTIFY_SOCKET, not notifying"
            );
        }
        return None;
    };
    match parsed {
        Ok(addr) => Some(addr),
        Err(e) => {
            tracing::debug!(notify_socket = value, error = %e, "unusable NOTIFY_SOCKET, not notifying");
            None
        }
    }
}

/// Half of `WATCHDOG_USEC` when it is set, valid and meant for `own_pid`.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec = match usec?.trim().parse::<u64>() {
        Ok(0) | Err(_) => {
            tracing::debug!(watchdog_usec = usec, "unusable WATCHDOG_USEC, no watchdog");
            return None;
        }
        Ok(n) => n,
    };
    if let Some(pid) = pid {
        // The variables may have been inherited from a parent that is the
        // supervised process; its watchdog is not ours to feed.
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    // A 1 µs timeout would otherwise give a zero period, which timers reject.
    Some(Duration::from_micros((usec / 2).max(1)))
}

/// `text` on one line: every run of control characters (line breaks, tabs,
/// NULs, which systemd rejects) becomes one space, and the result is cut at a
/// character boundary to at most `max` bytes.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for piece in text
        .split(char::is_control)
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(piece);
    }
    if out.len() > max {
        let mut end = max;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// Where [`init_logging`] sends log events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The journal, natively: span and event fields become journal fields
    /// (prefixed `F_`, e.g. `F_NODE`), with the identifier `host-agent`.
    Journal,
    /// Readable lines with colours on stderr, a terminal.
    Terminal,
    /// Readable lines without colours on stderr: a file, a pipe, or a journal
    /// stream whose journald could not be reached natively.
    Plain,
}

/// Installs the process-wide logger: the journal when stderr is connected to it
/// (systemd's `JOURNAL_STREAM` names stderr's device and inode), readable lines
/// on stderr otherwise. The level filter comes from `RUST_LOG` when set, else
/// from `default_filter` (e.g. `"info"`, `"info,host_agent=debug"`).
///
/// # Errors
///
/// When a filter is invalid, or when a logger is already installed (call it
/// once, at start-up).
pub fn init_logging(default_filter: &str) -> anyhow::Result<LogTarget> {
    let filter = log_filter(default_filter)?;
    let mut journal_error = None;
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    // Not the executable's name, which could be a symbolic link.
                    .with_syslog_identifier("host-agent".to_string())
                    // The default maps info to "notice" and debug to "info", so
                    // `journalctl -p info` would show debug events.
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    });
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init()
                    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
                return Ok(LogTarget::Journal);
            }
            // The stream still reaches the journal, as plain lines.
            Err(e) => journal_error = Some(e),
        }
    }
    let terminal = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    if let Some(e) = journal_error {
        tracing::warn!("cannot reach journald ({e}): logging plain lines to stderr");
    }
    Ok(if terminal {
        LogTarget::Terminal
    } else {
        LogTarget::Plain
    })
}

/// `RUST_LOG` if set and not blank, else `default_filter`.
fn log_filter(default_filter: &str) -> anyhow::Result<EnvFilter> {
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(&value)
            .with_context(|| format!("RUST_LOG={value:?} is not a valid log filter")),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("RUST_LOG is not valid UTF-8"),
        _ => EnvFilter::try_new(default_filter)
            .with_context(|| format!("{default_filter:?} is not a valid log filter")),
    }
}

/// Whether stderr is the stream systemd connected to the journal. Checking the
/// inode, not just the variable, matters: a child started from a service inherits
/// `JOURNAL_STREAM` even when its stderr goes elsewhere.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(st) => journal_stream_matches(&value, &st.st_dev.to_string(), &st.st_ino.to_string()),
        Err(_) => false,
    }
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, in decimal) names the file whose
/// device and inode numbers are given, in decimal.
fn journal_stream_matches(value: &str, dev: &str, ino: &str) -> bool {
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    match (number(d), number(i)) {
        (Some(d), Some(i)) => Some(d) == number(dev) && Some(i) == number(ino),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket standing in for systemd's, with a timeout so a missing message
    /// fails the test instead of hanging it.
    fn listener(addr: &SocketAddr) -> UnixDatagram {
        let socket = UnixDatagram::bind_addr(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 8192];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notifies_a_socket_in_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = listener(&SocketAddr::from_pathname(&path).unwrap());
        let notifier = Notifier::new(path.to_str(), None, None);
        assert!(notifier.is_enabled());

        notifier.ready();
        assert_eq!(receive(&socket), "READY=1");
        notifier.status("waiting for the key broker:\nconnection refused\r\n");
        assert_eq!(
            receive(&socket),
            "STATUS=waiting for the key broker: connection refused"
        );
        notifier.status("tab\there\0nul");
        assert_eq!(receive(&socket), "STATUS=tab here nul");
        notifier.watchdog();
        assert_eq!(receive(&socket), "WATCHDOG=1");
        notifier.extend_timeout(Duration::from_secs(2));
        assert_eq!(receive(&socket), "EXTEND_TIMEOUT_USEC=2000000");
        notifier.stopping();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn notifies_an_abstract_socket() {
        let name = format!(
            "host-agent-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let socket = listener(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap());
        let notifier = Notifier::new(Some(&format!("@{name}")), None, None);
        assert!(notifier.is_enabled());
        notifier.ready();
        assert_eq!(receive(&socket), "READY=1");
        notifier.status("registered");
        assert_eq!(receive(&socket), "STATUS=registered");
    }

    #[test]
    fn long_status_is_cut_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = listener(&SocketAddr::from_pathname(&path).unwrap());
        let notifier = Notifier::new(path.to_str(), None, None);
        // Three-byte characters, so the cut must move back to a boundary.
        notifier.status(&"€".repeat(5000));
        let got = receive(&socket);
        let text = got.strip_prefix("STATUS=").unwrap();
        assert_eq!(text.len(), 2046);
        assert!(text.chars().all(|c| c == '€'));
    }

    #[test]
    fn outside_systemd_nothing_is_sent_and_nothing_fails() {
        for socket in [None, Some(""), Some("relative/path"), Some("vsock:2:1234")] {
            let notifier = Notifier::new(socket, None, None);
            assert!(!notifier.is_enabled(), "{socket:?}");
            notifier.ready();
            notifier.status("x");
            notifier.watchdog();
            notifier.stopping();
        }
        // A socket nobody listens on: the send fails, quietly.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody");
        let notifier = Notifier::new(path.to_str(), None, None);
        assert!(notifier.is_enabled());
        notifier.ready();
        // Longer than a socket path may be.
        let long = format!("/{}", "x".repeat(200));
        assert!(!Notifier::new(Some(&long), None, None).is_enabled());
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process() {
        let own = std::process::id();
        let other = own.wrapping_add(1).to_string();
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), None, own), half);
        assert_eq!(
            watchdog_interval(Some("30000000"), Some(&own.to_string()), own),
            half
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some(&other), own), None);
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("garbage"), own),
            None
        );
        assert_eq!(watchdog_interval(None, Some(&own.to_string()), own), None);
        assert_eq!(watchdog_interval(Some("0"), None, own), None);
        assert_eq!(watchdog_interval(Some("-5"), None, own), None);
        assert_eq!(watchdog_interval(Some("soon"), None, own), None);
        assert_eq!(
            watchdog_interval(Some("1"), None, own),
            Some(Duration::from_micros(1))
        );
        assert_eq!(
            watchdog_interval(Some("3"), None, own),
            Some(Duration::from_micros(1))
        );

        // Through the public constructor, which compares with our own pid.
        let n = Notifier::new(None, Some("20000000"), Some(&own.to_string()));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(10)));
        let n = Notifier::new(None, Some("20000000"), Some(&other));
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn one_line_joins_lines_and_cuts_at_boundaries() {
        assert_eq!(one_line("a\nb", 100), "a b");
        assert_eq!(one_line("\n  a  \r\n\r\n b \n", 100), "a b");
        assert_eq!(one_line("", 100), "");
        assert_eq!(one_line("abcdef", 3), "abc");
        assert_eq!(one_line("aé", 2), "a");
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(journal_stream_matches("2049:123456", "2049", "123456"));
        assert!(!journal_stream_matches("2049:123456", "2049", "123457"));
        assert!(!journal_stream_matches("2050:123456", "2049", "123456"));
        assert!(!journal_stream_matches("2049", "2049", "123456"));
        assert!(!journal_stream_matches(":", "", ""));
        assert!(!journal_stream_matches("", "2049", "123456"));
    }

    #[test]
    fn a_full_notify_socket_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _socket = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.to_str().unwrap()), None, None);
        // Nobody reads: the queue fills after a few messages, and the rest are dropped.
        let started = std::time::Instant::now();
        for i in 0..2000 {
            n.status(&format!("message {i}"));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
