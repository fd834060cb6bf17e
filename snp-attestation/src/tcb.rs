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

    /// Whether every component is at least the one in `min`. FMC is compared
    /// only when both sides have it.
    pub fn at_least(&self, min: &Tcb) -> bool {
        let fmc_ok = match (self.fmc, min.fmc) {
            (Some(a), Some(b)) => a >= b,
            _ => true,
        };
        fmc_ok
            && self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }
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
    fn at_least_compares_each_component() {
        let base = Tcb {
            fmc: Some(1),
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        assert!(base.at_least(&base));
        let mut higher = base;
        higher.microcode = 116;
        assert!(higher.at_least(&base));
        assert!(!base.at_least(&higher));
        let mut mixed = higher;
        mixed.snp = 7;
        assert!(!mixed.at_least(&base));
        let mut fmc_low = base;
        fmc_low.fmc = Some(0);
        assert!(!fmc_low.at_least(&base));
        let mut no_fmc = base;
        no_fmc.fmc = None;
        assert!(no_fmc.at_least(&base));
        assert!(fmc_low.at_least(&no_fmc));
    }
}
