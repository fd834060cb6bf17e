//! A simulated SEV-SNP chip as its guests see it: fake AMD roots (ARK, ASK),
//! a chip's VCEK, signed attestation reports, and a stand-in for the guest's
//! `/dev/sev-guest` served over a Unix socket. Tests and the demo use it to
//! run SNP attestation with real cryptography on machines without SEV-SNP.
//!
//! Everything here is written against OpenSSL and the SNP ABI, independently
//! of the workspace's SNP verifier, so that the two check each other; the
//! tests also have the `sev` crate verify what is produced here.
//!
//! # Certificates
//!
//! The certificates follow what AMD's key distribution service issues:
//!
//! - ARK (`CN=ARK-<Product>`) self-signed and ASK (`CN=SEV-<Product>`) signed
//!   by the ARK, both RSA-4096, with AMD's subject attributes (OU, C, L, ST, O,
//!   CN), key usage, subject and authority key identifiers, basic constraints
//!   and CRL distribution point;
//! - the VCEK (`CN=SEV-VCEK`, serial 0), an ECDSA P-384 key signed by the ASK,
//!   carrying AMD's extensions under 1.3.6.1.4.1.3704.1: `.1` structVersion,
//!   `.2` productName (IA5String), `.3.1` to `.3.8` the SPLs (boot loader, TEE,
//!   SNP, four reserved, microcode) and `.3.9` the FMC SPL on Turin and later,
//!   each an INTEGER; `.4` hwID, the chip id's raw bytes (64 bytes; 8 on Turin
//!   and later, whose chip ids are 8 bytes long). Milan and Genoa VCEKs have
//!   structVersion 0, Turin and Venice VCEKs structVersion 1 (with the FMC SPL
//!   and without `.3.4`).
//!
//! All three are signed with RSASSA-PSS, SHA-384, MGF1 with SHA-384 and a
//! 48-byte salt. The X.509 structure is encoded with the `der` crate and its
//! bytes signed with OpenSSL, because OpenSSL's certificate builder cannot
//! sign with PSS padding.
//!
//! # Reports
//!
//! [`SimSnpChip::report`] lays out the SNP ABI's ATTESTATION_REPORT (0x4A0
//! bytes, version 2 or 3) with the chip's reported TCB as current, committed
//! and launch TCB, and signs bytes 0x000..0x2A0 with the VCEK (ECDSA P-384
//! over SHA-384; r then s, each 72 bytes little-endian, at 0x2A0).
//!
//! # The simulated guest device
//!
//! [`SnpDeviceServer`] listens on a Unix stream socket and answers one request
//! per connection. All integers are little-endian.
//!
//! Request, 76 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | ASCII `SNPR` |
//! | 4 | 4 | flags: bit 0 set asks for an extended report (with certificates); other bits must be 0 |
//! | 8 | 4 | VMPL to report at (0 to 3, not below the guest's own VMPL) |
//! | 12 | 64 | REPORT_DATA |
//!
//! Answer:
//!
//! | size | field |
//! |---|---|
//! | 4 | status: 0 on success, else an errno value (22 EINVAL for a malformed request, bad flags or VMPL; 5 EIO when the report cannot be made) |
//! | 4 | report length `n` (0x4A0 on success, 0 on error) |
//! | `n` | the signed report |
//! | 4 | certificate table length `m` (0 unless an extended report succeeded) |
//! | `m` | the certificate table |
//!
//! The certificate table has the kernel's layout: 24-byte entries (GUID, 16
//! bytes in the order of its text form, as the `sev` crate and AMD's tools
//! write them; offset u32; length u32) ended by an all-zero entry, then the
//! DER certificates; offsets count from the table's start. The server answers
//! extended requests with the ARK, ASK and VCEK.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sev_sim::snp_guest::{FakeSnpRoots, SnpDeviceServer, SnpGuest};
//! use sev_sim::snp_platform::{SnpProduct, SnpTcb};
//! let roots = FakeSnpRoots::shared(SnpProduct::Genoa)?;
//! let tcb = SnpTcb { fmc: None, bootloader: 9, tee: 0, snp: 23, microcode: 72 };
//! let chip = roots.issue_chip([7; 64], tcb)?;
//! let server = SnpDeviceServer::start(
//!     std::path::Path::new("sev-guest.sock"),
//!     chip,
//!     roots,
//!     SnpGuest::new([1; 48]),
//! )?;
//! println!("serving {}", server.path().display());
//! # Ok(()) }
//! ```

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use der::asn1::{Any, BitString, Null, ObjectIdentifier, OctetString, SetOfVec, Uint, UtcTime};
use der::{Decode, Encode, Sequence, Tag, TagNumber, ValueOrd};
use openssl::ec::{EcGroup, EcKey, EcKeyRef};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer};

use crate::bytes::bn_to_le;
use crate::platform::{DEFAULT_API_MAJOR, DEFAULT_API_MINOR, DEFAULT_BUILD};
use crate::snp_platform::{encode_tcb, SnpProduct, SnpSimError, SnpTcb};

/// Length of an ATTESTATION_REPORT.
pub const REPORT_LEN: usize = 0x4A0;
/// Length of the report's signed part (the signature starts there).
pub const REPORT_SIGNED_LEN: usize = 0x2A0;
/// The four bytes a device request starts with.
pub const REQUEST_MAGIC: [u8; 4] = *b"SNPR";
/// Length of a device request.
pub const REQUEST_LEN: usize = 76;
/// Request flag: answer with an extended report (report and certificates).
pub const FLAG_EXTENDED: u32 = 1;
/// Status answered for a malformed request, unknown flags or a bad VMPL.
pub const STATUS_EINVAL: u32 = 22;
/// Status answered when the report could not be made.
pub const STATUS_EIO: u32 = 5;
/// Length of one certificate table entry.
pub const CERT_ENTRY_LEN: usize = 24;
/// Certificate table GUID of the ARK (c0b406a4-a803-4952-9743-3fb6014cd0ae).
pub const ARK_GUID: [u8; 16] = [
    0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae,
];
/// Certificate table GUID of the ASK (4ab7b379-bbac-4fe4-a02f-05aef327c782).
pub const ASK_GUID: [u8; 16] = [
    0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82,
];
/// Certificate table GUID of the VCEK (63da758d-e664-4564-adc5-f4b93be8accd).
pub const VCEK_GUID: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];

/// Default guest policy: SMT allowed (bit 16) and the reserved bit 17, which
/// must be set.
pub const DEFAULT_POLICY: u64 = 0x3_0000;

/// Why the simulated SNP chip could not make a certificate or report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnpChipError {
    /// OpenSSL failed in one step (key generation, signing).
    #[error("OpenSSL failed while {step}: {source}")]
    Crypto {
        /// The step that failed.
        step: &'static str,
        /// OpenSSL's error queue.
        #[source]
        source: openssl::error::ErrorStack,
    },

    /// A certificate part could not be DER-encoded.
    #[error("cannot DER-encode the {cert} certificate's {part}: {source}")]
    Der {
        /// Which certificate (ARK, ASK, VCEK).
        cert: &'static str,
        /// The part being encoded.
        part: &'static str,
        /// The encoder's error.
        #[source]
        source: der::Error,
    },

    /// The TCB does not fit the product's layout (an FMC SVN where there is
    /// none, or none where there must be one).
    #[error(transparent)]
    Tcb(#[from] SnpSimError),

    /// A Turin or later chip id with non-zero bytes after its first 8: those
    /// chips have 8-byte ids, zero-padded in reports.
    #[error(
        "a {} chip id is 8 bytes long, but byte {offset} of the 64 given is non-zero",
        product.name()
    )]
    ChipId {
        /// The product.
        product: SnpProduct,
        /// Offset of the first non-zero byte after the eighth.
        offset: usize,
    },

    /// A report version this simulator does not lay out.
    #[error("attestation report version {0} is not simulated (2 or 3 are)")]
    ReportVersion(u32),

    /// A VMPL outside 0 to 3.
    #[error("VMPL {0} does not exist (0 to 3 do)")]
    Vmpl(u32),

    /// A number did not fit its fixed-width field.
    #[error("{0} does not fit its field")]
    Width(&'static str),

    /// Reading, writing or binding a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file, directory or socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Wraps an OpenSSL error with the step that failed.
fn crypto(step: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> SnpChipError {
    move |source| SnpChipError::Crypto { step, source }
}

/// Wraps a DER encoding error with the certificate and part.
fn der_err(cert: &'static str, part: &'static str) -> impl FnOnce(der::Error) -> SnpChipError {
    move |source| SnpChipError::Der { cert, part, source }
}

// ---------------------------------------------------------------------------
// X.509 structures (RFC 5280, RFC 4055), just what AMD's certificates use.
// ---------------------------------------------------------------------------

const OID_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const OID_C: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.6");
const OID_L: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.7");
const OID_ST: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.8");
const OID_O: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const OID_AUTHORITY_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_CRL_DP: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.31");
const OID_STRUCT_VERSION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1");
const OID_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_SPL_4: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.4");
const OID_SPL_5: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.5");
const OID_SPL_6: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.6");
const OID_SPL_7: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.7");
const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const OID_HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

/// AttributeTypeAndValue.
#[derive(Clone, Debug, Eq, PartialEq, Sequence, ValueOrd)]
struct AttributeTypeAndValue {
    oid: ObjectIdentifier,
    value: Any,
}

/// RelativeDistinguishedName: AMD's names have one attribute per RDN.
type Rdn = SetOfVec<AttributeTypeAndValue>;

/// An AlgorithmIdentifier whose parameters are NULL (the hash in PSS).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct DigestAlgorithm {
    oid: ObjectIdentifier,
    params: Null,
}

/// The MGF1 AlgorithmIdentifier, parameterised by its hash.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct MaskGenAlgorithm {
    oid: ObjectIdentifier,
    hash: DigestAlgorithm,
}

/// RSASSA-PSS-params (RFC 4055), every field spelled out as AMD does.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct PssParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    hash: DigestAlgorithm,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT")]
    mask_gen: MaskGenAlgorithm,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT")]
    salt_len: u8,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    trailer: Option<u8>,
}

/// The RSASSA-PSS AlgorithmIdentifier.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct PssAlgorithm {
    oid: ObjectIdentifier,
    params: PssParams,
}

impl PssAlgorithm {
    /// SHA-384, MGF1 with SHA-384, 48-byte salt; AMD's root certificates and
    /// older VCEKs also spell out the default trailer field.
    fn sha384(with_trailer: bool) -> PssAlgorithm {
        let sha384 = DigestAlgorithm {
            oid: OID_SHA384,
            params: Null,
        };
        PssAlgorithm {
            oid: OID_RSASSA_PSS,
            params: PssParams {
                hash: sha384.clone(),
                mask_gen: MaskGenAlgorithm {
                    oid: OID_MGF1,
                    hash: sha384,
                },
                salt_len: 48,
                trailer: with_trailer.then_some(1),
            },
        }
    }
}

/// Validity, in UTCTime as AMD writes it.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct Validity {
    not_before: UtcTime,
    not_after: UtcTime,
}

/// Extension; `critical` is absent rather than FALSE, as DER wants.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct Extension {
    extn_id: ObjectIdentifier,
    #[asn1(optional = "true")]
    critical: Option<bool>,
    extn_value: OctetString,
}

/// TBSCertificate (v3, without unique identifiers).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct TbsCertificate {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: u8,
    serial_number: Uint,
    signature: PssAlgorithm,
    issuer: Vec<Rdn>,
    validity: Validity,
    subject: Vec<Rdn>,
    subject_public_key_info: Any,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT")]
    extensions: Vec<Extension>,
}

/// Certificate.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct Certificate {
    tbs_certificate: TbsCertificate,
    signature_algorithm: PssAlgorithm,
    signature: BitString,
}

/// AMD's distinguished name with common name `cn`.
fn amd_name(cn: &str) -> der::Result<Vec<Rdn>> {
    let attributes: [(ObjectIdentifier, Tag, &str); 6] = [
        (OID_OU, Tag::Utf8String, "Engineering"),
        (OID_C, Tag::PrintableString, "US"),
        (OID_L, Tag::Utf8String, "Santa Clara"),
        (OID_ST, Tag::Utf8String, "CA"),
        (OID_O, Tag::Utf8String, "Advanced Micro Devices"),
        (OID_CN, Tag::Utf8String, cn),
    ];
    attributes
        .into_iter()
        .map(|(oid, tag, text)| {
            let value = Any::new(tag, text.as_bytes())?;
            SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }])
        })
        .collect()
}

/// One DER TLV: `contents` under `tag`.
fn tlv(tag: Tag, contents: &[u8]) -> der::Result<Vec<u8>> {
    Any::new(tag, contents)?.to_der()
}

/// A context-specific tag.
fn context(number: u32, constructed: bool) -> Tag {
    Tag::ContextSpecific {
        constructed,
        number: TagNumber(number),
    }
}

/// An extension whose value is the given DER.
fn extension(oid: ObjectIdentifier, critical: bool, value: Vec<u8>) -> der::Result<Extension> {
    Ok(Extension {
        extn_id: oid,
        critical: critical.then_some(true),
        extn_value: OctetString::new(value)?,
    })
}

/// The CRL distribution point extension's value for AMD's KDS URL of `product`.
fn crl_distribution_points(product: SnpProduct) -> der::Result<Vec<u8>> {
    let url = format!("https://kdsintf.amd.com/vcek/v1/{}/crl", product.name());
    // fullName [0] holding one uniformResourceIdentifier [6], inside the
    // distributionPoint [0] of one DistributionPoint.
    let uri = tlv(context(6, false), url.as_bytes())?;
    let full_name = tlv(context(0, true), &uri)?;
    let point_name = tlv(context(0, true), &full_name)?;
    let point = tlv(Tag::Sequence, &point_name)?;
    tlv(Tag::Sequence, &point)
}

/// The key identifier of an RSA key: SHA-1 of its subjectPublicKey bits
/// (RFC 5280, 4.2.1.2, method 1).
fn rsa_key_id(key: &PKey<Private>) -> Result<[u8; 20], SnpChipError> {
    let rsa = key.rsa().map_err(crypto("reading an RSA key"))?;
    let bits = rsa
        .public_key_to_der_pkcs1()
        .map_err(crypto("encoding an RSA public key"))?;
    Ok(openssl::sha::sha1(&bits))
}

/// What differs between AMD's three certificates.
struct CertSpec<'a> {
    /// Which certificate, for errors.
    cert: &'static str,
    serial: u64,
    issuer_cn: &'a str,
    subject_cn: &'a str,
    /// SubjectPublicKeyInfo DER of the certified key.
    spki: Vec<u8>,
    lifetime_years: u64,
    pss_trailer: bool,
    extensions: Vec<Extension>,
}

/// Seconds in a Julian year, for certificate lifetimes.
const YEAR_SECS: u64 = 31_557_600;
/// The last second UTCTime can express (2049-12-31T23:59:59Z).
const UTC_TIME_END: u64 = 2_524_607_999;

/// Encodes `spec` and signs it with `issuer_key` (RSASSA-PSS, SHA-384).
fn sign_certificate(
    spec: CertSpec<'_>,
    issuer_key: &PKey<Private>,
) -> Result<Vec<u8>, SnpChipError> {
    let cert = spec.cert;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(UTC_TIME_END);
    let end = now
        .saturating_add(spec.lifetime_years.saturating_mul(YEAR_SECS))
        .min(UTC_TIME_END);
    let validity = Validity {
        not_before: UtcTime::from_unix_duration(Duration::from_secs(now))
            .map_err(der_err(cert, "notBefore"))?,
        not_after: UtcTime::from_unix_duration(Duration::from_secs(end))
            .map_err(der_err(cert, "notAfter"))?,
    };
    let algorithm = PssAlgorithm::sha384(spec.pss_trailer);
    let tbs = TbsCertificate {
        version: 2,
        serial_number: Uint::new(&spec.serial.to_be_bytes()).map_err(der_err(cert, "serial"))?,
        signature: algorithm.clone(),
        issuer: amd_name(spec.issuer_cn).map_err(der_err(cert, "issuer"))?,
        validity,
        subject: amd_name(spec.subject_cn).map_err(der_err(cert, "subject"))?,
        subject_public_key_info: Any::from_der(&spec.spki).map_err(der_err(cert, "public key"))?,
        extensions: spec.extensions,
    };
    let tbs_der = tbs.to_der().map_err(der_err(cert, "TBSCertificate"))?;
    let signature = pss_sign(issuer_key, &tbs_der)?;
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature).map_err(der_err(cert, "signature"))?,
    }
    .to_der()
    .map_err(der_err(cert, "Certificate"))
}

/// RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt.
fn pss_sign(key: &PKey<Private>, data: &[u8]) -> Result<Vec<u8>, SnpChipError> {
    let step = "signing a certificate with RSASSA-PSS";
    let mut signer = Signer::new(MessageDigest::sha384(), key).map_err(crypto(step))?;
    signer
        .set_rsa_padding(Padding::PKCS1_PSS)
        .map_err(crypto(step))?;
    signer
        .set_rsa_mgf1_md(MessageDigest::sha384())
        .map_err(crypto(step))?;
    signer
        .set_rsa_pss_saltlen(RsaPssSaltlen::custom(48))
        .map_err(crypto(step))?;
    signer.sign_oneshot_to_vec(data).map_err(crypto(step))
}

/// PEM text of a DER certificate.
fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for (i, c) in b64.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            out.push('\n');
        }
        out.push(c);
    }
    out.push_str("\n-----END CERTIFICATE-----\n");
    out
}

/// A product's number in AMD's root serial numbers (ARK-Milan is 0x10000,
/// ARK-Genoa 0x20000).
fn serial_base(product: SnpProduct) -> u64 {
    match product {
        SnpProduct::Milan => 0x1_0000,
        SnpProduct::Genoa => 0x2_0000,
        SnpProduct::Turin => 0x3_0000,
        SnpProduct::Venice => 0x4_0000,
    }
}

// ---------------------------------------------------------------------------
// Roots
// ---------------------------------------------------------------------------

/// A fake AMD root of trust for one SNP product: an ARK and an ASK in the
/// X.509 format of AMD's key distribution service. Not AMD's: a verifier that
/// pins AMD's real ARKs must refuse chains under these.
#[derive(Clone)]
pub struct FakeSnpRoots {
    product: SnpProduct,
    ask_key: PKey<Private>,
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
}

impl std::fmt::Debug for FakeSnpRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSnpRoots")
            .field("product", &self.product)
            .finish_non_exhaustive()
    }
}

/// Roots generated once per process, per product.
static SHARED: [OnceLock<FakeSnpRoots>; 4] = [
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
];
/// Serialises generation so that racing callers do not each pay for it.
static SHARED_GENERATION: Mutex<()> = Mutex::new(());

impl FakeSnpRoots {
    /// Generates a new ARK and ASK for `product` (two RSA-4096 keys: this
    /// takes seconds; see [`FakeSnpRoots::shared`]).
    pub fn generate(product: SnpProduct) -> Result<FakeSnpRoots, SnpChipError> {
        let ark_key = rsa4096("generating the ARK")?;
        let ask_key = rsa4096("generating the ASK")?;
        let ark_cn = format!("ARK-{}", product.name());
        let ask_cn = format!("SEV-{}", product.name());
        let ark_id = rsa_key_id(&ark_key)?;
        let ask_id = rsa_key_id(&ask_key)?;
        let ark_extensions =
            ark_extensions(product, ark_id).map_err(der_err("ARK", "extensions"))?;
        let ark_der = sign_certificate(
            CertSpec {
                cert: "ARK",
                serial: serial_base(product),
                issuer_cn: &ark_cn,
                subject_cn: &ark_cn,
                spki: public_der(&ark_key, "encoding the ARK public key")?,
                lifetime_years: 25,
                pss_trailer: true,
                extensions: ark_extensions,
            },
            &ark_key,
        )?;

        let ask_extensions =
            ask_extensions(product, ask_id, ark_id).map_err(der_err("ASK", "extensions"))?;
        let ask_der = sign_certificate(
            CertSpec {
                cert: "ASK",
                serial: serial_base(product).saturating_add(1),
                issuer_cn: &ark_cn,
                subject_cn: &ask_cn,
                spki: public_der(&ask_key, "encoding the ASK public key")?,
                lifetime_years: 25,
                pss_trailer: true,
                extensions: ask_extensions,
            },
            &ark_key,
        )?;

        Ok(FakeSnpRoots {
            product,
            ask_key,
            ark_der,
            ask_der,
        })
    }

    /// Roots for `product` generated once per process and shared by every
    /// caller (RSA-4096 key generation is slow).
    pub fn shared(product: SnpProduct) -> Result<&'static FakeSnpRoots, SnpChipError> {
        let index = match product {
            SnpProduct::Milan => 0,
            SnpProduct::Genoa => 1,
            SnpProduct::Turin => 2,
            SnpProduct::Venice => 3,
        };
        let Some(cell) = SHARED.get(index) else {
            return Err(SnpChipError::Width("the product index"));
        };
        if let Some(roots) = cell.get() {
            return Ok(roots);
        }
        let _guard = SHARED_GENERATION
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(roots) = cell.get() {
            return Ok(roots);
        }
        let roots = FakeSnpRoots::generate(product)?;
        Ok(cell.get_or_init(|| roots))
    }

    /// The product these roots certify chips of.
    pub fn product(&self) -> SnpProduct {
        self.product
    }

    /// The ARK certificate, DER.
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_der
    }

    /// The ASK certificate, DER.
    pub fn ask_der(&self) -> &[u8] {
        &self.ask_der
    }

    /// The ARK certificate, PEM.
    pub fn ark_pem(&self) -> String {
        pem(&self.ark_der)
    }

    /// The ASK certificate, PEM.
    pub fn ask_pem(&self) -> String {
        pem(&self.ask_der)
    }

    /// A chip of this product with id `chip_id` whose firmware reports `tcb`:
    /// a fresh VCEK key and its certificate, signed by the ASK.
    ///
    /// The TCB must have an FMC SVN exactly on Turin and later, and a Turin or
    /// later chip id must be zero after its first 8 bytes.
    pub fn issue_chip(&self, chip_id: [u8; 64], tcb: SnpTcb) -> Result<SimSnpChip, SnpChipError> {
        let product = self.product;
        encode_tcb(product, &tcb)?;
        if product.has_fmc() {
            if let Some(offset) = chip_id
                .iter()
                .enumerate()
                .skip(8)
                .find_map(|(i, b)| (*b != 0).then_some(i))
            {
                return Err(SnpChipError::ChipId { product, offset });
            }
        }
        let group = EcGroup::from_curve_name(Nid::SECP384R1).map_err(crypto("loading P-384"))?;
        let vcek_key = EcKey::generate(&group).map_err(crypto("generating the VCEK"))?;
        let vcek_pkey = PKey::from_ec_key(vcek_key.clone()).map_err(crypto("wrapping the VCEK"))?;
        let extensions =
            vcek_extensions(product, &chip_id, &tcb).map_err(der_err("VCEK", "extensions"))?;
        let vcek_der = sign_certificate(
            CertSpec {
                cert: "VCEK",
                serial: 0,
                issuer_cn: &format!("SEV-{}", product.name()),
                subject_cn: "SEV-VCEK",
                spki: vcek_pkey
                    .public_key_to_der()
                    .map_err(crypto("encoding the VCEK public key"))?,
                lifetime_years: 7,
                pss_trailer: product == SnpProduct::Milan,
                extensions,
            },
            &self.ask_key,
        )?;
        Ok(SimSnpChip {
            product,
            chip_id,
            tcb,
            vcek_key,
            vcek_der,
        })
    }
}

/// The ARK's extensions, in AMD's order.
fn ark_extensions(product: SnpProduct, ark_id: [u8; 20]) -> der::Result<Vec<Extension>> {
    // keyCertSign (bit 5) and cRLSign (bit 6).
    let usage = BitString::new(1, [0x06])?.to_der()?;
    Ok(vec![
        extension(OID_KEY_USAGE, true, usage)?,
        extension(
            OID_SUBJECT_KEY_ID,
            false,
            OctetString::new(ark_id)?.to_der()?,
        )?,
        extension(
            OID_BASIC_CONSTRAINTS,
            true,
            tlv(Tag::Sequence, &true.to_der()?)?,
        )?,
        extension(OID_CRL_DP, false, crl_distribution_points(product)?)?,
    ])
}

/// The ASK's extensions, in AMD's order.
fn ask_extensions(
    product: SnpProduct,
    ask_id: [u8; 20],
    ark_id: [u8; 20],
) -> der::Result<Vec<Extension>> {
    // keyCertSign (bit 5) only, in AMD's encoding: one unused bit declared,
    // although DER would declare two.
    let usage = BitString::new(1, [0x04])?.to_der()?;
    // cA TRUE, pathLenConstraint 0.
    let constraints = [true.to_der()?, 0u8.to_der()?].concat();
    // keyIdentifier [0] only.
    let authority_key_id = tlv(Tag::Sequence, &tlv(context(0, false), &ark_id)?)?;
    Ok(vec![
        extension(
            OID_SUBJECT_KEY_ID,
            false,
            OctetString::new(ask_id)?.to_der()?,
        )?,
        extension(OID_AUTHORITY_KEY_ID, false, authority_key_id)?,
        extension(
            OID_BASIC_CONSTRAINTS,
            true,
            tlv(Tag::Sequence, &constraints)?,
        )?,
        extension(OID_KEY_USAGE, true, usage)?,
        extension(OID_CRL_DP, false, crl_distribution_points(product)?)?,
    ])
}

/// A new RSA-4096 key.
fn rsa4096(step: &'static str) -> Result<PKey<Private>, SnpChipError> {
    let rsa = Rsa::generate(4096).map_err(crypto(step))?;
    PKey::from_rsa(rsa).map_err(crypto(step))
}

/// SubjectPublicKeyInfo DER of `key`.
fn public_der(key: &PKey<Private>, step: &'static str) -> Result<Vec<u8>, SnpChipError> {
    key.public_key_to_der().map_err(crypto(step))
}

/// The product name AMD writes in VCEKs: Milan's carries the stepping;
/// Genoa and Turin VCEKs issued since carry the bare name.
fn vcek_product_name(product: SnpProduct) -> &'static str {
    match product {
        SnpProduct::Milan => "Milan-B0",
        SnpProduct::Genoa => "Genoa",
        SnpProduct::Turin => "Turin",
        SnpProduct::Venice => "Venice",
    }
}

/// AMD's VCEK extensions, in the order AMD's KDS writes them.
fn vcek_extensions(
    product: SnpProduct,
    chip_id: &[u8; 64],
    tcb: &SnpTcb,
) -> der::Result<Vec<Extension>> {
    let int = |oid, value: u8| extension(oid, false, value.to_der()?);
    let name = tlv(Tag::Ia5String, vcek_product_name(product).as_bytes())?;
    let mut extensions = Vec::with_capacity(12);
    if product.has_fmc() {
        // structVersion 1: the FMC SPL, no spl_4, an 8-byte hwID.
        extensions.push(int(OID_STRUCT_VERSION, 1)?);
        extensions.push(extension(OID_PRODUCT_NAME, false, name)?);
        extensions.push(int(OID_FMC_SPL, tcb.fmc.unwrap_or_default())?);
        extensions.push(int(OID_BL_SPL, tcb.bootloader)?);
        extensions.push(int(OID_TEE_SPL, tcb.tee)?);
        extensions.push(int(OID_SNP_SPL, tcb.snp)?);
        for oid in [OID_SPL_5, OID_SPL_6, OID_SPL_7] {
            extensions.push(int(oid, 0)?);
        }
        extensions.push(int(OID_UCODE_SPL, tcb.microcode)?);
        let hw_id: Vec<u8> = chip_id.iter().take(8).copied().collect();
        extensions.push(extension(OID_HW_ID, false, hw_id)?);
    } else {
        extensions.push(int(OID_STRUCT_VERSION, 0)?);
        extensions.push(extension(OID_PRODUCT_NAME, false, name)?);
        extensions.push(int(OID_BL_SPL, tcb.bootloader)?);
        extensions.push(int(OID_TEE_SPL, tcb.tee)?);
        for oid in [OID_SPL_4, OID_SPL_5, OID_SPL_6, OID_SPL_7] {
            extensions.push(int(oid, 0)?);
        }
        extensions.push(int(OID_SNP_SPL, tcb.snp)?);
        extensions.push(int(OID_UCODE_SPL, tcb.microcode)?);
        extensions.push(extension(OID_HW_ID, false, chip_id.to_vec())?);
    }
    Ok(extensions)
}

// ---------------------------------------------------------------------------
// Chip and reports
// ---------------------------------------------------------------------------

/// One guest launch as its attestation reports describe it. Every field is
/// public: start from [`SnpGuest::new`] and set what a test needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpGuest {
    /// The launch digest (MEASUREMENT, 0x90).
    pub measurement: [u8; 48],
    /// The guest policy (0x08).
    pub policy: u64,
    /// The report version (0x00): 2 or 3 (3 adds the CPUID fields).
    pub report_version: u32,
    /// The VMPL the guest runs at: the device refuses requests for a more
    /// privileged (lower) VMPL; [`SimSnpChip::report`] reports at this VMPL.
    pub vmpl: u32,
    /// HOST_DATA (0xC0), given by the host at launch.
    pub host_data: [u8; 32],
    /// The guest SVN (0x04), from the ID block.
    pub guest_svn: u32,
    /// FAMILY_ID (0x10), from the ID block.
    pub family_id: [u8; 16],
    /// IMAGE_ID (0x20), from the ID block.
    pub image_id: [u8; 16],
    /// REPORT_ID (0x140), random per launch.
    pub report_id: [u8; 32],
    /// ID_KEY_DIGEST (0xE0): SHA-384 of the ID key, zero without an ID block.
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST (0x110); when non-zero the report's AUTHOR_KEY_EN
    /// flag is set.
    pub author_key_digest: [u8; 48],
    /// PLATFORM_INFO (0x40) as the platform reports it to this guest (bit 0
    /// SMT enabled, bit 1 TSME enabled, ...).
    pub platform_info: u64,
}

impl SnpGuest {
    /// A version 3 launch at VMPL 0 with `measurement`, the default policy
    /// (SMT allowed), a random report id, SMT enabled on the platform and
    /// every other field zero.
    pub fn new(measurement: [u8; 48]) -> SnpGuest {
        SnpGuest {
            measurement,
            policy: DEFAULT_POLICY,
            report_version: 3,
            vmpl: 0,
            host_data: [0; 32],
            guest_svn: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            report_id: rand::random(),
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            platform_info: 1,
        }
    }
}

/// A simulated SNP chip: its id, reported TCB and VCEK.
pub struct SimSnpChip {
    product: SnpProduct,
    chip_id: [u8; 64],
    tcb: SnpTcb,
    vcek_key: EcKey<Private>,
    vcek_der: Vec<u8>,
}

impl std::fmt::Debug for SimSnpChip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSnpChip")
            .field("product", &self.product)
            .field("tcb", &self.tcb)
            .finish_non_exhaustive()
    }
}

/// CPUID family, model and stepping that version 3 reports carry.
fn cpuid(product: SnpProduct) -> [u8; 3] {
    match product {
        // Milan B0, Genoa B1, Turin C1.
        SnpProduct::Milan => [0x19, 0x01, 0x00],
        SnpProduct::Genoa => [0x19, 0x11, 0x01],
        SnpProduct::Turin => [0x1A, 0x02, 0x01],
        // A model of the range assigned to Venice.
        SnpProduct::Venice => [0x1A, 0x50, 0x00],
    }
}

/// Copies `bytes` into `report` at `offset` (offsets are this module's
/// constants, all inside the report).
fn put(report: &mut [u8; REPORT_LEN], offset: usize, bytes: &[u8]) {
    if let Some(slot) = report.get_mut(offset..offset.saturating_add(bytes.len())) {
        slot.copy_from_slice(bytes);
    }
}

impl SimSnpChip {
    /// The processor generation.
    pub fn product(&self) -> SnpProduct {
        self.product
    }

    /// The chip id (CHIP_ID of reports, the VCEK's hwID).
    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }

    /// The TCB the firmware reports, which the VCEK is derived from.
    pub fn reported_tcb(&self) -> SnpTcb {
        self.tcb
    }

    /// The VCEK certificate, DER.
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek_der
    }

    /// The VCEK certificate, PEM.
    pub fn vcek_pem(&self) -> String {
        pem(&self.vcek_der)
    }

    /// The signed attestation report (0x4A0 bytes) of `guest` with
    /// `report_data`, at the guest's VMPL.
    pub fn report(&self, guest: &SnpGuest, report_data: [u8; 64]) -> Result<Vec<u8>, SnpChipError> {
        self.report_signed_by(guest, report_data, &self.vcek_key)
    }

    /// The report of `guest` signed with `key` (the VCEK, or another key to
    /// simulate a forgery).
    fn report_signed_by(
        &self,
        guest: &SnpGuest,
        report_data: [u8; 64],
        key: &EcKeyRef<Private>,
    ) -> Result<Vec<u8>, SnpChipError> {
        let mut report = self.unsigned_report(guest, report_data)?;
        let digest = match report.split_first_chunk::<REPORT_SIGNED_LEN>() {
            Some((signed, _)) => openssl::sha::sha384(signed),
            None => return Err(SnpChipError::Width("the signed part of the report")),
        };
        let signature = EcdsaSig::sign(&digest, key).map_err(crypto("signing the report"))?;
        let r = bn_to_le(signature.r(), 72).ok_or(SnpChipError::Width("the signature's r"))?;
        let s = bn_to_le(signature.s(), 72).ok_or(SnpChipError::Width("the signature's s"))?;
        put(&mut report, REPORT_SIGNED_LEN, &r);
        put(&mut report, REPORT_SIGNED_LEN + 72, &s);
        Ok(report.to_vec())
    }

    /// The report's fields, laid out per the SNP ABI, unsigned.
    fn unsigned_report(
        &self,
        guest: &SnpGuest,
        report_data: [u8; 64],
    ) -> Result<[u8; REPORT_LEN], SnpChipError> {
        if !(2..=3).contains(&guest.report_version) {
            return Err(SnpChipError::ReportVersion(guest.report_version));
        }
        if guest.vmpl > 3 {
            return Err(SnpChipError::Vmpl(guest.vmpl));
        }
        let tcb = encode_tcb(self.product, &self.tcb)?;
        // AUTHOR_KEY_EN in bit 0; the signing key (bits 2-4) is 0, the VCEK.
        let flags = u32::from(guest.author_key_digest != [0; 48]);
        let firmware = [DEFAULT_BUILD, DEFAULT_API_MINOR, DEFAULT_API_MAJOR];
        let mut report = [0u8; REPORT_LEN];
        let fields: [(usize, &[u8]); 22] = [
            (0x000, &guest.report_version.to_le_bytes()),
            (0x004, &guest.guest_svn.to_le_bytes()),
            (0x008, &guest.policy.to_le_bytes()),
            (0x010, &guest.family_id),
            (0x020, &guest.image_id),
            (0x030, &guest.vmpl.to_le_bytes()),
            (0x034, &1u32.to_le_bytes()), // ECDSA P-384 with SHA-384
            (0x038, &tcb),                // CURRENT_TCB
            (0x040, &guest.platform_info.to_le_bytes()),
            (0x048, &flags.to_le_bytes()),
            (0x050, &report_data),
            (0x090, &guest.measurement),
            (0x0C0, &guest.host_data),
            (0x0E0, &guest.id_key_digest),
            (0x110, &guest.author_key_digest),
            (0x140, &guest.report_id),
            (0x160, &[0xff; 32]), // REPORT_ID_MA: no migration agent
            (0x180, &tcb),        // REPORTED_TCB
            (0x1A0, &self.chip_id),
            (0x1E0, &tcb),      // COMMITTED_TCB
            (0x1E8, &firmware), // CURRENT build, minor, major
            (0x1EC, &firmware), // COMMITTED build, minor, major
        ];
        for (offset, bytes) in fields {
            put(&mut report, offset, bytes);
        }
        put(&mut report, 0x1F0, &tcb); // LAUNCH_TCB
        if guest.report_version >= 3 {
            put(&mut report, 0x188, &cpuid(self.product));
        }
        Ok(report)
    }

    /// The extended report's certificate table (kernel layout): the VCEK, and
    /// with `with_roots` also `roots`' ARK and ASK. `roots` is taken as given:
    /// pass other roots than the issuer's to build a broken chain.
    pub fn cert_table(&self, roots: &FakeSnpRoots, with_roots: bool) -> Vec<u8> {
        let mut certs: Vec<([u8; 16], &[u8])> = Vec::with_capacity(3);
        if with_roots {
            certs.push((ARK_GUID, roots.ark_der()));
            certs.push((ASK_GUID, roots.ask_der()));
        }
        certs.push((VCEK_GUID, self.vcek_der()));
        let header_len = CERT_ENTRY_LEN * (certs.len() + 1);
        let mut table =
            Vec::with_capacity(header_len + certs.iter().map(|(_, d)| d.len()).sum::<usize>());
        let mut offset = header_len;
        for (guid, der) in &certs {
            table.extend_from_slice(guid);
            table.extend_from_slice(&u32::try_from(offset).unwrap_or(u32::MAX).to_le_bytes());
            table.extend_from_slice(&u32::try_from(der.len()).unwrap_or(u32::MAX).to_le_bytes());
            offset = offset.saturating_add(der.len());
        }
        table.extend_from_slice(&[0; CERT_ENTRY_LEN]);
        for (_, der) in &certs {
            table.extend_from_slice(der);
        }
        table
    }

    /// Writes `ark.pem`, `ask.pem` and `vcek.pem` into `dir` (the layout of
    /// snpguest's certificate directory).
    pub fn write_certs(&self, roots: &FakeSnpRoots, dir: &Path) -> Result<(), SnpChipError> {
        for (name, text) in [
            ("ark.pem", roots.ark_pem()),
            ("ask.pem", roots.ask_pem()),
            ("vcek.pem", self.vcek_pem()),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| SnpChipError::Io { path, source })?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The simulated guest device
// ---------------------------------------------------------------------------

/// A way for the simulated device to misbehave, for negative tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnpFault {
    /// Answer every request with this status (an errno value) and no report.
    Status(u32),
    /// Flip one byte of the report's signed part (the first measurement byte)
    /// after signing.
    TamperReport,
    /// Sign reports with a fresh key that the VCEK does not certify.
    WrongKey,
    /// Answer extended requests without certificates (length 0), as a host
    /// with none configured does.
    NoCertificates,
}

/// State shared by the server's threads.
struct DeviceState {
    chip: Arc<SimSnpChip>,
    cert_table: Vec<u8>,
    guest: Mutex<SnpGuest>,
    fault: Mutex<Option<SnpFault>>,
    requests: AtomicU64,
    stopping: AtomicBool,
}

/// A simulated `/dev/sev-guest` on a Unix stream socket (protocol in the
/// module documentation), served by its own threads until stopped or dropped.
pub struct SnpDeviceServer {
    path: PathBuf,
    state: Arc<DeviceState>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SnpDeviceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpDeviceServer")
            .field("path", &self.path)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl SnpDeviceServer {
    /// Binds `socket_path` (which must not exist) and serves `guest`'s
    /// reports from `chip`, with `roots`' ARK and ASK beside the VCEK in
    /// extended reports.
    pub fn start(
        socket_path: &Path,
        chip: impl Into<Arc<SimSnpChip>>,
        roots: &FakeSnpRoots,
        guest: SnpGuest,
    ) -> Result<SnpDeviceServer, SnpChipError> {
        let chip = chip.into();
        let io_err = |source| SnpChipError::Io {
            path: socket_path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(socket_path).map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        let state = Arc::new(DeviceState {
            cert_table: chip.cert_table(roots, true),
            chip,
            guest: Mutex::new(guest),
            fault: Mutex::new(None),
            requests: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let loop_state = Arc::clone(&state);
        let accept = std::thread::Builder::new()
            .name("snp-guest-device".into())
            .spawn(move || accept_loop(&listener, &loop_state))
            .map_err(|source| {
                let _ = std::fs::remove_file(socket_path);
                SnpChipError::Io {
                    path: socket_path.to_path_buf(),
                    source,
                }
            })?;
        Ok(SnpDeviceServer {
            path: socket_path.to_path_buf(),
            state,
            accept: Some(accept),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many requests have been answered (errors included).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Serves `guest`'s launch from now on.
    pub fn set_guest(&self, guest: SnpGuest) {
        *self
            .state
            .guest
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = guest;
    }

    /// Makes the device misbehave (`Some`) or behave again (`None`).
    pub fn set_fault(&self, fault: Option<SnpFault>) {
        *self
            .state
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// Stops accepting connections and removes the socket. Idempotent; also
    /// done on drop.
    pub fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            self.state.stopping.store(true, Ordering::SeqCst);
            let _ = accept.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for SnpDeviceServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts connections until the stop flag is set, one thread each.
fn accept_loop(listener: &UnixListener, state: &Arc<DeviceState>) {
    while !state.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let state = Arc::clone(state);
                // A connection whose thread cannot start is dropped: the
                // client sees the socket close.
                let _ = std::thread::Builder::new()
                    .name("snp-guest-request".into())
                    .spawn(move || serve(&state, stream));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

/// Reads one request from `stream` and writes its answer.
fn serve(state: &DeviceState, mut stream: UnixStream) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err()
    {
        return;
    }
    let mut request = [0u8; REQUEST_LEN];
    let mut filled = 0;
    while let Some(rest) = request.get_mut(filled..).filter(|r| !r.is_empty()) {
        match stream.read(rest) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    if filled == 0 {
        // Connected and left without asking anything.
        return;
    }
    let answer = if filled < REQUEST_LEN {
        error_answer(STATUS_EINVAL)
    } else {
        state.answer(&request)
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    let _ = stream.write_all(&answer).and_then(|()| stream.flush());
}

/// An answer carrying only an error status.
fn error_answer(status: u32) -> Vec<u8> {
    [status.to_le_bytes(), [0; 4], [0; 4]].concat()
}

impl DeviceState {
    /// The answer to a complete request.
    fn answer(&self, request: &[u8; REQUEST_LEN]) -> Vec<u8> {
        let word = |offset: usize| {
            request
                .get(offset..offset + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(u32::MAX, u32::from_le_bytes)
        };
        let (magic, flags, vmpl) = (request.first_chunk::<4>(), word(4), word(8));
        let report_data: [u8; 64] = match request.get(12..).and_then(|d| d.try_into().ok()) {
            Some(data) => data,
            None => return error_answer(STATUS_EINVAL),
        };
        let mut guest = self
            .guest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if magic != Some(&REQUEST_MAGIC)
            || flags & !FLAG_EXTENDED != 0
            || vmpl > 3
            || vmpl < guest.vmpl
        {
            return error_answer(STATUS_EINVAL);
        }
        let fault = *self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(SnpFault::Status(status)) = fault {
            return error_answer(status);
        }
        guest.vmpl = vmpl;
        let report = match fault {
            Some(SnpFault::WrongKey) => EcGroup::from_curve_name(Nid::SECP384R1)
                .and_then(|group| EcKey::generate(&group))
                .map_err(crypto("generating a stray key"))
                .and_then(|key| self.chip.report_signed_by(&guest, report_data, &key)),
            _ => self.chip.report(&guest, report_data),
        };
        let Ok(mut report) = report else {
            return error_answer(STATUS_EIO);
        };
        if fault == Some(SnpFault::TamperReport) {
            if let Some(byte) = report.get_mut(0x90) {
                *byte ^= 0x01;
            }
        }
        let certs: &[u8] = if flags & FLAG_EXTENDED != 0 && fault != Some(SnpFault::NoCertificates)
        {
            &self.cert_table
        } else {
            &[]
        };
        let (Ok(report_len), Ok(certs_len)) =
            (u32::try_from(report.len()), u32::try_from(certs.len()))
        else {
            return error_answer(STATUS_EIO);
        };
        let mut answer = Vec::with_capacity(12 + report.len() + certs.len());
        answer.extend_from_slice(&0u32.to_le_bytes());
        answer.extend_from_slice(&report_len.to_le_bytes());
        answer.extend_from_slice(&report);
        answer.extend_from_slice(&certs_len.to_le_bytes());
        answer.extend_from_slice(certs);
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509StoreContext, X509};
    use sev::certs::snp::{builtin, Certificate as SevCertificate, Chain, Verifiable};
    use sev::firmware::guest::AttestationReport;
    use sev::firmware::host::{CertTableEntry, TcbVersion};
    use sev::parser::ByteParser;
    use x509_cert::der::DecodePem as _;

    /// The products whose reports the `sev` crate decodes and whose real roots it ships.
    const TESTED: [SnpProduct; 3] = [SnpProduct::Milan, SnpProduct::Genoa, SnpProduct::Turin];

    fn tcb_for(product: SnpProduct) -> SnpTcb {
        SnpTcb {
            fmc: product.has_fmc().then_some(2),
            bootloader: 9,
            tee: 1,
            snp: 23,
            microcode: 0xd2,
        }
    }

    fn chip_id_for(product: SnpProduct) -> [u8; 64] {
        let mut id = [0u8; 64];
        let len = if product.has_fmc() { 8 } else { 64 };
        for (i, b) in id.iter_mut().enumerate().take(len) {
            *b = u8::try_from(i).unwrap() + 0x30;
        }
        id
    }

    fn chip_for(product: SnpProduct) -> (&'static FakeSnpRoots, SimSnpChip) {
        let roots = FakeSnpRoots::shared(product).unwrap();
        let chip = roots
            .issue_chip(chip_id_for(product), tcb_for(product))
            .unwrap();
        (roots, chip)
    }

    fn sev_chain(roots: &FakeSnpRoots, chip: &SimSnpChip) -> Chain {
        Chain::from_der(roots.ark_der(), roots.ask_der(), chip.vcek_der()).unwrap()
    }

    fn amd_roots(product: SnpProduct) -> (&'static [u8], &'static [u8]) {
        match product {
            SnpProduct::Milan => (builtin::milan::ARK, builtin::milan::ASK),
            SnpProduct::Genoa => (builtin::genoa::ARK, builtin::genoa::ASK),
            SnpProduct::Turin => (builtin::turin::ARK, builtin::turin::ASK),
            SnpProduct::Venice => unreachable!("the sev crate ships no Venice roots"),
        }
    }

    fn x509(der: &[u8]) -> x509_cert::Certificate {
        x509_cert::Certificate::from_der(der).unwrap()
    }

    fn extensions(cert: &x509_cert::Certificate) -> Vec<(String, bool, Vec<u8>)> {
        cert.tbs_certificate()
            .extensions()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e.extn_id.to_string(),
                    e.critical,
                    e.extn_value.as_bytes().to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn roots_have_the_layout_of_amds_real_roots() {
        for product in TESTED {
            let roots = FakeSnpRoots::shared(product).unwrap();
            let (amd_ark, amd_ask) = amd_roots(product);
            let pairs = [
                (
                    x509(roots.ark_der()),
                    x509_cert::Certificate::from_pem(amd_ark).unwrap(),
                ),
                (
                    x509(roots.ask_der()),
                    x509_cert::Certificate::from_pem(amd_ask).unwrap(),
                ),
            ];
            for (ours, amds) in pairs {
                let (ours_tbs, amds_tbs) = (ours.tbs_certificate(), amds.tbs_certificate());
                assert_eq!(ours_tbs.version(), amds_tbs.version());
                assert_eq!(
                    ours_tbs.subject().to_der().unwrap(),
                    amds_tbs.subject().to_der().unwrap()
                );
                assert_eq!(
                    ours_tbs.issuer().to_der().unwrap(),
                    amds_tbs.issuer().to_der().unwrap()
                );
                assert_eq!(
                    ours.signature_algorithm().to_der().unwrap(),
                    amds.signature_algorithm().to_der().unwrap(),
                    "{product:?}: RSASSA-PSS parameters"
                );
                assert_eq!(
                    ours_tbs.signature().to_der().unwrap(),
                    amds_tbs.signature().to_der().unwrap()
                );
                // Same extensions, order and criticality; the values differ
                // only in the key identifiers.
                let (ours_ext, amds_ext) = (extensions(&ours), extensions(&amds));
                let shape = |ext: &[(String, bool, Vec<u8>)]| {
                    ext.iter()
                        .map(|(oid, critical, _)| (oid.clone(), *critical))
                        .collect::<Vec<_>>()
                };
                assert_eq!(shape(&ours_ext), shape(&amds_ext), "{product:?}");
                for ((oid, _, ours_value), (_, _, amds_value)) in ours_ext.iter().zip(&amds_ext) {
                    if oid != "2.5.29.14" && oid != "2.5.29.35" {
                        assert_eq!(ours_value, amds_value, "{product:?} extension {oid}");
                    }
                }
                let key = openssl::x509::X509::from_der(&ours.to_der().unwrap())
                    .unwrap()
                    .public_key()
                    .unwrap();
                assert_eq!(key.bits(), 4096);
            }
        }
    }

    #[test]
    fn the_vcek_carries_amds_extensions() {
        let hex = |s: &str| hex::decode(s).unwrap();
        for product in TESTED {
            let (roots, chip) = chip_for(product);
            let vcek = x509(chip.vcek_der());
            let tbs = vcek.tbs_certificate();
            assert_eq!(tbs.serial_number().as_bytes(), [0]);
            assert_eq!(
                tbs.subject().to_string(),
                "CN=SEV-VCEK,O=Advanced Micro Devices,ST=CA,L=Santa Clara,C=US,OU=Engineering"
            );
            assert_eq!(
                tbs.issuer().to_der().unwrap(),
                x509(roots.ask_der())
                    .tbs_certificate()
                    .subject()
                    .to_der()
                    .unwrap()
            );
            let spki = tbs.subject_public_key_info();
            assert_eq!(spki.algorithm.oid.to_string(), "1.2.840.10045.2.1");
            assert_eq!(
                spki.algorithm
                    .parameters
                    .as_ref()
                    .unwrap()
                    .to_der()
                    .unwrap(),
                hex("06052b81040022")
            );
            let expected: Vec<(&str, Vec<u8>)> = if product.has_fmc() {
                vec![
                    ("1.3.6.1.4.1.3704.1.1", hex("020101")),
                    ("1.3.6.1.4.1.3704.1.2", hex("1605547572696e")),
                    ("1.3.6.1.4.1.3704.1.3.9", hex("020102")),
                    ("1.3.6.1.4.1.3704.1.3.1", hex("020109")),
                    ("1.3.6.1.4.1.3704.1.3.2", hex("020101")),
                    ("1.3.6.1.4.1.3704.1.3.3", hex("020117")),
                    ("1.3.6.1.4.1.3704.1.3.5", hex("020100")),
                    ("1.3.6.1.4.1.3704.1.3.6", hex("020100")),
                    ("1.3.6.1.4.1.3704.1.3.7", hex("020100")),
                    ("1.3.6.1.4.1.3704.1.3.8", hex("020200d2")),
                    ("1.3.6.1.4.1.3704.1.4", chip.chip_id()[..8].to_vec()),
                ]
            } else {
                let name = if product == SnpProduct::Milan {
                    hex("16084d696c616e2d4230") // "Milan-B0"
                } else {
                    hex("160547656e6f61") // "Genoa"
                };
                vec![
                    ("1.3.6.1.4.1.3704.1.1", hex("020100")),
                    ("1.3.6.1.4.1.3704.1.2", name),
                    ("1.3.6.1.4.1.3704.1.3.1", hex("020109")),
                    ("1.3.6.1.4.1.3704.1.3.2", hex("020101")),
                    ("1.3.6.1.4.1.3704.1.3.4", hex("020100")),
                    ("1.3.6.1.4.1.3704.1.3.5", hex("020100")),
                    ("1.3.6.1.4.1.3704.1.3.6", hex("020100")),
                    ("1.3.6.1.4.1.3704.1.3.7", hex("020100")),
                    ("1.3.6.1.4.1.3704.1.3.3", hex("020117")),
                    ("1.3.6.1.4.1.3704.1.3.8", hex("020200d2")),
                    ("1.3.6.1.4.1.3704.1.4", chip.chip_id().to_vec()),
                ]
            };
            let found: Vec<(String, Vec<u8>)> = extensions(&vcek)
                .into_iter()
                .map(|(oid, critical, value)| {
                    assert!(!critical);
                    (oid, value)
                })
                .collect();
            let expected: Vec<(String, Vec<u8>)> = expected
                .into_iter()
                .map(|(o, v)| (o.to_string(), v))
                .collect();
            assert_eq!(found, expected, "{product:?}");
            // Older VCEKs (Milan's) spell out the PSS trailer field, newer ones do not.
            let algorithm = vcek.signature_algorithm().to_der().unwrap();
            let amd_genoa_vcek_algorithm = hex(
                "304106092a864886f70d01010a3034a00f300d06096086480165030402020500\
                 a11c301a06092a864886f70d010108300d06096086480165030402020500a203020130",
            );
            if product == SnpProduct::Milan {
                assert_eq!(
                    algorithm,
                    x509(roots.ask_der())
                        .signature_algorithm()
                        .to_der()
                        .unwrap()
                );
            } else {
                assert_eq!(algorithm, amd_genoa_vcek_algorithm);
            }
        }
    }

    #[test]
    fn openssl_verifies_the_chain_and_the_sev_crate_loads_it() {
        for product in TESTED {
            let (roots, chip) = chip_for(product);
            let ark = X509::from_der(roots.ark_der()).unwrap();
            let ask = X509::from_der(roots.ask_der()).unwrap();
            let vcek = X509::from_pem(chip.vcek_pem().as_bytes()).unwrap();
            assert_eq!(X509::from_pem(roots.ark_pem().as_bytes()).unwrap(), ark);
            assert_eq!(X509::from_pem(roots.ask_pem().as_bytes()).unwrap(), ask);
            assert!(ark.verify(&ark.public_key().unwrap()).unwrap());
            assert!(ask.verify(&ark.public_key().unwrap()).unwrap());
            assert!(vcek.verify(&ask.public_key().unwrap()).unwrap());
            assert!(!vcek.verify(&ark.public_key().unwrap()).unwrap());

            let mut store = X509StoreBuilder::new().unwrap();
            store.add_cert(ark.clone()).unwrap();
            let store = store.build();
            let mut untrusted = Stack::new().unwrap();
            untrusted.push(ask.clone()).unwrap();
            let mut context = X509StoreContext::new().unwrap();
            let verified = context
                .init(&store, &vcek, &untrusted, |c| {
                    let ok = c.verify_cert()?;
                    Ok((ok, c.error().to_string()))
                })
                .unwrap();
            assert!(verified.0, "{product:?}: {}", verified.1);

            let chain = Chain::from_pem(
                roots.ark_pem().as_bytes(),
                roots.ask_pem().as_bytes(),
                chip.vcek_pem().as_bytes(),
            )
            .unwrap();
            chain.verify().unwrap();
            // AMD's real ARK does not sign these.
            let (amd_ark, _) = amd_roots(product);
            let amd_ark = SevCertificate::from_pem(amd_ark).unwrap();
            let ask = SevCertificate::from_der(roots.ask_der()).unwrap();
            assert!((&amd_ark, &ask).verify().is_err());
        }
    }

    #[test]
    fn the_sev_crate_verifies_reports_of_version_2_and_3() {
        for product in SnpProduct::ALL {
            let (roots, chip) = chip_for(product);
            let chain = sev_chain(roots, &chip);
            for version in [2, 3] {
                let mut guest = SnpGuest::new([0xa5; 48]);
                guest.report_version = version;
                guest.vmpl = 1;
                guest.host_data = [0x11; 32];
                guest.guest_svn = 4;
                guest.family_id = [0x22; 16];
                guest.image_id = [0x33; 16];
                guest.author_key_digest = [0x44; 48];
                let mut report_data = [0u8; 64];
                report_data[0] = 0xde;
                report_data[63] = 0xad;
                let bytes = chip.report(&guest, report_data).unwrap();
                assert_eq!(bytes.len(), REPORT_LEN);
                let report = AttestationReport::from_bytes(&bytes).unwrap();
                (&chain, &report)
                    .verify()
                    .unwrap_or_else(|e| panic!("{product:?} v{version}: {e}"));
                (&chain.vek, &report).verify().unwrap();

                assert_eq!(report.version, version);
                assert_eq!(report.guest_svn, 4);
                assert_eq!(u64::from(report.policy), DEFAULT_POLICY);
                assert_eq!(report.family_id, [0x22; 16]);
                assert_eq!(report.image_id, [0x33; 16]);
                assert_eq!(report.vmpl, 1);
                assert_eq!(report.sig_algo, 1);
                assert_eq!(u64::from(report.plat_info), 1);
                assert_eq!(u32::from(report.key_info), 1); // AUTHOR_KEY_EN, signed by the VCEK
                assert_eq!(report.report_data, report_data);
                assert_eq!(report.measurement, [0xa5; 48]);
                assert_eq!(report.host_data, [0x11; 32]);
                assert_eq!(report.author_key_digest, [0x44; 48]);
                assert_eq!(report.report_id, guest.report_id);
                assert_eq!(report.report_id_ma, [0xff; 32]);
                assert_eq!(report.chip_id, chip.chip_id());
                let t = tcb_for(product);
                let expected = TcbVersion::new(t.fmc, t.bootloader, t.tee, t.snp, t.microcode);
                for tcb in [
                    report.current_tcb,
                    report.reported_tcb,
                    report.committed_tcb,
                    report.launch_tcb,
                ] {
                    assert_eq!(tcb, expected, "{product:?} v{version}");
                }
                assert_eq!(
                    (
                        report.current.major,
                        report.current.minor,
                        report.current.build
                    ),
                    (DEFAULT_API_MAJOR, DEFAULT_API_MINOR, DEFAULT_BUILD)
                );
                assert_eq!(report.committed, report.current);
                let [family, model, stepping] = cpuid(product);
                if version == 3 {
                    assert_eq!(report.cpuid_fam_id, Some(family));
                    assert_eq!(report.cpuid_mod_id, Some(model));
                    assert_eq!(report.cpuid_step, Some(stepping));
                } else {
                    assert_eq!(report.cpuid_fam_id, None);
                    assert_eq!(bytes[0x188..0x1A0], [0; 24]);
                }
                // The crate re-encodes exactly what was signed.
                assert_eq!(
                    report.to_bytes().unwrap()[..REPORT_SIGNED_LEN],
                    bytes[..REPORT_SIGNED_LEN]
                );
            }
        }
    }

    #[test]
    fn the_sev_crate_rejects_tampered_and_foreign_reports() {
        let (roots, chip) = chip_for(SnpProduct::Genoa);
        let chain = sev_chain(roots, &chip);
        let guest = SnpGuest::new([1; 48]);
        let bytes = chip.report(&guest, [2; 64]).unwrap();
        (&chain, &AttestationReport::from_bytes(&bytes).unwrap())
            .verify()
            .unwrap();

        // Guest SVN, REPORT_DATA, MEASUREMENT, CHIP_ID, LAUNCH_TCB, signature.
        for offset in [0x04, 0x50, 0x90, 0x1A0, 0x1F0, REPORT_SIGNED_LEN] {
            let mut tampered = bytes.clone();
            tampered[offset] ^= 0x01;
            let report = AttestationReport::from_bytes(&tampered).unwrap();
            assert!(
                (&chain, &report).verify().is_err(),
                "byte {offset:#x} flipped"
            );
        }

        // Another chip of the same product: its VCEK does not sign our reports.
        let other = roots
            .issue_chip(chip.chip_id(), chip.reported_tcb())
            .unwrap();
        let report = AttestationReport::from_bytes(&bytes).unwrap();
        assert!((&sev_chain(roots, &other), &report).verify().is_err());

        // A Genoa VCEK under Milan roots does not verify.
        let milan = FakeSnpRoots::shared(SnpProduct::Milan).unwrap();
        let mixed = Chain::from_der(milan.ark_der(), milan.ask_der(), chip.vcek_der()).unwrap();
        assert!((&mixed, &report).verify().is_err());
    }

    #[test]
    fn the_cert_table_has_the_kernel_layout() {
        let (roots, chip) = chip_for(SnpProduct::Milan);
        let table = chip.cert_table(roots, true);
        // By hand: three entries and a zero terminator, offsets from the start.
        let entry = |i: usize| {
            let e = &table[i * CERT_ENTRY_LEN..(i + 1) * CERT_ENTRY_LEN];
            let offset = u32::from_le_bytes(e[16..20].try_into().unwrap()) as usize;
            let len = u32::from_le_bytes(e[20..24].try_into().unwrap()) as usize;
            (<[u8; 16]>::try_from(&e[..16]).unwrap(), offset, len)
        };
        let mut next = 4 * CERT_ENTRY_LEN;
        for (i, (guid, der)) in [
            (ARK_GUID, roots.ark_der()),
            (ASK_GUID, roots.ask_der()),
            (VCEK_GUID, chip.vcek_der()),
        ]
        .into_iter()
        .enumerate()
        {
            let (found_guid, offset, len) = entry(i);
            assert_eq!((found_guid, offset, len), (guid, next, der.len()));
            assert_eq!(&table[offset..offset + len], der);
            next += len;
        }
        assert_eq!(entry(3), ([0; 16], 0, 0));
        assert_eq!(table.len(), next);

        // The sev crate finds the chain in it by GUID, and it verifies a report.
        let mut raw = table.clone();
        let entries = CertTableEntry::vec_bytes_to_cert_table(&mut raw).unwrap();
        assert_eq!(entries.len(), 3);
        let chain = Chain::from_cert_table_der(entries).unwrap();
        let bytes = chip.report(&SnpGuest::new([9; 48]), [8; 64]).unwrap();
        (&chain, &AttestationReport::from_bytes(&bytes).unwrap())
            .verify()
            .unwrap();

        let vcek_only = chip.cert_table(roots, false);
        assert_eq!(vcek_only.len(), 2 * CERT_ENTRY_LEN + chip.vcek_der().len());
        assert_eq!(vcek_only[..16], VCEK_GUID);
    }

    #[test]
    fn write_certs_writes_snpguests_layout() {
        let (roots, chip) = chip_for(SnpProduct::Turin);
        let dir = tempfile::tempdir().unwrap();
        chip.write_certs(roots, dir.path()).unwrap();
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        let chain = Chain::from_pem(&read("ark.pem"), &read("ask.pem"), &read("vcek.pem")).unwrap();
        let bytes = chip.report(&SnpGuest::new([3; 48]), [4; 64]).unwrap();
        (&chain, &AttestationReport::from_bytes(&bytes).unwrap())
            .verify()
            .unwrap();
        let err = chip
            .write_certs(roots, &dir.path().join("missing"))
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn impossible_chips_and_reports_are_refused() {
        let genoa = FakeSnpRoots::shared(SnpProduct::Genoa).unwrap();
        let err = genoa
            .issue_chip([1; 64], tcb_for(SnpProduct::Turin))
            .unwrap_err();
        assert!(matches!(err, SnpChipError::Tcb(_)), "{err}");

        let turin = FakeSnpRoots::shared(SnpProduct::Turin).unwrap();
        let mut id = chip_id_for(SnpProduct::Turin);
        id[9] = 1;
        let err = turin
            .issue_chip(id, tcb_for(SnpProduct::Turin))
            .unwrap_err();
        assert!(
            matches!(err, SnpChipError::ChipId { offset: 9, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "a Turin chip id is 8 bytes long, but byte 9 of the 64 given is non-zero"
        );

        let (_, chip) = chip_for(SnpProduct::Genoa);
        let mut guest = SnpGuest::new([0; 48]);
        guest.report_version = 5;
        assert!(matches!(
            chip.report(&guest, [0; 64]),
            Err(SnpChipError::ReportVersion(5))
        ));
        guest.report_version = 2;
        guest.vmpl = 4;
        assert!(matches!(
            chip.report(&guest, [0; 64]),
            Err(SnpChipError::Vmpl(4))
        ));
    }

    #[test]
    fn new_guests_have_the_documented_defaults() {
        let a = SnpGuest::new([7; 48]);
        let b = SnpGuest::new([7; 48]);
        assert_eq!((a.policy, a.report_version, a.vmpl), (0x30000, 3, 0));
        assert_ne!(a.report_id, b.report_id, "report ids are random per launch");
    }

    /// One request over the socket, the guest side of the protocol.
    fn request(
        path: &Path,
        magic: &[u8; 4],
        flags: u32,
        vmpl: u32,
        data: [u8; 64],
    ) -> (u32, Vec<u8>, Vec<u8>) {
        let mut stream = UnixStream::connect(path).unwrap();
        let mut req = magic.to_vec();
        req.extend_from_slice(&flags.to_le_bytes());
        req.extend_from_slice(&vmpl.to_le_bytes());
        req.extend_from_slice(&data);
        stream.write_all(&req).unwrap();
        let mut word = [0u8; 4];
        let mut read_word = |s: &mut UnixStream| {
            s.read_exact(&mut word).unwrap();
            u32::from_le_bytes(word)
        };
        let status = read_word(&mut stream);
        let mut report = vec![0; read_word(&mut stream) as usize];
        stream.read_exact(&mut report).unwrap();
        let mut certs = vec![0; read_word(&mut stream) as usize];
        stream.read_exact(&mut certs).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "one answer per connection");
        (status, report, certs)
    }

    #[test]
    fn the_device_answers_over_its_socket() {
        let (roots, chip) = chip_for(SnpProduct::Milan);
        let chain = sev_chain(roots, &chip);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sev-guest.sock");
        let mut guest = SnpGuest::new([0x5a; 48]);
        guest.vmpl = 1;
        let mut server = SnpDeviceServer::start(&path, chip, roots, guest.clone()).unwrap();
        assert_eq!(server.path(), path);
        let verify =
            |report: &[u8]| (&chain, &AttestationReport::from_bytes(report).unwrap()).verify();

        // A plain report at the guest's VMPL, then an extended one at VMPL 3.
        let (status, report, certs) = request(&path, b"SNPR", 0, 1, [0x42; 64]);
        assert_eq!((status, report.len(), certs.len()), (0, REPORT_LEN, 0));
        verify(&report).unwrap();
        let parsed = AttestationReport::from_bytes(&report).unwrap();
        assert_eq!(
            (parsed.report_data, parsed.measurement, parsed.vmpl),
            ([0x42; 64], [0x5a; 48], 1)
        );
        let (status, report, mut certs) = request(&path, b"SNPR", FLAG_EXTENDED, 3, [1; 64]);
        assert_eq!(status, 0);
        assert_eq!(AttestationReport::from_bytes(&report).unwrap().vmpl, 3);
        let table_chain = Chain::from_cert_table_der(
            CertTableEntry::vec_bytes_to_cert_table(&mut certs).unwrap(),
        )
        .unwrap();
        (
            &table_chain,
            &AttestationReport::from_bytes(&report).unwrap(),
        )
            .verify()
            .unwrap();
        assert_eq!(server.requests(), 2);

        // Malformed requests: EINVAL.
        for (magic, flags, vmpl) in [
            (b"SNPQ", 0, 1),
            (b"SNPR", 2, 1),
            (b"SNPR", 0, 0),
            (b"SNPR", 0, 4),
        ] {
            let (status, report, certs) = request(&path, magic, flags, vmpl, [0; 64]);
            assert_eq!(
                (status, report.len(), certs.len()),
                (STATUS_EINVAL, 0, 0),
                "{magic:?} {flags} {vmpl}"
            );
        }
        let mut short = UnixStream::connect(&path).unwrap();
        short.write_all(b"SNPR\0\0").unwrap();
        short.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        short.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, error_answer(STATUS_EINVAL));
        assert_eq!(server.requests(), 7);

        // Faults.
        server.set_fault(Some(SnpFault::Status(5)));
        assert_eq!(request(&path, b"SNPR", 0, 1, [0; 64]).0, 5);
        server.set_fault(Some(SnpFault::TamperReport));
        let (status, report, _) = request(&path, b"SNPR", 0, 1, [0; 64]);
        assert_eq!(status, 0);
        assert!(verify(&report).is_err());
        server.set_fault(Some(SnpFault::WrongKey));
        let (status, report, _) = request(&path, b"SNPR", 0, 1, [0; 64]);
        assert_eq!(status, 0);
        assert!(verify(&report).is_err());
        server.set_fault(Some(SnpFault::NoCertificates));
        let (status, report, certs) = request(&path, b"SNPR", FLAG_EXTENDED, 1, [0; 64]);
        assert_eq!((status, certs.len()), (0, 0));
        verify(&report).unwrap();
        server.set_fault(None);

        // Another launch.
        guest.measurement = [0x77; 48];
        guest.vmpl = 0;
        guest.report_version = 2;
        server.set_guest(guest);
        let (status, report, _) = request(&path, b"SNPR", 0, 0, [0; 64]);
        assert_eq!(status, 0);
        verify(&report).unwrap();
        let parsed = AttestationReport::from_bytes(&report).unwrap();
        assert_eq!((parsed.version, parsed.measurement), (2, [0x77; 48]));
        assert_eq!(server.requests(), 12);

        server.stop();
        assert!(!path.exists());
        assert!(UnixStream::connect(&path).is_err());
        server.stop();
    }

    #[test]
    fn dropping_the_device_removes_its_socket() {
        let (roots, chip) = chip_for(SnpProduct::Genoa);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.sock");
        {
            let _server =
                SnpDeviceServer::start(&path, Arc::new(chip), roots, SnpGuest::new([0; 48]))
                    .unwrap();
            assert!(path.exists());
            let (roots2, chip2) = chip_for(SnpProduct::Genoa);
            let err =
                SnpDeviceServer::start(&path, chip2, roots2, SnpGuest::new([0; 48])).unwrap_err();
            assert!(err.to_string().contains("dev.sock"), "{err}");
        }
        assert!(!path.exists());
    }
}
