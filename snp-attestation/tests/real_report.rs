//! Verifies a report produced by real AMD hardware: by default the Milan
//! report, VCEK and certificate chain the `sev` crate publishes with its
//! sources (found through `cargo metadata`, so no copy is kept here); set
//! `SNP_REPORT_FIXTURES` to a directory holding `report.hex` (the 0x4A0
//! report bytes as hexadecimal) or `report.bin`, and `vek.der` (its VCEK or
//! VLEK), optionally with `cert_chain.pem` (ASK then ARK, as AMD's Key
//! Distribution Service serves them), to check another.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use snp_attestation::{verify, AttestationReport, CertChain, RootKind, TrustedRoots};
use std::path::{Path, PathBuf};

/// Report, VEK and optional chain: the given directory's, or the sev crate's.
fn fixtures() -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    if let Some(dir) = std::env::var_os("SNP_REPORT_FIXTURES").map(PathBuf::from) {
        let report = match std::fs::read_to_string(dir.join("report.hex")) {
            Ok(text) => hex::decode(text.trim()).unwrap(),
            Err(_) => std::fs::read(dir.join("report.bin")).unwrap(),
        };
        return (
            report,
            std::fs::read(dir.join("vek.der")).unwrap(),
            std::fs::read(dir.join("cert_chain.pem")).ok(),
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sev")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("the sev crate is a dev-dependency");
    let data = Path::new(manifest)
        .parent()
        .unwrap()
        .join("tests/certs_data");
    let read = |name: &str| {
        std::fs::read(data.join(name)).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the sev crate's published sources carry it)",
                data.join(name).display()
            )
        })
    };
    let report = hex::decode(String::from_utf8(read("report_milan.hex")).unwrap().trim()).unwrap();
    (
        report,
        read("vcek_milan.der"),
        Some(read("cert_chain_milan")),
    )
}

#[test]
fn real_report_verifies_against_amd_roots() {
    let (report, vek, chain_pem) = fixtures();
    let mut chain = CertChain {
        ark: None,
        ask: None,
        vek: Some(vek),
    };
    // First with the VCEK alone: the ASK and ARK are the built-in ones.
    let alone = verify(&report, &chain, &TrustedRoots::amd()).unwrap();
    assert_eq!(alone.root, RootKind::Amd);
    if let Some(pem) = chain_pem {
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
