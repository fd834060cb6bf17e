//! `host-agent digests` end to end: from Kata configurations (the sample one and
//! CoCo's real ones pointed at generated artefacts) to launches whose digests
//! `sev-snp-measure` computes the same from the printed command line; and the
//! errors an operator gets for broken configurations.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::host_agent;

use std::path::Path;

fn digests_json(configs: &[&Path], extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![
        "digests",
        "--json",
        "--host-cpu-sig",
        "0xa00f11",
        "--fips",
        "false",
    ];
    args.extend(extra);
    for c in configs {
        args.push("--kata-config");
        args.push(c.to_str().unwrap());
    }
    let o = host_agent(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Every launch's digest equals sev-snp-measure's over the same artefacts, the
/// printed command line and vCPU count.
fn assert_oracle_agrees(launches: &[serde_json::Value]) {
    let cases: Vec<_> = launches
        .iter()
        .map(|l| {
            // Kata's SNP guests measure their firmware only.
            let measured = |v: &serde_json::Value| {
                if l["kernel_hashes"].as_bool().unwrap() {
                    v.clone()
                } else {
                    serde_json::Value::Null
                }
            };
            serde_json::json!({
                "mode": l["mode"], "ovmf": l["firmware"], "kernel": measured(&l["kernel"]),
                "initrd": measured(&l["initrd"]), "append": measured(&l["cmdline"]), "vcpus": l["vcpus"],
                "vcpu_sig": l["vcpu_sig"].as_str().map(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()),
                "guest_features": l["guest_features"].as_str()
                    .map_or(1, |g| u64::from_str_radix(g.trim_start_matches("0x"), 16).unwrap()),
                "vmm_type": "QEMU",
            })
        })
        .collect();
    let answers = common::oracle_batch(&cases);
    for (l, a) in launches.iter().zip(answers) {
        assert_eq!(l["digest"].as_str().unwrap(), a, "{l:#}");
    }
}

#[test]
fn sample_configuration_launches_match_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_artefacts::write_sample(dir.path()).unwrap();
    let launches = digests_json(&[&sample.config], &["--pod-cpus", "0,1,7"]);
    assert_eq!(launches.len(), 3);
    let vcpus: Vec<u64> = launches
        .iter()
        .map(|l| l["vcpus"].as_u64().unwrap())
        .collect();
    assert_eq!(vcpus, [1, 2, 8]);
    assert!(launches[2]["cmdline"]
        .as_str()
        .unwrap()
        .contains(" nr_cpus=8 "));
    assert_eq!(launches[0]["runtime_class"], "kata-qemu-sev");
    assert_oracle_agrees(&launches);
}

/// CoCo's shipped configurations, with their artefact paths pointed at generated
/// files, in each mode a configuration can select.
#[test]
fn real_kata_configurations_in_every_mode_match_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_artefacts::write_sample(&dir.path().join("art")).unwrap();
    let kata = common::shared_testdata().join("kata");
    let mut configs = Vec::new();
    for entry in std::fs::read_dir(&kata).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue; // snp/: today's SNP files, tested below with their own artefacts
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        for prefix in ["/opt/confidential-containers", "/opt/kata"] {
            text = text
                .replace(
                    &format!("{prefix}/share/ovmf/AMDSEV.fd"),
                    sample.firmware.to_str().unwrap(),
                )
                .replace(
                    &format!("{prefix}/share/kata-containers/vmlinuz-sev.container"),
                    sample.kernel.to_str().unwrap(),
                )
                .replace(
                    &format!("{prefix}/share/kata-containers/kata-containers-initrd-sev.img"),
                    sample.initrd.to_str().unwrap(),
                );
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        for (mode, edit) in [
            ("sev", None),
            (
                "seves",
                Some(("sev_guest_policy = 3", "sev_guest_policy = 7")),
            ),
            (
                "snp",
                Some((
                    "confidential_guest = true",
                    "confidential_guest = true\nsev_snp_guest = true",
                )),
            ),
        ] {
            let mut t = text.clone();
            if let Some((from, to)) = edit {
                assert!(t.contains(from), "{name} lacks {from:?}");
                t = t.replacen(from, to, 1);
            }
            let d = dir.path().join(mode);
            std::fs::create_dir_all(&d).unwrap();
            let p = d.join(name);
            std::fs::write(&p, t).unwrap();
            configs.push((mode, p));
        }
    }
    assert_eq!(configs.len(), 9);
    let paths: Vec<&Path> = configs.iter().map(|(_, p)| p.as_path()).collect();
    let launches = digests_json(&paths, &["--pod-cpus", "0,2"]);
    assert_eq!(launches.len(), 18);
    for (l, (mode, _)) in launches.iter().zip(configs.iter().flat_map(|c| [c, c])) {
        assert_eq!(l["mode"], *mode, "{l:#}");
    }
    assert_oracle_agrees(&launches);
}

/// A Kata 3.19+ install tree in `root`: the configuration under
/// `share/defaults/kata-containers/` and a shim in `bin/` that reports `release`
/// the way containerd-shim-kata-v2 does.
fn kata_tree(root: &Path, release: &str, config_text: &str) -> std::path::PathBuf {
    let defaults = root.join("share/defaults/kata-containers");
    std::fs::create_dir_all(&defaults).unwrap();
    common::install_kata_shim(root, release);
    let config = defaults.join("configuration-qemu-snp.toml");
    std::fs::write(&config, config_text).unwrap();
    config
}

/// Today's SNP launches (Kata 3.19.0 and 4.1.0, their shipped files with real
/// OVMF and a real kernel), every pod CPU count from 0 to 4, with an initrd, an
/// image with dm-verity parameters, edited kernel_params and agent debug: the
/// digest of the printed launch (command line, vCPUs, EPYC-v4) equals
/// sev-snp-measure's, and the release is the one the shim reports.
#[test]
fn snp_launches_of_kata_3_19_and_4_1_match_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_artefacts::write_sample(&dir.path().join("art")).unwrap();
    let image = dir.path().join("art/kata-containers-confidential.img");
    std::fs::write(&image, b"an unmeasured root disk").unwrap();
    let firmware = common::real_firmware();
    let kernel = common::real_kernel();
    let snp = common::shared_testdata().join("kata/snp");
    let point = |text: &str| {
        text.replace("/opt/kata/share/ovmf/AMDSEV.fd", firmware.to_str().unwrap())
            .replace(
                "/opt/kata/share/kata-containers/vmlinuz.container",
                kernel.to_str().unwrap(),
            )
            .replace(
                "/opt/kata/share/kata-containers/vmlinuz-confidential.container",
                kernel.to_str().unwrap(),
            )
            .replace(
                "/opt/kata/share/kata-containers/kata-containers-initrd-confidential.img",
                sample.initrd.to_str().unwrap(),
            )
            .replace(
                "/opt/kata/share/kata-containers/kata-containers-confidential.img",
                image.to_str().unwrap(),
            )
    };
    let v41 =
        point(&std::fs::read_to_string(snp.join("configuration-qemu-snp.4.1.0.toml")).unwrap());
    let v319 =
        point(&std::fs::read_to_string(snp.join("configuration-qemu-snp.3.19.0.toml")).unwrap());
    let image_line = format!("image = \"{}\"", image.display());
    let initrd_line = format!("initrd = \"{}\"", sample.initrd.display());
    let params = "kernel_params = \"cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1\"";
    let edited = "kernel_params = \" agent.log=debug  key= x=1 x=1 \"";
    // The agent's own enable_debug: the first one after [agent.kata], set or
    // commented out (3.19 ships it as a comment).
    let agent_debug = |text: &str| {
        let at = text.find("[agent.kata]").unwrap();
        let (head, tail) = text.split_at(at);
        let tail = if tail.contains("\nenable_debug = false") {
            tail.replacen("\nenable_debug = false", "\nenable_debug = true", 1)
        } else {
            tail.replacen("\n#enable_debug = true", "\nenable_debug = true", 1)
        };
        format!("{head}{tail}")
    };
    let cases: Vec<(&str, &str, String)> = vec![
        ("4.1.0", "shipped", v41.clone()),
        (
            "4.1.0",
            "initrd",
            v41.replacen(&image_line, &initrd_line, 1),
        ),
        ("4.1.0", "kernel_params", v41.replacen(params, edited, 1)),
        ("4.1.0", "agent debug", agent_debug(&v41)),
        ("3.19.0", "shipped", v319.clone()),
        ("3.19.0", "kernel_params", v319.replacen(params, edited, 1)),
        ("3.19.0", "agent debug", agent_debug(&v319)),
    ];
    let mut all = Vec::new();
    for (i, (release, what, text)) in cases.iter().enumerate() {
        let base = if *release == "4.1.0" { &v41 } else { &v319 };
        assert_eq!(
            text == base,
            *what == "shipped",
            "{release} {what}: the edit took"
        );
        let config = kata_tree(&dir.path().join(format!("t{i}/opt/kata")), release, text);
        let launches = digests_json(
            &[&config],
            &["--pod-cpus", "0,1,2,3,4", "--host-kernel", "6.12"],
        );
        assert_eq!(launches.len(), 5, "{release} {what}");
        for (pod, l) in launches.iter().enumerate() {
            assert_eq!(l["kata_release"], *release, "{l:#}");
            assert_eq!(l["kata_release_source"]["kind"], "shim", "{l:#}");
            assert_eq!(l["runtime_class"], "kata-qemu-snp");
            assert_eq!(l["mode"], "snp");
            assert_eq!(l["kernel_hashes"], true, "Kata 3.19+ sets kernel-hashes=on");
            assert_eq!(l["cpu_model"], "EPYC-v4,pmu=off");
            assert_eq!(
                l["vcpus"],
                pod as u64 + 1,
                "default_vcpus 1 plus the pod's CPUs"
            );
            assert_eq!(l["guest_features"], "0x1");
            let cmdline = l["cmdline"].as_str().unwrap();
            assert_eq!(
                cmdline.contains(&format!(" nr_cpus={} ", pod + 1)),
                *release == "3.19.0",
                "only 3.19 writes nr_cpus for confidential guests: {cmdline}"
            );
            assert_eq!(
                cmdline.contains("dm-mod.create="),
                text.contains(&image_line) && *release == "4.1.0"
            );
            assert_eq!(
                cmdline.contains(" agent.log=debug"),
                *what != "shipped" && *what != "initrd"
            );
        }
        all.extend(launches);
    }
    assert_oracle_agrees(&all);
    let digests: std::collections::BTreeSet<&str> =
        all.iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(
        digests.len(),
        all.len(),
        "every launch measures differently"
    );

    // Another host kernel's guest features, as sev-snp-measure's --guest-features.
    let config = kata_tree(&dir.path().join("gf/opt/kata"), "4.1.0", &v41);
    let launches = digests_json(
        &[&config],
        &[
            "--pod-cpus",
            "0",
            "--host-kernel",
            "6.12",
            "--snp-guest-features",
            "0x21",
        ],
    );
    assert_eq!(launches[0]["guest_features"], "0x21");
    assert_oracle_agrees(&launches);
    assert_ne!(launches[0]["digest"], all[0]["digest"]);

    // --kata-version wins over the shim, and the same file measures differently
    // under 3.19 (nr_cpus, no verity) than under 4.1.
    let launches = digests_json(
        &[&config],
        &[
            "--pod-cpus",
            "0",
            "--host-kernel",
            "6.12",
            "--kata-version",
            "3.32.0",
        ],
    );
    assert_eq!(launches[0]["kata_release_source"]["kind"], "configured");
    assert_eq!(
        launches[0]["cmdline"], all[0]["cmdline"],
        "3.32 and 4.1 build the same line"
    );
    let launches = digests_json(
        &[&config],
        &[
            "--pod-cpus",
            "0",
            "--host-kernel",
            "6.12",
            "--kata-version",
            "3.31.0",
        ],
    );
    assert_ne!(launches[0]["digest"], all[0]["digest"]);
    assert_oracle_agrees(&launches);
}

#[test]
fn what_the_snp_measurement_does_not_cover_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_artefacts::write_sample(&dir.path().join("art")).unwrap();
    let text = format!(
        "[hypervisor.qemu]\nfirmware = \"{}\"\nkernel = \"{}\"\nimage = \"{}\"\nconfidential_guest = true\nsev_snp_guest = true\nenable_annotations = [\"kernel_params\", \"default_vcpus\"]\n[runtime]\nstatic_sandbox_resource_mgmt = true\n",
        common::real_firmware().display(),
        sample.kernel.display(),
        sample.initrd.display(),
    );
    let config = kata_tree(&dir.path().join("opt/kata"), "4.1.0", &text);
    let o = host_agent(&[
        "digests",
        "--kata-config",
        config.to_str().unwrap(),
        "--host-kernel",
        "6.12",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("kata      4.1.0 (from "), "{out}");
    assert!(
        out.contains("warning   the root filesystem")
            && out.contains("kernel_verity_params is empty"),
        "{out}"
    );
    assert!(
        out.contains("pods may set kernel_params by annotation"),
        "{out}"
    );
    assert!(
        out.contains("pods may set default_vcpus by annotation"),
        "{out}"
    );
    assert!(
        !out.contains("kernel_verity_params by annotation"),
        "not allowed here: {out}"
    );

    // A confidential file that is not SNP (a TDX one) has no launch under 4.1:
    // refused naming the file, line and key.
    let tdx = dir.path().join("tdx/configuration-qemu-tdx.toml");
    std::fs::create_dir_all(tdx.parent().unwrap()).unwrap();
    std::fs::write(&tdx, text.replace("sev_snp_guest = true\n", "")).unwrap();
    let o = host_agent(&[
        "digests",
        "--kata-config",
        tdx.to_str().unwrap(),
        "--kata-version",
        "4.1.0",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("configuration-qemu-tdx.toml line 5 key hypervisor.qemu.sev_snp_guest: not an SEV-SNP guest"),
        "{err}"
    );

    // Without a shim the release is assumed and said; an unknown one is refused.
    let bare = dir.path().join("bare/configuration-qemu-snp.toml");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    std::fs::write(&bare, &text).unwrap();
    let o = host_agent(&["digests", "--kata-config", bare.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("CC-0.8.0 (assumed"), "{out}");
    assert!(
        out.contains("warning   the Kata release was not found")
            && out.contains("set launches.kata_version"),
        "{out}"
    );
    let o = host_agent(&[
        "digests",
        "--kata-config",
        bare.to_str().unwrap(),
        "--kata-version",
        "3.18.0",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "a usage error: {err}");
    assert!(
        err.contains("3.19.x") && err.contains("4.1.x") && err.contains("CC-0.8.0"),
        "{err}"
    );
}

fn assert_fails(config_text: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("configuration-qemu-sev.toml");
    std::fs::write(&p, config_text).unwrap();
    let o = host_agent(&["digests", "--kata-config", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} does not mention {n:?}");
    }
}

#[test]
fn broken_configurations_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_artefacts::write_sample(dir.path()).unwrap();
    let good = std::fs::read_to_string(&sample.config).unwrap();

    assert_fails(
        "[hypervisor.qemu]\nkernel = \"/k\n",
        &["configuration-qemu-sev.toml", "line 2"],
    );
    assert_fails(
        &good.replace("default_vcpus = 1", "default_vcpus = \"one\""),
        &["configuration-qemu-sev.toml", "default_vcpus"],
    );
    let missing = good.replace(sample.initrd.to_str().unwrap(), "/nonexistent/initrd.img");
    let line = missing
        .lines()
        .position(|l| l.contains("/nonexistent/initrd.img"))
        .unwrap()
        + 1;
    assert_fails(
        &missing,
        &[
            "configuration-qemu-sev.toml",
            &format!("line {line}"),
            "initrd",
            "/nonexistent/initrd.img",
        ],
    );
    assert_fails(
        &good.replace(
            sample.kernel.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ),
        &["kernel", "not a regular file"],
    );
    assert_fails(
        &good.replace("confidential_guest = true", "confidential_guest = false"),
        &["confidential"],
    );
    assert_fails(
        &good.replace(
            "guest_pre_attestation_kbs_mode = \"online\"",
            "guest_pre_attestation_kbs_mode = \"sometimes\"",
        ),
        &["guest_pre_attestation_kbs_mode"],
    );

    // A missing configuration file is named too.
    let o = host_agent(&[
        "digests",
        "--kata-config",
        "/nonexistent/configuration-x.toml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/configuration-x.toml"));
}
