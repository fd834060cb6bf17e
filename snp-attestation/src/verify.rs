//! Verification of an attestation report against AMD's certificate chain:
//! ARK (trusted root) → ASK/ASVK → VCEK/VLEK → report. Each step that can
//! fail has its own [`VerifyError`] variant, worded for operators.
//!
//! Not checked here, for want of a clock and of network access: certificate
//! validity periods and AMD's revocation lists.

use crate::certs::{CertChain, RootKind, TrustedRoot, TrustedRoots};
use crate::product::Product;
use crate::report::{
    AttestationReport, ReportError, ReportSignature, SigningKey, SIGNED_LEN,
    SIG_ALGO_ECDSA_P384_SHA384,
};
use crate::tcb::Tcb;
use crate::x509::{oid, verify_p384, Cert, CertFault};

/// A report whose signature chains up to a trusted root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The decoded report.
    pub report: AttestationReport,
    /// The processor generation, from the report's CPUID or the VCEK/VLEK.
    pub product: Product,
    /// Which kind of key signed the report ([`SigningKey::Vcek`] or
    /// [`SigningKey::Vlek`]).
    pub signer: SigningKey,
    /// Whether the chain ended at one of AMD's roots or at an extra one.
    pub root: RootKind,
    /// The TCB the signing key was derived for, from its certificate (equal to
    /// the report's reported TCB).
    pub vek_tcb: Tcb,
}

/// Why a report was not verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The report does not decode.
    #[error("attestation report: {0}")]
    Report(#[from] ReportError),
    /// The report names a signature algorithm other than ECDSA P-384 SHA-384.
    #[error(
        "report field `signature_algo` is {algo}; only 1 (ECDSA P-384 with SHA-384) is supported"
    )]
    UnsupportedSignatureAlgo {
        /// The value found.
        algo: u32,
    },
    /// The report is unsigned or signed by a reserved key kind.
    #[error("report is signed by key kind {key}; only VCEK and VLEK signatures can be verified")]
    UnsupportedSigningKey {
        /// The kind the report's flags name.
        key: SigningKey,
    },
    /// No VCEK or VLEK certificate came with the report.
    #[error("no VCEK or VLEK certificate was supplied with the report")]
    NoVek,
    /// A certificate or the report's signature is badly encoded or uses
    /// another algorithm than AMD's.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// Which item: "VEK certificate", "ASK certificate", "ARK certificate",
        /// "report signature".
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Neither the report's CPUID nor the VEK's productName names a known
    /// processor generation.
    #[error("the processor generation is unknown: the report carries no known CPUID and the VEK certificate no known productName")]
    UnknownProduct,
    /// The report's CPUID and the VEK's productName disagree.
    #[error("the report's CPUID says {report} but the VEK certificate is for {vek}")]
    ProductMismatch {
        /// Generation from the report's CPUID.
        report: Product,
        /// Generation from the VEK's productName.
        vek: Product,
    },
    /// No trusted root serves the product at all.
    #[error("no trusted root is configured for {product}")]
    NoRoot {
        /// The report's generation.
        product: Product,
    },
    /// The supplied ARK is not a trusted root for the product.
    #[error("the supplied ARK is not a trusted root for {product}")]
    UntrustedRoot {
        /// The report's generation.
        product: Product,
    },
    /// No ASK was supplied and none is built in for this case (a VLEK needs
    /// its ASVK supplied).
    #[error("no ASK was supplied and the trusted root for {product} has none for a {signer} (a VLEK needs the ASVK)")]
    NoAsk {
        /// The report's generation.
        product: Product,
        /// The report's signing key kind.
        signer: SigningKey,
    },
    /// The ASK is not signed by the ARK.
    #[error("the ASK is not signed by the ARK")]
    AskSignature,
    /// The VCEK/VLEK is not signed by the ASK.
    #[error("the VEK certificate is not signed by the ASK")]
    VekSignature,
    /// A TCB component of the VEK differs from the report's reported TCB.
    #[error("TCB component {component}: the VEK certificate has {vek}, the report's reported_tcb has {report}")]
    TcbMismatch {
        /// "fmc", "bootloader", "tee", "snp" or "microcode".
        component: &'static str,
        /// Value in the report.
        report: u8,
        /// Value in the certificate.
        vek: u8,
    },
    /// The VCEK belongs to another chip than the report's chip_id.
    #[error("the VCEK's hwID differs from the report's chip_id: the VCEK is another chip's")]
    ChipIdMismatch,
    /// The report's signature does not verify under the VEK.
    #[error("the report's signature does not verify under the VEK's key")]
    ReportSignature,
    /// The platform masks the chip key (MASK_CHIP_KEY): the report is not
    /// signed at all.
    #[error("the report is unsigned: the platform masks the chip key (MASK_CHIP_KEY)")]
    Unsigned,
}

impl VerifyError {
    /// A fixed label for the kind of failure (no value from the input), for
    /// logs and metrics keyed by it.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Report(_) => "report malformed",
            VerifyError::UnsupportedSignatureAlgo { .. } => "unsupported signature algorithm",
            VerifyError::UnsupportedSigningKey { .. } => "unsupported signing key",
            VerifyError::NoVek => "no VCEK or VLEK",
            VerifyError::Malformed { .. } => "certificate malformed",
            VerifyError::UnknownProduct => "unknown product",
            VerifyError::ProductMismatch { .. } => "product mismatch",
            VerifyError::NoRoot { .. } => "no trusted root for the product",
            VerifyError::UntrustedRoot { .. } => "untrusted root",
            VerifyError::NoAsk { .. } => "no ASK",
            VerifyError::AskSignature => "ASK signature",
            VerifyError::VekSignature => "VEK signature",
            VerifyError::TcbMismatch { .. } => "VEK TCB differs from the report's",
            VerifyError::ChipIdMismatch => "VCEK of another chip",
            VerifyError::ReportSignature => "report signature",
            VerifyError::Unsigned => "report unsigned",
        }
    }
}

/// Order of the P-384 group, big-endian.
const P384_ORDER: [u8; 48] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC7, 0x63, 0x4D, 0x81, 0xF4, 0x37, 0x2D, 0xDF,
    0x58, 0x1A, 0x0D, 0xB2, 0x48, 0xB0, 0xA7, 0x7A, 0xEC, 0xEC, 0x19, 0x6A, 0xCC, 0xC5, 0x29, 0x73,
];

fn malformed(what: &'static str) -> impl Fn(String) -> VerifyError {
    move |reason| VerifyError::Malformed { what, reason }
}

fn cert_fault(what: &'static str, bad: VerifyError) -> impl FnOnce(CertFault) -> VerifyError {
    move |fault| match fault {
        CertFault::Malformed(reason) => VerifyError::Malformed { what, reason },
        CertFault::BadSignature => bad,
    }
}

/// Verifies `report_bytes` (a raw 0x4A0-byte report) with the certificates in
/// `chain`, ending at one of `roots`. Steps, in order: the report decodes; it
/// is signed with ECDSA P-384 by a VCEK or VLEK; the VEK certificate is
/// present; the product is known (report CPUID, else the VEK's productName;
/// both must agree when both are known); the ARK is the chain's if it matches
/// a trusted root for the product (same DER or same key), else the trusted
/// one; the ASK is the chain's, else the trusted root's; the ARK signs the
/// ASK (unless it is the root's own, checked with the root), which signs the
/// VEK; the VEK's TCB extensions
/// equal the report's reported TCB; a VCEK's hwID equals the report's
/// chip_id unless the platform masks the id (all zeros); the report's
/// signature verifies. A report flagged MASK_CHIP_KEY is unsigned and refused.
pub fn verify(
    report_bytes: &[u8],
    chain: &CertChain,
    roots: &TrustedRoots,
) -> Result<Verified, VerifyError> {
    let report = AttestationReport::decode(report_bytes)?;
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(VerifyError::UnsupportedSignatureAlgo {
            algo: report.signature_algo,
        });
    }
    if report.flags.mask_chip_key() {
        return Err(VerifyError::Unsigned);
    }
    let signer = report.flags.signing_key();
    if !matches!(signer, SigningKey::Vcek | SigningKey::Vlek) {
        return Err(VerifyError::UnsupportedSigningKey { key: signer });
    }
    let vek_der = chain.vek.as_deref().ok_or(VerifyError::NoVek)?;
    let vek = Cert::parse(vek_der).map_err(malformed("VEK certificate"))?;
    let product = product_of(&report, &vek)?;

    let supplied_ask = chain
        .ask
        .as_deref()
        .map(|der| Cert::parse(der).map_err(malformed("ASK certificate")))
        .transpose()?;
    let root = choose_root(chain, supplied_ask.as_ref(), &vek, roots, product)?;

    // The ARK is the trusted copy: AMD's (whose self-signature this crate's
    // tests check) or an extra one, checked when it was added.
    let ark = Cert::parse(&root.ark_der).map_err(malformed("ARK certificate"))?;
    let ark_key = ark.rsa_key().map_err(malformed("ARK certificate"))?;

    let ask = match supplied_ask {
        Some(ask) => ask,
        None => {
            let der = root
                .ask_der
                .as_deref()
                .filter(|_| signer == SigningKey::Vcek)
                .ok_or(VerifyError::NoAsk { product, signer })?;
            Cert::parse(der).map_err(malformed("ASK certificate"))?
        }
    };
    // The root's own ASK was checked with it; any other is checked here.
    let trusted_ask = match chain.ask.as_deref() {
        None => true,
        Some(der) => root.ask_der.as_deref() == Some(der),
    };
    if !trusted_ask {
        ask.verify_pss(ark_key)
            .map_err(cert_fault("ASK certificate", VerifyError::AskSignature))?;
    }
    let ask_key = ask.rsa_key().map_err(malformed("ASK certificate"))?;
    vek.verify_pss(ask_key)
        .map_err(cert_fault("VEK certificate", VerifyError::VekSignature))?;

    let vek_tcb = tcb_of(&vek, product)?;
    compare_tcb(&report.reported_tcb.decode(product), &vek_tcb)?;
    // A chip id of zeros is a masked one (MASK_CHIP_ID): the signature
    // under this VCEK is then what ties the report to the chip.
    if signer == SigningKey::Vcek && report.chip_id.iter().any(|b| *b != 0) {
        let hw_id = vek
            .hw_id()
            .map_err(malformed("VEK certificate"))?
            .ok_or_else(|| malformed("VEK certificate")("VCEK has no hwID extension".into()))?;
        if hw_id != report.chip_id {
            return Err(VerifyError::ChipIdMismatch);
        }
    }

    let point = vek.p384_point().map_err(malformed("VEK certificate"))?;
    let signature = fixed_signature(&report.signature)
        .map_err(|reason| malformed("report signature")(reason.to_owned()))?;
    let signed = report_bytes
        .get(..SIGNED_LEN)
        .ok_or(VerifyError::ReportSignature)?;
    if !verify_p384(point, signed, &signature) {
        return Err(VerifyError::ReportSignature);
    }

    Ok(Verified {
        report,
        product,
        signer,
        root: root.kind,
        vek_tcb,
    })
}

fn product_of(report: &AttestationReport, vek: &Cert) -> Result<Product, VerifyError> {
    let from_name = vek
        .product_name()
        .map_err(malformed("VEK certificate"))?
        .as_deref()
        .and_then(Product::from_name);
    match (report.product(), from_name) {
        (Some(report), Some(vek)) if report != vek => {
            Err(VerifyError::ProductMismatch { report, vek })
        }
        (Some(p), _) | (None, Some(p)) => Ok(p),
        (None, None) => Err(VerifyError::UnknownProduct),
    }
}

/// The trusted root to verify against. A supplied ARK must match one.
/// Without one, several roots may serve the product (AMD's and extra ones):
/// the one that signed the supplied ASK is taken, or without a supplied ASK
/// the one whose own ASK signed the VEK; failing that, the first, so that the
/// checks that follow report what is wrong.
fn choose_root<'r>(
    chain: &CertChain,
    supplied_ask: Option<&Cert>,
    vek: &Cert,
    roots: &'r TrustedRoots,
    product: Product,
) -> Result<&'r TrustedRoot, VerifyError> {
    let mut candidates = roots.for_product(product).peekable();
    let first = *candidates.peek().ok_or(VerifyError::NoRoot { product })?;
    let only = roots.for_product(product).nth(1).is_none();
    if let Some(ark_der) = chain.ark.as_deref() {
        let ark = Cert::parse(ark_der).map_err(malformed("ARK certificate"))?;
        let key = ark.spki_der().map_err(malformed("ARK certificate"))?;
        return candidates
            .find(|r| {
                r.ark_der == ark_der
                    || Cert::parse(&r.ark_der)
                        .and_then(|c| c.spki_der())
                        .is_ok_and(|k| k == key)
            })
            .ok_or(VerifyError::UntrustedRoot { product });
    }
    // With one root for the product there is nothing to choose, and the
    // signature checks that follow would only be done twice.
    if only {
        return Ok(first);
    }
    let signs = |issuer_der: &[u8], subject: &Cert| {
        Cert::parse(issuer_der)
            .ok()
            .and_then(|issuer| Some(subject.verify_pss(issuer.rsa_key().ok()?).is_ok()))
            .unwrap_or(false)
    };
    let found = match supplied_ask {
        Some(ask) => candidates.find(|r| signs(&r.ark_der, ask)),
        None => candidates.find(|r| r.ask_der.as_deref().is_some_and(|a| signs(a, vek))),
    };
    Ok(found.unwrap_or(first))
}

fn tcb_of(vek: &Cert, product: Product) -> Result<Tcb, VerifyError> {
    let get = |id, name: &str| {
        vek.u8_extension(id)
            .map_err(malformed("VEK certificate"))?
            .ok_or_else(|| malformed("VEK certificate")(format!("no {name} extension")))
    };
    Ok(Tcb {
        fmc: match product {
            Product::Turin => Some(get(oid::FMC_SPL, "fmcSPL")?),
            Product::Milan | Product::Genoa => None,
        },
        bootloader: get(oid::BL_SPL, "blSPL")?,
        tee: get(oid::TEE_SPL, "teeSPL")?,
        snp: get(oid::SNP_SPL, "snpSPL")?,
        microcode: get(oid::UCODE_SPL, "ucodeSPL")?,
    })
}

fn compare_tcb(report: &Tcb, vek: &Tcb) -> Result<(), VerifyError> {
    let pairs = [
        ("fmc", report.fmc.unwrap_or(0), vek.fmc.unwrap_or(0)),
        ("bootloader", report.bootloader, vek.bootloader),
        ("tee", report.tee, vek.tee),
        ("snp", report.snp, vek.snp),
        ("microcode", report.microcode, vek.microcode),
    ];
    match pairs.into_iter().find(|(_, r, v)| r != v) {
        Some((component, report, vek)) => Err(VerifyError::TcbMismatch {
            component,
            report,
            vek,
        }),
        None => Ok(()),
    }
}

/// Converts the report's little-endian, 72-byte-padded scalars into the
/// big-endian r || s form, refusing padding that is not zero and scalars
/// outside 1..n.
fn fixed_signature(sig: &ReportSignature) -> Result<[u8; 96], &'static str> {
    let mut out = [0u8; 96];
    let (r_out, s_out) = out.split_at_mut(48);
    for (scalar, dst) in [(&sig.r, r_out), (&sig.s, s_out)] {
        let (low, high) = scalar.split_at(48);
        if high.iter().any(|b| *b != 0) {
            return Err("a signature scalar has non-zero bytes beyond the 48 of P-384");
        }
        for (d, s) in dst.iter_mut().zip(low.iter().rev()) {
            *d = *s;
        }
        if dst.iter().all(|b| *b == 0) || *dst >= P384_ORDER[..] {
            return Err("a signature scalar is outside the range of P-384");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Cpuid, GuestPolicy, ReportFlags, REPORT_LEN};
    use crate::tcb::RawTcb;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PSS_SHA384,
    };
    use der::asn1::ObjectIdentifier;
    use der::Encode;

    // A minimal DER writer, enough to assemble certificates shaped like AMD's.

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let [hi, lo] = u16::try_from(content.len()).unwrap().to_be_bytes();
        match (hi, lo) {
            (0, 0..0x80) => out.push(lo),
            (0, _) => out.extend_from_slice(&[0x81, lo]),
            _ => out.extend_from_slice(&[0x82, hi, lo]),
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn oid_der(id: &str) -> Vec<u8> {
        ObjectIdentifier::new_unwrap(id).to_der().unwrap()
    }

    fn name(cn: &str) -> Vec<u8> {
        seq(&[tlv(
            0x31,
            &seq(&[oid_der("2.5.4.3"), tlv(0x0C, cn.as_bytes())]),
        )])
    }

    /// RSASSA-PSS SHA-384 / MGF1 SHA-384 / salt 48 / trailer 1, as AMD writes it.
    fn pss_alg() -> Vec<u8> {
        hex::decode("304606092a864886f70d01010a3039a00f300d06096086480165030402020500a11c301a06092a864886f70d010108300d06096086480165030402020500a203020130a303020101").unwrap()
    }

    fn cert(
        issuer: &str,
        subject: &str,
        spki: &[u8],
        exts: &[Vec<u8>],
        key: &RsaKeyPair,
    ) -> Vec<u8> {
        let mut tbs = vec![
            tlv(0xA0, &[0x02, 0x01, 0x02]),
            vec![0x02, 0x01, 0x01],
            pss_alg(),
            name(issuer),
            seq(&[tlv(0x17, b"250101000000Z"), tlv(0x17, b"491231235959Z")]),
            name(subject),
            spki.to_vec(),
        ];
        if !exts.is_empty() {
            tbs.push(tlv(0xA3, &seq(exts)));
        }
        let tbs = seq(&tbs);
        let mut sig = vec![0u8; key.public_modulus_len()];
        key.sign(&RSA_PSS_SHA384, &SystemRandom::new(), &tbs, &mut sig)
            .unwrap();
        let mut bits = vec![0u8];
        bits.extend_from_slice(&sig);
        seq(&[tbs, pss_alg(), tlv(0x03, &bits)])
    }

    fn ext(id: &str, value: &[u8]) -> Vec<u8> {
        seq(&[oid_der(id), tlv(0x04, value)])
    }

    fn spl(arc: u8, value: u8) -> Vec<u8> {
        let int = if value < 0x80 {
            vec![0x02, 0x01, value]
        } else {
            vec![0x02, 0x02, 0x00, value]
        };
        ext(&format!("1.3.6.1.4.1.3704.1.3.{arc}"), &int)
    }

    fn rsa_spki(key: &RsaKeyPair) -> Vec<u8> {
        key.public_key().as_der().unwrap().as_ref().to_vec()
    }

    struct Ca {
        ark_key: RsaKeyPair,
        ark: Vec<u8>,
        ask_key: RsaKeyPair,
        ask: Vec<u8>,
    }

    fn ca() -> Ca {
        let ark_key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let ark = cert("ARK-Test", "ARK-Test", &rsa_spki(&ark_key), &[], &ark_key);
        let ask_key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let ask = cert("ARK-Test", "SEV-Test", &rsa_spki(&ask_key), &[], &ark_key);
        Ca {
            ark_key,
            ark,
            ask_key,
            ask,
        }
    }

    /// What goes into a test VEK certificate.
    struct VekSpec {
        product_name: Option<&'static str>,
        tcb: Tcb,
        hw_id: Option<Vec<u8>>,
    }

    fn vek_cert(ca: &Ca, key: &EcdsaKeyPair, spec: &VekSpec) -> Vec<u8> {
        let mut exts = vec![ext("1.3.6.1.4.1.3704.1.1", &[0x02, 0x01, 0x01])];
        if let Some(n) = spec.product_name {
            exts.push(ext("1.3.6.1.4.1.3704.1.2", &tlv(0x16, n.as_bytes())));
        }
        exts.push(spl(1, spec.tcb.bootloader));
        exts.push(spl(2, spec.tcb.tee));
        exts.push(spl(3, spec.tcb.snp));
        exts.push(spl(8, spec.tcb.microcode));
        if let Some(fmc) = spec.tcb.fmc {
            exts.push(spl(9, fmc));
        }
        if let Some(hw) = &spec.hw_id {
            exts.push(ext("1.3.6.1.4.1.3704.1.4", hw));
        }
        let spki = key.public_key().as_der().unwrap().as_ref().to_vec();
        cert("SEV-Test", "SEV-VCEK", &spki, &exts, &ca.ask_key)
    }

    const TCB: Tcb = Tcb {
        fmc: None,
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 0xD2,
    };

    fn report(product: Option<Product>, tcb: &Tcb, chip_id: [u8; 64]) -> AttestationReport {
        let (version, cpuid) = match product {
            None => (2, None),
            Some(p) => {
                let (family, model) = match p {
                    Product::Milan => (0x19, 0x01),
                    Product::Genoa => (0x19, 0x11),
                    Product::Turin => (0x1A, 0x02),
                };
                (
                    3,
                    Some(Cpuid {
                        family,
                        model,
                        stepping: 1,
                    }),
                )
            }
        };
        let raw = tcb.to_raw(product.unwrap_or(if tcb.fmc.is_some() {
            Product::Turin
        } else {
            Product::Milan
        }));
        AttestationReport {
            version,
            guest_svn: 1,
            policy: GuestPolicy(0x3_0000),
            family_id: [1; 16],
            image_id: [2; 16],
            vmpl: 0,
            signature_algo: 1,
            current_tcb: raw,
            platform_info: 1,
            flags: ReportFlags(0),
            report_data: [0x5A; 64],
            measurement: [0x4D; 48],
            host_data: [0; 32],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id: [7; 32],
            report_id_ma: [0xFF; 32],
            reported_tcb: raw,
            cpuid,
            chip_id,
            committed_tcb: raw,
            current_version: (1, 55, 30),
            committed_version: (1, 55, 30),
            launch_tcb: raw,
            signature: ReportSignature {
                r: [0; 72],
                s: [0; 72],
            },
        }
    }

    /// Signs the report as the firmware would and returns its bytes.
    fn sign(report: &AttestationReport, key: &EcdsaKeyPair) -> Vec<u8> {
        let mut bytes = report.to_bytes();
        let sig = key
            .sign(&SystemRandom::new(), &bytes[..SIGNED_LEN])
            .unwrap();
        let sig = sig.as_ref();
        let (r, s) = sig.split_at(48);
        for (i, b) in r.iter().rev().enumerate() {
            bytes[0x2A0 + i] = *b;
        }
        for (i, b) in s.iter().rev().enumerate() {
            bytes[0x2E8 + i] = *b;
        }
        bytes.to_vec()
    }

    fn chip() -> [u8; 64] {
        std::array::from_fn(|i| u8::try_from(i).unwrap() + 1)
    }

    struct Setup {
        ca: Ca,
        vek_key: EcdsaKeyPair,
        vek: Vec<u8>,
        roots: TrustedRoots,
    }

    fn setup(spec: &VekSpec, root_product: Option<Product>) -> Setup {
        let ca = ca();
        let vek_key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let vek = vek_cert(&ca, &vek_key, spec);
        let roots = TrustedRoots::amd()
            .with_extra_root(ca.ark.clone(), Some(ca.ask.clone()), root_product)
            .unwrap();
        Setup {
            ca,
            vek_key,
            vek,
            roots,
        }
    }

    fn milan_spec() -> VekSpec {
        VekSpec {
            product_name: Some("Milan-B0"),
            tcb: TCB,
            hw_id: Some(chip().to_vec()),
        }
    }

    fn only_vek(s: &Setup) -> CertChain {
        CertChain {
            ark: None,
            ask: None,
            vek: Some(s.vek.clone()),
        }
    }

    #[test]
    fn a_well_formed_milan_report_verifies() {
        let s = setup(&milan_spec(), Some(Product::Milan));
        let r = report(Some(Product::Milan), &TCB, chip());
        let bytes = sign(&r, &s.vek_key);
        let v = verify(&bytes, &only_vek(&s), &s.roots).unwrap();
        assert_eq!(v.product, Product::Milan);
        assert_eq!(v.signer, SigningKey::Vcek);
        assert_eq!(v.root, RootKind::Extra);
        assert_eq!(v.vek_tcb, TCB);
        assert_eq!(v.report.measurement, [0x4D; 48]);

        // The same with ARK and ASK supplied.
        let full = CertChain {
            ark: Some(s.ca.ark.clone()),
            ask: Some(s.ca.ask.clone()),
            vek: Some(s.vek.clone()),
        };
        assert!(verify(&bytes, &full, &s.roots).is_ok());

        // Bytes after the signed part are not covered; any before are.
        let mut tail = bytes.clone();
        tail[REPORT_LEN - 1] ^= 1;
        assert!(verify(&tail, &full, &s.roots).is_ok());
        for offset in [0x08, 0x50, 0x90, 0x29F] {
            let mut tampered = bytes.clone();
            tampered[offset] ^= 1;
            assert_eq!(
                verify(&tampered, &full, &s.roots).unwrap_err(),
                VerifyError::ReportSignature,
                "offset {offset:#x}"
            );
        }
    }

    #[test]
    fn turin_v2_report_takes_its_product_from_the_vcek() {
        let tcb = Tcb {
            fmc: Some(2),
            ..TCB
        };
        let mut chip_id = [0u8; 64];
        chip_id[..8].copy_from_slice(&[9, 8, 7, 6, 5, 4, 3, 2]);
        let spec = VekSpec {
            product_name: Some("Turin"),
            tcb,
            hw_id: Some(chip_id[..8].to_vec()),
        };
        let s = setup(&spec, None);
        let bytes = sign(&report(None, &tcb, chip_id), &s.vek_key);
        let v = verify(&bytes, &only_vek(&s), &s.roots).unwrap();
        assert_eq!(v.product, Product::Turin);
        assert_eq!(v.vek_tcb, tcb);

        // FMC is part of Turin's TCB.
        let other = Tcb {
            fmc: Some(3),
            ..TCB
        };
        let bytes = sign(&report(None, &other, chip_id), &s.vek_key);
        assert_eq!(
            verify(&bytes, &only_vek(&s), &s.roots).unwrap_err(),
            VerifyError::TcbMismatch {
                component: "fmc",
                report: 3,
                vek: 2
            }
        );
    }

    #[test]
    fn tcb_and_chip_id_must_match_the_vcek() {
        let s = setup(&milan_spec(), Some(Product::Milan));
        let newer = Tcb { snp: 9, ..TCB };
        let bytes = sign(&report(Some(Product::Milan), &newer, chip()), &s.vek_key);
        assert_eq!(
            verify(&bytes, &only_vek(&s), &s.roots).unwrap_err(),
            VerifyError::TcbMismatch {
                component: "snp",
                report: 9,
                vek: 8
            }
        );

        let mut other_chip = chip();
        other_chip[63] ^= 1;
        let bytes = sign(&report(Some(Product::Milan), &TCB, other_chip), &s.vek_key);
        assert_eq!(
            verify(&bytes, &only_vek(&s), &s.roots).unwrap_err(),
            VerifyError::ChipIdMismatch
        );

        // A masked chip id (zeros) is not compared with the hwID: the
        // signature ties the report to this VCEK.
        let masked = report(Some(Product::Milan), &TCB, [0; 64]);
        let bytes = sign(&masked, &s.vek_key);
        assert!(verify(&bytes, &only_vek(&s), &s.roots).is_ok());
        // MASK_CHIP_KEY: the firmware did not sign; refused before anything else.
        let mut unsigned = report(Some(Product::Milan), &TCB, chip());
        unsigned.flags = ReportFlags(0b10);
        let bytes = sign(&unsigned, &s.vek_key);
        assert_eq!(
            verify(&bytes, &only_vek(&s), &s.roots).unwrap_err(),
            VerifyError::Unsigned
        );
    }

    #[test]
    fn product_must_be_known_and_consistent() {
        let s = setup(&milan_spec(), None);
        let bytes = sign(&report(Some(Product::Genoa), &TCB, chip()), &s.vek_key);
        assert_eq!(
            verify(&bytes, &only_vek(&s), &s.roots).unwrap_err(),
            VerifyError::ProductMismatch {
                report: Product::Genoa,
                vek: Product::Milan
            }
        );

        let spec = VekSpec {
            product_name: None,
            ..milan_spec()
        };
        let s = setup(&spec, None);
        let bytes = sign(&report(None, &TCB, chip()), &s.vek_key);
        assert_eq!(
            verify(&bytes, &only_vek(&s), &s.roots).unwrap_err(),
            VerifyError::UnknownProduct
        );
        // With CPUID in the report, the productName is not needed.
        let bytes = sign(&report(Some(Product::Milan), &TCB, chip()), &s.vek_key);
        assert!(verify(&bytes, &only_vek(&s), &s.roots).is_ok());
    }

    #[test]
    fn chain_must_end_at_a_trusted_root() {
        let s = setup(&milan_spec(), Some(Product::Genoa));
        let bytes = sign(&report(Some(Product::Milan), &TCB, chip()), &s.vek_key);
        // The test root serves Genoa only: AMD's Milan root and ASK are used,
        // and they did not sign the test VCEK.
        assert_eq!(
            verify(&bytes, &only_vek(&s), &s.roots).unwrap_err(),
            VerifyError::VekSignature
        );
        // Supplying the test ARK does not make it trusted for Milan.
        let mut chain = only_vek(&s);
        chain.ark = Some(s.ca.ark.clone());
        assert_eq!(
            verify(&bytes, &chain, &s.roots).unwrap_err(),
            VerifyError::UntrustedRoot {
                product: Product::Milan
            }
        );
        // Supplying the test ASK: AMD's Milan ARK did not sign it.
        let mut chain = only_vek(&s);
        chain.ask = Some(s.ca.ask.clone());
        assert_eq!(
            verify(&bytes, &chain, &s.roots).unwrap_err(),
            VerifyError::AskSignature
        );
        assert_eq!(
            verify(&bytes, &only_vek(&s), &TrustedRoots::empty()).unwrap_err(),
            VerifyError::NoRoot {
                product: Product::Milan
            }
        );
        // An ASK self-signed by its own key cannot pose as the ARK.
        let fake_ark = cert(
            "SEV-Test",
            "SEV-Test",
            &rsa_spki(&s.ca.ask_key),
            &[],
            &s.ca.ask_key,
        );
        let s2 = setup(&milan_spec(), Some(Product::Milan));
        let mut chain = only_vek(&s2);
        chain.ark = Some(fake_ark);
        assert_eq!(
            verify(
                &sign(&report(Some(Product::Milan), &TCB, chip()), &s2.vek_key),
                &chain,
                &s2.roots
            )
            .unwrap_err(),
            VerifyError::UntrustedRoot {
                product: Product::Milan
            }
        );
        let _ = &s.ca.ark_key;
    }

    #[test]
    fn vlek_needs_its_asvk_and_no_hw_id() {
        let spec = VekSpec {
            hw_id: None,
            ..milan_spec()
        };
        let s = setup(&spec, Some(Product::Milan));
        let mut r = report(Some(Product::Milan), &TCB, chip());
        r.flags = ReportFlags(1 << 2);
        let bytes = sign(&r, &s.vek_key);
        assert_eq!(
            verify(&bytes, &only_vek(&s), &s.roots).unwrap_err(),
            VerifyError::NoAsk {
                product: Product::Milan,
                signer: SigningKey::Vlek
            }
        );
        let mut chain = only_vek(&s);
        chain.ask = Some(s.ca.ask.clone());
        let v = verify(&bytes, &chain, &s.roots).unwrap();
        assert_eq!(v.signer, SigningKey::Vlek);
        // As a VCEK, the same certificate lacks the hwID.
        r.flags = ReportFlags(0);
        let err = verify(&sign(&r, &s.vek_key), &chain, &s.roots).unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Malformed {
                    what: "VEK certificate",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn report_level_refusals() {
        let s = setup(&milan_spec(), Some(Product::Milan));
        let good = report(Some(Product::Milan), &TCB, chip());
        let chain = only_vek(&s);

        assert!(matches!(
            verify(&[0; 10], &chain, &s.roots),
            Err(VerifyError::Report(ReportError::Length { found: 10, .. }))
        ));
        let mut r = good.clone();
        r.signature_algo = 2;
        assert_eq!(
            verify(&sign(&r, &s.vek_key), &chain, &s.roots).unwrap_err(),
            VerifyError::UnsupportedSignatureAlgo { algo: 2 }
        );
        let mut r = good.clone();
        r.flags = ReportFlags(7 << 2);
        assert_eq!(
            verify(&sign(&r, &s.vek_key), &chain, &s.roots).unwrap_err(),
            VerifyError::UnsupportedSigningKey {
                key: SigningKey::None
            }
        );
        let bytes = sign(&good, &s.vek_key);
        assert_eq!(
            verify(&bytes, &CertChain::default(), &s.roots).unwrap_err(),
            VerifyError::NoVek
        );
        let garbage = CertChain {
            vek: Some(vec![0x30, 0x03, 0x02, 0x01, 0x00]),
            ..CertChain::default()
        };
        assert!(matches!(
            verify(&bytes, &garbage, &s.roots),
            Err(VerifyError::Malformed {
                what: "VEK certificate",
                ..
            })
        ));

        // Padding beyond the 48 bytes of a P-384 scalar must be zero.
        let mut padded = bytes.clone();
        padded[0x2A0 + 48] = 1;
        assert!(matches!(
            verify(&padded, &chain, &s.roots),
            Err(VerifyError::Malformed {
                what: "report signature",
                ..
            })
        ));
        // s = n is out of range.
        let mut big = bytes.clone();
        for (i, b) in P384_ORDER.iter().rev().enumerate() {
            big[0x2E8 + i] = *b;
        }
        assert!(matches!(
            verify(&big, &chain, &s.roots),
            Err(VerifyError::Malformed {
                what: "report signature",
                ..
            })
        ));
        let mut zero = bytes.clone();
        zero[0x2A0..0x2A0 + 72].fill(0);
        assert!(matches!(
            verify(&zero, &chain, &s.roots),
            Err(VerifyError::Malformed { .. })
        ));
    }

    #[test]
    fn mutated_certificates_are_refused_without_panicking() {
        let s = setup(&milan_spec(), Some(Product::Milan));
        let bytes = sign(&report(Some(Product::Milan), &TCB, chip()), &s.vek_key);
        let full = CertChain {
            ark: Some(s.ca.ark.clone()),
            ask: Some(s.ca.ask.clone()),
            vek: Some(s.vek.clone()),
        };
        assert!(verify(&bytes, &full, &s.roots).is_ok());
        for i in 0..s.vek.len() {
            for (slot, der) in [(0, &s.ca.ark), (1, &s.ca.ask), (2, &s.vek)] {
                let Some(byte) = der.get(i) else { continue };
                let mut mutated = der.clone();
                mutated[i] = byte ^ 0x41;
                let mut chain = full.clone();
                *[&mut chain.ark, &mut chain.ask, &mut chain.vek][slot] = Some(mutated.clone());
                let result = verify(&bytes, &chain, &s.roots);
                // A supplied ARK only selects a trusted root by its key, so a
                // change to its signature value goes unnoticed; any change to
                // the ASK or VEK must be refused.
                if slot > 0 {
                    assert!(result.is_err(), "slot {slot} byte {i}");
                }
                let _ = crate::der_from_pem_or_der(&mutated);
            }
        }
        // Truncations.
        for len in 0..s.vek.len() {
            let chain = CertChain {
                vek: Some(s.vek[..len].to_vec()),
                ..full.clone()
            };
            assert!(verify(&bytes, &chain, &s.roots).is_err());
        }
    }

    #[test]
    fn decoding_agrees_with_the_sev_crate() {
        use sev::parser::ByteParser;
        let s = setup(&milan_spec(), Some(Product::Milan));
        let mut r = report(Some(Product::Genoa), &TCB, chip());
        r.policy = GuestPolicy(0x1_0000 | 0x2_0000 | 0x8_0000);
        r.flags = ReportFlags(0b11);
        r.cpuid = Some(Cpuid {
            family: 0x19,
            model: 0x11,
            stepping: 2,
        });
        let bytes = sign(&r, &s.vek_key);
        let ours = AttestationReport::decode(&bytes).unwrap();
        let theirs = sev::firmware::guest::AttestationReport::from_bytes(&bytes).unwrap();
        assert_eq!(theirs.version, ours.version);
        assert_eq!(theirs.guest_svn, ours.guest_svn);
        assert_eq!(theirs.policy.0, ours.policy.0);
        assert_eq!(theirs.policy.debug_allowed(), ours.policy.debug());
        assert_eq!(theirs.policy.smt_allowed(), ours.policy.smt_allowed());
        assert_eq!(theirs.family_id, ours.family_id);
        assert_eq!(theirs.image_id, ours.image_id);
        assert_eq!(theirs.vmpl, ours.vmpl);
        assert_eq!(theirs.sig_algo, ours.signature_algo);
        assert_eq!(theirs.plat_info.0, ours.platform_info);
        assert_eq!(theirs.key_info.0, ours.flags.0);
        assert_eq!(theirs.report_data, ours.report_data);
        assert_eq!(theirs.measurement, ours.measurement);
        assert_eq!(theirs.host_data, ours.host_data);
        assert_eq!(theirs.id_key_digest, ours.id_key_digest);
        assert_eq!(theirs.author_key_digest, ours.author_key_digest);
        assert_eq!(theirs.report_id, ours.report_id);
        assert_eq!(theirs.report_id_ma, ours.report_id_ma);
        let tcb = ours.reported_tcb.decode(Product::Genoa);
        assert_eq!(theirs.reported_tcb.bootloader, tcb.bootloader);
        assert_eq!(theirs.reported_tcb.tee, tcb.tee);
        assert_eq!(theirs.reported_tcb.snp, tcb.snp);
        assert_eq!(theirs.reported_tcb.microcode, tcb.microcode);
        let c = ours.cpuid.unwrap();
        assert_eq!(theirs.cpuid_fam_id, Some(c.family));
        assert_eq!(theirs.cpuid_mod_id, Some(c.model));
        assert_eq!(theirs.cpuid_step, Some(c.stepping));
        assert_eq!(theirs.chip_id, ours.chip_id);
        assert_eq!(
            (
                theirs.current.major,
                theirs.current.minor,
                theirs.current.build
            ),
            ours.current_version
        );
        assert_eq!(theirs.signature.r(), &ours.signature.r);
        assert_eq!(theirs.signature.s(), &ours.signature.s);
        let _ = RawTcb(0);
    }
}
