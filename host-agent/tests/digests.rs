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
                "guest_features": 1, "vmm_type": "QEMU",
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
