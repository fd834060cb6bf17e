//! The host agent's own configuration file: parse any text without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = host_agent::agent::config::AgentConfig::parse(Path::new("config.toml"), text) {
        let _ = c.listen();
        let _ = c.kbs_target();
        let _ = c.host_cpu_signature();
    }
});
