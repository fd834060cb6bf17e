//! Which replica writes Trustee: the one holding the `trustee-writer` lease
//! in the shared database.
//!
//! Every broker process runs a keeper that tries to take (or renew) the lease
//! each [`POLL`]; the holder's Trustee writers run, the others stand by, and
//! when the holder dies its lease lapses after [`TTL`] and another takes it.
//! A database error counts as not holding: two writers are worse than a
//! moment with none, since Trustee keeps what it was last given. The keeper
//! counts its lease as lapsed [`MARGIN`] before the database would (from the
//! start of the renewal that succeeded), so that a holder cut off from the
//! database stops before another may start; writers drop a write in flight
//! when the lease goes. While it holds the lease, the keeper also watches the
//! database's reference counter, so that a registration through another
//! replica reaches Trustee as one through this one does.

use crate::broker::Broker;
use crate::store::{REFERENCE_COUNTER, TRUSTEE_WRITER};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How often the lease is renewed and the counter read.
pub const POLL: Duration = Duration::from_secs(1);
/// How long a lease lasts without renewal: a dead holder is replaced after
/// at most this long.
pub const TTL_SECS: i64 = 10;
/// How long before the database's expiry the holder stops counting on it.
pub const MARGIN: Duration = Duration::from_secs(4);
/// The longest a renewal may take before it counts as failed.
const RENEW_TIMEOUT: Duration = Duration::from_secs(2);

/// This process's name in the lease: host, pid and a random part, so that a
/// restarted process on the same host is a new holder.
pub fn holder_id() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{host}/{}/{}",
        std::process::id(),
        random.get(..8).unwrap_or(&random)
    )
}

/// Starts the keeper; the receiver says whether this process holds the lease.
/// On `stop` it gives the lease up, so that another replica takes over at
/// once.
pub fn spawn(
    broker: &Arc<Broker>,
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let broker = Arc::clone(broker);
    let holder = holder_id();
    let task = tokio::spawn(async move {
        tokio::pin!(stop);
        let mut seen: Option<i64> = None;
        let mut last_error: Option<String> = None;
        let ttl = Duration::from_secs(TTL_SECS.unsigned_abs());
        let mut valid_until: Option<tokio::time::Instant> = None;
        loop {
            let b = Arc::clone(&broker);
            let h = holder.clone();
            let renewal_started = tokio::time::Instant::now();
            let renewal = tokio::task::spawn_blocking(move || {
                let store = b.store();
                let holding = store.take_lease(TRUSTEE_WRITER, &h, TTL_SECS)?;
                let counter = if holding {
                    Some(store.counter(REFERENCE_COUNTER)?)
                } else {
                    None
                };
                Ok::<_, crate::store::StoreError>((holding, counter))
            });
            let polled = match tokio::time::timeout(RENEW_TIMEOUT, renewal).await {
                Ok(joined) => joined.map_err(|e| e.to_string()),
                Err(_) => Ok(Err(crate::store::StoreError::Db {
                    db: broker.store().location().to_owned(),
                    source: crate::store::db::DbError::Unavailable(format!(
                        "no answer within {} s",
                        RENEW_TIMEOUT.as_secs()
                    )),
                })),
            };
            let (renewed, counter) = match polled {
                Ok(Ok(v)) => {
                    last_error = None;
                    v
                }
                Ok(Err(e)) => {
                    let message = e.to_string();
                    if last_error.as_deref() != Some(message.as_str()) {
                        warn!(error = %message, "cannot renew the Trustee writer lease; standing by");
                    }
                    last_error = Some(message);
                    (false, None)
                }
                Err(e) => {
                    warn!(error = %e, "the Trustee writer lease task failed; standing by");
                    (false, None)
                }
            };
            if renewed {
                valid_until = Some(renewal_started + ttl.saturating_sub(MARGIN));
            } else if counter.is_none() && last_error.is_none() {
                // Another holder has it.
                valid_until = None;
            }
            let holding = valid_until.is_some_and(|v| v > tokio::time::Instant::now());
            if holding != *tx.borrow() {
                if holding {
                    info!(holder = %holder, "took the Trustee writer lease: this replica writes Trustee");
                } else {
                    info!("another replica holds the Trustee writer lease: standing by");
                }
                tx.send_replace(holding);
            }
            if let Some(c) = counter {
                // Changes made through other replicas since the last look.
                if seen.is_some_and(|s| s != c) {
                    broker.store().reference_changed();
                }
                seen = Some(c);
            } else {
                seen = None;
            }
            // Wake at the next renewal, or when the lease stops counting.
            let lapse = valid_until.filter(|_| holding);
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(POLL) => {}
                () = async { if let Some(at) = lapse { tokio::time::sleep_until(at).await } else { std::future::pending().await } } => {}
            }
        }
        // The writers drop what they were writing when the lease goes; give
        // them a moment to do so before another replica may take over.
        tx.send_replace(false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = Arc::clone(&broker);
        let _ =
            tokio::task::spawn_blocking(move || b.store().release_lease(TRUSTEE_WRITER, &holder))
                .await;
    });
    (rx, task)
}
