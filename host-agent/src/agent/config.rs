//! The host agent's own configuration file (TOML): which Kata configurations to
//! follow, how to reach the key broker, which launches to register and where to
//! serve status. Every key has a default, so an empty file is a valid
//! configuration for a node set up by the CoCo operator with a local key broker.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the CoCo 0.7 operator installs Kata's configuration files.
pub const DEFAULT_KATA_CONFIGS: &str =
    "/opt/confidential-containers/share/defaults/kata-containers/configuration-*.toml";
/// Where kata-deploy and the CoCo Helm chart install them (CoCo 0.8, Kata 3.19 on).
pub const DEFAULT_KATA_CONFIGS_OPT_KATA: &str =
    "/opt/kata/share/defaults/kata-containers/configuration-*.toml";
/// The key broker's admin socket when it runs on the node.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/kbs/admin.sock";
/// Status and metrics, on loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9465";
/// Where the agent keeps what it must remember across restarts.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/host-agent";
/// The file `run`, `provision` and `status` read unless told otherwise.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/host-agent/config.toml";

/// The agent's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Kata configuration files to follow: paths or globs whose wildcards are in
    /// the file name only (the directory is watched for files appearing).
    #[serde(default = "default_kata_configs")]
    pub kata_configs: Vec<String>,
    /// This node's name at the key broker; the host name when absent.
    #[serde(default)]
    pub node: Option<String>,
    /// Status (`/status`) and metrics (`/metrics`) address; `"off"` serves neither.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory for state kept across restarts (what `provision` registered).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Quiet time after a change before recomputing, in milliseconds: a burst of
    /// events (an editor's save, a package upgrade) gives one recomputation.
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
    /// Quiet time after a file of interest is written in place before it is
    /// looked at again, in milliseconds. A file still open for writing is
    /// not read before its writer closes it, or 30 s after its last write.
    #[serde(default = "default_write_settle_ms")]
    pub write_settle_ms: u64,
    /// Largest guest kernel read, in bytes; a larger one is an error in
    /// status, never read.
    #[serde(default = "default_max_kernel_bytes")]
    pub max_kernel_bytes: u64,
    /// Largest guest initrd read, in bytes; a larger one is an error in
    /// status, never read.
    #[serde(default = "default_max_initrd_bytes")]
    pub max_initrd_bytes: u64,
    /// How long the digests of a configuration that disappeared stay registered,
    /// in seconds: upgrades delete and recreate files.
    #[serde(default = "default_stale_grace")]
    pub stale_grace_seconds: u64,
    /// The key broker.
    #[serde(default)]
    pub kbs: KbsConfig,
    /// Which launches to register.
    #[serde(default)]
    pub launches: LaunchesConfig,
    /// Drift detection.
    #[serde(default)]
    pub drift: DriftConfig,
}

/// How to reach the key broker's admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KbsConfig {
    /// The admin Unix socket (the broker checks our uid); used unless
    /// `admin_endpoint` is set.
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// The TCP admin listener: `https://HOST:PORT` (TLS; needs
    /// `admin_ca_file`) or `http://HOST:PORT` (in clear, which the broker
    /// serves on its own loopback only); needs `admin_token_file`.
    #[serde(default)]
    pub admin_endpoint: Option<String>,
    /// File holding the bearer token of the TCP admin listener.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// PEM file of the CA certificate that issued the broker's admin TLS
    /// certificate; needed with an `https://` `admin_endpoint`, refused with an
    /// `http://` one. Only this CA is trusted, never the system's roots.
    #[serde(default)]
    pub admin_ca_file: Option<PathBuf>,
    /// Timeout of each call, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Longest wait between retries while the broker is unreachable, in seconds.
    #[serde(default = "default_retry_max")]
    pub retry_max_seconds: u64,
    /// How often to read back what the broker holds for this node and
    /// register again what is missing or different (a broker restored from
    /// backup or started on an empty database, an operator's clearing), in
    /// seconds. Also done after every reconnect.
    #[serde(default = "default_reconcile")]
    pub reconcile_seconds: u64,
}

/// Which launches (modes and VM shapes) to register for each configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchesConfig {
    /// Modes to register ("sev", "seves", "snp"); all when absent. A
    /// configuration whose mode is not listed is skipped.
    #[serde(default)]
    pub modes: Option<Vec<String>>,
    /// Pod CPU limits to register launches for. When absent: 0 up to
    /// `max_pod_cpus` for configurations with `static_sandbox_resource_mgmt`
    /// (Kata adds the pod's CPUs to the guest's), only 0 otherwise.
    #[serde(default)]
    pub pod_cpus: Option<Vec<u32>>,
    /// The largest pod CPU limit to expect; the host's CPU count when absent.
    #[serde(default)]
    pub max_pod_cpus: Option<u32>,
    /// CPUID signature of the host CPU (e.g. "0xa00f11"), which SEV-ES guests
    /// started with `-cpu host` carry; read from /proc/cpuinfo when absent.
    #[serde(default)]
    pub host_cpu_signature: Option<String>,
    /// Whether the host runs in FIPS mode; read from the kernel when absent.
    #[serde(default)]
    pub fips: Option<bool>,
    /// The Kata release whose launches to derive ("4.1.0", "3.19.1",
    /// "CC-0.8.0"); asked of each configuration's containerd-shim-kata-v2
    /// when absent.
    #[serde(default)]
    pub kata_version: Option<String>,
    /// What this host's kernel puts into SNP guests' VMSAs.
    #[serde(default)]
    pub snp: SnpHostConfig,
    /// Launches pods may ask for by annotation, to register as well.
    #[serde(default)]
    pub annotations: AnnotationLaunches,
}

/// `[launches.snp]`: the host kernel's share of an SNP launch digest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpHostConfig {
    /// The host kernel release to measure for ("6.8", "6.12.9"); this node's
    /// running kernel when absent. Kernels from 6.10 put the x87/SSE reset state
    /// into the VMSA; 6.6 and 6.7 turn on DebugSwap by default.
    #[serde(default)]
    pub host_kernel: Option<String>,
    /// The VMSA SEV features ("0x1"), overriding what the kernel release implies.
    #[serde(default)]
    pub guest_features: Option<String>,
}

/// `[launches.annotations]`: values of the hypervisor annotations a pod may set
/// (where the Kata configuration's `enable_annotations` lets them through), each
/// registered as an extra launch for every pod CPU count.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotationLaunches {
    /// `io.katacontainers.config.hypervisor.default_vcpus` values, e.g. [2, 4].
    #[serde(default)]
    pub default_vcpus: Vec<f32>,
    /// `io.katacontainers.config.hypervisor.kernel_params` values.
    #[serde(default)]
    pub kernel_params: Vec<String>,
    /// `io.katacontainers.config.hypervisor.kernel_verity_params` values.
    #[serde(default)]
    pub kernel_verity_params: Vec<String>,
}

/// Drift detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Compare running QEMU guests with the registered digests (on every status
    /// or metrics request and after every registration).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where to find processes.
    #[serde(default = "default_proc")]
    pub proc_root: PathBuf,
}

fn default_kata_configs() -> Vec<String> {
    vec![
        DEFAULT_KATA_CONFIGS.to_string(),
        DEFAULT_KATA_CONFIGS_OPT_KATA.to_string(),
    ]
}
fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_settle_ms() -> u64 {
    5
}
fn default_write_settle_ms() -> u64 {
    250
}
fn default_max_kernel_bytes() -> u64 {
    crate::artefacts::MAX_KERNEL_LEN
}
fn default_max_initrd_bytes() -> u64 {
    crate::artefacts::MAX_INITRD_LEN
}
fn default_stale_grace() -> u64 {
    600
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}
fn default_timeout() -> u64 {
    10
}
fn default_retry_max() -> u64 {
    30
}
fn default_reconcile() -> u64 {
    300
}
fn default_true() -> bool {
    true
}
fn default_proc() -> PathBuf {
    PathBuf::from("/proc")
}

impl Default for KbsConfig {
    fn default() -> Self {
        KbsConfig {
            admin_socket: default_admin_socket(),
            admin_endpoint: None,
            admin_token_file: None,
            admin_ca_file: None,
            timeout_seconds: default_timeout(),
            retry_max_seconds: default_retry_max(),
            reconcile_seconds: default_reconcile(),
        }
    }
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            proc_root: default_proc(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            kata_configs: default_kata_configs(),
            node: None,
            listen: default_listen(),
            state_dir: default_state_dir(),
            settle_ms: default_settle_ms(),
            write_settle_ms: default_write_settle_ms(),
            max_kernel_bytes: default_max_kernel_bytes(),
            max_initrd_bytes: default_max_initrd_bytes(),
            stale_grace_seconds: default_stale_grace(),
            kbs: KbsConfig::default(),
            launches: LaunchesConfig::default(),
            drift: DriftConfig::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// Not valid TOML, or a key of the wrong type or unknown.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value that makes no sense.
    #[error("{}: {key}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Where the status and metrics are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Not at all.
    Off,
    /// On this address.
    At(SocketAddr),
}

/// The two ways to authenticate to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KbsTarget {
    /// The admin Unix socket.
    Socket(PathBuf),
    /// The TCP admin listener with a token file.
    Tcp {
        /// `http://HOST:PORT` or `https://HOST:PORT`.
        endpoint: String,
        /// The bearer token's file.
        token_file: PathBuf,
        /// The CA certificate file that verifies an `https://` endpoint.
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Display for KbsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KbsTarget::Socket(p) => write!(f, "{}", p.display()),
            KbsTarget::Tcp { endpoint, .. } => f.write_str(endpoint),
        }
    }
}

impl AgentConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        AgentConfig::parse(path, &text)
    }

    /// Parses and checks `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        if self.kata_configs.is_empty() {
            return Err(invalid("kata_configs", "names no file".into()));
        }
        for (key, value) in [
            ("max_kernel_bytes", self.max_kernel_bytes),
            ("max_initrd_bytes", self.max_initrd_bytes),
        ] {
            if value < 1 << 20 {
                return Err(invalid(key, format!("{value} bytes: at least 1 MiB")));
            }
        }
        for pattern in &self.kata_configs {
            let p = Path::new(pattern);
            if !p.is_absolute() {
                return Err(invalid(
                    "kata_configs",
                    format!("{pattern:?} is not an absolute path"),
                ));
            }
            let dir = p.parent().map(|d| d.to_string_lossy().into_owned());
            if dir.as_deref().is_some_and(has_wildcard) {
                return Err(invalid(
                    "kata_configs",
                    format!("{pattern:?}: wildcards are allowed in the file name only"),
                ));
            }
            if let Err(e) = glob::Pattern::new(pattern) {
                return Err(invalid("kata_configs", format!("{pattern:?}: {e}")));
            }
        }
        if let Some(node) = &self.node {
            if !valid_id(node) {
                return Err(invalid(
                    "node",
                    "1 to 256 printable ASCII characters without spaces".into(),
                ));
            }
        }
        self.listen().map_err(|reason| invalid("listen", reason))?;
        match (&self.kbs.admin_endpoint, &self.kbs.admin_token_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "kbs.admin_token_file",
                    "needed with kbs.admin_endpoint".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "kbs.admin_endpoint",
                    "needed with kbs.admin_token_file".into(),
                ))
            }
            _ => {}
        }
        if let Some(e) = &self.kbs.admin_endpoint {
            let https = e.starts_with("https://");
            if !(https || e.starts_with("http://")) {
                return Err(invalid(
                    "kbs.admin_endpoint",
                    format!("{e:?} is not https://HOST:PORT or http://HOST:PORT"),
                ));
            }
            match (https, &self.kbs.admin_ca_file) {
                (true, None) => {
                    return Err(invalid(
                        "kbs.admin_ca_file",
                        format!(
                            "needed with the https endpoint {e:?}: the CA certificate the \
                             broker's certificate is verified against"
                        ),
                    ))
                }
                (false, Some(_)) => {
                    return Err(invalid(
                        "kbs.admin_endpoint",
                        format!("{e:?} must be https://HOST:PORT to use kbs.admin_ca_file"),
                    ))
                }
                _ => {}
            }
        } else if self.kbs.admin_ca_file.is_some() {
            return Err(invalid(
                "kbs.admin_ca_file",
                "used only with an https kbs.admin_endpoint".into(),
            ));
        }
        if self.kbs.timeout_seconds == 0 {
            return Err(invalid("kbs.timeout_seconds", "at least 1 second".into()));
        }
        if self.kbs.reconcile_seconds == 0 {
            return Err(invalid("kbs.reconcile_seconds", "at least 1 second".into()));
        }
        if self.kbs.retry_max_seconds == 0 {
            return Err(invalid("kbs.retry_max_seconds", "at least 1 second".into()));
        }
        if let Some(modes) = &self.launches.modes {
            for m in modes {
                if mode_from_name(m).is_none() {
                    return Err(invalid(
                        "launches.modes",
                        format!("{m:?} is not one of \"sev\", \"seves\", \"snp\""),
                    ));
                }
            }
        }
        if let Some(sig) = &self.launches.host_cpu_signature {
            parse_signature(sig).ok_or_else(|| {
                invalid(
                    "launches.host_cpu_signature",
                    format!("{sig:?} is not a 32-bit number (e.g. \"0xa00f11\")"),
                )
            })?;
        }
        if self.launches.pod_cpus.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid("launches.pod_cpus", "is empty".into()));
        }
        if let Some(v) = &self.launches.kata_version {
            kata_launch::KataRelease::parse(v)
                .map_err(|e| invalid("launches.kata_version", e.to_string()))?;
        }
        if let Some(k) = &self.launches.snp.host_kernel {
            if sev_core::host_kernel::KernelRelease::parse(k).is_none() {
                return Err(invalid(
                    "launches.snp.host_kernel",
                    format!("{k:?} is not a kernel release such as \"6.8\" or \"6.12.9\""),
                ));
            }
        }
        if let Some(g) = &self.launches.snp.guest_features {
            parse_u64(g).ok_or_else(|| {
                invalid(
                    "launches.snp.guest_features",
                    format!("{g:?} is not a 64-bit number (e.g. \"0x1\")"),
                )
            })?;
        }
        for v in &self.launches.annotations.default_vcpus {
            if !(v.is_finite() && *v >= 0.0) {
                return Err(invalid(
                    "launches.annotations.default_vcpus",
                    format!("{v} is not a CPU count (Kata takes 0 or more)"),
                ));
            }
        }
        for v in &self.launches.annotations.kernel_verity_params {
            if let Err(e) = kata_launch::check_verity_params(v) {
                return Err(invalid("launches.annotations.kernel_verity_params", e));
            }
        }
        Ok(())
    }

    /// The configured Kata release, if any (checked when loaded).
    pub fn kata_release(&self) -> Option<kata_launch::KataRelease> {
        self.launches
            .kata_version
            .as_deref()
            .and_then(|v| kata_launch::KataRelease::parse(v).ok())
    }

    /// The configured SNP guest features, if any (checked when loaded).
    pub fn snp_guest_features(&self) -> Option<u64> {
        self.launches
            .snp
            .guest_features
            .as_deref()
            .and_then(parse_u64)
    }

    /// Where status and metrics are served.
    pub fn listen(&self) -> Result<Listen, String> {
        if self.listen == "off" {
            return Ok(Listen::Off);
        }
        self.listen
            .parse()
            .map(Listen::At)
            .map_err(|_| format!("{:?} is not HOST:PORT or \"off\"", self.listen))
    }

    /// How to reach the broker.
    pub fn kbs_target(&self) -> KbsTarget {
        match (&self.kbs.admin_endpoint, &self.kbs.admin_token_file) {
            (Some(endpoint), Some(token_file)) => KbsTarget::Tcp {
                endpoint: endpoint.clone(),
                token_file: token_file.clone(),
                ca_file: self.kbs.admin_ca_file.clone(),
            },
            _ => KbsTarget::Socket(self.kbs.admin_socket.clone()),
        }
    }

    /// The node's name: configured, or the host name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        })
    }

    /// The host CPU signature override, if any.
    pub fn host_cpu_signature(&self) -> Option<u32> {
        self.launches
            .host_cpu_signature
            .as_deref()
            .and_then(parse_signature)
    }

    /// The modes to register.
    pub fn mode_allowed(&self, mode: sev_core::SevMode) -> bool {
        match &self.launches.modes {
            None => true,
            Some(modes) => modes.iter().any(|m| mode_from_name(m) == Some(mode)),
        }
    }

    /// Each call's timeout.
    pub fn kbs_timeout(&self) -> Duration {
        Duration::from_secs(self.kbs.timeout_seconds)
    }
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The broker's id rule: 1 to 256 printable ASCII characters without spaces.
pub fn valid_id(s: &str) -> bool {
    (1..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

fn mode_from_name(name: &str) -> Option<sev_core::SevMode> {
    use sev_core::SevMode;
    [SevMode::Sev, SevMode::SevEs, SevMode::Snp]
        .into_iter()
        .find(|m| m.name() == name)
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_signature(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("/etc/host-agent/config.toml"), text)
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.kata_configs,
            [DEFAULT_KATA_CONFIGS, DEFAULT_KATA_CONFIGS_OPT_KATA]
        );
        assert_eq!(c.kata_release(), None);
        assert_eq!(c.snp_guest_features(), None);
        assert_eq!(
            c.kbs_target(),
            KbsTarget::Socket(PathBuf::from(DEFAULT_ADMIN_SOCKET))
        );
        assert_eq!(
            c.listen().unwrap(),
            Listen::At(DEFAULT_LISTEN.parse().unwrap())
        );
        assert!(c.mode_allowed(sev_core::SevMode::Snp));
        assert!(!c.node_name().is_empty());
    }

    #[test]
    fn shipped_example_parses_to_the_defaults() {
        let c = parse(include_str!("../../../systemd/host-agent.toml")).unwrap();
        let d = AgentConfig::default();
        assert_eq!(c.kata_configs, d.kata_configs);
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.state_dir, d.state_dir);
        assert_eq!(c.settle_ms, d.settle_ms);
        assert_eq!(c.write_settle_ms, d.write_settle_ms);
        assert_eq!(c.max_kernel_bytes, d.max_kernel_bytes);
        assert_eq!(c.max_initrd_bytes, d.max_initrd_bytes);
        assert_eq!(c.stale_grace_seconds, d.stale_grace_seconds);
        assert_eq!(c.kbs_target(), d.kbs_target());
        assert_eq!(c.kbs.timeout_seconds, d.kbs.timeout_seconds);
        assert_eq!(c.kbs.retry_max_seconds, d.kbs.retry_max_seconds);
        assert_eq!(c.drift.proc_root, d.drift.proc_root);
        assert_eq!(c.launches.kata_version, d.launches.kata_version);
        assert!(c.launches.annotations.default_vcpus.is_empty());
    }

    #[test]
    fn snp_keys_are_checked_and_named() {
        let c = parse(
            "[launches]\nkata_version = \"4.1.0\"\n[launches.snp]\nhost_kernel = \"6.8\"\nguest_features = \"0x21\"\n[launches.annotations]\ndefault_vcpus = [2, 4.5]\n",
        )
        .unwrap();
        assert_eq!(c.kata_release().unwrap().to_string(), "4.1.0");
        assert_eq!(c.snp_guest_features(), Some(0x21));
        for (text, key) in [
            (
                "[launches]\nkata_version = \"3.12.0\"",
                "launches.kata_version",
            ),
            (
                "[launches.snp]\nhost_kernel = \"linux\"",
                "launches.snp.host_kernel",
            ),
            (
                "[launches.snp]\nguest_features = \"one\"",
                "launches.snp.guest_features",
            ),
            (
                "[launches.annotations]\ndefault_vcpus = [-1]",
                "launches.annotations.default_vcpus",
            ),
            (
                "[launches.annotations]\nkernel_verity_params = [\"root_hash=a\"]",
                "launches.annotations.kernel_verity_params",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse("[launches]\nkata_version = \"3.12.0\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("4.1.x"), "the known releases are listed: {e}");
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
kata_configs = ["/etc/kata/configuration-*.toml"]
node = "sev-node-1"
listen = "off"
[kbs]
admin_endpoint = "http://10.0.0.2:44445"
admin_token_file = "/etc/host-agent/token"
[launches]
modes = ["sev", "seves"]
pod_cpus = [0, 2]
host_cpu_signature = "0xa00f11"
"#,
        )
        .unwrap();
        assert_eq!(c.node_name(), "sev-node-1");
        assert_eq!(c.listen().unwrap(), Listen::Off);
        assert!(matches!(
            c.kbs_target(),
            KbsTarget::Tcp { ca_file: None, .. }
        ));
        assert!(!c.mode_allowed(sev_core::SevMode::Snp));
        assert_eq!(c.host_cpu_signature(), Some(0xa00f11));
    }

    #[test]
    fn an_https_endpoint_carries_its_ca_file() {
        let c = parse(
            r#"
[kbs]
admin_endpoint = "https://kbs.example:44445"
admin_token_file = "/etc/host-agent/kbs-admin.token"
admin_ca_file = "/etc/host-agent/kbs-admin-ca.pem"
"#,
        )
        .unwrap();
        assert_eq!(
            c.kbs_target(),
            KbsTarget::Tcp {
                endpoint: "https://kbs.example:44445".into(),
                token_file: PathBuf::from("/etc/host-agent/kbs-admin.token"),
                ca_file: Some(PathBuf::from("/etc/host-agent/kbs-admin-ca.pem")),
            }
        );
        // The shipped example's TCP keys, uncommented, say the same.
        let example = include_str!("../../../systemd/host-agent.toml")
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(k) if k.starts_with("admin_") && k.contains(" = ") => k,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let e = parse(&example).unwrap();
        assert_eq!(e.kbs_target(), c.kbs_target());
    }

    #[test]
    fn errors_name_file_and_key() {
        for (text, key) in [
            ("kata_configs = []", "kata_configs"),
            ("kata_configs = [\"relative/*.toml\"]", "kata_configs"),
            ("kata_configs = [\"/opt/*/c.toml\"]", "kata_configs"),
            ("listen = \"nowhere\"", "listen"),
            ("node = \"a b\"", "node"),
            (
                "[kbs]\nadmin_endpoint = \"http://x:1\"",
                "kbs.admin_token_file",
            ),
            (
                "[kbs]\nadmin_endpoint = \"https://x:1\"\nadmin_token_file = \"/t\"",
                "kbs.admin_ca_file",
            ),
            (
                "[kbs]\nadmin_endpoint = \"http://x:1\"\nadmin_token_file = \"/t\"\n\
                 admin_ca_file = \"/ca.pem\"",
                "kbs.admin_endpoint",
            ),
            ("[kbs]\nadmin_ca_file = \"/ca.pem\"", "kbs.admin_ca_file"),
            (
                "[kbs]\nadmin_endpoint = \"kbs.example:44445\"\nadmin_token_file = \"/t\"",
                "kbs.admin_endpoint",
            ),
            ("[launches]\nmodes = [\"tdx\"]", "launches.modes"),
            (
                "[launches]\nhost_cpu_signature = \"zen\"",
                "launches.host_cpu_signature",
            ),
            ("[launches]\npod_cpus = []", "launches.pod_cpus"),
            ("[kbs]\nretry_max_seconds = 0", "kbs.retry_max_seconds"),
            ("[kbs]\nreconcile_seconds = 0", "kbs.reconcile_seconds"),
            ("max_kernel_bytes = 4096", "max_kernel_bytes"),
            ("max_initrd_bytes = 0", "max_initrd_bytes"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("/etc/host-agent/config.toml"), "{e}");
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse("listen = 3\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse("colour = \"blue\"\n").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }
}
