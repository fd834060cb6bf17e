//! Editing a Kata configuration in place: for any text, `is_sev_pre_attestation_config`
//! and `validate_kbs_uri` answer without panicking, and every edit
//! (`set_signature_verification` on/off, `set_guest_pre_attestation` on with
//! each mode and off) either fails with an error or
//! - gives text that parses as TOML,
//! - reports `changed` exactly when the text differs from the input,
//! - leaves `[hypervisor.qemu]` holding what was asked for, and
//! - is idempotent: the same edit on its own output succeeds, changes nothing
//!   and hands the text back byte for byte.
#![no_main]

use host_agent::kata_edit::{
    is_sev_pre_attestation_config, set_guest_pre_attestation, set_signature_verification,
    validate_kbs_uri, PreAttestation, SIGNATURE_VERIFICATION_PARAM,
};
use kata_launch::KbsMode;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use toml_edit::{DocumentMut, TableLike};

const URI: &str = "192.0.2.1:44444";

/// What `[hypervisor.qemu]` must hold after an edit succeeded.
fn holds(qemu: &dyn TableLike, want: &Want) -> bool {
    let str_of = |key| qemu.get(key).and_then(|i| i.as_str());
    let bool_of = |key| qemu.get(key).and_then(|i| i.as_bool());
    match want {
        Want::Signature(on) => {
            let Some(params) = str_of("kernel_params") else {
                return false;
            };
            let tokens: Vec<&str> = params
                .split_whitespace()
                .filter(|t| {
                    t.split_once('=').map_or(*t, |(n, _)| n) == SIGNATURE_VERIFICATION_PARAM
                })
                .collect();
            let token = format!("{SIGNATURE_VERIFICATION_PARAM}={on}");
            !tokens.is_empty() && tokens.iter().all(|t| *t == token)
        }
        Want::On(mode) => {
            bool_of("guest_pre_attestation") == Some(true)
                && str_of("guest_pre_attestation_kbs_uri") == Some(URI)
                && match mode {
                    Some(m) => str_of("guest_pre_attestation_kbs_mode") == Some(m.as_str()),
                    None => str_of("guest_pre_attestation_kbs_mode")
                        .is_some_and(|m| KbsMode::from_name(m).is_some()),
                }
        }
        Want::Off => bool_of("guest_pre_attestation") != Some(true),
    }
}

enum Want {
    Signature(bool),
    On(Option<KbsMode>),
    Off,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("configuration-qemu-sev.toml");
    let _ = is_sev_pre_attestation_config(path, text);
    let _ = validate_kbs_uri(text);
    let _ = text.lines().next().map(validate_kbs_uri);

    let wants = [
        Want::Signature(true),
        Want::Signature(false),
        Want::On(None),
        Want::On(Some(KbsMode::Online)),
        Want::On(Some(KbsMode::Offline)),
        Want::Off,
    ];
    for want in &wants {
        let edit = |t: &str| {
            let r = match want {
                Want::Signature(on) => set_signature_verification(path, t, *on),
                Want::On(mode) => set_guest_pre_attestation(
                    path,
                    t,
                    &PreAttestation::On {
                        kbs_uri: URI.into(),
                        mode: *mode,
                    },
                ),
                Want::Off => set_guest_pre_attestation(path, t, &PreAttestation::Off),
            };
            r.map(|e| (e.text, e.changed))
        };
        let Ok((once, changed)) = edit(text) else {
            continue;
        };
        assert_eq!(
            changed,
            once != text,
            "`changed` does not say whether the text changed"
        );
        let doc: DocumentMut = once.parse().expect("an edit produced invalid TOML");
        let qemu = doc
            .get("hypervisor")
            .and_then(|h| h.as_table_like())
            .and_then(|h| h.get("qemu"))
            .and_then(|q| q.as_table_like())
            .expect("an edited file lost [hypervisor.qemu]");
        assert!(holds(qemu, want), "the edit did not set what was asked");
        let (twice, changed) = edit(&once).expect("an edited file can be edited again");
        assert!(!changed && twice == once, "the edit is not idempotent");
    }
});
