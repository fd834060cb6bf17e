//! The simulated platform's certificate chain, checked with the `sev` crate's
//! own chain verification, and kept apart from AMD's real roots.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use sev::certs::sev::{builtin, ca, sev as sevcert, Chain, Verifiable};
use sev::parser::{Decoder, Encoder};
use sev_sim::{FakeAmdRoots, RootKeySize, SimPlatform};

fn encode(cert: &impl Encoder<()>) -> Vec<u8> {
    let mut out = Vec::new();
    cert.encode(&mut out, ()).unwrap();
    out
}

fn ca_cert(bytes: &[u8]) -> ca::Certificate {
    ca::Certificate::decode(&mut &bytes[..], ()).unwrap()
}

const AMD_ARKS: [(&str, &[u8]); 5] = [
    ("naples", builtin::naples::ARK),
    ("rome", builtin::rome::ARK),
    ("milan", builtin::milan::ARK),
    ("genoa", builtin::genoa::ARK),
    ("turin", builtin::turin::ARK),
];

const AMD_ASKS: [(&str, &[u8]); 5] = [
    ("naples", builtin::naples::ASK),
    ("rome", builtin::rome::ASK),
    ("milan", builtin::milan::ASK),
    ("genoa", builtin::genoa::ASK),
    ("turin", builtin::turin::ASK),
];

fn check_chain(size: RootKeySize) {
    let roots = FakeAmdRoots::generate_with(size).unwrap();
    let platform = SimPlatform::new(&roots).unwrap();
    let bytes = platform.cert_chain();
    let ca_len = roots.ask_cert().len() + roots.ark_cert().len();
    assert_eq!(bytes.len(), 4 * 0x824 + ca_len);

    let chain = Chain::decode(&mut &bytes[..], ()).unwrap();
    assert_eq!(encode(&chain), bytes, "re-encoding gives the same bytes");
    let pdh = (&chain).verify().expect("the chain verifies");
    assert_eq!(encode(pdh), platform.pdh_cert());
    assert_eq!(encode(&chain.ca.ark), roots.ark_cert());
    assert_eq!(encode(&chain.ca.ask), roots.ask_cert());

    // Each link in the right direction only.
    (&chain.ca.ask, &chain.sev.cek).verify().unwrap();
    (&chain.sev.cek, &chain.sev.pek).verify().unwrap();
    (&chain.sev.oca, &chain.sev.pek).verify().unwrap();
    assert!((&chain.sev.pek, &chain.sev.cek).verify().is_err());
    assert!((&chain.sev.pdh, &chain.sev.pek).verify().is_err());
    assert!((&chain.ca.ark, &chain.sev.cek).verify().is_err());
}

#[test]
fn rsa4096_chain_verifies_with_the_sev_crate() {
    check_chain(RootKeySize::Rsa4096);
}

#[test]
fn rsa2048_chain_verifies_with_the_sev_crate() {
    check_chain(RootKeySize::Rsa2048);
}

#[test]
fn the_fake_ark_is_not_amds() {
    let roots = FakeAmdRoots::generate().unwrap();
    let fake_ark = ca_cert(&roots.ark_cert());
    let fake_ask = ca_cert(&roots.ask_cert());
    for (generation, ark) in AMD_ARKS {
        assert_ne!(roots.ark_cert(), ark, "{generation}");
        assert_ne!(fake_ark, ca_cert(ark), "{generation}");
        assert!(
            (&ca_cert(ark), &fake_ask).verify().is_err(),
            "the fake ASK verifies under AMD's {generation} ARK"
        );
    }
    for (generation, ask) in AMD_ASKS {
        assert!(
            (&fake_ark, &ca_cert(ask)).verify().is_err(),
            "AMD's {generation} ASK verifies under the fake ARK"
        );
    }
    // And AMD's own pairs do verify, so the check above means something.
    (&ca_cert(builtin::milan::ARK), &ca_cert(builtin::milan::ASK))
        .verify()
        .unwrap();
}

#[test]
fn a_chain_under_other_roots_does_not_verify_with_these() {
    let roots = FakeAmdRoots::generate_with(RootKeySize::Rsa2048).unwrap();
    let other = FakeAmdRoots::generate_with(RootKeySize::Rsa2048).unwrap();
    let platform = SimPlatform::new(&other).unwrap();
    let mut chain = Chain::decode(&mut &platform.cert_chain()[..], ()).unwrap();
    chain.ca = ca::Chain::decode(&mut &roots.ca_chain()[..], ()).unwrap();
    assert!((&chain).verify().is_err());
}

#[test]
fn a_flipped_bit_anywhere_in_a_sev_certificate_body_breaks_the_chain() {
    let roots = FakeAmdRoots::generate_with(RootKeySize::Rsa2048).unwrap();
    let platform = SimPlatform::new(&roots).unwrap();
    let good = platform.cert_chain();
    // Inside the PDH, PEK, OCA and CEK public keys.
    for offset in [0x20usize, 0x824 + 0x20, 2 * 0x824 + 0x20, 3 * 0x824 + 0x20] {
        let mut bytes = good.clone();
        bytes[offset] ^= 0x01;
        let chain = Chain::decode(&mut &bytes[..], ()).unwrap();
        assert!((&chain).verify().is_err(), "offset {offset:#x}");
    }
}

#[test]
fn platform_reports_its_firmware_version() {
    let roots = FakeAmdRoots::generate_with(RootKeySize::Rsa2048).unwrap();
    let platform = SimPlatform::new(&roots).unwrap();
    assert_eq!(
        (platform.api_major(), platform.api_minor(), platform.build()),
        (1, 55, 21)
    );
    let pdh = platform.pdh_cert();
    assert_eq!(
        &pdh[4..6],
        &[1, 55],
        "certificates carry the issuing firmware"
    );
    let updated = platform.with_firmware_version(1, 56, 3);
    assert_eq!(
        (updated.api_major(), updated.api_minor(), updated.build()),
        (1, 56, 3)
    );
    assert_eq!(updated.pdh_cert(), pdh);

    let old = SimPlatform::new_with_firmware_version(&roots, 0, 24, 15).unwrap();
    let chain = Chain::decode(&mut &old.cert_chain()[..], ()).unwrap();
    (&chain).verify().unwrap();
    let pdh = sevcert::Certificate::decode(&mut &old.pdh_cert()[..], ()).unwrap();
    assert_eq!(encode(&pdh)[4..6], [0, 24]);
}
