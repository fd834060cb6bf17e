//! Certificate tables and PEM/DER files come from hosts and operators:
//! split, parse and verify with them without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snp_attestation::{
    decode_cert_table, der_from_pem_or_der, verify, CertChain, TrustedRoots, REPORT_LEN,
};
use std::sync::OnceLock;

static ROOTS: OnceLock<TrustedRoots> = OnceLock::new();

/// A version 3 Milan report signed by a VCEK, with a signature of r = s = 1:
/// it never verifies, but gets every certificate check run first.
fn fixed_report() -> [u8; REPORT_LEN] {
    let mut r = [0u8; REPORT_LEN];
    r[0] = 3;
    r[0x34] = 1;
    r[0x188] = 0x19;
    r[0x189] = 0x01;
    r[0x2A0] = 1;
    r[0x2E8] = 1;
    r
}

fuzz_target!(|data: &[u8]| {
    let roots = ROOTS.get_or_init(TrustedRoots::amd);
    let report = fixed_report();
    if let Ok(entries) = decode_cert_table(data) {
        let _ = verify(&report, &CertChain::from_table(&entries), roots);
    }
    if let Ok(ders) = der_from_pem_or_der(data) {
        let mut ders = ders.into_iter();
        let chain = CertChain {
            vek: ders.next(),
            ask: ders.next(),
            ark: ders.next(),
        };
        let _ = verify(&report, &chain, roots);
    }
});
