//! TCB versions: the security patch levels of the firmware components that a
//! chip's endorsement key is derived from. The packing of the 64-bit word
//! depends on the product generation.

use crate::product::Product;

/// A TCB version word as stored in a report, not yet interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RawTcb(pub u64);

/// A TCB version split into its components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tcb {
    /// FMC firmware security patch level; Turin and later only.
    pub fmc: Option<u8>,
    /// PSP boot loader security patch level.
    pub bootloader: u8,
    /// PSP operating system (TEE) security patch level.
    pub tee: u8,
    /// SNP firmware security patch level.
    pub snp: u8,
    /// CPU microcode patch level.
    pub microcode: u8,
}

impl RawTcb {
    /// Splits the word according to the layout of `product`:
    /// Milan and Genoa keep boot loader, TEE, SNP and microcode in bytes 0, 1,
    /// 6 and 7; Turin keeps FMC, boot loader, TEE, SNP and microcode in bytes
    /// 0, 1, 2, 3 and 7.
    pub fn decode(self, product: Product) -> Tcb {
        let [b0, b1, b2, b3, _, _, b6, b7] = self.0.to_le_bytes();
        match product {
            Product::Milan | Product::Genoa => Tcb {
                fmc: None,
                bootloader: b0,
                tee: b1,
                snp: b6,
                microcode: b7,
            },
            Product::Turin => Tcb {
                fmc: Some(b0),
                bootloader: b1,
                tee: b2,
                snp: b3,
                microcode: b7,
            },
        }
    }
}

impl Tcb {
    /// Packs the components in the layout of `product`, with zeros in the
    /// reserved bytes. FMC is dropped for products without it.
    pub fn to_raw(&self, product: Product) -> RawTcb {
        let bytes = match product {
            Product::Milan | Product::Genoa => [
                self.bootloader,
                self.tee,
                0,
                0,
                0,
                0,
                self.snp,
                self.microcode,
            ],
            Product::Turin => [
                self.fmc.unwrap_or(0),
                self.bootloader,
                self.tee,
                self.snp,
                0,
                0,
                0,
                self.microcode,
            ],
        };
        RawTcb(u64::from_le_bytes(bytes))
    }

    /// The components below their minimum in `min`, as `name SVN < MIN`
    /// (empty when none is); a minimum FMC on a product without one is a
    /// shortfall too.
    pub fn shortfalls(&self, min: &MinTcb) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, min: Option<u8>, have: Option<u8>| match (min, have) {
            (Some(m), Some(h)) if h < m => out.push(format!("{name} {h} < {m}")),
            (Some(m), None) => out.push(format!("{name} missing (want {m})")),
            _ => {}
        };
        cmp("bootloader", min.bootloader, Some(self.bootloader));
        cmp("tee", min.tee, Some(self.tee));
        cmp("snp", min.snp, Some(self.snp));
        cmp("microcode", min.microcode, Some(self.microcode));
        cmp("fmc", min.fmc, self.fmc);
        out
    }
}

/// Minimum TCB components; `None` is not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MinTcb {
    /// Boot loader SVN.
    pub bootloader: Option<u8>,
    /// TEE SVN.
    pub tee: Option<u8>,
    /// SNP SVN.
    pub snp: Option<u8>,
    /// Microcode patch level.
    pub microcode: Option<u8>,
    /// FMC SVN (Turin and later).
    pub fmc: Option<u8>,
}

impl std::fmt::Display for Tcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORD: RawTcb = RawTcb(u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]));

    #[test]
    fn milan_and_genoa_layout() {
        for p in [Product::Milan, Product::Genoa] {
            assert_eq!(
                WORD.decode(p),
                Tcb {
                    fmc: None,
                    bootloader: 1,
                    tee: 2,
                    snp: 7,
                    microcode: 8
                }
            );
        }
    }

    #[test]
    fn turin_layout() {
        assert_eq!(
            WORD.decode(Product::Turin),
            Tcb {
                fmc: Some(1),
                bootloader: 2,
                tee: 3,
                snp: 4,
                microcode: 8
            }
        );
    }

    #[test]
    fn packing_inverts_decoding_up_to_reserved_bytes() {
        for p in Product::ALL {
            let tcb = WORD.decode(p);
            assert_eq!(tcb.to_raw(p).decode(p), tcb);
        }
        assert_eq!(
            WORD.decode(Product::Milan).to_raw(Product::Milan),
            RawTcb(u64::from_le_bytes([1, 2, 0, 0, 0, 0, 7, 8]))
        );
    }

    #[test]
    fn shortfalls_name_each_component_below_its_minimum() {
        let tcb = Tcb {
            fmc: None,
            bootloader: 7,
            tee: 0,
            snp: 20,
            microcode: 210,
        };
        let min = MinTcb {
            bootloader: Some(7),
            snp: Some(21),
            microcode: Some(209),
            ..MinTcb::default()
        };
        assert_eq!(tcb.shortfalls(&min), vec!["snp 20 < 21".to_string()]);
        assert!(tcb.shortfalls(&MinTcb::default()).is_empty());
        let fmc = MinTcb {
            fmc: Some(1),
            ..MinTcb::default()
        };
        assert_eq!(
            tcb.shortfalls(&fmc),
            vec!["fmc missing (want 1)".to_string()]
        );
        let turin = Tcb {
            fmc: Some(0),
            ..tcb
        };
        assert_eq!(turin.shortfalls(&fmc), vec!["fmc 0 < 1".to_string()]);
    }
}
