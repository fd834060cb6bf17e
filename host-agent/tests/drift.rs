#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Drift detection against real processes: each test starts long-running
//! processes whose command line is the one Kata gives QEMU for an SEV guest
//! (CC-0.8.0) or an SNP guest (4.1)
//! (a shell named `qemu-system-x86_64` that waits on its stdin and ignores the
//! QEMU arguments after its script), finds them by scanning `/proc`, measures
//! them from synthetic artefacts on disk and checks them against the launch
//! registered for the sample Kata configuration.

use host_agent::artefacts::{sha256_file, ArtefactKind};
use host_agent::drift::{check, measure_observed, scan, DriftFinding, ExpectedLaunch, Part};
use host_agent::launch::{LaunchArtefacts, LoadedLaunch};
use kata_launch::{plan, KataConfig, LaunchContext, LaunchPlan};
use sev_core::{SevMode, VcpuSignature, VmShape, VmmType};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the CoCo operator installs Kata's QEMU: the fake's `argv[0]`.
const QEMU_PATH: &str = "/opt/confidential-containers/bin/qemu-system-x86_64";

/// The signature SEV-ES VMSAs carry for `-cpu host` in these tests (an EPYC
/// Milan), fixed so that the tests do not depend on the machine's CPU.
fn host_sig() -> VcpuSignature {
    VcpuSignature::from_family_model_stepping(25, 1, 1)
}

/// A running stand-in for QEMU, killed and reaped when dropped, also when a
/// test fails half-way.
struct FakeQemu(Child);

impl FakeQemu {
    /// Starts `sh -c 'read -r line' <args>` with `argv[0]` set to Kata's QEMU
    /// path. The shell blocks reading its piped stdin; the QEMU arguments are
    /// its unused positional parameters, so `/proc/<pid>/cmdline` reads
    /// `qemu-system-x86_64 -c 'read -r line' -name ... -smp ...`. `read` is a
    /// shell builtin, so the shell never execs another program in its place.
    fn start(args: &[String]) -> FakeQemu {
        let child = Command::new("sh")
            .arg0(QEMU_PATH)
            .arg("-c")
            .arg("read -r line")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sh");
        let qemu = FakeQemu(child);
        qemu.wait_for_cmdline();
        qemu
    }

    /// Waits until the kernel shows the new command line: `spawn` returns when
    /// the child has left the parent's memory in `execve`, which is before the
    /// new program's arguments are in place, so `/proc/<pid>/cmdline` can still
    /// be empty for a moment.
    fn wait_for_cmdline(&self) {
        let path = format!("/proc/{}/cmdline", self.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read(&path)
            .unwrap_or_default()
            .starts_with(QEMU_PATH.as_bytes())
        {
            assert!(
                Instant::now() < deadline,
                "{path} never showed the QEMU name"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for FakeQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sample configuration with `sev_guest_policy` set, and its launch for a
/// pod without CPU limit.
fn sample_plan(dir: &Path, policy: u32) -> LaunchPlan {
    let sample = sample_artefacts::write_sample(dir).unwrap();
    let text = std::fs::read_to_string(&sample.config).unwrap().replace(
        "sev_guest_policy = 3",
        &format!("sev_guest_policy = {policy}"),
    );
    let config = KataConfig::parse(&sample.config, &text).unwrap();
    let p = plan(&config, &LaunchContext::new(0)).unwrap();
    assert_eq!(p.runtime_class, "kata-qemu-sev");
    p
}

/// What the agent registers for a plan (SEV, SEV-ES with `-cpu host`, or SNP
/// with a named model): the digest computed the way the
/// `digests` command does (files loaded once, command line per launch), with
/// the kernel's and initrd's content hashes at registration.
fn register(p: &LaunchPlan) -> ExpectedLaunch {
    let art = LaunchArtefacts {
        firmware: p.firmware.clone(),
        kernel: Some(p.kernel.clone()),
        initrd: p.initrd.clone(),
        cmdline: None,
    };
    let shape = VmShape {
        vcpus: p.vcpus,
        vcpu_sig: match &p.cpu_model {
            _ if p.mode == SevMode::Sev => VcpuSignature(0),
            kata_launch::CpuModel::Host => host_sig(),
            kata_launch::CpuModel::Named(name) => {
                sev_core::vcpu::vcpu_type_signature(name).unwrap()
            }
        },
        guest_features: 0x1,
        vmm: VmmType::Qemu,
        fpu: sev_core::vmsa::VmsaFpu::Reset,
    };
    let digest = LoadedLaunch::load(&art)
        .unwrap()
        .digest(p.mode, &shape, Some(p.cmdline.as_bytes()))
        .unwrap();
    ExpectedLaunch {
        runtime_class: p.runtime_class.clone(),
        mode: p.mode,
        firmware: p.firmware.clone(),
        kernel: p.kernel.clone(),
        initrd: p.initrd.clone(),
        cmdline: p.cmdline.clone(),
        vcpus: p.vcpus,
        cpu: p.cpu_arg(),
        digest: digest.as_bytes().to_vec(),
        firmware_sha256: None,
        kernel_sha256: Some(sha256_file(ArtefactKind::Kernel, &p.kernel).unwrap()),
        initrd_sha256: p
            .initrd
            .as_ref()
            .map(|i| sha256_file(ArtefactKind::Initrd, i).unwrap()),
    }
}

/// QEMU's arguments as Kata CC-0.8.0 orders them for an SEV or SEV-ES guest
/// with pre-attestation (trimmed of devices that do not matter here), with the
/// command line and `-smp` given.
fn kata_args(p: &LaunchPlan, append: &str, smp: &str) -> Vec<String> {
    let s = |v: &str| v.to_string();
    let mut a = vec![
        s("-name"),
        s("sandbox-0123456789abcdef"),
        s("-uuid"),
        s("2b5f9a04-5d0b-4e1a-9a43-6c1e8b7d2f10"),
        s("-machine"),
        s("q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=sev"),
        s("-cpu"),
        p.cpu_arg(),
        s("-qmp"),
        s("unix:path=/run/vc/vm/0123456789abcdef/qmp.sock,server=on,wait=off"),
        s("-m"),
        s("2048M,slots=10,maxmem=257720M"),
        s("-device"),
        s("virtio-scsi-pci,id=scsi0,disable-modern=false"),
        s("-object"),
        format!(
            "sev-guest,id=sev,cbitpos=51,reduced-phys-bits=1,policy={},\
             dh-cert-file=/tmp/sev/launch/godh.b64,session-file=/tmp/sev/launch/session_file.b64,\
             kernel-hashes=on",
            p.policy
        ),
        s("-drive"),
        format!(
            "if=pflash,format=raw,readonly=on,file={}",
            p.firmware.display()
        ),
        s("-rtc"),
        s("base=utc,driftfix=slew,clock=host"),
        s("-global"),
        s("kvm-pit.lost_tick_policy=discard"),
        s("-vga"),
        s("none"),
        s("-no-user-config"),
        s("-nodefaults"),
        s("-nographic"),
        s("--no-reboot"),
        s("-object"),
        s("memory-backend-ram,id=dimm1,size=2048M"),
        s("-numa"),
        s("node,memdev=dimm1"),
        s("-S"),
        s("-kernel"),
        p.kernel.display().to_string(),
    ];
    if let Some(initrd) = &p.initrd {
        a.push(s("-initrd"));
        a.push(initrd.display().to_string());
    }
    a.extend([
        s("-append"),
        s(append),
        s("-pidfile"),
        s("/run/vc/vm/0123456789abcdef/pid"),
        s("-smp"),
        s(smp),
    ]);
    a
}

/// Scans `/proc` once and checks each of `pids`, in order.
fn findings(pids: &[u32], expected: &[ExpectedLaunch]) -> Vec<DriftFinding> {
    let observed = scan(Path::new("/proc"));
    pids.iter()
        .map(|&pid| {
            let o = observed
                .iter()
                .find(|o| o.pid == pid)
                .unwrap_or_else(|| panic!("process {pid} not found by the scan"));
            let q = o.result.as_ref().unwrap();
            let digest = measure_observed(q, Some(host_sig()), Default::default()).unwrap();
            check(pid, q, &digest, expected)
        })
        .collect()
}

#[test]
fn same_launch_is_no_drift_and_another_command_line_is() {
    let dir = tempfile::tempdir().unwrap();
    let p = sample_plan(dir.path(), 3);
    assert_eq!(p.mode, SevMode::Sev);
    let registered = register(&p);
    let same = FakeQemu::start(&kata_args(&p, &p.cmdline, &p.smp_arg()));
    let other_append = format!("{} agent.log=debug", p.cmdline);
    let appended = FakeQemu::start(&kata_args(&p, &other_append, &p.smp_arg()));
    // SEV measures no VMSAs, so another vCPU count alone measures the same.
    let more_cpus = FakeQemu::start(&kata_args(
        &p,
        &p.cmdline,
        "4,cores=1,threads=1,sockets=4,maxcpus=4",
    ));

    let f = findings(
        &[same.pid(), appended.pid(), more_cpus.pid()],
        std::slice::from_ref(&registered),
    );

    assert!(!f[0].drifted, "{:?}", f[0]);
    assert_eq!(f[0].pid, same.pid());
    assert_eq!(f[0].runtime_class.as_deref(), Some("kata-qemu-sev"));
    assert_eq!(f[0].digest_hex, hex::encode(&registered.digest));

    assert!(f[1].drifted);
    assert_eq!(f[1].differing, [Part::CommandLine]);
    assert_eq!(f[1].runtime_class.as_deref(), Some("kata-qemu-sev"));
    assert!(
        f[1].detail.contains("kernel command line differs")
            && f[1].detail.contains("agent.log=debug"),
        "{}",
        f[1].detail
    );

    assert!(!f[2].drifted, "{:?}", f[2]);

    // The finding is what the daemon puts in its JSON status.
    let json = serde_json::to_value(&f[1]).unwrap();
    assert_eq!(json["differing"], serde_json::json!(["command line"]));
    assert_eq!(json["drifted"], serde_json::json!(true));
}

#[test]
fn another_vcpu_count_is_drift_for_sev_es() {
    let dir = tempfile::tempdir().unwrap();
    // Policy bit 2 makes the guest SEV-ES: one VMSA per vCPU enters the digest.
    let p = sample_plan(dir.path(), 7);
    assert_eq!(p.mode, SevMode::SevEs);
    assert_eq!(p.vcpus, 1);
    let registered = register(&p);
    let same = FakeQemu::start(&kata_args(&p, &p.cmdline, &p.smp_arg()));
    // Only -smp changes; the command line still says nr_cpus=1.
    let two = FakeQemu::start(&kata_args(
        &p,
        &p.cmdline,
        "2,cores=1,threads=1,sockets=2,maxcpus=2",
    ));

    let f = findings(&[same.pid(), two.pid()], std::slice::from_ref(&registered));

    assert!(!f[0].drifted, "{:?}", f[0]);
    assert!(f[1].drifted);
    assert_eq!(f[1].differing, [Part::Vcpus]);
    assert!(
        f[1].detail
            .contains("vCPUs differ: registered 1, running 2"),
        "{}",
        f[1].detail
    );
}

#[test]
fn an_initrd_rewritten_after_registration_is_initrd_drift() {
    let dir = tempfile::tempdir().unwrap();
    let p = sample_plan(dir.path(), 3);
    let registered = register(&p);
    let qemu = FakeQemu::start(&kata_args(&p, &p.cmdline, &p.smp_arg()));
    assert!(!findings(&[qemu.pid()], std::slice::from_ref(&registered))[0].drifted);

    // Same path, new contents: the running guest now measures something else.
    let initrd = p.initrd.as_ref().unwrap();
    let mut bytes = std::fs::read(initrd).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(initrd, &bytes).unwrap();

    let f = findings(&[qemu.pid()], std::slice::from_ref(&registered));
    assert!(f[0].drifted);
    assert_eq!(f[0].differing, [Part::Initrd]);
    assert!(
        f[0].detail
            .contains("initrd contents changed since registration"),
        "{}",
        f[0].detail
    );
}

#[test]
fn plain_and_broken_qemus_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let p = sample_plan(dir.path(), 3);
    // No confidential-guest-support: a plain VM, not reported.
    let plain_args: Vec<String> = kata_args(&p, &p.cmdline, &p.smp_arg())
        .into_iter()
        .map(|a| a.replace(",confidential-guest-support=sev", ""))
        .collect();
    let plain = FakeQemu::start(&plain_args);
    // An SEV guest whose -smp QEMU could not have accepted: reported as an error.
    let broken = FakeQemu::start(&kata_args(&p, &p.cmdline, "many"));

    let observed = scan(Path::new("/proc"));
    assert!(observed.iter().all(|o| o.pid != plain.pid()));
    let b = observed.iter().find(|o| o.pid == broken.pid()).unwrap();
    let err = b.result.as_ref().unwrap_err().to_string();
    assert!(err.contains("-smp"), "{err}");
}

/// QEMU's arguments as Kata 3.32 to 4.1 give them for an SNP guest: the
/// firmware as `-bios`, `kernel-hashes=on` with a decimal policy, `-smp`
/// without sockets or maxcpus.
fn kata_4_1_snp_args(p: &LaunchPlan, append: &str, vcpus: u32) -> Vec<String> {
    let s = |v: &str| v.to_string();
    vec![
        s("-name"),
        s("sandbox-0123456789abcdef"),
        s("-machine"),
        s("q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=snp"),
        s("-cpu"),
        p.cpu_arg(),
        s("-m"),
        s("2048M"),
        s("-object"),
        s("sev-snp-guest,id=snp,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=196608"),
        s("-bios"),
        p.firmware.display().to_string(),
        s("-object"),
        s("memory-backend-ram,id=dimm1,size=2048M"),
        s("-numa"),
        s("node,memdev=dimm1"),
        s("-kernel"),
        p.kernel.display().to_string(),
        s("-initrd"),
        p.initrd.as_ref().unwrap().display().to_string(),
        s("-append"),
        s(append),
        s("-pidfile"),
        s("/run/vc/vm/0123456789abcdef/pid"),
        s("-smp"),
        format!("{vcpus},cores=1,threads=1"),
    ]
}

#[test]
fn snp_guests_of_kata_4_1_are_measured_and_their_differences_named() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_artefacts::write_sample(dir.path()).unwrap();
    let text = std::fs::read_to_string(&sample.config)
        .unwrap()
        .replace("sev_snp_guest = false", "sev_snp_guest = true");
    let path = dir.path().join("configuration-qemu-snp.toml");
    std::fs::write(&path, &text).unwrap();
    let config = KataConfig::parse(&path, &text).unwrap();
    let ctx = LaunchContext {
        release: "4.1.0".parse().unwrap(),
        ..LaunchContext::new(1)
    };
    let p = plan(&config, &ctx).unwrap();
    assert_eq!((p.mode, p.vcpus, p.kernel_hashes), (SevMode::Snp, 2, true));
    // Registered as the agent does: kernel hashes and EPYC-v4's VMSAs.
    let registered = register(&p);
    assert_eq!(registered.runtime_class, "kata-qemu-snp");

    let same = FakeQemu::start(&kata_4_1_snp_args(&p, &p.cmdline, 2));
    let debug = FakeQemu::start(&kata_4_1_snp_args(
        &p,
        &format!("{} agent.log=debug", p.cmdline),
        2,
    ));
    // 4.1 writes no nr_cpus: only -smp says how many VMSAs were measured.
    let three = FakeQemu::start(&kata_4_1_snp_args(&p, &p.cmdline, 3));
    let f = findings(
        &[same.pid(), debug.pid(), three.pid()],
        std::slice::from_ref(&registered),
    );
    assert!(!f[0].drifted, "{:?}", f[0]);
    assert_eq!(f[0].runtime_class.as_deref(), Some("kata-qemu-snp"));
    assert!(f[1].drifted);
    assert_eq!(f[1].differing, [Part::CommandLine]);
    assert!(f[2].drifted);
    assert_eq!(f[2].differing, [Part::Vcpus]);
    assert!(
        f[2].detail
            .contains("vCPUs differ: registered 2, running 3"),
        "{}",
        f[2].detail
    );
}
