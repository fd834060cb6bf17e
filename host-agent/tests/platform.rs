//! The host agent's reading of the platform's SEV-SNP TCB, checked against
//! SNP_PLATFORM_STATUS answers of sev-sim's simulated platform for Milan,
//! Genoa and Turin, and its behaviour on a node without `/dev/sev`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use host_agent::platform::{
    decode_snp_status, read_platform, PlatformError, PlatformTcb, ProductName, SEV_DEVICE,
};
use sev_sim::snp_platform::{SimSnpPlatform, SnpProduct, SnpTcb};
use std::path::Path;
use std::time::{Duration, Instant};

/// The agent's name for a simulated product, by name, so that the two enums
/// are tied only by what AMD calls the parts.
fn product(sim: SnpProduct) -> ProductName {
    sim.name().parse().unwrap()
}

/// A platform whose installed TCB is one step ahead of the reported one in
/// every component, so that reading the wrong TCB shows.
fn platform(sim: SnpProduct, reported: SnpTcb) -> SimSnpPlatform {
    let mut platform = SimSnpPlatform::new(sim, reported);
    platform.current_tcb = SnpTcb {
        fmc: reported.fmc.map(|fmc| fmc + 1),
        bootloader: reported.bootloader + 1,
        tee: reported.tee + 1,
        snp: reported.snp + 1,
        microcode: reported.microcode + 1,
    };
    platform
}

fn decode(platform: &SimSnpPlatform) -> PlatformTcb {
    let raw = platform.snp_platform_status().unwrap();
    decode_snp_status(&raw, product(platform.product)).unwrap()
}

#[test]
fn milan() {
    let mut sim = platform(
        SnpProduct::Milan,
        SnpTcb {
            fmc: None,
            bootloader: 4,
            tee: 0,
            snp: 23,
            microcode: 213,
        },
    );
    sim.api_major = 1;
    sim.api_minor = 55;
    sim.build_id = 21;
    sim.guest_count = 3;
    assert_eq!(
        decode(&sim),
        PlatformTcb {
            product: "Milan".to_string(),
            bootloader: 4,
            tee: 0,
            snp: 23,
            microcode: 213,
            fmc: None,
            firmware_version: "1.55".to_string(),
            build_id: 21,
        }
    );
}

#[test]
fn genoa() {
    let mut sim = platform(
        SnpProduct::Genoa,
        SnpTcb {
            fmc: None,
            bootloader: 9,
            tee: 0,
            snp: 24,
            microcode: 0xd4,
        },
    );
    sim.api_minor = 57;
    sim.build_id = 0x0001_0026;
    sim.policy = 0b1; // MASK_CHIP_ID: no bearing on the TCB
    assert_eq!(
        decode(&sim),
        PlatformTcb {
            product: "Genoa".to_string(),
            bootloader: 9,
            tee: 0,
            snp: 24,
            microcode: 0xd4,
            fmc: None,
            firmware_version: "1.57".to_string(),
            build_id: 0x0001_0026,
        }
    );
}

#[test]
fn turin() {
    let mut sim = platform(
        SnpProduct::Turin,
        SnpTcb {
            fmc: Some(1),
            bootloader: 2,
            tee: 3,
            snp: 4,
            microcode: 0x48,
        },
    );
    sim.api_minor = 58;
    sim.build_id = 5;
    assert_eq!(
        decode(&sim),
        PlatformTcb {
            product: "Turin".to_string(),
            bootloader: 2,
            tee: 3,
            snp: 4,
            microcode: 0x48,
            fmc: Some(1),
            firmware_version: "1.58".to_string(),
            build_id: 5,
        }
    );
}

#[test]
fn every_component_at_every_value_lands_in_its_field() {
    for sim_product in [SnpProduct::Milan, SnpProduct::Genoa, SnpProduct::Turin] {
        for value in [0u8, 1, 0x7f, 0x80, 0xfe, 0xff] {
            let reported = SnpTcb {
                fmc: sim_product.has_fmc().then_some(value),
                bootloader: value,
                tee: value.wrapping_add(1),
                snp: value.wrapping_add(2),
                microcode: value.wrapping_add(3),
            };
            let mut sim = SimSnpPlatform::new(sim_product, reported);
            sim.current_tcb = SnpTcb {
                fmc: reported.fmc.map(|_| 0),
                bootloader: 0,
                tee: 0,
                snp: 0,
                microcode: 0,
            };
            let tcb = decode(&sim);
            assert_eq!(
                (tcb.fmc, tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode),
                (
                    reported.fmc,
                    reported.bootloader,
                    reported.tee,
                    reported.snp,
                    reported.microcode
                ),
                "{sim_product:?} {value}"
            );
            assert_eq!(tcb.product, sim_product.name());
        }
    }
}

#[test]
fn a_status_decoded_as_the_wrong_generation_is_refused() {
    let turin = SimSnpPlatform::new(
        SnpProduct::Turin,
        SnpTcb {
            fmc: Some(1),
            bootloader: 2,
            tee: 3,
            snp: 4,
            microcode: 0x48,
        },
    )
    .snp_platform_status()
    .unwrap();
    let err = decode_snp_status(&turin, ProductName::Milan).unwrap_err();
    assert!(
        matches!(err, PlatformError::ReservedTcbByte { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("not from a Milan"), "{err}");

    let genoa = SimSnpPlatform::new(
        SnpProduct::Genoa,
        SnpTcb {
            fmc: None,
            bootloader: 9,
            tee: 0,
            snp: 24,
            microcode: 0xd4,
        },
    )
    .snp_platform_status()
    .unwrap();
    let err = decode_snp_status(&genoa, ProductName::Turin).unwrap_err();
    assert!(err.to_string().contains("byte 0x16"), "{err}");
}

#[test]
fn a_node_without_dev_sev_gets_an_error_naming_it() {
    let started = Instant::now();
    let result = read_platform(Path::new(SEV_DEVICE));
    assert!(started.elapsed() < Duration::from_secs(35));
    if Path::new(SEV_DEVICE).exists() {
        // An SEV host: whatever it answers, errors still name the device.
        if let Err(err) = result {
            assert!(err.to_string().contains("/dev/sev"), "{err}");
        }
        return;
    }
    let err = result.unwrap_err();
    assert!(matches!(err, PlatformError::NoDevice { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("/dev/sev: "), "{message}");
    assert!(message.contains("no SEV firmware device"), "{message}");
}
