//! The simulated PSP against an independent guest owner: the `sev` crate's
//! session (the tenant side of LAUNCH_START, measurement verification and
//! secret packaging). Both directions must agree byte for byte, and every
//! tampered field must be refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use sev::certs::sev::Chain;
use sev::firmware::host::{Build, Version};
use sev::launch::sev::{HeaderFlags, Measurement, Policy};
use sev::parser::{Decoder, Encoder};
use sev::session::{Initialized, Session};
use sev_sim::efi_secret::{build_table, parse_table};
use sev_sim::{FakeAmdRoots, RootKeySize, SimError, SimPlatform};

struct Owner {
    session: Session<Initialized>,
    godh: Vec<u8>,
    blob: Vec<u8>,
}

/// What a KBS does at GetBundle, with the `sev` crate.
fn owner(platform: &SimPlatform, policy: u32) -> Owner {
    let chain = Chain::decode(&mut &platform.cert_chain()[..], ()).unwrap();
    let session = Session::try_from(Policy::from(policy)).unwrap();
    let start = session.start(chain).unwrap();
    let mut godh = Vec::new();
    start.cert.encode(&mut godh, ()).unwrap();
    let s = start.session;
    let blob = [
        &s.nonce[..],
        &s.wrap_tk[..],
        &s.wrap_iv[..],
        &s.wrap_mac[..],
        &s.policy_mac[..],
    ]
    .concat();
    assert_eq!(blob.len(), 128);
    Owner {
        session,
        godh,
        blob,
    }
}

fn platform() -> SimPlatform {
    let roots = FakeAmdRoots::generate_with(RootKeySize::Rsa2048).unwrap();
    SimPlatform::new(&roots).unwrap()
}

fn build(platform: &SimPlatform) -> Build {
    Build {
        version: Version {
            major: platform.api_major(),
            minor: platform.api_minor(),
        },
        build: platform.build(),
    }
}

fn measurement(m: &[u8; 48]) -> Measurement {
    Measurement {
        measure: m[..32].try_into().unwrap(),
        mnonce: m[32..].try_into().unwrap(),
    }
}

fn header(secret: &sev::launch::sev::Secret) -> Vec<u8> {
    let h = secret.header;
    [&h.flags.bits().to_le_bytes()[..], &h.iv[..], &h.mac[..]].concat()
}

const GUID: &str = "e6f5a162-d67f-4750-a67c-5d065f2a9910";

#[test]
fn round_trip_with_the_sev_crate_guest_owner() {
    let roots = FakeAmdRoots::generate().unwrap();
    for policy in [0x0u32, 0x1, 0x3, 0x5, 0x21] {
        let platform = SimPlatform::new(&roots).unwrap();
        let owner = owner(&platform, policy);
        let mut launch = platform
            .launch_start(&owner.godh, &owner.blob, policy)
            .unwrap();
        assert_eq!(launch.policy(), policy);

        let digest = [0x5a; 32];
        let m = launch.measure(&digest);
        let verified = owner
            .session
            .verify(&digest, build(&platform), measurement(&m))
            .expect("the guest owner accepts the PSP's measurement");

        let table = build_table(&[(GUID, br#"{"key":"c2VjcmV0"}"#)]).unwrap();
        let secret = verified.secret(HeaderFlags::empty(), &table).unwrap();
        let plain = launch
            .inject_secret(&header(&secret), &secret.ciphertext)
            .unwrap();
        assert_eq!(plain, table);
        assert_eq!(
            parse_table(&plain).unwrap(),
            vec![(GUID.to_owned(), br#"{"key":"c2VjcmV0"}"#.to_vec())]
        );
    }
}

#[test]
fn the_guest_owner_refuses_a_measurement_of_another_digest_or_version() {
    let platform = platform();
    let o = owner(&platform, 1);
    let mut launch = platform.launch_start(&o.godh, &o.blob, 1).unwrap();
    let m = launch.measure(&[1; 32]);
    assert!(o
        .session
        .verify(&[2; 32], build(&platform), measurement(&m))
        .is_err());

    let o = owner(&platform, 1);
    let mut launch = platform.launch_start(&o.godh, &o.blob, 1).unwrap();
    let m = launch.measure(&[1; 32]);
    let mut other = build(&platform);
    other.build += 1;
    assert!(o.session.verify(&[1; 32], other, measurement(&m)).is_err());
}

#[test]
fn tampered_sessions_are_refused_at_launch_start() {
    let platform = platform();
    let o = owner(&platform, 3);
    platform.launch_start(&o.godh, &o.blob, 3).unwrap();

    // nonce, wrap_tk, wrap_mac: the wrapped keys no longer authenticate.
    for offset in [0usize, 15, 16, 47, 64, 95] {
        let mut blob = o.blob.clone();
        blob[offset] ^= 0x80;
        assert!(
            matches!(
                platform.launch_start(&o.godh, &blob, 3),
                Err(SimError::WrapMac)
            ),
            "offset {offset}"
        );
    }
    // wrap_iv unwraps other keys, policy_mac is the policy MAC itself.
    for offset in [48usize, 63, 96, 127] {
        let mut blob = o.blob.clone();
        blob[offset] ^= 0x01;
        assert!(
            matches!(
                platform.launch_start(&o.godh, &blob, 3),
                Err(SimError::PolicyMac { policy: 3 })
            ),
            "offset {offset}"
        );
    }
    // Another policy than the session was made for.
    for policy in [1u32, 7, 0x103] {
        assert!(matches!(
            platform.launch_start(&o.godh, &o.blob, policy),
            Err(SimError::PolicyMac { .. })
        ));
    }
    // Another GODH (a fresh key the session was not derived with).
    let other = owner(&platform, 3);
    assert!(matches!(
        platform.launch_start(&other.godh, &o.blob, 3),
        Err(SimError::WrapMac)
    ));
    // A session made for another platform's PDH.
    let elsewhere = self::platform();
    assert!(matches!(
        elsewhere.launch_start(&o.godh, &o.blob, 3),
        Err(SimError::WrapMac)
    ));
    // Malformed inputs.
    assert!(matches!(
        platform.launch_start(&o.godh, &o.blob[..127], 3),
        Err(SimError::BlobLength(127))
    ));
    assert!(matches!(
        platform.launch_start(&o.godh[..100], &o.blob, 3),
        Err(SimError::BadGodh(_))
    ));
}

#[test]
fn a_policy_asking_for_newer_firmware_is_refused() {
    let platform = platform(); // API 1.55
    let o = owner(&platform, 0x3801_0001); // 1.56
    assert!(matches!(
        platform.launch_start(&o.godh, &o.blob, 0x3801_0001),
        Err(SimError::PolicyFirmware {
            need_major: 1,
            need_minor: 56,
            ..
        })
    ));
    let newer = platform.with_firmware_version(2, 0, 1);
    assert!(matches!(
        newer.launch_start(&o.godh, &o.blob, 0x3801_0001),
        // Past the firmware check; the sev crate's session MACs a mangled
        // policy (it misreads the version bits), so the MAC does not match.
        Err(SimError::PolicyMac { .. })
    ));
}

#[test]
fn tampered_secret_packets_are_refused() {
    let platform = platform();
    let o = owner(&platform, 1);
    let mut launch = platform.launch_start(&o.godh, &o.blob, 1).unwrap();
    let digest = [9; 32];
    let m = launch.measure(&digest);
    let verified = o
        .session
        .verify(&digest, build(&platform), measurement(&m))
        .unwrap();
    let table = build_table(&[(GUID, b"payload")]).unwrap();
    let secret = verified.secret(HeaderFlags::empty(), &table).unwrap();
    let good_header = header(&secret);
    assert_eq!(
        launch
            .inject_secret(&good_header, &secret.ciphertext)
            .unwrap(),
        table
    );

    // flags, iv, mac
    for offset in [0usize, 4, 19, 20, 51] {
        let mut h = good_header.clone();
        h[offset] ^= 0x01;
        assert!(
            matches!(
                launch.inject_secret(&h, &secret.ciphertext),
                Err(SimError::SecretMac)
            ),
            "header offset {offset}"
        );
    }
    for offset in [0usize, 20, secret.ciphertext.len() - 1] {
        let mut c = secret.ciphertext.clone();
        c[offset] ^= 0x01;
        assert!(
            matches!(
                launch.inject_secret(&good_header, &c),
                Err(SimError::SecretMac)
            ),
            "ciphertext offset {offset}"
        );
    }
    assert!(launch
        .inject_secret(&good_header[..51], &secret.ciphertext)
        .is_err());
    assert!(launch
        .inject_secret(&good_header, &secret.ciphertext[..16])
        .is_err());

    // A packet is bound to one measurement: after measuring again (new
    // mnonce), the old packet no longer fits.
    launch.measure(&digest);
    assert!(matches!(
        launch.inject_secret(&good_header, &secret.ciphertext),
        Err(SimError::SecretMac)
    ));
}

#[test]
fn compressed_packets_are_refused_after_the_mac() {
    let platform = platform();
    let o = owner(&platform, 1);
    let mut launch = platform.launch_start(&o.godh, &o.blob, 1).unwrap();
    let m = launch.measure(&[0; 32]);
    let verified = o
        .session
        .verify(&[0; 32], build(&platform), measurement(&m))
        .unwrap();
    let table = build_table(&[(GUID, b"x")]).unwrap();
    let secret = verified.secret(HeaderFlags::COMPRESSED, &table).unwrap();
    assert!(matches!(
        launch.inject_secret(&header(&secret), &secret.ciphertext),
        Err(SimError::SecretFlags(1))
    ));
}
