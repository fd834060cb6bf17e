//! Editing a Kata configuration in place: for any text, an edit either fails
//! with an error or gives valid TOML, and doing the same edit again changes
//! nothing (the commands are idempotent).
#![no_main]

use host_agent::kata_edit::{
    is_sev_pre_attestation_config, set_guest_pre_attestation, set_signature_verification,
    validate_kbs_uri, PreAttestation,
};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("configuration-qemu-sev.toml");
    let _ = is_sev_pre_attestation_config(path, text);
    let _ = validate_kbs_uri(text);
    let edits: [&dyn Fn(&str) -> Option<(String, bool)>; 3] = [
        &|t| set_signature_verification(path, t, true).ok().map(|e| (e.text, e.changed)),
        &|t| set_signature_verification(path, t, false).ok().map(|e| (e.text, e.changed)),
        &|t| {
            set_guest_pre_attestation(
                path,
                t,
                &PreAttestation::On {
                    kbs_uri: "192.0.2.1:44444".into(),
                    mode: None,
                },
            )
            .ok()
            .map(|e| (e.text, e.changed))
        },
    ];
    for edit in edits {
        if let Some((once, _)) = edit(text) {
            assert!(
                once.parse::<toml_edit::DocumentMut>().is_ok(),
                "an edit produced invalid TOML"
            );
            let (twice, changed) = edit(&once).expect("an edited file can be edited again");
            assert!(!changed && twice == once, "the edit is not idempotent");
        }
    }
});
