//! Bad configurations: each gives a clear error naming the file and, where known,
//! the line and dotted key.

#![cfg(test)]

mod common;

use common::{parse, template, TEMPLATE};
use kata_launch::{plan, ConfigError, KataConfig, LaunchContext, PlanError};
use std::path::Path;

const FILE: &str = "/etc/kata/configuration-qemu-sev.toml";

fn parse_err(text: &str) -> ConfigError {
    KataConfig::parse(Path::new(FILE), text).expect_err("the configuration should be rejected")
}

fn plan_err(text: &str) -> PlanError {
    let config = KataConfig::parse(Path::new(FILE), text).unwrap();
    plan(&config, &LaunchContext::default()).expect_err("the launch should be refused")
}

/// The 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle present")
        + 1
}

#[test]
fn invalid_toml_names_line_and_column() {
    let text = "[hypervisor.qemu]\nkernel = \"/k\"\ndefault_vcpus = = 2\n";
    let err = parse_err(text);
    let ConfigError::Syntax { at, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(at.line, Some(3));
    assert!(at.column.is_some());
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("file {FILE} line 3 column ")),
        "{msg}"
    );
    assert!(msg.contains("invalid TOML"), "{msg}");

    // Unterminated string deep in a real-looking file.
    let text = template(&[("cpu_features=\"pmu=off\"", "cpu_features=\"pmu=off")]);
    let err = parse_err(&text);
    let ConfigError::Syntax { at, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(at.line, Some(line_of(&text, "cpu_features=")), "{err}");

    // A key set twice.
    let text = template(&[("default_vcpus = 1", "default_vcpus = 1\ndefault_vcpus = 2")]);
    let err = parse_err(&text);
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert!(err.to_string().contains(" line "), "{err}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let cases = [
        (
            "default_vcpus = 1",
            "default_vcpus = \"1\"",
            "hypervisor.qemu.default_vcpus",
            "a number",
            "a string",
        ),
        (
            "confidential_guest = true",
            "confidential_guest = \"true\"",
            "hypervisor.qemu.confidential_guest",
            "a boolean",
            "a string",
        ),
        (
            "sev_guest_policy = 3",
            "sev_guest_policy = 3.0",
            "hypervisor.qemu.sev_guest_policy",
            "an integer",
            "a float",
        ),
        (
            "enable_annotations = [\"enable_iommu\"]",
            "enable_annotations = [1]",
            "hypervisor.qemu.enable_annotations",
            "an array of strings",
            "an array",
        ),
        (
            "firmware = \"/opt/kata/share/ovmf/AMDSEV.fd\"",
            "firmware = [\"/a\"]",
            "hypervisor.qemu.firmware",
            "a string",
            "an array",
        ),
        (
            "kernel_modules=[]",
            "kernel_modules=[]\nenable_debug = 1",
            "agent.kata.enable_debug",
            "a boolean",
            "an integer",
        ),
        (
            "static_sandbox_resource_mgmt=true",
            "static_sandbox_resource_mgmt=\"yes\"",
            "runtime.static_sandbox_resource_mgmt",
            "a boolean",
            "a string",
        ),
    ];
    for (from, to, key, expected, found) in cases {
        let text = template(&[(from, to)]);
        let line = line_of(&text, to.lines().last().unwrap());
        let err = parse_err(&text);
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!("file {FILE} line {line} key {key}: expected {expected}, found {found}")
        );
        assert!(matches!(err, ConfigError::WrongType { .. }));
    }
}

#[test]
fn a_table_that_is_not_a_table() {
    let err = parse_err("hypervisor = 5\n");
    let ConfigError::Syntax { at, message } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(at.line, Some(1), "{err}");
    assert!(!message.is_empty());
    assert_eq!(at.key.as_deref(), Some("hypervisor"));
    assert!(
        message.contains("expected a table") && !message.contains("Raw"),
        "{message}"
    );
    let err = parse_err("[hypervisor]\nqemu = \"x\"\n");
    assert!(
        matches!(&err, ConfigError::Syntax { at, .. } if at.line == Some(2)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(
            " key hypervisor.qemu: invalid TOML: invalid type: string \"x\", expected a table"
        ),
        "{err}"
    );
    let err = parse_err("agent = 1\n[hypervisor.qemu]\nkernel = \"/k\"\n");
    assert!(
        err.to_string()
            .contains("line 1 column 9 key agent: invalid TOML:"),
        "{err}"
    );
    let err = parse_err("[hypervisor.qemu]\nkernel = \"/k\"\n[agent]\nkata = 1\n");
    assert!(
        err.to_string()
            .contains("line 4 column 8 key agent.*: invalid TOML:"),
        "{err}"
    );
}

#[test]
fn missing_section() {
    for text in ["", "[hypervisor.clh]\nkernel = \"/k\"\n", "[runtime]\n"] {
        let err = parse_err(text);
        assert!(
            matches!(
                err,
                ConfigError::MissingSection {
                    section: "hypervisor.qemu",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("file {FILE}: missing section [hypervisor.qemu]")
        );
    }
    // Dotted keys at the top level are the same table.
    let ok = KataConfig::parse(Path::new(FILE), "hypervisor.qemu.kernel = \"/k\"\n").unwrap();
    assert_eq!(ok.qemu.kernel.line, Some(1));
    assert_eq!(ok.qemu.section_line, None);
}

#[test]
fn missing_or_empty_kernel() {
    let text = template(&[(
        "kernel = \"/opt/kata/share/kata-containers/vmlinuz-sev.container\"\n",
        "",
    )]);
    let err = parse_err(&text);
    assert!(matches!(err, ConfigError::MissingKey { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "file {FILE} line {} key hypervisor.qemu.kernel: missing required key",
            line_of(&text, "[hypervisor.qemu]")
        )
    );
    let text = template(&[(
        "kernel = \"/opt/kata/share/kata-containers/vmlinuz-sev.container\"",
        "kernel = \"\"",
    )]);
    let err = parse_err(&text);
    assert!(
        err.to_string()
            .contains("key hypervisor.qemu.kernel: the kernel path is empty"),
        "{err}"
    );
}

#[test]
fn bad_kbs_mode() {
    for mode in ["Online", "sometimes", " online"] {
        let text = template(&[("=\"online\"", &format!("={mode:?}"))]);
        let err = parse_err(&text);
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err:?}");
        assert!(
            msg.starts_with(&format!(
                "file {FILE} line {} key hypervisor.qemu.guest_pre_attestation_kbs_mode: ",
                line_of(&text, "guest_pre_attestation_kbs_mode")
            )),
            "{msg}"
        );
        assert!(msg.contains("\"online\" or \"offline\""), "{msg}");
    }
}

#[test]
fn out_of_range_integers() {
    for (from, to, key) in [
        (
            "sev_guest_policy = 3",
            "sev_guest_policy = -1",
            "sev_guest_policy",
        ),
        (
            "sev_guest_policy = 3",
            "sev_guest_policy = 0x100000000",
            "sev_guest_policy",
        ),
        (
            "default_maxvcpus = 0",
            "default_maxvcpus = -1",
            "default_maxvcpus",
        ),
    ] {
        let text = template(&[(from, to)]);
        let err = parse_err(&text);
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err:?}");
        assert!(
            msg.contains(&format!(
                "line {} key hypervisor.qemu.{key}: ",
                line_of(&text, to)
            )),
            "{msg}"
        );
        assert!(msg.contains("out of range"), "{msg}");
    }
    // default_vcpus is a number in the model (a float32 upstream); the CC
    // builds read it as an int32, so their launch refuses what does not fit.
    for bad in ["2147483648", "1.5"] {
        let to = format!("default_vcpus = {bad}");
        let text = template(&[("default_vcpus = 1", &to)]);
        let err = plan(&parse(&text), &LaunchContext::new(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "line {} key hypervisor.qemu.default_vcpus: ",
                line_of(&text, &to)
            )) && err.contains("32-bit integer"),
            "{err}"
        );
    }
    // The u32 maximum is fine.
    let text = template(&[("sev_guest_policy = 3", "sev_guest_policy = 0xffffffff")]);
    assert_eq!(parse(&text).qemu.sev_guest_policy.value, u32::MAX);
}

#[test]
fn other_invalid_values() {
    let text = template(&[("\"virtio-scsi\"", "\"virtio-floppy\"")]);
    let msg = parse_err(&text).to_string();
    assert!(
        msg.contains("key hypervisor.qemu.block_device_driver: invalid block storage driver"),
        "{msg}"
    );

    let text = template(&[(
        "agent.enable_signature_verification=false",
        "agent.enable_signature_verification=false =oops",
    )]);
    let msg = parse_err(&text).to_string();
    assert!(
        msg.contains(
            "key hypervisor.qemu.kernel_params: kernel parameter \"=oops\" has an empty name"
        ),
        "{msg}"
    );

    // Longer than any x86 kernel's command line: refused, by its length only.
    let long = format!(
        "agent.enable_signature_verification=false x={}",
        "a".repeat(50_000)
    );
    let text = template(&[("agent.enable_signature_verification=false", &long)]);
    let msg = parse_err(&text).to_string();
    assert!(
        msg.contains("key hypervisor.qemu.kernel_params: 50085 bytes: longer than the 2047 bytes"),
        "{}",
        &msg[..msg.len().min(300)]
    );

    let err = KataConfig::parse(Path::new("/etc/kata/kata.toml"), TEMPLATE).unwrap_err();
    assert!(matches!(err, ConfigError::RuntimeClass { .. }));
    assert!(
        err.to_string()
            .starts_with("file /etc/kata/kata.toml: cannot derive a runtime class"),
        "{err}"
    );
}

#[test]
fn not_a_confidential_guest() {
    let text = template(&[("confidential_guest = true", "confidential_guest = false")]);
    let err = plan_err(&text);
    assert!(matches!(err, PlanError::NotConfidential { .. }));
    assert!(err.to_string().starts_with(&format!(
        "file {FILE} line {} key hypervisor.qemu.confidential_guest: not a confidential guest",
        line_of(&text, "confidential_guest")
    )));
    // Absent means false too; the message points at the section.
    let text = template(&[("confidential_guest = true\n", "")]);
    assert!(matches!(plan_err(&text), PlanError::NotConfidential { .. }));
}

#[test]
fn no_firmware() {
    for to in ["", "firmware = \"\"\n"] {
        let text = template(&[("firmware = \"/opt/kata/share/ovmf/AMDSEV.fd\"\n", to)]);
        let err = plan_err(&text);
        assert!(matches!(err, PlanError::NoFirmware { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("key hypervisor.qemu.firmware: no firmware"),
            "{err}"
        );
    }
}

#[test]
fn other_unusable_configurations() {
    let initrd = "initrd = \"/opt/kata/share/kata-containers/kata-containers-initrd-sev.img\"\n";
    let cases: [(&str, String, &str); 8] = [
        (
            "no initrd or image",
            template(&[(initrd, "")]),
            "neither initrd nor image",
        ),
        (
            "both",
            template(&[(initrd, &format!("{initrd}image = \"/i.img\"\n"))]),
            "both initrd and image",
        ),
        (
            "machine",
            template(&[("\"q35\"", "\"pc\"")]),
            "key hypervisor.qemu.machine_type: unrecognised machine type",
        ),
        (
            "rootfs",
            template(&[(initrd, "image = \"/i.img\"\nrootfs_type = \"btrfs\"\n")]),
            "key hypervisor.qemu.rootfs_type: unsupported rootfs type",
        ),
        (
            "mode",
            template(&[("guest_pre_attestation_kbs_mode=\"online\"\n", "")]),
            "the mode is unset",
        ),
        (
            "empty mode",
            template(&[("=\"online\"", "=\"\"")]),
            "the mode is unset",
        ),
        (
            "uri",
            template(&[("\"localhost:44444\"", "\"\"")]),
            "key hypervisor.qemu.guest_pre_attestation_kbs_uri: ",
        ),
        (
            "cert chain",
            template(&[("sev_cert_chain = \"/opt/sev/cert_chain.cert\"\n", "")]),
            "no SEV certificate chain",
        ),
    ];
    for (what, text, want) in cases {
        let err = plan_err(&text);
        assert!(matches!(err, PlanError::Unusable { .. }), "{what}: {err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("file {FILE}")), "{what}: {msg}");
        assert!(msg.contains(want), "{what}: {msg}");
    }
}
