//! Which replica writes Trustee: the one holding the `trustee-writer` lease
//! in the shared database.
//!
//! Every broker process runs a keeper that tries to take (or renew) the lease
//! each [`POLL`]; the holder's Trustee writers run, the others stand by, and
//! when the holder dies its lease lapses after [`TTL`] and another takes it.
//! A database error counts as not holding: two writers are worse than a
//! moment with none, since Trustee keeps what it was last given. While it
//! holds the lease, the keeper also watches the database's reference
//! counter, so that a registration through another replica reaches Trustee
//! as one through this one does.

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
        loop {
            let b = Arc::clone(&broker);
            let h = holder.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let store = b.store();
                let holding = store.take_lease(TRUSTEE_WRITER, &h, TTL_SECS)?;
                let counter = if holding {
                    Some(store.counter(REFERENCE_COUNTER)?)
                } else {
                    None
                };
                Ok::<_, crate::store::StoreError>((holding, counter))
            })
            .await;
            let (holding, counter) = match polled {
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
                    broker.store().announce_reference_change();
                }
                seen = Some(c);
            } else {
                seen = None;
            }
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(POLL) => {}
            }
        }
        let b = Arc::clone(&broker);
        let _ =
            tokio::task::spawn_blocking(move || b.store().release_lease(TRUSTEE_WRITER, &holder))
                .await;
    });
    (rx, task)
}
