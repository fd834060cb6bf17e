//! AMD's certificate chain as a verifier receives it (from a certificate
//! table, or from PEM/DER files such as the Key Distribution Service serves),
//! and the root certificates a verifier trusts.

use crate::cert_table::{CertEntry, CertKind};
use crate::product::Product;
use crate::x509::{Cert, CertFault};

/// Why certificate bytes or a root are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// A PEM block is not valid PEM.
    #[error("PEM block {index} is malformed: {reason}")]
    Pem {
        /// Index of the block, from 0.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A PEM block holds something other than a certificate.
    #[error("PEM block {index} is labelled {label:?}, not CERTIFICATE")]
    Label {
        /// Index of the block, from 0.
        index: usize,
        /// The label found.
        label: String,
    },
    /// A certificate does not parse as X.509.
    #[error("certificate {index} does not parse: {reason}")]
    Parse {
        /// Index of the certificate in its input, from 0.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The input holds no certificate.
    #[error("no certificate found (expected DER, or PEM with CERTIFICATE blocks)")]
    Empty,
    /// A certificate offered as a trusted root does not qualify.
    #[error("{what} cannot be a trusted root: {reason}")]
    Root {
        /// "ARK" or "ASK".
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Reads certificates from DER (one certificate) or PEM (any number of
/// CERTIFICATE blocks, in order; text between blocks is ignored). Returns
/// each certificate's DER, checked to parse as X.509.
pub fn der_from_pem_or_der(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    if bytes.first() == Some(&0x30) {
        Cert::parse(bytes).map_err(|reason| CertError::Parse { index: 0, reason })?;
        return Ok(vec![bytes.to_vec()]);
    }
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    const DASHES: &[u8] = b"-----";
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(start) = find(rest, BEGIN) {
        let index = out.len();
        let block = rest.get(start..).unwrap_or_default();
        let end = find(block, END)
            .and_then(|e| {
                let after = e + END.len();
                let close = find(block.get(after..)?, DASHES)?;
                Some(after + close + DASHES.len())
            })
            .ok_or_else(|| CertError::Pem {
                index,
                reason: "no END line".to_owned(),
            })?;
        let (block, tail) = block.split_at_checked(end).unwrap_or((block, &[]));
        let (label, der) = der::pem::decode_vec(block).map_err(|e| CertError::Pem {
            index,
            reason: e.to_string(),
        })?;
        if label != "CERTIFICATE" {
            return Err(CertError::Label {
                index,
                label: label.to_owned(),
            });
        }
        Cert::parse(&der).map_err(|reason| CertError::Parse { index, reason })?;
        out.push(der);
        rest = tail;
    }
    if out.is_empty() {
        return Err(CertError::Empty);
    }
    Ok(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The certificates a guest or its host supplied with a report. Any of them
/// may be missing: the ARK and ASK then come from the trusted roots; the VEK
/// has no substitute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertChain {
    /// AMD Root Key certificate (DER).
    pub ark: Option<Vec<u8>>,
    /// AMD SEV Key certificate, or for a VLEK the ASVK certificate (DER).
    pub ask: Option<Vec<u8>>,
    /// The VCEK or VLEK certificate (DER).
    pub vek: Option<Vec<u8>>,
}

impl CertChain {
    /// Picks the chain out of a certificate table; the first entry of each
    /// kind counts. A VLEK is preferred over a VCEK: a host supplies one only
    /// when it has loaded it into the firmware, which then signs with it.
    pub fn from_table(entries: &[CertEntry]) -> Self {
        let first = |kind: CertKind| {
            entries
                .iter()
                .find(|e| e.kind == kind)
                .map(|e| e.der.clone())
        };
        Self {
            ark: first(CertKind::Ark),
            ask: first(CertKind::Ask),
            vek: first(CertKind::Vlek).or_else(|| first(CertKind::Vcek)),
        }
    }
}

/// Where a trusted root came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RootKind {
    /// One of AMD's published roots, built into this crate.
    Amd,
    /// Added with [`TrustedRoots::with_extra_root`] (tests, simulators).
    Extra,
}

/// One trusted ARK with its ASK.
#[derive(Debug, Clone)]
pub(crate) struct TrustedRoot {
    /// The product it serves; `None` for every product.
    pub(crate) product: Option<Product>,
    pub(crate) ark_der: Vec<u8>,
    pub(crate) ask_der: Option<Vec<u8>>,
    pub(crate) kind: RootKind,
}

/// AMD's published ARK and ASK per product (KDS `vcek/v1/<product>/cert_chain`),
/// PEM. `roots/README.md` lists their fingerprints; a test checks them against
/// the copies the `sev` crate carries.
const AMD_ROOTS: [(Product, &[u8], &[u8]); 3] = [
    (
        Product::Milan,
        include_bytes!("../roots/milan-ark.pem"),
        include_bytes!("../roots/milan-ask.pem"),
    ),
    (
        Product::Genoa,
        include_bytes!("../roots/genoa-ark.pem"),
        include_bytes!("../roots/genoa-ask.pem"),
    ),
    (
        Product::Turin,
        include_bytes!("../roots/turin-ark.pem"),
        include_bytes!("../roots/turin-ask.pem"),
    ),
];

/// The AMD Root Keys a verifier accepts, each with the ASK used when a chain
/// supplies none.
#[derive(Debug, Clone, Default)]
pub struct TrustedRoots {
    roots: Vec<TrustedRoot>,
}

impl TrustedRoots {
    /// AMD's ARK and ASK certificates for Milan, Genoa and Turin.
    pub fn amd() -> Self {
        let published = AMD_ROOTS;
        let first = |pem: &[u8]| {
            der_from_pem_or_der(pem)
                .ok()
                .and_then(|v| v.into_iter().next())
        };
        // The certificates are built in; should one ever fail to parse, its
        // product has no built-in root and verification for it fails, which
        // the tests below would catch first.
        let roots = published
            .into_iter()
            .filter_map(|(product, ark, ask)| {
                Some(TrustedRoot {
                    product: Some(product),
                    ark_der: first(ark)?,
                    ask_der: Some(first(ask)?),
                    kind: RootKind::Amd,
                })
            })
            .collect();
        Self { roots }
    }

    /// No roots at all; add some with [`Self::with_extra_root`].
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds a root that is not AMD's, for tests and simulators. The ARK must
    /// be an RSA certificate signed by itself, and the ASK, if given, signed by
    /// the ARK (both with RSASSA-PSS SHA-384). With `product` `None` the root
    /// serves every product. Callers must only offer this behind an explicit
    /// "insecure" switch: whoever holds the root's key can forge reports.
    pub fn with_extra_root(
        mut self,
        ark_der: Vec<u8>,
        ask_der: Option<Vec<u8>>,
        product: Option<Product>,
    ) -> Result<Self, CertError> {
        let root_err = |what, reason| CertError::Root { what, reason };
        let ark = Cert::parse(&ark_der).map_err(|r| root_err("ARK", r))?;
        let ark_key = ark.rsa_key().map_err(|r| root_err("ARK", r))?;
        ark.verify_pss(ark_key)
            .map_err(|f| root_err("ARK", fault_text(f, "is not self-signed")))?;
        if let Some(ask_der) = &ask_der {
            let ask = Cert::parse(ask_der).map_err(|r| root_err("ASK", r))?;
            ask.rsa_key().map_err(|r| root_err("ASK", r))?;
            ask.verify_pss(ark_key)
                .map_err(|f| root_err("ASK", fault_text(f, "is not signed by the ARK")))?;
        }
        self.roots.push(TrustedRoot {
            product,
            ark_der,
            ask_der,
            kind: RootKind::Extra,
        });
        Ok(self)
    }

    /// [`Self::with_extra_root`] from a file's bytes: PEM or DER, the ARK
    /// first, optionally followed by its ASK (any product).
    pub fn with_extra_root_pem(self, bytes: &[u8]) -> Result<Self, CertError> {
        let mut certs = der_from_pem_or_der(bytes)?.into_iter();
        let ark = certs.next().ok_or(CertError::Empty)?;
        self.with_extra_root(ark, certs.next(), None)
    }

    /// The roots serving `product`, built-in ones first.
    pub(crate) fn for_product(&self, product: Product) -> impl Iterator<Item = &TrustedRoot> {
        self.roots
            .iter()
            .filter(move |r| r.product.is_none_or(|p| p == product))
    }

    /// Whether any root serves `product`.
    pub fn has_product(&self, product: Product) -> bool {
        self.for_product(product).next().is_some()
    }
}

fn fault_text(fault: CertFault, bad_signature: &str) -> String {
    match fault {
        CertFault::Malformed(reason) => reason,
        CertFault::BadSignature => bad_signature.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::Cert;

    fn builtin() -> [(Product, &'static [u8], &'static [u8]); 3] {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        [
            (Product::Milan, milan::ARK, milan::ASK),
            (Product::Genoa, genoa::ARK, genoa::ASK),
            (Product::Turin, turin::ARK, turin::ASK),
        ]
    }

    #[test]
    fn the_built_in_roots_are_the_ones_the_sev_crate_carries() {
        // Two independent copies of AMD's published certificates.
        for ((ours_p, ours_ark, ours_ask), (theirs_p, ark, ask)) in AMD_ROOTS.iter().zip(builtin())
        {
            assert_eq!(*ours_p, theirs_p);
            assert_eq!(
                der_from_pem_or_der(ours_ark).unwrap(),
                der_from_pem_or_der(ark).unwrap()
            );
            assert_eq!(
                der_from_pem_or_der(ours_ask).unwrap(),
                der_from_pem_or_der(ask).unwrap()
            );
        }
    }

    #[test]
    fn every_builtin_ark_is_self_signed_and_signs_its_ask() {
        let roots = TrustedRoots::amd();
        for (product, _, _) in builtin() {
            let root = roots.for_product(product).next().expect("root present");
            assert_eq!(root.kind, RootKind::Amd);
            let ark = Cert::parse(&root.ark_der).unwrap();
            let ark_key = ark.rsa_key().unwrap();
            ark.verify_pss(ark_key).unwrap();
            let ask = Cert::parse(root.ask_der.as_ref().unwrap()).unwrap();
            ask.verify_pss(ark_key).unwrap();
            // Signatures are not symmetric: the ASK does not sign the ARK.
            assert!(matches!(
                ark.verify_pss(ask.rsa_key().unwrap()),
                Err(CertFault::BadSignature)
            ));
        }
        assert_eq!(roots.roots.len(), 3);
    }

    #[test]
    fn builtin_arks_are_accepted_as_extra_roots_and_mismatches_refused() {
        let [(_, milan_ark, milan_ask), (_, genoa_ark, _), _] = builtin();
        let ark = der_from_pem_or_der(milan_ark).unwrap().remove(0);
        let ask = der_from_pem_or_der(milan_ask).unwrap().remove(0);
        let genoa = der_from_pem_or_der(genoa_ark).unwrap().remove(0);
        let roots = TrustedRoots::empty()
            .with_extra_root(ark.clone(), Some(ask.clone()), Some(Product::Milan))
            .unwrap();
        assert!(roots.has_product(Product::Milan));
        assert!(!roots.has_product(Product::Genoa));
        // Genoa's ARK did not sign Milan's ASK.
        let err = TrustedRoots::empty()
            .with_extra_root(genoa, Some(ask.clone()), None)
            .unwrap_err();
        assert!(matches!(err, CertError::Root { what: "ASK", .. }), "{err}");
        // An ASK is not self-signed, so it cannot serve as an ARK.
        let err = TrustedRoots::empty()
            .with_extra_root(ask, None, None)
            .unwrap_err();
        assert!(matches!(err, CertError::Root { what: "ARK", .. }), "{err}");
        let err = TrustedRoots::empty()
            .with_extra_root(vec![0x30, 0x00], None, None)
            .unwrap_err();
        assert!(matches!(err, CertError::Root { what: "ARK", .. }), "{err}");
    }

    #[test]
    fn pem_chains_der_and_junk() {
        let [(_, ark, ask), _, _] = builtin();
        let mut chain = b"ASK follows\n".to_vec();
        chain.extend_from_slice(ask);
        chain.extend_from_slice(b"\n# and the ARK\n");
        chain.extend_from_slice(ark);
        let ders = der_from_pem_or_der(&chain).unwrap();
        assert_eq!(ders.len(), 2);
        assert_eq!(ders[0], der_from_pem_or_der(ask).unwrap()[0]);
        assert_eq!(ders[1], der_from_pem_or_der(ark).unwrap()[0]);
        // DER input comes back unchanged.
        assert_eq!(
            der_from_pem_or_der(&ders[1]).unwrap(),
            vec![ders[1].clone()]
        );

        assert_eq!(der_from_pem_or_der(b""), Err(CertError::Empty));
        assert_eq!(der_from_pem_or_der(b"hello"), Err(CertError::Empty));
        assert!(matches!(
            der_from_pem_or_der(&ders[1][..100]),
            Err(CertError::Parse { index: 0, .. })
        ));
        let truncated = &ark[..ark.len() - 10];
        assert!(matches!(
            der_from_pem_or_der(truncated),
            Err(CertError::Pem { index: 0, .. })
        ));
        let key = b"-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            der_from_pem_or_der(key),
            Err(CertError::Label { index: 0, .. })
        ));
        let not_x509 = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            der_from_pem_or_der(not_x509),
            Err(CertError::Parse { index: 0, .. })
        ));
    }

    #[test]
    fn chain_from_table_prefers_vlek_and_first_entries() {
        let e = |kind, b: u8| CertEntry { kind, der: vec![b] };
        let chain = CertChain::from_table(&[
            e(CertKind::Vcek, 1),
            e(CertKind::Ask, 2),
            e(CertKind::Ask, 3),
            e(CertKind::Vlek, 4),
            e(CertKind::Other([1; 16]), 5),
        ]);
        assert_eq!(
            chain,
            CertChain {
                ark: None,
                ask: Some(vec![2]),
                vek: Some(vec![4]),
            }
        );
        assert_eq!(CertChain::from_table(&[]), CertChain::default());
    }
}
