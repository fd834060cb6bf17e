//! The daemon following an SNP configuration of today's Kata as it follows SEV
//! ones: a Kata 4.1 tree under `opt/kata` (its shipped configuration, pointed at
//! real OVMF, and a shim that reports its release), edits saved by rename, an
//! artefact swapped by rename, a change of the pod CPU range, and a package
//! upgrade that replaces the shim with another release. Every registered digest
//! is checked against sev-snp-measure over the launch the status shows.

use super::rig::{Rig, NODE};
use host_agent::agent::status::{AgentStatus, LaunchView};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "../common/mod.rs"]
mod common;

const SNP_CLASS: &str = "kata-qemu-snp";

struct SnpTree {
    config: PathBuf,
    kernel: PathBuf,
}

/// Kata 4.1.0's configuration-qemu-snp.toml under `root/opt/kata`, its firmware
/// the real AmdSev OVMF and its kernel a copy of the sample's.
fn kata_4_1_tree(root: &Path, sample: &sample_artefacts::Sample) -> SnpTree {
    let tree = root.join("opt/kata");
    let defaults = tree.join("share/defaults/kata-containers");
    std::fs::create_dir_all(&defaults).unwrap();
    let kernel = tree.join("share/kata-containers/vmlinuz.container");
    let image = tree.join("share/kata-containers/kata-containers-confidential.img");
    std::fs::create_dir_all(kernel.parent().unwrap()).unwrap();
    std::fs::copy(&sample.kernel, &kernel).unwrap();
    std::fs::write(&image, b"root disk").unwrap();
    let shipped = std::fs::read_to_string(
        common::shared_testdata().join("kata/snp/configuration-qemu-snp.4.1.0.toml"),
    )
    .unwrap();
    let text = shipped
        .replace(
            "/opt/kata/share/ovmf/AMDSEV.fd",
            common::real_firmware().to_str().unwrap(),
        )
        .replace("/opt/kata", tree.to_str().unwrap());
    let config = defaults.join("configuration-qemu-snp.toml");
    std::fs::write(&config, text).unwrap();
    common::install_kata_shim(&tree, "4.1.0");
    SnpTree { config, kernel }
}

async fn launches(rig_agent: &super::rig::Agent) -> (AgentStatus, Vec<LaunchView>) {
    let s = rig_agent.status().await;
    let l = s
        .classes
        .get(SNP_CLASS)
        .map(|c| c.launches.clone())
        .unwrap_or_default();
    (s, l)
}

/// sev-snp-measure's digests of the launches, sorted as the broker lists them.
fn oracle(launches: &[LaunchView]) -> Vec<String> {
    let cases: Vec<_> = launches
        .iter()
        .map(|l| {
            serde_json::json!({
                "mode": "snp", "ovmf": l.firmware, "kernel": l.kernel, "initrd": l.initrd,
                "append": l.cmdline, "vcpus": l.vcpus, "vcpu_sig": 0x0080_0f12,
                "guest_features": 1, "vmm_type": "QEMU",
            })
        })
        .collect();
    let mut v = common::oracle_batch(&cases);
    v.sort();
    v
}

/// Waits until the status shows launches satisfying `pred` and the broker holds
/// exactly their digests, which must be sev-snp-measure's.
async fn settled(
    rig: &Rig,
    agent: &super::rig::Agent,
    what: &str,
    pred: impl Fn(&[LaunchView]) -> bool,
) -> (AgentStatus, Vec<LaunchView>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, l) = launches(agent).await;
        if !l.is_empty() && pred(&l) {
            let mut want: Vec<String> = l.iter().map(|l| l.digest.clone()).collect();
            want.sort();
            if rig.registered_for(SNP_CLASS).await == want {
                assert_eq!(oracle(&l), want, "{what}: sev-snp-measure agrees");
                return (s, l);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {l:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_snp_configuration_of_kata_4_1_is_followed_live() {
    let root = tempfile::tempdir().unwrap();
    let glob = root
        .path()
        .join("opt/kata/share/defaults/kata-containers/configuration-*.toml");
    let rig = Rig::following(&glob, "[launches.snp]\nhost_kernel = \"6.12\"\n");
    let tree = kata_4_1_tree(root.path(), &rig.sample);
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(60));

    // Registered for pod CPU counts 0 and 1, as Kata 4.1 launches them.
    let (s, first) = settled(&rig, &agent, "the first registration", |l| l.len() == 2).await;
    let class = &s.classes[SNP_CLASS];
    assert!(
        class
            .kata_release
            .as_deref()
            .is_some_and(|r| r.starts_with("4.1.0 (from ") && r.contains("containerd-shim-kata-v2")),
        "{class:?}"
    );
    assert!(
        s.snp_host.contains("host kernel 6.12 (configured)"),
        "{}",
        s.snp_host
    );
    assert!(
        matches!(s.platform, Some(host_agent::agent::status::PlatformView::Unavailable(ref e)) if e.contains("/dev/sev")),
        "no SEV firmware here: {:?}",
        s.platform
    );
    assert!(
        class
            .warnings
            .iter()
            .any(|w| w.contains("kernel_params by annotation")),
        "{:?}",
        class.warnings
    );
    for l in &first {
        assert_eq!(l.mode, "snp");
        assert_eq!(l.cpu, "EPYC-v4,pmu=off");
        assert_eq!(l.smp, format!("{},cores=1,threads=1", l.vcpus));
        assert!(!l.cmdline.contains("nr_cpus"), "{}", l.cmdline);
        assert!(l.cmdline.contains("dm-mod.create="), "{}", l.cmdline);
    }

    // 1. kernel_params edited and saved by rename.
    let text = std::fs::read_to_string(&tree.config).unwrap();
    rig.replace(
        &tree.config,
        text.replace(
            "kernel_params = \"cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1\"",
            "kernel_params = \"cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 agent.log=debug\"",
        )
        .as_bytes(),
    );
    let (_, edited) = settled(&rig, &agent, "the edited kernel_params", |l| {
        l.iter().all(|l| l.cmdline.ends_with(" agent.log=debug"))
    })
    .await;
    assert!(edited
        .iter()
        .all(|e| first.iter().all(|f| f.digest != e.digest)));

    // 2. The kernel replaced by rename, as an upgrade does.
    let mut kernel = std::fs::read(&tree.kernel).unwrap();
    kernel[4096] ^= 0xff;
    rig.replace(&tree.kernel, &kernel);
    let (_, swapped) = settled(&rig, &agent, "the new kernel", |l| {
        l.iter()
            .all(|l| edited.iter().all(|e| e.digest != l.digest))
    })
    .await;

    // 3. default_vcpus 2: every pod CPU count boots one more vCPU.
    let text = std::fs::read_to_string(&tree.config).unwrap();
    rig.replace(
        &tree.config,
        text.replace("default_vcpus = 1", "default_vcpus = 2")
            .as_bytes(),
    );
    let (_, wider) = settled(&rig, &agent, "default_vcpus 2", |l| {
        let v: Vec<u32> = l.iter().map(|l| l.vcpus).collect();
        v == [2, 3]
    })
    .await;
    // Kata 4.1 writes no nr_cpus, so a 2-vCPU guest is the same launch whether
    // the vCPUs come from default_vcpus or the pod: the same digest.
    assert_eq!(wider[0].digest, swapped[1].digest);
    assert!(swapped.iter().all(|s| s.digest != wider[1].digest));

    // 4. A package upgrade replaces the shim with 3.31.0: the same file now
    // launches with nr_cpus and a -smp with sockets and maxcpus.
    common::install_kata_shim(&root.path().join("opt/kata"), "3.31.0");
    let (s, older) = settled(&rig, &agent, "the 3.31.0 shim", |l| {
        l.iter()
            .all(|l| l.cmdline.contains(&format!(" nr_cpus={} ", l.vcpus)))
    })
    .await;
    assert!(s.classes[SNP_CLASS]
        .kata_release
        .as_deref()
        .is_some_and(|r| r.starts_with("3.31.0")));
    for l in &older {
        assert_eq!(
            l.smp,
            format!("{0},cores=1,threads=1,sockets={0},maxcpus={0}", l.vcpus)
        );
    }
    let _ = NODE;
}

/// The `kbs admin ...` arguments of the approve commands a refusal names, one
/// per line after the message (`  kbs admin approve KIND ...  # KIND ID`).
fn approve_commands(error: &str) -> Vec<Vec<String>> {
    error
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("kbs admin "))
        .map(|l| {
            let command = l.split("  #").next().unwrap_or(l);
            command.split_whitespace().map(str::to_string).collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_approved_registration_an_snp_node_registers_once_an_operator_approves() {
    let root = tempfile::tempdir().unwrap();
    let glob = root
        .path()
        .join("opt/kata/share/defaults/kata-containers/configuration-*.toml");
    let mut rig = Rig::following(&glob, "[launches.snp]\nhost_kernel = \"6.12\"\n");
    rig.require_approval();
    let tree = kata_4_1_tree(root.path(), &rig.sample);
    let agent = rig.start_agent();

    // Nothing approved: refused, nothing registered, and the status names the
    // inputs with the commands that would approve them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let error = loop {
        let s = agent.status().await;
        if let Some(e) = s
            .classes
            .get(SNP_CLASS)
            .and_then(|c| c.registration_error.clone())
        {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no refusal: {s:#?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(error.contains("not approved"), "{error}");
    let config = tree.config.display().to_string();
    let firmware = common::real_firmware().display().to_string();
    let kernel = tree.kernel.display().to_string();
    for want in [
        format!(
            "kbs admin approve kata-config {config} --runtime-class {SNP_CLASS} --kata-version 4.1.0"
        ),
        format!("kbs admin approve firmware {firmware}"),
        format!("kbs admin approve kernel {kernel}"),
    ] {
        assert!(error.contains(&want), "{want}: {error}");
    }
    assert!(rig.registered_for(SNP_CLASS).await.is_empty());

    // The operator runs exactly those commands; the agent, still running,
    // registers on its next retry, and the broker holds its own derivation:
    // the agent's digests, which are sev-snp-measure's.
    let commands = approve_commands(&error);
    assert!(commands.len() >= 3, "{error}");
    for c in &commands {
        let args: Vec<&std::ffi::OsStr> = c.iter().map(std::ffi::OsStr::new).collect();
        rig.kbs_admin(&args);
    }
    agent.wait_notify("READY=1", Duration::from_secs(60));
    let (_, launches) = settled(&rig, &agent, "the approved registration", |l| l.len() == 2).await;
    let listed: serde_json::Value = serde_json::from_str(&rig.kbs_admin(&[
        "digests".as_ref(),
        "list".as_ref(),
        "--json".as_ref(),
    ]))
    .unwrap();
    let origins: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["origin"].as_str().unwrap())
        .collect();
    assert!(
        !origins.is_empty() && origins.iter().all(|o| *o == "derived"),
        "{listed:#}"
    );
    assert_eq!(launches.len(), 2);

    // Revoking the firmware takes the digests derived with it away.
    let approvals: serde_json::Value =
        serde_json::from_str(&rig.kbs_admin(&["approvals".as_ref(), "--json".as_ref()])).unwrap();
    let fw = approvals
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "firmware")
        .and_then(|a| a["id"].as_str())
        .unwrap()
        .to_string();
    rig.kbs_admin(&["revoke".as_ref(), "firmware".as_ref(), fw.as_ref()]);
    assert!(rig.registered_for(SNP_CLASS).await.is_empty());
}
