//! What an unauthenticated peer sends the broker's SnpReport and SnpLookup:
//! the status body, the certificate table and a nonce, decoded, bounded and
//! checked without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let report = [0u8; snp_attestation::REPORT_LEN];
    let (body, table) = data.split_at(data.len() / 2);
    if let Ok(parsed) = kbs::snp_report::parse(body, &report, table) {
        let _ = kbs::snp_report::check_nonce(&[7; 32], &parsed.nonce, 0);
    }
    let _ = kbs::snp_report::check_nonce(&[7; 32], data, i64::MAX);
    let _ = snp_attestation::decode_cert_table(table);
});
