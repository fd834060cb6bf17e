//! The SEV-SNP guest's report (`GuestStatus.SnpNonce`, `SnpReport`), free of
//! gRPC and storage: the nonces the broker hands out, the decoding and bounds
//! of a report body, and the judgement of a report whose chip signature has
//! been verified.
//!
//! An SNP guest has no report key (Trustee, not this broker, released its
//! secrets), so the report is bound to the chip: REPORT_DATA of an SNP
//! attestation report is SHA-512 of the body's exact bytes, and the body
//! carries a nonce of the broker's. Nonces are stateless: they carry their
//! expiry and a MAC under a key kept in the database, so any replica can
//! check one, and the table of recorded reports (a nonce is unique there)
//! makes each usable once.

use crate::broker::BrokerError;
use hmac::{Hmac, Mac};
use kbs_proto::kbsstatus::SnpReportBody;
use prost::Message as _;
use sha2::{Digest as _, Sha256, Sha512};
use snp_attestation::{AttestationReport, Verified};
use subtle::ConstantTimeEq;

/// Largest `SnpSignedReport.body`, in bytes (the guest client's are under
/// 4 KiB; every accepted body is kept).
pub const MAX_BODY: usize = 16 << 10;
/// Largest `SnpSignedReport.cert_table`, in bytes (AMD's three certificates
/// come to about 5 KiB).
pub const MAX_CERT_TABLE: usize = 16 << 10;
/// How long a nonce stays usable, in seconds.
pub const NONCE_TTL_SECS: i64 = 600;
/// Length of the key nonces are MACed with.
pub const NONCE_KEY_LEN: usize = 32;

const NONCE_VERSION: u8 = 1;
const NONCE_RANDOM: usize = 16;
const NONCE_TAG: usize = 16;
/// Version, expiry (8 bytes), random part, tag.
const NONCE_LEN: usize = 1 + 8 + NONCE_RANDOM + NONCE_TAG;

/// What the broker's own checks are called in a recorded report.
pub mod broker_check {
    /// The measurement is not registered for any node (under the
    /// registration mode in force).
    pub const MEASUREMENT: &str = "broker: measurement registered";
    /// The guest policy allows debugging: the host can read and write the
    /// guest's memory, so nothing the guest says can be trusted.
    pub const DEBUG: &str = "broker: policy forbids debugging";
    /// The guest policy allows a migration agent.
    pub const MIGRATION: &str = "broker: policy forbids a migration agent";
    /// The report was asked for from a VMPL other than 0 (not the guest
    /// kernel's own level).
    pub const VMPL: &str = "broker: report from VMPL 0";
    /// The reported TCB is below the operator's pin
    /// (`kbs admin trustee tcb set`).
    pub const TCB: &str = "broker: TCB at or above the pin";
    /// No check of the secret path itself (a resource fetched, or an
    /// authenticated attestation token) passed.
    pub const SECRET_PATH: &str = "broker: secret path checked";
}

fn tag(key: &[u8; NONCE_KEY_LEN], signed: &[u8]) -> [u8; NONCE_TAG] {
    let mut out = [0u8; NONCE_TAG];
    // HMAC takes keys of any length, so this cannot fail.
    if let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(key) {
        m.update(signed);
        let full = m.finalize().into_bytes();
        for (o, b) in out.iter_mut().zip(full.iter()) {
            *o = *b;
        }
    }
    out
}

/// A nonce that expires at `expires_at` (Unix seconds), with `random` as its
/// unique part.
pub fn mint_nonce(
    key: &[u8; NONCE_KEY_LEN],
    expires_at: i64,
    random: [u8; NONCE_RANDOM],
) -> Vec<u8> {
    let mut n = Vec::with_capacity(NONCE_LEN);
    n.push(NONCE_VERSION);
    n.extend_from_slice(&expires_at.to_be_bytes());
    n.extend_from_slice(&random);
    let t = tag(key, &n);
    n.extend_from_slice(&t);
    n
}

/// Why a nonce is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// Wrong length, version or MAC: not one this broker issued.
    #[error("the nonce was not issued by this broker")]
    NotIssued,
    /// Issued, but its time is up.
    #[error("the nonce has expired (they last {NONCE_TTL_SECS} s)")]
    Expired,
}

/// Checks that `nonce` was minted under `key` and has not expired at `now`.
pub fn check_nonce(key: &[u8; NONCE_KEY_LEN], nonce: &[u8], now: i64) -> Result<(), NonceError> {
    if nonce.len() != NONCE_LEN {
        return Err(NonceError::NotIssued);
    }
    let (signed, sent_tag) = nonce.split_at(NONCE_LEN - NONCE_TAG);
    let (version, rest) = signed.split_first().ok_or(NonceError::NotIssued)?;
    let ok: bool = tag(key, signed).ct_eq(sent_tag).into();
    if *version != NONCE_VERSION || !ok {
        return Err(NonceError::NotIssued);
    }
    let expiry: [u8; 8] = rest
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(NonceError::NotIssued)?;
    if i64::from_be_bytes(expiry) < now {
        return Err(NonceError::Expired);
    }
    Ok(())
}

/// A report body whose fields passed the bounds checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSnpBody {
    /// The broker's nonce.
    pub nonce: Vec<u8>,
    /// The guest's verdict.
    pub path_works: bool,
    /// Names of the checks that failed, in report order.
    pub failed_checks: Vec<String>,
    /// The client's self-description.
    pub client: String,
    /// A check of the secret path itself passed: a resource fetched, or an
    /// attestation token whose signature was authenticated.
    pub secret_path_checked: bool,
}

use crate::report::invalid;

/// [`crate::report::bounded`], and no control characters: the text is shown
/// by `kbs admin records`, and the sender is any SNP guest.
fn bounded(field: &'static str, text: &str) -> Result<(), BrokerError> {
    crate::report::bounded(field, text)?;
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "holds control characters"));
    }
    Ok(())
}

/// Decodes and bounds-checks the request's fields (nothing is verified yet);
/// every failure is an `InvalidArgument` naming the field.
pub fn parse(
    body: &[u8],
    attestation_report: &[u8],
    cert_table: &[u8],
) -> Result<ParsedSnpBody, BrokerError> {
    if body.len() > MAX_BODY {
        return Err(invalid("body", format!("longer than {MAX_BODY} bytes")));
    }
    if attestation_report.len() != snp_attestation::REPORT_LEN {
        return Err(invalid(
            "attestation_report",
            format!(
                "an SNP attestation report is {} bytes, got {}",
                snp_attestation::REPORT_LEN,
                attestation_report.len()
            ),
        ));
    }
    if cert_table.len() > MAX_CERT_TABLE {
        return Err(invalid(
            "cert_table",
            format!("longer than {MAX_CERT_TABLE} bytes"),
        ));
    }
    let b = SnpReportBody::decode(body)
        .map_err(|e| invalid("body", format!("not an encoded SnpReportBody: {e}")))?;
    if b.nonce.len() > 64 {
        return Err(invalid("body.nonce", "longer than 64 bytes"));
    }
    if b.checks.len() > crate::report::MAX_CHECKS {
        return Err(invalid(
            "body.checks",
            format!("at most {}", crate::report::MAX_CHECKS),
        ));
    }
    for c in &b.checks {
        bounded("body.checks.name", &c.name)?;
        bounded("body.checks.reason", &c.reason)?;
    }
    bounded("body.client", &b.client)?;
    Ok(ParsedSnpBody {
        nonce: b.nonce,
        path_works: b.path_works,
        failed_checks: b
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.clone())
            .collect(),
        secret_path_checked: b
            .checks
            .iter()
            .any(|c| c.passed && SECRET_PATH_CHECKS.contains(&c.name.as_str())),
        client: b.client,
    })
}

/// Whether the report's REPORT_DATA is SHA-512 of `body`.
pub fn bound_to(report: &AttestationReport, body: &[u8]) -> bool {
    let digest = Sha512::digest(body);
    report.report_data.ct_eq(digest.as_slice()).into()
}

/// The guest's checks of which one passing shows the secret path works (the
/// guest client names a token check whose signature no pinned key
/// authenticated otherwise: anyone can sign a token with a key of their own).
pub const SECRET_PATH_CHECKS: [&str; 2] = [
    kbs_proto::snp_checks::RESOURCE,
    kbs_proto::snp_checks::TOKEN,
];

/// The broker's judgement of a verified, bound report of a registered
/// launch: the checks that failed (the guest's and the broker's own, given
/// the operator's TCB pin) and whether the guest counts as confirmed.
pub fn judge(
    verified: &Verified,
    body: &ParsedSnpBody,
    pin: &crate::store::TcbPin,
) -> (bool, Vec<String>) {
    let report = &verified.report;
    let policy = report.policy;
    let mut failed = body.failed_checks.clone();
    let mut own = Vec::new();
    if policy.debug() {
        own.push(broker_check::DEBUG);
    }
    if policy.migrate_ma() {
        own.push(broker_check::MIGRATION);
    }
    if report.vmpl != 0 {
        own.push(broker_check::VMPL);
    }
    let min = snp_attestation::MinTcb {
        bootloader: pin.bootloader,
        tee: pin.tee,
        snp: pin.snp,
        microcode: pin.microcode,
        fmc: None,
    };
    if !report
        .reported_tcb
        .decode(verified.product)
        .shortfalls(&min)
        .is_empty()
    {
        own.push(broker_check::TCB);
    }
    if !body.secret_path_checked {
        own.push(broker_check::SECRET_PATH);
    }
    let confirmed = body.path_works && own.is_empty();
    failed.extend(own.into_iter().map(String::from));
    (confirmed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kbs_proto::kbsstatus::Check;

    const KEY: [u8; 32] = [9; 32];

    #[test]
    fn a_nonce_checks_until_it_expires_and_only_under_its_key() {
        let n = mint_nonce(&KEY, 1_000, [1; 16]);
        assert_eq!(n.len(), NONCE_LEN);
        assert_eq!(check_nonce(&KEY, &n, 999), Ok(()));
        assert_eq!(check_nonce(&KEY, &n, 1_000), Ok(()));
        assert_eq!(check_nonce(&KEY, &n, 1_001), Err(NonceError::Expired));
        assert_eq!(check_nonce(&[8; 32], &n, 999), Err(NonceError::NotIssued));
        // A later expiry written over the old one breaks the tag.
        let mut later = n.clone();
        later[8] = later[8].wrapping_add(1);
        assert_eq!(check_nonce(&KEY, &later, 999), Err(NonceError::NotIssued));
        for cut in 0..n.len() {
            assert_eq!(check_nonce(&KEY, &n[..cut], 0), Err(NonceError::NotIssued));
        }
        assert_ne!(n, mint_nonce(&KEY, 1_000, [2; 16]));
    }

    #[test]
    fn the_broker_judges_policy_vmpl_tcb_and_the_secret_path() {
        let mut raw = vec![0u8; snp_attestation::REPORT_LEN];
        raw[0] = 2;
        let report = AttestationReport::decode(&raw).unwrap();
        let verified = |edit: &dyn Fn(&mut AttestationReport)| {
            let mut r = report.clone();
            r.policy = snp_attestation::GuestPolicy(0x3_0000);
            // Genoa layout: boot loader 7, TEE 1, SNP 21, microcode 0xd1.
            r.reported_tcb =
                snp_attestation::RawTcb(u64::from_le_bytes([7, 1, 0, 0, 0, 0, 21, 0xd1]));
            edit(&mut r);
            Verified {
                report: r,
                product: snp_attestation::Product::Genoa,
                signer: snp_attestation::SigningKey::Vcek,
                root: snp_attestation::RootKind::Amd,
                vek_tcb: snp_attestation::Tcb {
                    fmc: None,
                    bootloader: 7,
                    tee: 1,
                    snp: 21,
                    microcode: 0xd1,
                },
            }
        };
        let good = ParsedSnpBody {
            nonce: vec![],
            path_works: true,
            failed_checks: vec![],
            client: String::new(),
            secret_path_checked: true,
        };
        let none = crate::store::TcbPin::default();
        assert_eq!(judge(&verified(&|_| {}), &good, &none), (true, vec![]));
        type Edit<'a> = &'a dyn Fn(&mut AttestationReport);
        let cases: [(Edit, &str); 3] = [
            (&|r| r.policy.0 |= 1 << 19, broker_check::DEBUG),
            (&|r| r.policy.0 |= 1 << 18, broker_check::MIGRATION),
            (&|r| r.vmpl = 1, broker_check::VMPL),
        ];
        for (edit, name) in cases {
            assert_eq!(
                judge(&verified(edit), &good, &none),
                (false, vec![name.to_string()])
            );
        }
        let pin = |snp| crate::store::TcbPin {
            snp: Some(snp),
            ..Default::default()
        };
        assert!(judge(&verified(&|_| {}), &good, &pin(21)).0);
        assert_eq!(
            judge(&verified(&|_| {}), &good, &pin(22)),
            (false, vec![broker_check::TCB.to_string()])
        );
        let unchecked = ParsedSnpBody {
            secret_path_checked: false,
            ..good.clone()
        };
        assert_eq!(
            judge(&verified(&|_| {}), &unchecked, &none),
            (false, vec![broker_check::SECRET_PATH.to_string()])
        );
        // The guest's own failures come first, the broker's after.
        let broken = ParsedSnpBody {
            path_works: false,
            failed_checks: vec!["resource".into()],
            ..good
        };
        assert_eq!(
            judge(&verified(&|r| r.policy.0 |= 1 << 19), &broken, &none),
            (
                false,
                vec!["resource".to_string(), broker_check::DEBUG.to_string()]
            )
        );
    }

    fn body(edit: impl FnOnce(&mut SnpReportBody)) -> Vec<u8> {
        let mut b = SnpReportBody {
            nonce: vec![1; NONCE_LEN],
            checks: vec![
                Check {
                    name: "snp report".into(),
                    passed: true,
                    reason: String::new(),
                },
                Check {
                    name: "resource".into(),
                    passed: false,
                    reason: "404".into(),
                },
            ],
            path_works: false,
            client: "guest-client 0.1".into(),
        };
        edit(&mut b);
        b.encode_to_vec()
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let report = vec![0u8; snp_attestation::REPORT_LEN];
        let long = "x".repeat(crate::report::MAX_STRING + 1);
        // Field, body, report, certificate table.
        type Case = (&'static str, Vec<u8>, Vec<u8>, Vec<u8>);
        let cases: Vec<Case> = vec![
            ("body", vec![0xff; 8], report.clone(), vec![]),
            ("body", vec![0; MAX_BODY + 1], report.clone(), vec![]),
            ("attestation_report", body(|_| {}), vec![0; 100], vec![]),
            ("attestation_report", body(|_| {}), vec![], vec![]),
            (
                "cert_table",
                body(|_| {}),
                report.clone(),
                vec![0; MAX_CERT_TABLE + 1],
            ),
            (
                "body.nonce",
                body(|b| b.nonce = vec![0; 65]),
                report.clone(),
                vec![],
            ),
            (
                "body.checks",
                body(|b| b.checks = vec![Check::default(); 65]),
                report.clone(),
                vec![],
            ),
            (
                "body.checks.reason",
                body(|b| b.checks[1].reason = long.clone()),
                report.clone(),
                vec![],
            ),
            (
                "body.client",
                body(|b| b.client = long.clone()),
                report.clone(),
                vec![],
            ),
            (
                "body.client",
                body(|b| b.client = "guest \u{1b}[2J".into()),
                report.clone(),
                vec![],
            ),
            (
                "body.checks.name",
                body(|b| b.checks[0].name = "snp\rreport".into()),
                report.clone(),
                vec![],
            ),
        ];
        for (field, b, r, t) in cases {
            match parse(&b, &r, &t) {
                Err(BrokerError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let p = parse(&body(|_| {}), &report, &[]).unwrap();
        assert_eq!(p.failed_checks, vec!["resource".to_string()]);
        assert!(!p.path_works);
    }
}
