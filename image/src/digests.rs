//! The launches and digests a Kata configuration yields once its initrd is
//! replaced by a new one, computed by the host agent's own code
//! (`host_agent::digests_cmd::reports`), so they agree with `host-agent digests`.

use anyhow::{bail, Context as _};
use host_agent::digests_cmd::{reports, DigestsArgs, LaunchReport};
use kata_launch::KataConfig;
use std::path::{Path, PathBuf};

/// Host facts the digests depend on, as `host-agent digests` takes them.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Pod CPU limits to derive launches for.
    pub pod_cpus: Vec<u32>,
    /// The host CPU signature (SEV-ES guests run with `-cpu host`).
    pub host_cpu_sig: Option<u64>,
    /// Whether the host runs in FIPS mode.
    pub fips: Option<bool>,
}

/// The text of the configuration at `config_path` with the `initrd` key of
/// `[hypervisor.qemu]` set to `initrd`; everything else unchanged.
pub fn with_initrd(config_path: &Path, text: &str, initrd: &Path) -> anyhow::Result<String> {
    let config = KataConfig::parse(config_path, text)?;
    let located = &config.qemu.initrd;
    let line = match (located.line, &located.value) {
        (Some(line), Some(_)) => line,
        _ => bail!(
            "{}: [hypervisor.qemu] has no initrd (a guest booting an image is not measured with an initrd)",
            config_path.display()
        ),
    };
    let new_path = initrd
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", initrd.display()))?;
    let value = toml::Value::String(new_path.to_string());
    let mut out = String::with_capacity(text.len() + new_path.len());
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let indent = l.get(..l.len() - l.trim_start().len()).unwrap_or_default();
            let eol = if l.ends_with("\r\n") {
                "\r\n"
            } else if l.ends_with('\n') {
                "\n"
            } else {
                ""
            };
            out.push_str(&format!("{indent}initrd = {value}{eol}"));
        } else {
            out.push_str(l);
        }
    }
    let check = KataConfig::parse(config_path, &out)?;
    if check.qemu.initrd.value.as_deref() != Some(initrd) {
        bail!(
            "{} line {line}: could not set initrd (the key is not on a line of its own)",
            config_path.display()
        );
    }
    Ok(out)
}

/// Every launch the configuration at `config` yields with `initrd` as its initrd,
/// and its digests. The reports name `config`.
pub fn reports_with_initrd(
    config: &Path,
    initrd: &Path,
    host: &HostOptions,
) -> anyhow::Result<Vec<LaunchReport>> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read Kata configuration {}", config.display()))?;
    let initrd = std::path::absolute(initrd)
        .with_context(|| format!("cannot resolve {}", initrd.display()))?;
    let new_text = with_initrd(config, &text, &initrd)?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    // Same file name: the runtime class is named after it.
    let name = config
        .file_name()
        .with_context(|| format!("{} has no file name", config.display()))?;
    let copy: PathBuf = dir.path().join(name);
    std::fs::write(&copy, new_text).with_context(|| format!("cannot write {}", copy.display()))?;
    let args = DigestsArgs {
        kata_configs: vec![copy],
        pod_cpus: if host.pod_cpus.is_empty() {
            vec![0]
        } else {
            host.pod_cpus.clone()
        },
        host_cpu_sig: host.host_cpu_sig,
        fips: host.fips,
        // Asked of the original tree: the copy has no shim beside it.
        kata_version: host_agent::kata_release::ReleaseProbe::new(None)
            .resolve(config)
            .ok()
            .map(|r| r.release),
        host_kernel: None,
        snp_guest_features: None,
        json: false,
    };
    let mut out = reports(&args)?;
    for r in &mut out {
        r.config = config.to_path_buf();
    }
    Ok(out)
}
