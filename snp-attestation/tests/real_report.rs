//! Verifies a report produced by real AMD hardware, when one is at hand.
//! Set `SNP_REPORT_FIXTURES` to a directory holding `report.hex` (the 0x4A0
//! report bytes as hexadecimal) or `report.bin`, and `vek.der` (its VCEK or
//! VLEK), optionally with `cert_chain.pem` (ASK then ARK, as AMD's Key
//! Distribution Service serves them). Without the variable the test passes
//! without checking anything.

use snp_attestation::{verify, AttestationReport, CertChain, RootKind, TrustedRoots};
use std::path::PathBuf;

#[test]
fn real_report_verifies_against_amd_roots() {
    let Some(dir) = std::env::var_os("SNP_REPORT_FIXTURES").map(PathBuf::from) else {
        eprintln!("SNP_REPORT_FIXTURES not set; nothing to check");
        return;
    };
    let report = match std::fs::read_to_string(dir.join("report.hex")) {
        Ok(text) => hex::decode(text.trim()).unwrap(),
        Err(_) => std::fs::read(dir.join("report.bin")).unwrap(),
    };
    let vek = std::fs::read(dir.join("vek.der")).unwrap();
    let mut chain = CertChain {
        ark: None,
        ask: None,
        vek: Some(vek),
    };
    if let Ok(pem) = std::fs::read(dir.join("cert_chain.pem")) {
        let ders = snp_attestation::der_from_pem_or_der(&pem).unwrap();
        assert_eq!(ders.len(), 2, "cert_chain.pem holds ASK then ARK");
        chain.ask = Some(ders[0].clone());
        chain.ark = Some(ders[1].clone());
    }
    let verified = verify(&report, &chain, &TrustedRoots::amd()).unwrap();
    assert_eq!(verified.root, RootKind::Amd);
    eprintln!(
        "{} report v{} signed by {}, TCB {}",
        verified.product, verified.report.version, verified.signer, verified.vek_tcb
    );

    // Any change to the signed part breaks the signature.
    let mut tampered = report.clone();
    tampered[0x90] ^= 1;
    assert_eq!(
        verify(&tampered, &chain, &TrustedRoots::amd()).unwrap_err(),
        snp_attestation::VerifyError::ReportSignature
    );
    // The unsigned tail is not covered.
    let mut tail = report.clone();
    tail[0x49F] ^= 1;
    assert!(verify(&tail, &chain, &TrustedRoots::amd()).is_ok());
    assert_eq!(AttestationReport::decode(&report).unwrap(), verified.report);
}
