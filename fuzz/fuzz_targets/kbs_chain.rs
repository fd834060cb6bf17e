//! GetBundle's certificate chain comes from the host, which may be hostile:
//! decoding and verifying any bytes must give an answer, never a crash.
#![no_main]

use kbs::trust::TrustAnchors;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static ANCHORS: OnceLock<TrustAnchors> = OnceLock::new();
    let _ = ANCHORS.get_or_init(TrustAnchors::amd).verify(data);
});
