//! Kata configuration files are edited by people and package managers, and a
//! shim's version line comes from whatever binary sits in the tree: parse any
//! text and plan a launch from it under every release family, and read any
//! version output, without panicking.
#![no_main]

use kata_launch::{check_verity_params, plan, unmeasured, KataConfig, KataRelease, LaunchContext};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = KataRelease::from_version_output(text);
    let _ = check_verity_params(text);
    if let Ok(config) = KataConfig::parse(Path::new("configuration-qemu-snp.toml"), text) {
        let _ = config.artefacts();
        for release in ["CC-0.8.0", "3.19.0", "3.24.0", "3.29.0", "4.1.0"] {
            let Ok(release) = release.parse::<KataRelease>() else { return };
            let _ = unmeasured(&config, release);
            for pod_cpus in [0, 1, u32::MAX] {
                let ctx = LaunchContext {
                    release,
                    host_cpus: Some(2),
                    kernel_params_annotation: Some(text.chars().take(64).collect()),
                    default_vcpus_annotation: Some(1.5),
                    ..LaunchContext::new(pod_cpus)
                };
                let _ = plan(&config, &ctx);
            }
        }
    }
});
