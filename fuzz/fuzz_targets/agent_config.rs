//! The host agent's own configuration file (`/etc/host-agent/config.toml`, edited
//! by people): parse any text without panicking, and for an accepted file ask
//! every accessor the daemon uses.
#![no_main]

use host_agent::agent::config::AgentConfig;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = AgentConfig::parse(Path::new("config.toml"), text) {
        let _ = c.listen();
        let _ = c.kbs_target().to_string();
        let _ = c.host_cpu_signature();
        let _ = c.kbs_timeout();
        for mode in sev_core::SevMode::ALL {
            let _ = c.mode_allowed(mode);
        }
    }
});
