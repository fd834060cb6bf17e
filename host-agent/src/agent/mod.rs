//! `host-agent run`: the daemon. It follows the Kata configuration files and the
//! artefacts they name with inotify, derives the launches they yield, and keeps
//! the key broker's digests for this node in step, one runtime class at a time.
//!
//! The loop sleeps in inotify. A change starts a short settle timer, so that a
//! burst of events (an editor's save, a package upgrade) gives one pass; the
//! pass re-derives every configuration, which costs little because artefacts
//! are hashed only when their file changed, and hands the complete desired
//! state to the registrar, which replaces only the classes that differ.

pub mod cache;
pub mod config;
pub mod derive;
pub mod drift_check;
pub mod http;
pub mod inputs;
pub mod metrics;
pub mod registrar;
pub mod status;
pub mod watch;

use self::cache::ArtefactCache;
use self::config::{AgentConfig, Listen};
use self::derive::{artefact_paths, derive_parsed, ClassLaunches, Derived, HostFacts};
use self::inputs::ClassRegistration;
use self::metrics::Metrics;
use self::registrar::{Desired, Registrar, Report};
use self::status::{unix_now, AgentStatus, ClassState, ClassStatus, FileNote, LaunchView};
use self::watch::{Interest, Relevance, Watcher};
use crate::artefacts::ArtefactKind;
use crate::systemd::Notifier;
use anyhow::Context;
use kata_launch::{runtime_class_from_file_name, KataConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch as tokio_watch};
use tracing::{error, info, warn};

/// A runtime class the agent follows.
#[derive(Debug, Clone)]
struct Tracked {
    config: PathBuf,
    /// The last launches derived without error: what stays registered while the
    /// file is broken.
    last_good: Option<ClassLaunches>,
    derived_at: Option<u64>,
    error: Option<String>,
    /// The file gives nothing to register any more (not confidential, mode
    /// not wanted) and has for the grace period: its digests are removed.
    skipped: bool,
    /// Since when the file has given nothing to register.
    skipped_since: Option<(Instant, u64)>,
    missing_since: Option<(Instant, u64)>,
}

/// The daemon's state between passes.
pub struct Daemon {
    config: AgentConfig,
    host: HostFacts,
    cache: ArtefactCache,
    releases: crate::kata_release::ReleaseProbe,
    /// The platform's TCB, as registered with SNP digests.
    platform: Option<crate::platform::PlatformTcb>,
    patterns: Vec<glob::Pattern>,
    classes: BTreeMap<String, Tracked>,
    /// Classes the broker held for this node at start that no file gives.
    orphans: BTreeMap<String, (Instant, u64)>,
    /// Classes whose digests were removed after their grace period.
    removed: BTreeSet<String>,
    status: Arc<Mutex<AgentStatus>>,
    metrics: Metrics,
    generation: u64,
    desired: Desired,
    drift: Arc<drift_check::DriftChecker>,
}

/// What a pass found.
#[derive(Debug, Default)]
pub struct PassOutcome {
    /// Watches to hold.
    pub interest: Interest,
    /// A file was caught while being written: look again soon.
    pub retry_soon: bool,
    /// The desired state changed.
    pub changed: bool,
}

impl Daemon {
    /// A daemon with nothing derived yet;
    /// `platform` is the platform's TCB, registered with SNP digests.
    pub fn new(
        config: AgentConfig,
        host: HostFacts,
        platform: Option<crate::platform::PlatformTcb>,
        status: Arc<Mutex<AgentStatus>>,
        metrics: Metrics,
        drift: Arc<drift_check::DriftChecker>,
    ) -> anyhow::Result<Daemon> {
        let patterns = config
            .kata_configs
            .iter()
            .map(|p| glob::Pattern::new(p))
            .collect::<Result<Vec<_>, _>>()
            .context("kata_configs")?;
        let cache = ArtefactCache::with_control(crate::artefacts::ReadControl {
            max_kernel: config.max_kernel_bytes,
            max_initrd: config.max_initrd_bytes,
            ..crate::artefacts::ReadControl::default()
        });
        Ok(Daemon {
            releases: crate::kata_release::ReleaseProbe::new(config.kata_release()),
            platform,
            config,
            host,
            cache,
            patterns,
            classes: BTreeMap::new(),
            orphans: BTreeMap::new(),
            removed: BTreeSet::new(),
            status,
            metrics,
            generation: 0,
            desired: Desired::new(),
            drift,
        })
    }

    /// The configuration files present now, in a stable order, and the
    /// directories that could not be read, with why. A file that cannot be
    /// looked at is listed (reading it reports why); only one that does not
    /// exist is left out.
    fn config_files(&self) -> (Vec<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
        let mut files = BTreeSet::new();
        let mut unreadable = Vec::new();
        for pattern in &self.config.kata_configs {
            let paths = match glob::glob(pattern) {
                Ok(paths) => paths,
                Err(e) => {
                    warn!("kata_configs {pattern:?}: {e}");
                    continue;
                }
            };
            for entry in paths {
                match entry {
                    Ok(p) => match std::fs::metadata(&p) {
                        Ok(m) if !m.is_file() => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        _ => {
                            files.insert(p);
                        }
                    },
                    Err(e) => {
                        let path = e.path().to_path_buf();
                        let error = std::io::Error::from(e);
                        if error.kind() != std::io::ErrorKind::NotFound {
                            unreadable.push((path, error));
                        }
                    }
                }
            }
        }
        (files.into_iter().collect(), unreadable)
    }

    /// When the next grace period ends, if any runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        let grace = Duration::from_secs(self.config.stale_grace_seconds);
        self.classes
            .values()
            .filter_map(|t| {
                let skipping = t.skipped_since.filter(|_| !t.skipped);
                t.missing_since.or(skipping).map(|(at, _)| at + grace)
            })
            .chain(self.orphans.values().map(|(at, _)| *at + grace))
            .min()
    }

    /// Raised to stop a pass's long reads; lowered by the caller before a pass.
    pub fn stop_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.cache.control().stop)
    }

    /// Takes note of classes the broker holds for this node that no file gives.
    pub fn adopt_orphans(&mut self, classes: Vec<String>) {
        let now = (Instant::now(), unix_now());
        for class in classes {
            if !self.classes.contains_key(&class) && !self.removed.contains(&class) {
                warn!(
                    "the key broker holds digests of {class} for this node, which no configuration \
                     gives now; removing them in {} s unless a configuration appears",
                    self.config.stale_grace_seconds
                );
                self.orphans.entry(class).or_insert(now);
            }
        }
        self.publish_status();
    }

    /// What to watch, from the configurations alone, before any artefact is
    /// hashed: so that a change to a large file is seen while it is hashed.
    fn early_interest(&self, files: &[PathBuf]) -> Interest {
        let mut interest = Interest {
            patterns: self.patterns.clone(),
            files: files.iter().cloned().collect(),
        };
        for file in files {
            let Ok(text) = crate::artefacts::read_config_text(file) else {
                continue;
            };
            if let Ok(config) = KataConfig::parse(file, &text) {
                interest.files.extend(artefact_paths(&config));
            }
        }
        for t in self.classes.values() {
            interest.files.insert(t.config.clone());
            if let Some(l) = t.last_good.as_ref().and_then(|c| c.launches.first()) {
                interest.files.insert(l.firmware.clone());
                interest.files.insert(l.kernel.clone());
                interest.files.extend(l.initrd.clone());
            }
        }
        interest
    }

    /// Re-derives every configuration and updates the desired state, leaving
    /// alone the files in `busy` (real paths of files open for writing).
    /// `early` is handed what to watch before anything is hashed.
    pub fn pass(
        &mut self,
        busy: std::collections::HashSet<PathBuf>,
        early: &dyn Fn(Interest),
    ) -> PassOutcome {
        let started = Instant::now();
        self.cache.set_busy(busy);
        let now = (Instant::now(), unix_now());
        let grace = Duration::from_secs(self.config.stale_grace_seconds);
        let misses_before = self.cache.stats().misses;
        let mut out = PassOutcome {
            interest: Interest {
                patterns: self.patterns.clone(),
                files: BTreeSet::new(),
            },
            ..PassOutcome::default()
        };
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut skipped = Vec::new();
        let mut errors = Vec::new();
        let (files, unreadable) = self.config_files();
        early(self.early_interest(&files));
        for (dir, e) in &unreadable {
            let message = format!(
                "cannot read the directory: {e}; the digests of the configurations in it stay registered"
            );
            warn!(dir = %dir.display(), "{message}");
            errors.push(FileNote {
                config: dir.clone(),
                reason: message,
            });
            // It may hold the configurations that are missing: watch its parent.
            out.interest.files.insert(dir.clone());
        }
        for file in files {
            out.interest.files.insert(file.clone());
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let Some(class) = runtime_class_from_file_name(name) else {
                errors.push(FileNote {
                    config: file.clone(),
                    reason: "cannot derive a runtime class from the file name \
                             (expected configuration-<name>.toml)"
                        .into(),
                });
                continue;
            };
            if let Some(first) = seen.get(&class) {
                skipped.push(FileNote {
                    config: file.clone(),
                    reason: format!(
                        "runtime class {class} already comes from {}",
                        first.display()
                    ),
                });
                continue;
            }
            seen.insert(class.clone(), file.clone());
            self.orphans.remove(&class);
            self.removed.remove(&class);
            let outcome = self.derive_one(&file, &mut out.interest.files);
            let tracked = self
                .classes
                .entry(class.clone())
                .or_insert_with(|| Tracked {
                    config: file.clone(),
                    last_good: None,
                    derived_at: None,
                    error: None,
                    skipped: false,
                    skipped_since: None,
                    missing_since: None,
                });
            tracked.config.clone_from(&file);
            tracked.missing_since = None;
            match outcome {
                Ok(Derived::Launches(c)) => {
                    if tracked.error.take().is_some() {
                        info!(config = %file.display(), "{class}: configuration usable again");
                    }
                    tracked.skipped = false;
                    tracked.skipped_since = None;
                    tracked.last_good = Some(*c);
                    tracked.derived_at = Some(unix_now());
                }
                Ok(Derived::Skipped { reason, .. }) => {
                    tracked.error = None;
                    // Like a file that disappears, one that stops giving
                    // launches (a save caught half-way, say) keeps what was
                    // registered for the grace period. One that never gave
                    // any (a plain, non-confidential configuration beside the
                    // others) is skipped at once.
                    let since = *tracked.skipped_since.get_or_insert(now);
                    let reason = if tracked.skipped
                        || tracked.last_good.is_none()
                        || now.0 >= since.0 + grace
                    {
                        tracked.skipped = true;
                        tracked.last_good = None;
                        reason
                    } else {
                        if since.0 == now.0 {
                            warn!(
                                config = %file.display(),
                                "{class}: {reason}; its digests stay registered for {} s",
                                grace.as_secs()
                            );
                        }
                        format!(
                            "{reason}; the digests registered for it stay for {} s",
                            grace.as_secs()
                        )
                    };
                    skipped.push(FileNote {
                        config: file.clone(),
                        reason,
                    });
                }
                Err(e) if e.is_transient() => out.retry_soon = true,
                Err(e) => {
                    // Keep watching what the last good version named, so that
                    // a fix to an artefact is seen too.
                    if let Some(l) = tracked.last_good.as_ref().and_then(|c| c.launches.first()) {
                        out.interest.files.insert(l.firmware.clone());
                        out.interest.files.insert(l.kernel.clone());
                        out.interest.files.extend(l.initrd.clone());
                    }
                    let message = e.to_string();
                    if tracked.error.as_deref() != Some(message.as_str()) {
                        error!(
                            config = %file.display(),
                            "{class}: {message}; the last good digests stay registered"
                        );
                    }
                    tracked.error = Some(message);
                }
            }
        }
        let mut expired = Vec::new();
        for (class, t) in &mut self.classes {
            if seen.contains_key(class) {
                continue;
            }
            if let Some((dir, e)) = unreadable.iter().find(|(d, _)| t.config.starts_with(d)) {
                // Not known to be gone: an error, not a deletion.
                t.error = Some(format!(
                    "cannot read {}: {e}; the last good digests stay registered",
                    dir.display()
                ));
                out.interest.files.insert(t.config.clone());
                continue;
            }
            let since = *t.missing_since.get_or_insert_with(|| {
                warn!(
                    config = %t.config.display(),
                    "{class}: configuration file gone; its digests stay registered for {} s",
                    grace.as_secs()
                );
                now
            });
            // Keep watching where it was, to see it come back.
            out.interest.files.insert(t.config.clone());
            if now.0 >= since.0 + grace {
                expired.push(class.clone());
            }
        }
        for class in expired {
            info!(
                "{class}: configuration gone for {} s; removing its digests",
                grace.as_secs()
            );
            self.classes.remove(&class);
            self.removed.insert(class);
        }
        // While a directory cannot be read, no class is known to be gone.
        let orphans_expired: Vec<String> = self
            .orphans
            .iter()
            .filter(|_| unreadable.is_empty())
            .filter(|(_, (at, _))| now.0 >= *at + grace)
            .map(|(c, _)| c.clone())
            .collect();
        for class in orphans_expired {
            self.orphans.remove(&class);
            self.removed.insert(class);
        }

        let mut desired = Desired::new();
        for (class, t) in &self.classes {
            if t.skipped {
                desired.insert(class.clone(), ClassRegistration::removal());
            } else if let Some(c) = &t.last_good {
                desired.insert(
                    class.clone(),
                    inputs::registration_of(c, &self.host, self.platform.as_ref()),
                );
            }
        }
        for class in &self.removed {
            desired.insert(class.clone(), ClassRegistration::removal());
        }
        out.changed = desired != self.desired;
        let previous = std::mem::replace(&mut self.desired, desired);
        // The first pass always makes a generation, even with nothing to
        // register: the registrar reports being in step with it, which is
        // what makes the agent READY.
        if out.changed || self.generation == 0 {
            self.generation += 1;
        }
        self.publish_status_with(&previous, skipped, errors);
        self.publish_drift_expectations();

        let keep: std::collections::HashSet<PathBuf> = out.interest.files.iter().cloned().collect();
        self.cache.retain(&keep);
        self.metrics
            .artefact_reads
            .inc_by(self.cache.stats().misses - misses_before);
        self.metrics
            .recompute_seconds
            .observe(started.elapsed().as_secs_f64());
        out
    }

    fn derive_one(
        &mut self,
        file: &Path,
        deps: &mut BTreeSet<PathBuf>,
    ) -> Result<Derived, derive::DeriveError> {
        if self
            .cache
            .check_not_busy(ArtefactKind::Firmware, file)
            .is_err()
        {
            return Err(derive::DeriveError::BeingWritten {
                path: file.to_path_buf(),
            });
        }
        let text = crate::artefacts::read_config_text(file).map_err(|cause| {
            derive::DeriveError::Read {
                path: file.to_path_buf(),
                cause,
            }
        })?;
        let config = KataConfig::parse(file, &text)?;
        deps.extend(artefact_paths(&config));
        // An upgrade that replaces the shim may change the release.
        deps.extend(crate::kata_release::shim_candidates(file));
        let release =
            self.releases
                .resolve(file)
                .map_err(|cause| derive::DeriveError::Release {
                    path: file.to_path_buf(),
                    cause,
                })?;
        derive_parsed(&config, &self.config, &self.host, &mut self.cache, &release)
            .map(|d| d.with_text(&text))
    }

    /// The desired state and its generation.
    pub fn desired(&self) -> (u64, Desired) {
        (self.generation, self.desired.clone())
    }

    fn publish_status(&self) {
        let (skipped, errors) = match self.status.lock() {
            Ok(s) => (s.skipped.clone(), s.errors.clone()),
            Err(_) => return,
        };
        let desired = self.desired.clone();
        self.publish_status_with(&desired, skipped, errors);
    }

    fn publish_status_with(
        &self,
        previous: &Desired,
        skipped: Vec<FileNote>,
        errors: Vec<FileNote>,
    ) {
        let Ok(mut s) = self.status.lock() else {
            return;
        };
        let mut classes = BTreeMap::new();
        for (class, t) in &self.classes {
            if t.skipped {
                continue;
            }
            let old = s.classes.get(class);
            let unchanged = previous.get(class) == self.desired.get(class);
            let state = if t.error.is_some() {
                ClassState::Error
            } else if t.missing_since.is_some() || t.skipped_since.is_some() {
                ClassState::Stale
            } else if unchanged && old.is_some_and(|o| o.registered_at.is_some()) {
                ClassState::Registered
            } else {
                ClassState::Pending
            };
            classes.insert(
                class.clone(),
                ClassStatus {
                    config: t.config.clone(),
                    state,
                    launches: t
                        .last_good
                        .as_ref()
                        .map(|c| c.launches.iter().map(LaunchView::from).collect())
                        .unwrap_or_default(),
                    derived_at: t.derived_at,
                    registered_at: old.and_then(|o| o.registered_at),
                    registered_digests: old.and_then(|o| o.registered_digests),
                    config_error: t.error.clone(),
                    registration_error: old.and_then(|o| o.registration_error.clone()),
                    stale_since: t.missing_since.or(t.skipped_since).map(|(_, unix)| unix),
                    kata_release: t.last_good.as_ref().map(|c| c.release.to_string()),
                    warnings: t
                        .last_good
                        .as_ref()
                        .map(|c| c.warnings.clone())
                        .unwrap_or_default(),
                },
            );
        }
        for (class, (_, since)) in &self.orphans {
            classes.insert(
                class.clone(),
                ClassStatus {
                    config: PathBuf::new(),
                    state: ClassState::Stale,
                    launches: Vec::new(),
                    derived_at: None,
                    registered_at: None,
                    registered_digests: None,
                    config_error: Some(
                        "registered at the key broker by an earlier run; no configuration gives it now"
                            .into(),
                    ),
                    registration_error: None,
                    stale_since: Some(*since),
                    kata_release: None,
                    warnings: Vec::new(),
                },
            );
        }
        let error_count = classes
            .values()
            .filter(|c| c.state == ClassState::Error)
            .count()
            + errors.len();
        self.metrics
            .config_errors
            .set(i64::try_from(error_count).unwrap_or(i64::MAX));
        s.classes = classes;
        s.skipped = skipped;
        s.errors = errors;
    }

    fn publish_drift_expectations(&self) {
        let launches: Vec<&ClassLaunches> = self
            .classes
            .values()
            .filter(|t| !t.skipped)
            .filter_map(|t| t.last_good.as_ref())
            .collect();
        self.drift.set_expected(&launches);
    }
}

/// Options of `host-agent run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The agent's configuration file (TOML). Every key has a default: without
    /// the file the agent follows the CoCo operator's Kata configurations
    /// (/opt/confidential-containers/share/defaults/kata-containers/configuration-*.toml),
    /// registers with the key broker on its admin socket /run/kbs/admin.sock as
    /// the node named after the host, and serves /status and /metrics on
    /// 127.0.0.1:9465. See systemd/host-agent.toml for every key.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Loads the configuration named on the command line, or the default file if
/// it exists, or the defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
    match path {
        Some(p) => Ok(AgentConfig::load(p)?),
        None => {
            let default = Path::new(config::DEFAULT_CONFIG_FILE);
            if default.exists() {
                Ok(AgentConfig::load(default)?)
            } else {
                Ok(AgentConfig::default())
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let log_target = crate::systemd::init_logging("info")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // On a worker thread, not the block_on thread: the drift scan runs in
    // block_in_place, which hands this worker's other tasks to the second worker.
    let result = runtime.block_on(async move {
        tokio::spawn(serve(config, log_target))
            .await
            .context("the daemon's task failed")?
    });
    // A pass stopped by the flag ends within a chunk; do not wait longer.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn serve(config: AgentConfig, log_target: crate::systemd::LogTarget) -> anyhow::Result<()> {
    let node = config.node_name();
    let notifier = Notifier::from_env();
    let metrics = Metrics::new();
    let status = Arc::new(Mutex::new(AgentStatus {
        node: node.clone(),
        pid: std::process::id(),
        started_at: unix_now(),
        activity: "starting".into(),
        kbs: status::KbsStatus {
            target: config.kbs_target().to_string(),
            ..Default::default()
        },
        ..Default::default()
    }));
    let host = HostFacts::detect(&config);
    // The platform's TCB, once (it changes only with a firmware update), asked
    // on a blocking thread while the listeners and watches are set up.
    let platform_query = tokio::task::spawn_blocking(|| {
        crate::platform::read_platform(std::path::Path::new(crate::platform::SEV_DEVICE))
    });
    let drift = Arc::new(drift_check::DriftChecker::new(
        &config,
        host,
        metrics.clone(),
    ));

    // Before anything is announced: from then on SIGTERM stops cleanly.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot handle SIGINT")?;

    // Bind before anything else, so that a taken port fails the start.
    let http = match config.listen().map_err(anyhow::Error::msg)? {
        Listen::Off => None,
        Listen::At(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (listen)"))?;
            let bound = listener.local_addr().ok();
            Some((listener, bound))
        }
    };

    let inotify = inotify::Inotify::init().context("cannot start inotify")?;
    let watches = inotify.watches();
    // Consumes the instance; the watch list handle stays usable.
    let mut events = inotify
        .into_event_stream([0u8; 16384])
        .context("cannot read inotify events")?;
    let mut watcher = Watcher::new(watches);

    let platform = platform_query
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match &platform {
        Ok(tcb) => info!("SNP platform: {tcb}"),
        Err(e) => info!("SNP platform TCB not available: {e}"),
    }
    info!("SNP VMSAs: {}", host.snp_vmsa_summary());
    let platform_tcb = platform.as_ref().ok().cloned();
    if let Ok(mut s) = status.lock() {
        s.snp_host = host.snp_vmsa_summary();
        s.platform = Some(match platform {
            Ok(tcb) => status::PlatformView::Tcb(tcb),
            Err(e) => status::PlatformView::Unavailable(e),
        });
    }
    let daemon = Daemon::new(
        config.clone(),
        host,
        platform_tcb,
        Arc::clone(&status),
        metrics.clone(),
        Arc::clone(&drift),
    )?;
    let stop = daemon.stop_flag();
    let (early_tx, mut early_rx) = mpsc::unbounded_channel::<Interest>();
    let (desired_tx, desired_rx) = tokio_watch::channel((0u64, Desired::new()));
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    // Started once the first pass has said what this node should hold: before
    // that, everything the broker holds would look orphaned.
    let mut registrar = Some((
        Registrar::new(
            config.clone(),
            node.clone(),
            Arc::clone(&status),
            metrics.clone(),
            report_tx,
        ),
        desired_rx,
    ));
    let mut registrar_task = None;

    let http_task = http.map(|(listener, bound)| {
        if let Some(addr) = bound {
            info!("status and metrics on http://{addr}/status and /metrics");
            // Scripts and tests read this line to find the port.
            eprintln!("host-agent: listening on {addr}");
        }
        let state = http::AppState {
            status: Arc::clone(&status),
            metrics: metrics.clone(),
            drift: Arc::clone(&drift),
        };
        tokio::spawn(http::serve(listener, state))
    });
    set_activity(
        &status,
        &notifier,
        &format!("deriving launches from {}", config.kata_configs.join(", ")),
    );

    let watchdog_every = notifier.watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));

    let settle = Duration::from_millis(config.settle_ms);
    let write_settle = Duration::from_millis(config.write_settle_ms);
    // Passes run on a blocking thread, so that signals, the watchdog and
    // events are served while a large file is hashed; the daemon travels with
    // its pass and comes back with the outcome.
    let mut idle: Option<Daemon> = Some(daemon);
    let mut running: Option<tokio::task::JoinHandle<(Daemon, PassOutcome)>> = None;
    let mut orphans_waiting: Vec<String> = Vec::new();
    let mut desired_now = (0u64, Desired::new());
    // When to run the next pass, and whether it waits on a file being written.
    let mut due: Option<(tokio::time::Instant, bool)> = Some((tokio::time::Instant::now(), false));
    let mut ready = false;
    let mut kbs_waiting_noted = false;
    use tokio_stream::StreamExt as _;
    loop {
        let stale_at = idle
            .as_ref()
            .and_then(Daemon::next_deadline)
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break };
                let event = match event {
                    Ok(e) => e,
                    Err(e) => { warn!("inotify: {e}"); continue; }
                };
                let now = tokio::time::Instant::now();
                let relevance = watcher.classify(&event.wd, event.mask, event.name.as_deref());
                tracing::debug!(mask = ?event.mask, name = ?event.name, ?relevance, "inotify event");
                if relevance != Relevance::None && running.is_some() {
                    // What the pass is reading may be what changed: stop it,
                    // and the pass below starts over.
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                match relevance {
                    Relevance::None => {}
                    Relevance::Writing => {
                        // Pushed back by every write, unless a short pass is due anyway.
                        if due.is_none_or(|(_, writing)| writing) {
                            due = Some((now + write_settle, true));
                        }
                    }
                    Relevance::Changed | Relevance::Overflow => {
                        let at = now + settle;
                        if due.is_none_or(|(t, _)| t > at) {
                            due = Some((at, false));
                        }
                    }
                }
            }
            () = sleep_until_opt(due.map(|(t, _)| t)), if running.is_none() => {
                due = None;
                if let Some(mut daemon) = idle.take() {
                    if !orphans_waiting.is_empty() {
                        daemon.adopt_orphans(std::mem::take(&mut orphans_waiting));
                    }
                    stop.store(false, std::sync::atomic::Ordering::Relaxed);
                    let busy = watcher.being_written();
                    tracing::debug!(busy = busy.len(), "pass starts");
                    let early = early_tx.clone();
                    running = Some(tokio::task::spawn_blocking(move || {
                        let outcome = daemon.pass(busy, &|interest| {
                            let _ = early.send(interest);
                        });
                        (daemon, outcome)
                    }));
                }
            }
            () = sleep_until_opt(stale_at), if running.is_none() => {
                due = Some((tokio::time::Instant::now(), false));
            }
            Some(interest) = early_rx.recv() => {
                apply_watches(&mut watcher, &interest, &metrics, &status);
            }
            joined = join_opt(&mut running), if running.is_some() => {
                running = None;
                let (mut daemon, outcome) = joined.context("a pass over the Kata configurations failed")?;
                tracing::debug!(changed = outcome.changed, retry_soon = outcome.retry_soon, "pass done");
                // The pass's early watches give way to its final ones.
                while early_rx.try_recv().is_ok() {}
                apply_watches(&mut watcher, &outcome.interest, &metrics, &status);
                if !orphans_waiting.is_empty() {
                    daemon.adopt_orphans(std::mem::take(&mut orphans_waiting));
                }
                let first = registrar.is_some();
                if outcome.changed || first {
                    desired_now = daemon.desired();
                    let _ = desired_tx.send(desired_now.clone());
                }
                if let Some((r, rx)) = registrar.take() {
                    registrar_task = Some(tokio::spawn(r.run(rx)));
                    let classes = desired_now.1.len();
                    info!(
                        node = %node,
                        kbs = %config.kbs_target(),
                        logging = ?log_target,
                        "host agent started: {classes} runtime classes derived, {} files watched",
                        watcher.watched_files()
                    );
                    set_activity(
                        &status,
                        &notifier,
                        &format!(
                            "registering {classes} runtime classes with the key broker at {}",
                            config.kbs_target()
                        ),
                    );
                }
                if outcome.retry_soon {
                    let at = tokio::time::Instant::now() + write_settle;
                    if due.is_none_or(|(t, _)| t > at) {
                        due = Some((at, true));
                    }
                }
                idle = Some(daemon);
            }
            report = report_rx.recv() => match report {
                Some(Report::InStep { generation }) => {
                    if generation != desired_now.0 {
                        continue;
                    }
                    let classes = desired_now.1.values().filter(|d| !d.is_empty()).count();
                    if !ready {
                        ready = true;
                        metrics.ready.set(1);
                        if let Ok(mut s) = status.lock() { s.ready = true; }
                        notifier.ready();
                        info!("first registration complete: {classes} runtime classes registered");
                    }
                    kbs_waiting_noted = false;
                    let activity = if desired_now.1.is_empty() {
                        format!(
                            "nothing to register: no confidential Kata configuration in {}; watching for one",
                            config.kata_configs.join(", ")
                        )
                    } else {
                        format!(
                            "watching {} files; {classes} runtime classes registered",
                            watcher.watched_files()
                        )
                    };
                    set_activity(&status, &notifier, &activity);
                    tokio::task::block_in_place(|| drift.scan_and_log());
                }
                Some(Report::Orphans(classes)) => match idle.as_mut() {
                    Some(daemon) => daemon.adopt_orphans(classes),
                    None => orphans_waiting.extend(classes),
                },
                None => break,
            },
            _ = watchdog.tick(), if watchdog_every.is_some() => {
                notifier.watchdog();
                let unreachable = status.lock().ok().and_then(|s| (!s.kbs.reachable).then(|| s.kbs.last_error.clone()).flatten());
                if let Some(e) = unreachable {
                    if !kbs_waiting_noted {
                        kbs_waiting_noted = true;
                        set_activity(&status, &notifier, &format!("waiting for the key broker: {e}"));
                    }
                }
            }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
        }
    }
    // A pass still hashing stops at its next chunk.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    notifier.stopping();
    drop(desired_tx);
    if let Some(t) = registrar_task {
        t.abort();
    }
    if let Some(t) = http_task {
        t.abort();
    }
    info!("stopped");
    Ok(())
}

/// The outcome of the pass in `running`, or never when none runs.
async fn join_opt<T>(
    running: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match running {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Until `at`, or forever.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn set_activity(status: &Arc<Mutex<AgentStatus>>, notifier: &Notifier, text: &str) {
    if let Ok(mut s) = status.lock() {
        s.activity = text.to_string();
    }
    notifier.status(text);
}

fn apply_watches(
    watcher: &mut Watcher,
    interest: &Interest,
    metrics: &Metrics,
    status: &Arc<Mutex<AgentStatus>>,
) {
    for (dir, e) in watcher.set_interest(interest) {
        warn!("cannot watch {}: {e}", dir.display());
    }
    let files = watcher.watched_files();
    let dirs = watcher.watched_dirs();
    metrics
        .watched_files
        .set(i64::try_from(files).unwrap_or(i64::MAX));
    metrics
        .watched_dirs
        .set(i64::try_from(dirs).unwrap_or(i64::MAX));
    if let Ok(mut s) = status.lock() {
        s.watched_files = files;
        s.watched_dirs = dirs;
    }
}
