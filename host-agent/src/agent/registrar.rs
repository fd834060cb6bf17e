//! Keeps the key broker's digests for this node equal to the derived ones.
//!
//! The registrar owns the connection. It is told the complete desired state
//! (runtime class to digest set; an empty set means "remove") and replaces each
//! class that differs from what it last registered, in one call per class. When
//! the broker is unreachable it retries with exponential backoff and catches up
//! with the latest desired state as soon as the broker answers again; no
//! intermediate state is replayed.

use super::config::{AgentConfig, KbsTarget};
use super::inputs::{approve_hints, ClassRegistration};
use super::metrics::Metrics;
use super::status::{unix_now, AgentStatus, ClassState};
use kbs_proto::admin_client::{self, Client};
use kbs_proto::kbsadmin::{
    Digest, ListDigestsRequest, RegisterLaunchesRequest, ReplaceDigestsRequest,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

/// What the broker should hold, per runtime class (an empty registration
/// removes the class).
pub type Desired = BTreeMap<String, ClassRegistration>;

/// What the registrar reports back to the daemon's loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Every class of desired state `generation` is registered.
    InStep {
        /// The generation.
        generation: u64,
    },
    /// Classes the broker holds for this node that no configuration gives now
    /// (left by an earlier run): the daemon decides when to remove them.
    Orphans(Vec<String>),
}

/// A digest set in a canonical order, for comparing.
fn canonical(set: &[Digest]) -> Vec<(String, Vec<u8>, u32, String)> {
    let mut v: Vec<_> = set
        .iter()
        .map(|d| {
            (
                d.mode.clone(),
                d.digest.clone(),
                d.vcpus,
                d.vcpu_type.clone(),
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The registrar's handle on the world.
pub struct Registrar {
    config: AgentConfig,
    node: String,
    status: Arc<Mutex<AgentStatus>>,
    metrics: Metrics,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    /// The platform TCB last sent with each class's SNP launches, since the
    /// connection was made: the broker's digest list does not show it, and a
    /// firmware update changes it without changing a digest.
    platforms_sent: Mutex<BTreeMap<String, kbs_proto::kbsadmin::PlatformTcb>>,
}

/// A failure, with whether to drop the connection.
struct Failure {
    message: String,
    reconnect: bool,
}

impl Registrar {
    /// A registrar for `node`.
    pub fn new(
        config: AgentConfig,
        node: String,
        status: Arc<Mutex<AgentStatus>>,
        metrics: Metrics,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
    ) -> Registrar {
        Registrar {
            config,
            node,
            status,
            metrics,
            reports,
            platforms_sent: Mutex::new(BTreeMap::new()),
        }
    }

    /// Classes whose desired state differs from what the broker holds.
    fn differs(&self, want: &Desired, held: &BTreeMap<String, Vec<Digest>>) -> Vec<String> {
        let sent = self
            .platforms_sent
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let mut out = differs(want, held);
        for (class, reg) in want {
            if let Some(p) = &reg.platform {
                if sent.get(class) != Some(p) && !out.contains(class) {
                    out.push(class.clone());
                }
            }
        }
        out
    }

    async fn connect(&self) -> Result<Client, Failure> {
        let timeout = self.config.kbs_timeout();
        let result = match self.config.kbs_target() {
            KbsTarget::Socket(path) => admin_client::connect_unix(&path, timeout).await,
            KbsTarget::Tcp {
                endpoint,
                token_file,
                ca_file,
            } => match admin_client::read_token(&token_file) {
                Ok(token) => {
                    admin_client::connect_tcp(&endpoint, &token, ca_file.as_deref(), timeout).await
                }
                Err(e) => Err(e),
            },
        };
        result.map_err(|e| Failure {
            message: e.to_string(),
            reconnect: true,
        })
    }

    fn note_kbs(&self, result: Result<(), &str>) {
        if let Ok(mut s) = self.status.lock() {
            match result {
                Ok(()) => {
                    s.kbs.reachable = true;
                    s.kbs.last_error = None;
                }
                Err(e) => {
                    s.kbs.reachable = false;
                    s.kbs.last_error = Some(e.to_string());
                }
            }
        }
    }

    /// What the broker already holds for this node, so that a restart with
    /// nothing changed makes no calls.
    async fn learn(&self, client: &mut Client) -> Result<BTreeMap<String, Vec<Digest>>, Failure> {
        let listed = client
            .list_digests(ListDigestsRequest {
                node: self.node.clone(),
                runtime_class: String::new(),
            })
            .await
            .map_err(|s| status_failure("ListDigests", &s))?
            .into_inner();
        let mut held: BTreeMap<String, Vec<Digest>> = BTreeMap::new();
        for r in listed.digests {
            if r.node != self.node {
                continue;
            }
            if let Some(d) = r.digest {
                held.entry(r.runtime_class).or_default().push(d);
            }
        }
        Ok(held)
    }

    async fn replace(
        &self,
        client: &mut Client,
        class: &str,
        reg: &ClassRegistration,
    ) -> Result<u32, Failure> {
        let span = tracing::info_span!(
            "register",
            runtime_class = class,
            digests = reg.digests.len()
        );
        async {
            let count = match &reg.inputs {
                Some(inputs) if !reg.is_empty() => {
                    let asked = client
                        .register_launches(RegisterLaunchesRequest {
                            node: self.node.clone(),
                            inputs: Some(inputs.clone()),
                            launches: reg.launches.clone(),
                            platform: reg.platform.clone(),
                        })
                        .await;
                    match asked {
                        Ok(reply) => reply.into_inner().count,
                        // A broker from before registration by inputs.
                        Err(s) if s.code() == tonic::Code::Unimplemented => {
                            self.replace_digests(client, class, &reg.digests).await?
                        }
                        Err(s) => return Err(refusal(&s, reg)),
                    }
                }
                _ => self.replace_digests(client, class, &reg.digests).await?,
            };
            if reg.is_empty() {
                info!("removed the digests of {class} from the key broker");
            } else {
                info!(count, "registered the digests of {class}");
            }
            Ok(count)
        }
        .instrument(span)
        .await
    }

    async fn replace_digests(
        &self,
        client: &mut Client,
        class: &str,
        digests: &[Digest],
    ) -> Result<u32, Failure> {
        Ok(client
            .replace_digests(ReplaceDigestsRequest {
                node: self.node.clone(),
                runtime_class: class.to_string(),
                digests: digests.to_vec(),
            })
            .await
            .map_err(|s| status_failure("ReplaceDigests", &s))?
            .into_inner()
            .count)
    }

    fn mark(&self, class: &str, result: Result<u32, &str>) {
        let Ok(mut s) = self.status.lock() else {
            return;
        };
        let now = unix_now();
        if result.is_ok() {
            s.kbs.last_success_at = Some(now);
        }
        if let Some(c) = s.classes.get_mut(class) {
            match result {
                Ok(count) => {
                    c.registered_at = Some(now);
                    c.registered_digests = Some(count);
                    c.registration_error = None;
                    if c.state == ClassState::Pending {
                        c.state = ClassState::Registered;
                    }
                }
                Err(e) => c.registration_error = Some(e.to_string()),
            }
        }
    }

    /// Runs until `desired` is closed.
    pub async fn run(self, mut desired: watch::Receiver<(u64, Desired)>) {
        let retry_max = Duration::from_secs(self.config.kbs.retry_max_seconds);
        let reconcile = Duration::from_secs(self.config.kbs.reconcile_seconds);
        let mut backoff = Duration::from_millis(100);
        let mut client: Option<Client> = None;
        // None until learnt from the broker.
        let mut held: Option<BTreeMap<String, Vec<Digest>>> = None;
        let mut reported_generation = None;
        loop {
            let (generation, want) = desired.borrow_and_update().clone();
            let outcome = self.step(&mut client, &mut held, &want).await;
            match outcome {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if generation > 0 && reported_generation != Some(generation) {
                        reported_generation = Some(generation);
                        let _ = self.reports.send(Report::InStep { generation });
                    }
                    tokio::select! {
                        changed = desired.changed() => if changed.is_err() {
                            return;
                        },
                        () = tokio::time::sleep(reconcile) => {
                            // Read back what the broker holds: it may have
                            // lost or been told to drop what we sent.
                            held = None;
                        }
                    }
                }
                Err(f) => {
                    self.metrics.registration_failures.inc();
                    warn!(
                        kbs = %self.config.kbs_target(),
                        retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "{}",
                        f.message
                    );
                    if f.reconnect {
                        // A new connection may reach a broker that has
                        // restarted since: learn what it holds again.
                        client = None;
                        held = None;
                        if let Ok(mut m) = self.platforms_sent.lock() {
                            m.clear();
                        }
                    }
                    // Wait out the backoff; a new desired state does not cut it
                    // short, so a flapping broker is not hammered.
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(retry_max);
                    if desired.has_changed().is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One pass: connect if needed, learn what the broker holds, replace what differs.
    async fn step(
        &self,
        client: &mut Option<Client>,
        held: &mut Option<BTreeMap<String, Vec<Digest>>>,
        want: &Desired,
    ) -> Result<(), Failure> {
        if let Some(h) = held.as_ref() {
            if self.differs(want, h).is_empty() {
                self.mark_held(want, h);
                return Ok(());
            }
        }
        let result = self.step_connected(client, held, want).await;
        match &result {
            Ok(()) => self.note_kbs(Ok(())),
            Err(f) => self.note_kbs(Err(&f.message)),
        }
        if let Some(h) = held.as_ref() {
            self.mark_held(want, h);
        }
        result
    }

    /// Marks registered every class whose status does not say so yet although
    /// the broker holds exactly what is wanted: a configuration fixed to give
    /// the digests registered before needs no call, but is registered.
    fn mark_held(&self, want: &Desired, held: &BTreeMap<String, Vec<Digest>>) {
        let unmarked: Vec<(String, u32)> = {
            let Ok(s) = self.status.lock() else {
                return;
            };
            want.iter()
                .filter(|(_, reg)| !reg.is_empty())
                .filter(|(class, _)| {
                    s.classes.get(*class).is_some_and(|c| {
                        c.state == ClassState::Pending || c.registered_at.is_none()
                    })
                })
                .filter_map(|(class, reg)| {
                    let set = canonical(&reg.digests);
                    (held.get(class).map(|h| canonical(h)) == Some(set.clone()))
                        .then(|| (class.clone(), u32::try_from(set.len()).unwrap_or(u32::MAX)))
                })
                .collect()
        };
        for (class, count) in unmarked {
            self.mark(&class, Ok(count));
        }
    }

    async fn step_connected(
        &self,
        client: &mut Option<Client>,
        held: &mut Option<BTreeMap<String, Vec<Digest>>>,
        want: &Desired,
    ) -> Result<(), Failure> {
        let c = match client {
            Some(c) => c,
            None => client.insert(self.connect().await?),
        };
        let h = match held {
            Some(h) => h,
            None => {
                let learnt = self.learn(c).await?;
                let orphans: Vec<String> = learnt
                    .keys()
                    .filter(|k| !want.contains_key(*k))
                    .cloned()
                    .collect();
                if !orphans.is_empty() {
                    let _ = self.reports.send(Report::Orphans(orphans));
                }
                // What the broker already holds from an earlier run counts as
                // registered: a restart with nothing changed makes no calls.
                for (class, reg) in want {
                    let set = &reg.digests;
                    if !set.is_empty()
                        && learnt.get(class).map(|h| canonical(h)) == Some(canonical(set))
                    {
                        let count = u32::try_from(canonical(set).len()).unwrap_or(u32::MAX);
                        self.mark(class, Ok(count));
                    }
                }
                held.insert(learnt)
            }
        };
        // A class the broker refuses does not hold up the others; the pass
        // still fails, so that it is retried (with backoff) until an operator
        // approves what it needs.
        let mut refused = None;
        for class in self.differs(want, h) {
            let Some(reg) = want.get(&class) else {
                continue;
            };
            match self.replace(c, &class, reg).await {
                Ok(count) => {
                    self.metrics.registered(&class);
                    self.mark(&class, Ok(count));
                    if let Ok(mut m) = self.platforms_sent.lock() {
                        match &reg.platform {
                            Some(p) => m.insert(class.clone(), p.clone()),
                            None => m.remove(&class),
                        };
                    }
                    if reg.is_empty() {
                        h.remove(&class);
                    } else {
                        h.insert(class.clone(), reg.digests.clone());
                    }
                }
                Err(f) => {
                    self.mark(&class, Err(&f.message));
                    if f.reconnect {
                        return Err(f);
                    }
                    refused.get_or_insert(f);
                }
            }
        }
        match refused {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// Classes whose desired set differs from what the broker holds; removing a
/// class the broker does not hold is no difference.
fn differs(want: &Desired, held: &BTreeMap<String, Vec<Digest>>) -> Vec<String> {
    want.iter()
        .filter(|(class, reg)| match held.get(*class) {
            Some(h) => canonical(h) != canonical(&reg.digests),
            None => !reg.is_empty(),
        })
        .map(|(c, _)| c.clone())
        .collect()
}

fn status_failure(rpc: &str, s: &tonic::Status) -> Failure {
    use tonic::Code;
    // Transport-level failures show as Unavailable or Unknown: reconnect.
    let reconnect = matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    );
    Failure {
        message: format!("key broker {rpc}: {:?}: {}", s.code(), s.message()),
        reconnect,
    }
}

/// A refused registration: the broker's message and, for unapproved inputs,
/// the commands that would approve them.
fn refusal(s: &tonic::Status, reg: &ClassRegistration) -> Failure {
    let mut f = status_failure("RegisterLaunches", s);
    let hints = approve_hints(s.details(), reg);
    if !hints.is_empty() {
        f.message.push_str("; an operator approves them with:");
        for h in hints {
            f.message.push_str("\n  ");
            f.message.push_str(&h);
        }
    }
    f
}

/// Up to a quarter more, so that the nodes of a fleet do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(mode: &str, byte: u8) -> Digest {
        Digest {
            mode: mode.into(),
            digest: vec![byte; 32],
            vcpus: 1,
            vcpu_type: String::new(),
            config: "x".into(),
        }
    }

    #[test]
    fn sets_compare_without_order_or_duplicates() {
        assert_eq!(
            canonical(&[d("sev", 1), d("sev", 2), d("sev", 1)]),
            canonical(&[d("sev", 2), d("sev", 1)])
        );
        assert_ne!(canonical(&[d("sev", 1)]), canonical(&[d("seves", 1)]));
    }

    #[test]
    fn a_new_platform_tcb_is_sent_although_the_digests_are_held() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let r = Registrar::new(
            AgentConfig::default(),
            "n".into(),
            Arc::new(Mutex::new(AgentStatus::default())),
            Metrics::new(),
            tx,
        );
        let tcb = |snp| kbs_proto::kbsadmin::PlatformTcb {
            bootloader: 3,
            tee: 0,
            snp,
            microcode: 209,
            product: "Milan".into(),
        };
        let reg = ClassRegistration {
            digests: vec![d("snp", 7)],
            platform: Some(tcb(8)),
            ..ClassRegistration::default()
        };
        let want: Desired = [("kata-qemu-snp".to_string(), reg)].into_iter().collect();
        let held: BTreeMap<String, Vec<Digest>> =
            [("kata-qemu-snp".to_string(), vec![d("snp", 7)])]
                .into_iter()
                .collect();
        // Held, but this connection never sent the TCB: sent once.
        assert_eq!(r.differs(&want, &held), ["kata-qemu-snp"]);
        r.platforms_sent
            .lock()
            .unwrap()
            .insert("kata-qemu-snp".into(), tcb(8));
        assert!(r.differs(&want, &held).is_empty());
        // A firmware update: the same digests, a new TCB.
        r.platforms_sent
            .lock()
            .unwrap()
            .insert("kata-qemu-snp".into(), tcb(7));
        assert_eq!(r.differs(&want, &held), ["kata-qemu-snp"]);
    }

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        let base = Duration::from_millis(400);
        let j = jitter(base);
        assert!(j >= base && j <= base + Duration::from_millis(100));
    }
}
