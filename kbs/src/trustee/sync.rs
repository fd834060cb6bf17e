//! The single writer: keeps each Trustee's reference values equal to what the
//! fleet registered. After any change of SNP digests, reported TCBs or pins it
//! writes the whole union of every name it owns in one registration
//! (debounced), then reads it back; on start, every reconcile period and after
//! any failure it reads what Trustee holds and writes again if anything
//! differs (Trustee restarted on empty storage, someone overwrote a name);
//! and it rewrites at least every [`REFRESH_AFTER`] of its own uptime, so that
//! a Trustee that enforces the expiry it records (a year ahead) never reaches
//! it. While Trustee is down it retries with backoff.

use super::client::{PolicyVerdict, Target, TrusteeError};
use super::values::{differences, Difference, ReferenceValues, NAMES};
use crate::broker::Broker;
use crate::metrics::Metrics;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn, Instrument as _};

/// Trustee's RVPS records an expiry a year ahead of each registration;
/// rewriting monthly keeps far from it.
pub const REFRESH_AFTER: Duration = Duration::from_secs(30 * 86_400);
/// A fixed wait after a change before writing, to gather what arrives at
/// once. Changes that arrive while a write is in flight are taken together by
/// the next one anyway (the writer is sequential), so a burst of
/// registrations (a fleet restarting) gives a few writes, not one each.
pub const DEBOUNCE: Duration = Duration::from_millis(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the broker knows about one Trustee, for status.
#[derive(Debug, Clone, Default)]
pub struct InstanceStatus {
    /// The KBS URL or RVPS address.
    pub target: String,
    /// The last call got an answer.
    pub reachable: bool,
    /// The last failure, while failing.
    pub last_error: Option<String>,
    /// Unix seconds of the last write, if any.
    pub last_write_at: Option<i64>,
    /// Unix seconds of the last read-back.
    pub last_check_at: Option<i64>,
    /// The resource policy's verdict.
    pub policy: Option<PolicyVerdict>,
    /// What the broker wants Trustee to hold.
    pub want: ReferenceValues,
    /// What Trustee held at the last read-back, by name.
    pub held: BTreeMap<String, Option<Value>>,
    /// How that differed from what it should hold.
    pub differences: Vec<Difference>,
    /// Registrations written since start.
    pub writes: u64,
}

/// The status of every Trustee, shared with the admin API.
#[derive(Debug, Default)]
pub struct Board {
    enabled: std::sync::atomic::AtomicBool,
    instances: Mutex<Vec<InstanceStatus>>,
}

impl Board {
    /// Whether the broker writes to any Trustee.
    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A copy of every instance's status.
    pub fn instances(&self) -> Vec<InstanceStatus> {
        self.instances.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut InstanceStatus)) {
        if let Ok(mut v) = self.instances.lock() {
            if let Some(s) = v.get_mut(index) {
                f(s);
            }
        }
    }
}

/// How the writer runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often Trustee is read back.
    pub reconcile: Duration,
}

/// What Trustee should hold now, from the store.
async fn desired(broker: &Arc<Broker>) -> Result<ReferenceValues, String> {
    let b = Arc::clone(broker);
    tokio::task::spawn_blocking(move || {
        let honour_node = b.honours_node_digests();
        let store = b.store();
        let measurements = store.snp_measurements(honour_node)?;
        let reported = store.node_tcbs()?;
        let pin = store.tcb_pin()?;
        Ok::<_, crate::store::StoreError>(ReferenceValues::desired(
            &measurements,
            &reported,
            honour_node,
            &pin,
        ))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Reads every owned name.
async fn read_all(target: &Target) -> Result<BTreeMap<String, Option<Value>>, TrusteeError> {
    let mut held = BTreeMap::new();
    for name in NAMES {
        held.insert(name.to_string(), target.read(name).await?);
    }
    Ok(held)
}

fn unix_now() -> i64 {
    crate::store::now()
}

/// Starts one writer per target; they write while `holding` (this process
/// holds the writer lease, see [`super::lease`]) and run until `stop`
/// resolves.
pub fn spawn(
    broker: &Arc<Broker>,
    targets: Vec<Target>,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    holding: &tokio::sync::watch::Receiver<bool>,
    stop: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let board = broker.trustee();
    if let Ok(mut v) = board.instances.lock() {
        *v = targets
            .iter()
            .map(|t| InstanceStatus {
                target: t.name(),
                ..InstanceStatus::default()
            })
            .collect();
    }
    board
        .enabled
        .store(!targets.is_empty(), std::sync::atomic::Ordering::Relaxed);
    targets
        .into_iter()
        .enumerate()
        .map(|(index, target)| {
            let writer = Writer {
                index,
                name: target.name(),
                target,
                broker: Arc::clone(broker),
                metrics: Arc::clone(metrics),
                settings: settings.clone(),
                holding: holding.clone(),
            };
            let span = tracing::info_span!("trustee", target = %writer.name);
            tokio::spawn(writer.run(stop()).instrument(span))
        })
        .collect()
}

struct Writer {
    index: usize,
    name: String,
    target: Target,
    broker: Arc<Broker>,
    metrics: Arc<Metrics>,
    settings: Settings,
    holding: tokio::sync::watch::Receiver<bool>,
}

/// Why Trustee was written.
#[derive(Debug, Clone, Copy)]
enum Why {
    Changed,
    Drifted,
    Refresh,
}

impl Writer {
    async fn run(mut self, stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        tokio::pin!(stop);
        let mut changes = self.broker.store().subscribe_reference_changes();
        let mut check = true;
        let mut written: Option<(ReferenceValues, Instant)> = None;
        let mut backoff = BACKOFF_FIRST;
        let mut last_error: Option<String> = None;
        let mut reconcile = tokio::time::interval(self.settings.reconcile);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconcile.tick().await;
        loop {
            if !*self.holding.borrow_and_update() {
                // Another replica writes; on taking over, read Trustee back
                // first: the other may have left it in any state.
                loop {
                    tokio::select! {
                        () = &mut stop => return,
                        changed = self.holding.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if *self.holding.borrow_and_update() {
                                break;
                            }
                        }
                    }
                }
                check = true;
            }
            changes.mark_unchanged();
            // A write in flight is dropped when the lease goes: another
            // replica may be writing by then.
            let mut lost = self.holding.clone();
            let stepped = tokio::select! {
                biased;
                () = until_lost(&mut lost) => continue,
                r = self.step(&mut check, &mut written) => r,
            };
            match stepped {
                Ok(()) => {
                    backoff = BACKOFF_FIRST;
                    if last_error.take().is_some() {
                        info!("Trustee holds the broker's reference values again");
                    }
                }
                Err(e) => {
                    self.metrics.trustee_failure(&self.name);
                    let message = e.to_string();
                    if last_error.as_deref() != Some(message.as_str()) {
                        warn!(
                            retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(0),
                            "{message}"
                        );
                    }
                    self.broker.trustee().update(self.index, |s| {
                        s.reachable =
                            !matches!(e, StepError::Trustee(TrusteeError::Unreachable { .. }));
                        s.last_error = Some(message.clone());
                    });
                    last_error = Some(message);
                    check = true;
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
            tokio::select! {
                () = &mut stop => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                }
                _ = reconcile.tick() => check = true,
                _ = self.holding.changed() => {}
            }
        }
    }

    async fn step(
        &self,
        check: &mut bool,
        written: &mut Option<(ReferenceValues, Instant)>,
    ) -> Result<(), StepError> {
        let want = desired(&self.broker).await.map_err(StepError::Store)?;
        let refresh = written
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= REFRESH_AFTER);
        let changed = written.as_ref().is_none_or(|(w, _)| *w != want);
        if !*check && !changed && !refresh {
            return Ok(());
        }
        let mut why = if refresh { Why::Refresh } else { Why::Changed };
        if *check || written.is_none() {
            let held = read_all(&self.target).await?;
            // The broker's role needs only the reference-value path: a
            // policy it may not read is unknown, not a failure.
            let policy = match self.target.policy().await {
                Ok(p) => p,
                Err(TrusteeError::Unauthorized { .. }) => PolicyVerdict::Unknown(
                    "the broker's admin role may not read the resource policy".into(),
                ),
                Err(e) => PolicyVerdict::Unknown(format!("cannot read it: {e}")),
            };
            self.note_policy(&policy);
            let diffs = differences(&want, &held);
            self.note_held(&want, held, diffs.clone());
            if diffs.is_empty() && !refresh {
                *written = Some((
                    want,
                    written.as_ref().map_or_else(Instant::now, |(_, at)| *at),
                ));
                *check = false;
                self.metrics
                    .trustee_state(&self.name, true, policy_gauge(&policy));
                return Ok(());
            }
            if !diffs.is_empty() && written.is_some() {
                why = Why::Drifted;
                let summary: Vec<String> = diffs.iter().map(Difference::describe).collect();
                warn!(
                    differences = %summary.join("; "),
                    "Trustee does not hold the broker's reference values; writing them again"
                );
            }
        }
        if !*self.holding.borrow() {
            return Err(StepError::LeaseLost);
        }
        self.target.write(&want).await?;
        self.metrics.trustee_write(&self.name);
        let at = unix_now();
        self.broker.trustee().update(self.index, |s| {
            s.last_write_at = Some(at);
            s.writes += 1;
        });
        // Read back what was written: Trustee must hold exactly it.
        let held = read_all(&self.target).await?;
        let diffs = differences(&want, &held);
        self.note_held(&want, held, diffs.clone());
        if !diffs.is_empty() {
            let summary: Vec<String> = diffs.iter().map(Difference::describe).collect();
            return Err(StepError::NotKept(summary.join("; ")));
        }
        info!(
            measurements = want.0.get(super::values::MEASUREMENT).map_or(0, Vec::len),
            reason = ?why,
            "wrote the reference values to Trustee"
        );
        let policy = self
            .broker
            .trustee()
            .instances()
            .get(self.index)
            .and_then(|s| s.policy.clone());
        self.metrics
            .trustee_state(&self.name, true, policy.as_ref().map_or(-1, policy_gauge));
        *written = Some((want, Instant::now()));
        *check = false;
        Ok(())
    }

    fn note_held(
        &self,
        want: &ReferenceValues,
        held: BTreeMap<String, Option<Value>>,
        diffs: Vec<Difference>,
    ) {
        let at = unix_now();
        self.broker.trustee().update(self.index, |s| {
            s.reachable = true;
            s.last_error = None;
            s.last_check_at = Some(at);
            s.want = want.clone();
            s.held = held;
            s.differences = diffs;
        });
    }

    fn note_policy(&self, policy: &PolicyVerdict) {
        let previous = self
            .broker
            .trustee()
            .instances()
            .get(self.index)
            .and_then(|s| s.policy.clone());
        if previous.as_ref() != Some(policy) && *policy != PolicyVerdict::Affirming {
            warn!(
                "Trustee's resource policy: {policy}; unless it requires an affirming verdict, \
                 Trustee releases resources whatever the reference values say"
            );
        }
        let p = policy.clone();
        self.broker
            .trustee()
            .update(self.index, |s| s.policy = Some(p));
    }
}

fn policy_gauge(p: &PolicyVerdict) -> i64 {
    match p {
        PolicyVerdict::Affirming => 1,
        PolicyVerdict::NotAffirming(_) => 0,
        PolicyVerdict::Unknown(_) => -1,
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Trustee(#[from] TrusteeError),
    #[error("the broker's database: {0}")]
    Store(String),
    #[error("Trustee did not keep what was written: {0}")]
    NotKept(String),
    #[error("the Trustee writer lease went before the write")]
    LeaseLost,
}

/// Returns once `holding` says the lease is gone (or its keeper ended).
async fn until_lost(holding: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if !*holding.borrow_and_update() {
            return;
        }
        if holding.changed().await.is_err() {
            return;
        }
    }
}
