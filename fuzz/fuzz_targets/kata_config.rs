//! Kata configuration files are edited by people and package managers: parse any
//! text and plan a launch from it without panicking.
#![no_main]

use kata_launch::{plan, KataConfig, LaunchContext};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = KataConfig::parse(Path::new("configuration-qemu-sev.toml"), text) {
        let _ = config.artefacts();
        for pod_cpus in [0, 1, u32::MAX] {
            let _ = plan(&config, &LaunchContext::new(pod_cpus));
        }
    }
});
