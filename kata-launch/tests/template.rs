//! Command lines from configurations built on Kata's SEV template, one switch at a
//! time, checked token for token against the order in the Kata source (CC-0.8.0).

#![cfg(test)]

mod common;

use common::{parse, plan_of, template, FIXED, TEMPLATE};
use kata_launch::{kernel_cmdline, plan, vcpu_count, CpuModel, LaunchContext, SevMode};

const TAIL: &str =
    "agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=false";
const ONLINE: &str = "agent.aa_kbc_params=online_sev_kbc::localhost:44444";

fn line(text: &str) -> String {
    plan_of(text, 0).cmdline
}

#[test]
fn stock_template() {
    assert_eq!(
        line(TEMPLATE),
        format!("{FIXED} console=hvc0 console=hvc1 quiet panic=1 nr_cpus=1 selinux=0 {ONLINE} scsi_mod.scan=none {TAIL}")
    );
}

#[test]
fn hypervisor_debug_gives_debug_instead_of_quiet() {
    let text = template(&[(
        "#enable_debug = true\n#enable_iommu",
        "enable_debug = true\n#enable_iommu",
    )]);
    let config = parse(&text);
    assert!(config.qemu.enable_debug.value);
    assert!(!config.agent.enable_debug.value);
    assert_eq!(
        line(&text),
        format!("{FIXED} console=hvc0 console=hvc1 debug panic=1 nr_cpus=1 selinux=0 {ONLINE} scsi_mod.scan=none {TAIL}")
    );
}

#[test]
fn agent_debug_tracing_and_console_in_katas_order() {
    let text = template(&[
        (
            "#enable_debug = true\n#enable_tracing",
            "enable_debug = true\n#enable_tracing",
        ),
        ("#enable_tracing = true", "enable_tracing = true"),
        (
            "#debug_console_enabled = true",
            "debug_console_enabled = true",
        ),
    ]);
    let config = parse(&text);
    assert!(config.agent.enable_debug.value && !config.qemu.enable_debug.value);
    assert_eq!(
        line(&text),
        format!(
            "{FIXED} console=hvc0 console=hvc1 quiet panic=1 nr_cpus=1 selinux=0 {ONLINE} scsi_mod.scan=none \
             agent.log=debug agent.trace=true agent.debug_console agent.debug_console_vport=1026 {TAIL}"
        )
    );
    // Agent debug alone.
    let text = template(&[(
        "#enable_debug = true\n#enable_tracing",
        "enable_debug = true\n#enable_tracing",
    )]);
    assert!(line(&text).contains(" scsi_mod.scan=none agent.log=debug agent.config_file="));
    // Debug console alone.
    let text = template(&[(
        "#debug_console_enabled = true",
        "debug_console_enabled = true",
    )]);
    assert!(line(&text).contains(
        " scsi_mod.scan=none agent.debug_console agent.debug_console_vport=1026 agent.config_file="
    ));
}

#[test]
fn legacy_serial_console() {
    let text = template(&[("#use_legacy_serial = true", "use_legacy_serial = true")]);
    assert_eq!(
        line(&text),
        format!("{FIXED} console=ttyS0 quiet panic=1 nr_cpus=1 selinux=0 {ONLINE} scsi_mod.scan=none {TAIL}")
    );
}

#[test]
fn iommu_follows_the_fixed_list() {
    let text = template(&[("#enable_iommu = true", "enable_iommu = true")]);
    assert_eq!(
        line(&text),
        format!(
            "{FIXED} intel_iommu=on iommu=pt console=hvc0 console=hvc1 quiet panic=1 nr_cpus=1 selinux=0 {ONLINE} \
             scsi_mod.scan=none {TAIL}"
        )
    );
}

#[test]
fn online_and_offline_pre_attestation() {
    // Online, with the address verbatim.
    let text = template(&[("\"localhost:44444\"", "\"10.1.2.3:44444\"")]);
    assert!(line(&text).contains(
        " selinux=0 agent.aa_kbc_params=online_sev_kbc::10.1.2.3:44444 scsi_mod.scan=none "
    ));

    // Offline: no aa_kbc_params at all.
    let text = template(&[("=\"online\"", "=\"offline\"")]);
    assert_eq!(
        line(&text),
        format!("{FIXED} console=hvc0 console=hvc1 quiet panic=1 nr_cpus=1 selinux=0 scsi_mod.scan=none {TAIL}")
    );

    // Pre-attestation off: none either, and no KBS address needed.
    let text = template(&[
        (
            "guest_pre_attestation = true",
            "guest_pre_attestation = false",
        ),
        ("guest_pre_attestation_kbs_uri = \"localhost:44444\"\n", ""),
    ]);
    assert!(!line(&text).contains("aa_kbc_params"));
}

#[test]
fn snp_guest_has_no_kbc_param_and_runs_epyc_v4() {
    let text = template(&[(
        "confidential_guest = true",
        "confidential_guest = true\nsev_snp_guest = true",
    )]);
    let launch = plan_of(&text, 0);
    assert_eq!(launch.mode, SevMode::Snp);
    assert_eq!(launch.cpu_model, CpuModel::Named("EPYC-v4".into()));
    assert_eq!(launch.cpu_arg(), "EPYC-v4,pmu=off");
    assert_eq!(launch.snp_policy, 0x30000);
    assert!(
        !launch.kernel_hashes,
        "Kata's sev-snp-guest object has no kernel-hashes=on"
    );
    assert_eq!(
        launch.cmdline,
        format!("{FIXED} console=hvc0 console=hvc1 quiet panic=1 nr_cpus=1 selinux=0 scsi_mod.scan=none {TAIL}")
    );
    let text = template(&[(
        "confidential_guest = true",
        "confidential_guest = true\nsev_snp_guest = true\nsnp_guest_policy = 0x70000",
    )]);
    assert_eq!(plan_of(&text, 0).snp_policy, 0x70000);
}

#[test]
fn sev_es_from_policy_bit_two() {
    let text = template(&[("sev_guest_policy = 3", "sev_guest_policy = 7")]);
    let launch = plan_of(&text, 2);
    assert_eq!(launch.mode, SevMode::SevEs);
    assert!(launch.kernel_hashes, "sev-guest carries kernel-hashes=on");
    assert_eq!(launch.policy, 7);
    assert_eq!(launch.cpu_model, CpuModel::Host);
    assert_eq!(launch.vcpus, 3);
    // The online KBC is for SEV-ES guests too.
    assert!(launch.cmdline.contains(ONLINE));
    // Absent policy is 0 in Kata (not the template's 3): plain SEV.
    let text = template(&[("sev_guest_policy = 3\n", "")]);
    let launch = plan_of(&text, 0);
    assert_eq!((launch.mode, launch.policy), (SevMode::Sev, 0));
}

#[test]
fn image_guest_gets_root_and_systemd_params() {
    let text = template(&[(
        "initrd = \"/opt/kata/share/kata-containers/kata-containers-initrd-sev.img\"",
        "image = \"/opt/kata/share/kata-containers/kata-containers.img\"",
    )]);
    let launch = plan_of(&text, 0);
    assert_eq!(launch.initrd, None);
    assert_eq!(
        launch.image.as_deref(),
        Some(std::path::Path::new(
            "/opt/kata/share/kata-containers/kata-containers.img"
        ))
    );
    assert_eq!(
        launch.cmdline,
        format!(
            "{FIXED} root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 \
             console=hvc0 console=hvc1 quiet systemd.show_status=false panic=1 nr_cpus=1 selinux=0 {ONLINE} \
             systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service \
             systemd.mask=systemd-networkd.socket scsi_mod.scan=none {TAIL}"
        )
    );
    assert_eq!(
        parse(&text)
            .artefacts()
            .iter()
            .map(|a| a.key)
            .collect::<Vec<_>>(),
        ["firmware", "kernel", "image"]
    );

    // Debug image guest: systemd debug params follow `debug`.
    let debug = common::edit(
        &text,
        "#enable_debug = true\n#enable_iommu",
        "enable_debug = true\n#enable_iommu",
    );
    assert!(line(&debug)
        .contains(" console=hvc1 debug systemd.show_status=true systemd.log_level=debug panic=1 "));

    // erofs root.
    let erofs = common::edit(
        &text,
        "machine_type",
        "rootfs_type = \"erofs\"\nmachine_type",
    );
    assert!(line(&erofs).contains(" root=/dev/vda1 rootflags=ro rootfstype=erofs console=hvc0 "));
}

#[test]
fn virtio_blk_has_no_scsi_scan() {
    let text = template(&[("\"virtio-scsi\"", "\"virtio-blk\"")]);
    assert_eq!(
        line(&text),
        format!(
            "{FIXED} console=hvc0 console=hvc1 quiet panic=1 nr_cpus=1 selinux=0 {ONLINE} {TAIL}"
        )
    );
    // Absent means virtio-scsi.
    let text = template(&[("block_device_driver = \"virtio-scsi\"\n", "")]);
    assert!(line(&text).contains(" scsi_mod.scan=none "));
}

#[test]
fn kernel_params_whitespace_never_leaks() {
    for raw in ["   a=1    b  ", "\ta=1\t\tb\n", " a=1 b", "a=1 b "] {
        let text = template(&[(
            "\"agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=false\"",
            &format!("{raw:?}"),
        )]);
        let l = line(&text);
        assert!(l.ends_with(" scsi_mod.scan=none a=1 b"), "{raw:?}: {l:?}");
        assert!(!l.contains("  ") && !l.starts_with(' ') && !l.ends_with(' '));
    }
    // Empty, blank and absent kernel_params add nothing.
    for raw in ["\"\"", "\"   \""] {
        let text = template(&[(
            "\"agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=false\"",
            raw,
        )]);
        assert!(line(&text).ends_with(" scsi_mod.scan=none"));
    }
}

#[test]
fn kernel_params_keep_order_and_duplicates() {
    let text = template(&[(
        "agent.enable_signature_verification=false\"",
        "agent.enable_signature_verification=false quiet agent.log=debug agent.log=info empty= x=y=z\"",
    )]);
    assert!(line(&text).ends_with(
        " quiet panic=1 nr_cpus=1 selinux=0 agent.aa_kbc_params=online_sev_kbc::localhost:44444 scsi_mod.scan=none \
         agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=false quiet agent.log=debug \
         agent.log=info empty x=y=z"
    ));
}

#[test]
fn pod_cpus_change_nr_cpus() {
    for (pod, n) in [(0, 1), (1, 2), (4, 5), (16, 17)] {
        let launch = plan_of(TEMPLATE, pod);
        assert_eq!(launch.vcpus, n);
        assert!(launch
            .cmdline
            .contains(&format!(" panic=1 nr_cpus={n} selinux=0 ")));
    }
    // default_maxvcpus does not matter for a confidential guest.
    let text = template(&[("default_maxvcpus = 0", "default_maxvcpus = 8")]);
    assert_eq!(plan_of(&text, 2).vcpus, 3);
    // Without static sandbox sizing the pod's CPUs are not there at boot.
    let text = template(&[(
        "static_sandbox_resource_mgmt=true",
        "static_sandbox_resource_mgmt=false",
    )]);
    assert_eq!(plan_of(&text, 4).vcpus, 1);
    let text = template(&[("[runtime]\nstatic_sandbox_resource_mgmt=true\n", "")]);
    assert_eq!(plan_of(&text, 4).vcpus, 1);
}

#[test]
fn default_vcpus_zero_negative_and_too_many() {
    let with = |v: &str| template(&[("default_vcpus = 1", &format!("default_vcpus = {v}"))]);
    // 0 (or absent) means 1.
    assert_eq!(plan_of(&with("0"), 2).vcpus, 3);
    assert_eq!(
        plan_of(&template(&[("default_vcpus = 1\n", "")]), 0).vcpus,
        1
    );
    // Negative means the host's CPU count, which the caller must supply.
    let cfg = parse(&with("-1"));
    let host = LaunchContext {
        host_cpus: Some(8),
        ..LaunchContext::new(1)
    };
    assert_eq!(vcpu_count(&cfg, &host).unwrap(), 9);
    let err = plan(&cfg, &LaunchContext::new(1)).unwrap_err().to_string();
    assert!(
        err.contains("key hypervisor.qemu.default_vcpus") && err.contains("line "),
        "{err}"
    );
    // More than the host has: the host's count; the host count is capped at 240.
    assert_eq!(vcpu_count(&parse(&with("12")), &host).unwrap(), 9);
    let big = LaunchContext {
        host_cpus: Some(512),
        ..LaunchContext::default()
    };
    assert_eq!(vcpu_count(&parse(&with("-1")), &big).unwrap(), 240);
    assert_eq!(vcpu_count(&parse(&with("4")), &big).unwrap(), 4);
}

#[test]
fn guest_selinux_from_the_configuration() {
    let text = template(&[("disable_guest_selinux=true", "disable_guest_selinux=false")]);
    assert!(line(&text).contains(" nr_cpus=1 selinux=1 "));
    let text = template(&[("disable_guest_selinux=true\n", "")]);
    assert!(line(&text).contains(" nr_cpus=1 selinux=1 "));
}

#[test]
fn annotation_kernel_params_after_the_configurations_then_fips() {
    let cfg = parse(TEMPLATE);
    let ctx = LaunchContext {
        fips: true,
        kernel_params_annotation: Some("  foo=1   bar ".into()),
        ..LaunchContext::default()
    };
    let l = plan(&cfg, &ctx).unwrap().cmdline;
    assert!(l.ends_with(&format!("{TAIL} foo=1 bar fips=1")), "{l}");
    assert_eq!(kernel_cmdline(&cfg, 1, &ctx), l);
    let bad = LaunchContext {
        kernel_params_annotation: Some("=oops".into()),
        ..LaunchContext::default()
    };
    assert!(plan(&cfg, &bad)
        .unwrap_err()
        .to_string()
        .contains("empty name"));
}

#[test]
fn cpu_features_empty_keeps_the_comma() {
    let text = template(&[("cpu_features=\"pmu=off\"", "cpu_features=\"\"")]);
    assert_eq!(plan_of(&text, 0).cpu_arg(), "host,");
    let text = template(&[(
        "cpu_features=\"pmu=off\"",
        "cpu_features=\" pmu=off, +avx ,\"",
    )]);
    assert_eq!(plan_of(&text, 0).cpu_arg(), "host,pmu=off,+avx");
}
