//! How many refusals become attestation records. Anyone may call the
//! keybroker port, so recording every refusal one by one lets a client fill
//! the disk; metrics count every call, and the records keep the first ones of
//! each kind in a window and then one summary with how many more there were.
//!
//! A kind is the RPC and the refusal reason. This module only decides; the
//! broker writes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to do with one refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Record it as usual.
    Record,
    /// Count it into the window's summary instead.
    Suppress,
}

/// A summary of refusals that were not recorded one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The RPC.
    pub rpc: String,
    /// The refusal reason.
    pub reason: String,
    /// How many were not recorded.
    pub suppressed: u64,
    /// Over how long, in seconds.
    pub seconds: u64,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    recorded: u32,
    suppressed: u64,
}

/// The per-kind windows.
#[derive(Debug)]
pub struct RefusalLog {
    per_window: u32,
    window: Duration,
    kinds: Mutex<HashMap<(String, String), Window>>,
}

/// At most this many kinds are tracked; past it, refusals of new kinds are
/// suppressed until the next flush (a client cannot grow the map: reasons
/// are the broker's own fixed texts, so this only bounds a future mistake).
const MAX_KINDS: usize = 1024;

impl RefusalLog {
    /// Records at most `per_window` refusals of each kind every `window`.
    pub fn new(per_window: u32, window: Duration) -> RefusalLog {
        RefusalLog {
            per_window,
            window,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this refusal is recorded, at `now`. A kind whose window has
    /// passed starts a new one; its summary is returned by [`RefusalLog::flush`].
    pub fn admit(&self, rpc: &str, reason: &str, now: Instant) -> Verdict {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let len = kinds.len();
        let key = (rpc.to_string(), reason.to_string());
        let w = match kinds.get_mut(&key) {
            Some(w) => w,
            None if len >= MAX_KINDS => return Verdict::Suppress,
            None => kinds.entry(key).or_insert(Window {
                started: now,
                recorded: 0,
                suppressed: 0,
            }),
        };
        if w.recorded < self.per_window {
            w.recorded += 1;
            Verdict::Record
        } else {
            w.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// The summaries of windows that have passed at `now` (and, with `all`,
    /// of every window: at shutdown), which are then forgotten.
    pub fn flush(&self, now: Instant, all: bool) -> Vec<Summary> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        kinds.retain(|(rpc, reason), w| {
            let passed = now.saturating_duration_since(w.started) >= self.window;
            if !(passed || all) {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Summary {
                    rpc: rpc.clone(),
                    reason: reason.clone(),
                    suppressed: w.suppressed,
                    seconds: now.saturating_duration_since(w.started).as_secs(),
                });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_records_its_first_ones_then_one_summary() {
        let log = RefusalLog::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..10)
            .map(|_| log.admit("GetSecret", "launch id unknown", t0))
            .collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Record).count(),
            3
        );
        // Another kind has its own budget.
        assert_eq!(
            log.admit("GetBundle", "untrusted chain", t0),
            Verdict::Record
        );
        assert!(log.flush(t0 + Duration::from_secs(10), false).is_empty());
        let s = log.flush(t0 + Duration::from_secs(61), false);
        assert_eq!(
            s,
            [Summary {
                rpc: "GetSecret".into(),
                reason: "launch id unknown".into(),
                suppressed: 7,
                seconds: 61,
            }]
        );
        // A new window records again.
        assert_eq!(
            log.admit(
                "GetSecret",
                "launch id unknown",
                t0 + Duration::from_secs(62)
            ),
            Verdict::Record
        );
    }
}
