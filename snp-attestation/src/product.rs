//! The EPYC generations whose SEV-SNP firmware this crate understands. The
//! generation fixes the TCB layout and which AMD root certificates apply.

/// An EPYC processor generation with SEV-SNP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Product {
    /// EPYC 7003 (Zen 3).
    Milan,
    /// EPYC 9004 and 8004 (Zen 4; Siena shares Genoa's keys).
    Genoa,
    /// EPYC 9005 (Zen 5).
    Turin,
}

impl Product {
    /// Every product, oldest first.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The name AMD's Key Distribution Service uses for this product.
    pub fn name(self) -> &'static str {
        match self {
            Self::Milan => "Milan",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// Parses a product name, case-insensitively. A stepping suffix as found
    /// in the VCEK's productName extension ("Milan-B0", "Genoa-B1") is
    /// ignored. "Siena" maps to Genoa, whose certificate chain it uses.
    pub fn from_name(name: &str) -> Option<Self> {
        let base = name.split('-').next().unwrap_or(name).trim();
        [
            ("milan", Self::Milan),
            ("genoa", Self::Genoa),
            ("siena", Self::Genoa),
            ("turin", Self::Turin),
        ]
        .into_iter()
        .find(|(n, _)| base.eq_ignore_ascii_case(n))
        .map(|(_, p)| p)
    }
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_suffixes_are_ignored() {
        for p in Product::ALL {
            assert_eq!(Product::from_name(p.name()), Some(p));
        }
        assert_eq!(Product::from_name("Milan-B0"), Some(Product::Milan));
        assert_eq!(Product::from_name("genoa-b1"), Some(Product::Genoa));
        assert_eq!(Product::from_name("TURIN"), Some(Product::Turin));
        assert_eq!(Product::from_name("Siena-A0"), Some(Product::Genoa));
        assert_eq!(Product::from_name("Rome"), None);
        assert_eq!(Product::from_name(""), None);
        assert_eq!(Product::from_name("Milano"), None);
    }
}
