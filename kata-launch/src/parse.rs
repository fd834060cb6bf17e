//! From the raw TOML layer to the configuration model: typed reads of each
//! modelled key with Kata's default when absent, and the value checks Kata makes
//! when it loads a configuration (block driver, pre-attestation mode, kernel
//! parameters with an empty name), each error naming file, line and dotted key.
//! [`KataConfig::parse`] lives here so that the model does not depend on its reader.

use crate::config::{
    runtime_class_from_file_name, AgentConfig, ConfigError, ExtensionImage, KataConfig, KbsMode,
    QemuConfig, RuntimeConfig, BLOCK_DEVICE_DRIVERS, DEFAULT_BLOCK_DEVICE_DRIVER,
};
use crate::location::{line_column, Located, Location};
use crate::params::{kata_param, kernel_param_fields, ParamError};
use crate::toml_read::{header_line, RawAgent, RawField, RawQemu, RawRoot, RawRuntime, Reader};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The serde names of the raw tables, and the dotted key each stands for.
const RAW_TABLES: [(&str, &str); 5] = [
    ("struct RawRoot", ""),
    ("struct RawHypervisors", "hypervisor"),
    ("struct RawQemu", "hypervisor.qemu"),
    ("struct RawAgent", "agent.*"),
    ("struct RawRuntime", "runtime"),
];

impl KataConfig {
    /// Parses the text of a configuration file; `path` is used only in error
    /// messages and for the runtime class. Never panics.
    pub fn parse(path: &Path, text: &str) -> Result<KataConfig, ConfigError> {
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let runtime_class =
            runtime_class_from_file_name(file_name).ok_or_else(|| ConfigError::RuntimeClass {
                at: Location::file(path),
            })?;

        let root: RawRoot = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;

        let qemu_raw =
            root.hypervisor
                .and_then(|h| h.qemu)
                .ok_or_else(|| ConfigError::MissingSection {
                    at: Location::file(path),
                    section: "hypervisor.qemu",
                })?;
        let qemu = read_qemu(path, text, &qemu_raw)?;

        let agent = read_agent(path, text, root.agent)?;
        let runtime = read_runtime(path, text, root.runtime.as_ref())?;

        Ok(KataConfig {
            path: path.to_path_buf(),
            runtime_class,
            qemu,
            agent,
            runtime,
        })
    }
}

pub(crate) fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let mut at = Location::file(path);
    if let Some(span) = e.span() {
        let (line, column) = line_column(text, span.start);
        at.line = Some(line);
        at.column = Some(column);
    }
    // One line, and no internal type names: a table given a scalar names the table.
    let mut message = e
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    for (raw, key) in RAW_TABLES {
        if message.contains(raw) {
            message = message.replace(raw, "a table");
            if !key.is_empty() {
                at.key = Some(key.to_string());
            }
        }
    }
    if message.ends_with("expected a map") {
        at.key = Some("agent".to_string());
        message = message.replace("expected a map", "expected a table");
    }
    ConfigError::Syntax { at, message }
}

pub(crate) fn read_qemu(path: &Path, text: &str, raw: &RawQemu) -> Result<QemuConfig, ConfigError> {
    let r = Reader {
        path,
        text,
        table: "hypervisor.qemu".to_string(),
    };
    let section_line = header_line(text, "hypervisor.qemu");

    let kernel = match &raw.kernel {
        None => {
            return Err(ConfigError::MissingKey {
                at: r.at("kernel", section_line),
            })
        }
        Some(_) => {
            let k = r.string("kernel", &raw.kernel, "")?;
            if k.value.is_empty() {
                return Err(r.invalid("kernel", k.line, "the kernel path is empty"));
            }
            Located {
                value: PathBuf::from(k.value),
                line: k.line,
            }
        }
    };

    let kernel_params = r.string("kernel_params", &raw.kernel_params, "")?;
    check_params(&r, "kernel_params", &kernel_params)?;

    let mut rootfs_type = r.string("rootfs_type", &raw.rootfs_type, "ext4")?;
    if rootfs_type.value.is_empty() {
        rootfs_type.value = "ext4".to_string();
    }

    let mut block_device_driver = r.string(
        "block_device_driver",
        &raw.block_device_driver,
        DEFAULT_BLOCK_DEVICE_DRIVER,
    )?;
    if block_device_driver.value.is_empty() {
        block_device_driver.value = DEFAULT_BLOCK_DEVICE_DRIVER.to_string();
    }
    if !BLOCK_DEVICE_DRIVERS.contains(&block_device_driver.value.as_str()) {
        return Err(r.invalid(
            "block_device_driver",
            block_device_driver.line,
            format!(
                "invalid block storage driver {:?} (supported: {})",
                block_device_driver.value,
                BLOCK_DEVICE_DRIVERS.join(", ")
            ),
        ));
    }

    let mut machine_type = r.string("machine_type", &raw.machine_type, "q35")?;
    if machine_type.value.is_empty() {
        machine_type.value = "q35".to_string();
    }

    Ok(QemuConfig {
        section_line,
        qemu_path: r.string("path", &raw.path, "")?,
        firmware: r.opt_path("firmware", &raw.firmware)?,
        kernel,
        initrd: r.opt_path("initrd", &raw.initrd)?,
        image: r.opt_path("image", &raw.image)?,
        rootfs_type,
        kernel_params,
        kernel_verity_params: r.string("kernel_verity_params", &raw.kernel_verity_params, "")?,
        guest_extension_images: read_extension_images(&r, &raw.guest_extension_images)?,
        default_vcpus: r.float32("default_vcpus", &raw.default_vcpus, 0.0)?,
        default_maxvcpus: r.integer(
            "default_maxvcpus",
            &raw.default_maxvcpus,
            0u32,
            "0 to 4294967295",
        )?,
        machine_type,
        cpu_features: r.string("cpu_features", &raw.cpu_features, "")?,
        confidential_guest: r.boolean("confidential_guest", &raw.confidential_guest, false)?,
        sev_snp_guest: r.boolean("sev_snp_guest", &raw.sev_snp_guest, false)?,
        snp_guest_policy: r.integer(
            "snp_guest_policy",
            &raw.snp_guest_policy,
            0u64,
            "0 to 2^64-1",
        )?,
        enable_iommu: r.boolean("enable_iommu", &raw.enable_iommu, false)?,
        use_legacy_serial: r.boolean("use_legacy_serial", &raw.use_legacy_serial, false)?,
        block_device_driver,
        disable_image_nvdimm: r.boolean(
            "disable_image_nvdimm",
            &raw.disable_image_nvdimm,
            false,
        )?,
        enable_debug: r.boolean("enable_debug", &raw.enable_debug, false)?,
        guest_pre_attestation: r.boolean(
            "guest_pre_attestation",
            &raw.guest_pre_attestation,
            false,
        )?,
        guest_pre_attestation_kbs_uri: r.string(
            "guest_pre_attestation_kbs_uri",
            &raw.guest_pre_attestation_kbs_uri,
            "",
        )?,
        guest_pre_attestation_kbs_mode: read_kbs_mode(&r, &raw.guest_pre_attestation_kbs_mode)?,
        guest_pre_attestation_keyset: r.string(
            "guest_pre_attestation_keyset",
            &raw.guest_pre_attestation_keyset,
            "",
        )?,
        sev_cert_chain: r.opt_path("sev_cert_chain", &raw.sev_cert_chain)?,
        sev_guest_policy: r.integer(
            "sev_guest_policy",
            &raw.sev_guest_policy,
            0u32,
            "0 to 0xffffffff",
        )?,
        disable_guest_selinux: r.boolean(
            "disable_guest_selinux",
            &raw.disable_guest_selinux,
            false,
        )?,
        enable_annotations: r.strings("enable_annotations", &raw.enable_annotations)?,
    })
}

fn read_extension_images(
    r: &Reader<'_>,
    field: &RawField,
) -> Result<Located<Vec<ExtensionImage>>, ConfigError> {
    let tables = r.string_tables(
        "guest_extension_images",
        field,
        &["name", "path", "verity_params"],
    )?;
    let images = tables
        .value
        .into_iter()
        .map(|values| {
            let mut it = values.into_iter();
            ExtensionImage {
                name: it.next().unwrap_or_default(),
                path: it.next().unwrap_or_default(),
                verity_params: it.next().unwrap_or_default(),
            }
        })
        .collect();
    Ok(Located {
        value: images,
        line: tables.line,
    })
}

/// The x86 kernel's command line size, NUL included (COMMAND_LINE_SIZE).
pub const MAX_KERNEL_CMDLINE: usize = 2048;

/// Kata rejects a kernel parameter with an empty key (a token starting with `=`)
/// when it loads the configuration. The CC builds split on any whitespace and
/// the upstream runtime on spaces outside quotes, so only what both refuse is
/// refused here; each release's builder checks its own split.
fn check_params(r: &Reader<'_>, key: &str, params: &Located<String>) -> Result<(), ConfigError> {
    // QEMU refuses to boot an x86 kernel whose command line is longer than
    // the kernel's limit (COMMAND_LINE_SIZE, 2,048 bytes with the NUL); the
    // parameters alone over it can never make a launch, and a huge value
    // would only cost memory in every digest derived from it.
    if params.value.len() >= MAX_KERNEL_CMDLINE {
        return Err(r.invalid(
            key,
            params.line,
            format!(
                "{} bytes: longer than the {} bytes an x86 kernel's command line holds \
                 (QEMU refuses to boot it)",
                params.value.len(),
                MAX_KERNEL_CMDLINE - 1
            ),
        ));
    }
    let quoted_ok = kernel_param_fields(&params.value)
        .iter()
        .all(|t| kata_param(t).is_ok());
    if quoted_ok {
        return Ok(());
    }
    for token in params.value.split_whitespace() {
        if let Err(ParamError::EmptyKey) = kata_param(token) {
            return Err(r.invalid(
                key,
                params.line,
                format!("kernel parameter {token:?} has an empty name (Kata: \"Empty kernel parameter\")"),
            ));
        }
    }
    Ok(())
}

fn read_kbs_mode(
    r: &Reader<'_>,
    field: &RawField,
) -> Result<Located<Option<KbsMode>>, ConfigError> {
    let key = "guest_pre_attestation_kbs_mode";
    let s = r.string(key, field, "")?;
    if s.value.is_empty() {
        return Ok(Located {
            value: None,
            line: s.line,
        });
    }
    match KbsMode::from_name(&s.value) {
        Some(mode) => Ok(Located {
            value: Some(mode),
            line: s.line,
        }),
        None => Err(r.invalid(
            key,
            s.line,
            format!(
                "{:?} is not a pre-attestation mode (expected \"online\" or \"offline\")",
                s.value
            ),
        )),
    }
}

pub(crate) fn read_agent(
    path: &Path,
    text: &str,
    tables: Option<BTreeMap<String, RawAgent>>,
) -> Result<AgentConfig, ConfigError> {
    let mut tables = tables.unwrap_or_default();
    // Kata reads whichever agent tables there are; `kata` is the only agent at CC-0.8.0.
    let chosen = match tables.remove_entry("kata") {
        Some(entry) => Some(entry),
        None => tables.into_iter().next(),
    };
    let Some((name, raw)) = chosen else {
        return Ok(AgentConfig {
            name: String::new(),
            enable_debug: Located::default_value(false),
            enable_tracing: Located::default_value(false),
            debug_console_enabled: Located::default_value(false),
            cdh_api_timeout: Located::default_value(0),
            launch_process_timeout: Located::default_value(0),
            visible_cdi_devices: Located::default_value(false),
        });
    };
    let r = Reader {
        path,
        text,
        table: format!("agent.{name}"),
    };
    Ok(AgentConfig {
        enable_debug: r.boolean("enable_debug", &raw.enable_debug, false)?,
        enable_tracing: r.boolean("enable_tracing", &raw.enable_tracing, false)?,
        debug_console_enabled: r.boolean(
            "debug_console_enabled",
            &raw.debug_console_enabled,
            false,
        )?,
        cdh_api_timeout: r.integer(
            "cdh_api_timeout",
            &raw.cdh_api_timeout,
            0u32,
            "0 to 4294967295",
        )?,
        launch_process_timeout: r.integer(
            "launch_process_timeout",
            &raw.launch_process_timeout,
            0u32,
            "0 to 4294967295",
        )?,
        visible_cdi_devices: r.boolean("visible_cdi_devices", &raw.visible_cdi_devices, false)?,
        name,
    })
}

pub(crate) fn read_runtime(
    path: &Path,
    text: &str,
    raw: Option<&RawRuntime>,
) -> Result<RuntimeConfig, ConfigError> {
    let r = Reader {
        path,
        text,
        table: "runtime".to_string(),
    };
    let static_sandbox_resource_mgmt = match raw {
        Some(raw) => r.boolean(
            "static_sandbox_resource_mgmt",
            &raw.static_sandbox_resource_mgmt,
            false,
        )?,
        None => Located::default_value(false),
    };
    Ok(RuntimeConfig {
        static_sandbox_resource_mgmt,
    })
}
