//! What a launch digest does not cover, said rather than hidden.
//!
//! Two things let a guest differ from what its registered digest describes:
//! - an `image` guest whose root filesystem is not verified: without
//!   `kernel_verity_params` (or under a release that does not read it) the
//!   command line names no root hash, so whatever disk the host attaches boots
//!   under the same digest;
//! - annotations: where `enable_annotations` lets a pod set `kernel_params`,
//!   `kernel_verity_params` or `default_vcpus`, pods get launches (and digests)
//!   that the configuration alone does not give.
//!
//! Kata checks an annotation `io.katacontainers.config.hypervisor.<name>` by
//! matching `<name>` against each `enable_annotations` entry as an unanchored
//! regular expression (`oci.checkAnnotationNameIsValid`), so `kernel_params`
//! also admits `kernel_params_extra` and `.*` admits everything.

use crate::config::KataConfig;
use crate::release::KataRelease;

/// The hypervisor annotations that change the measured launch, by the suffix
/// after `io.katacontainers.config.hypervisor.`.
pub const MEASURED_ANNOTATIONS: [&str; 3] =
    ["kernel_params", "kernel_verity_params", "default_vcpus"];

/// The configuration's `enable_annotations` entries as expressions; an entry
/// that is not a valid expression matches nothing, as in Kata.
fn allowed_patterns(config: &KataConfig) -> Vec<regex::Regex> {
    config
        .qemu
        .enable_annotations
        .value
        .iter()
        .filter_map(|pattern| regex::Regex::new(pattern).ok())
        .collect()
}

/// Whether the configuration lets pods set the hypervisor annotation `name`
/// (the part after `io.katacontainers.config.hypervisor.`).
pub fn annotation_allowed(config: &KataConfig, name: &str) -> bool {
    allowed_patterns(config).iter().any(|re| re.is_match(name))
}

/// Whether the release reads the annotation at all for this guest.
fn release_reads(release: KataRelease, name: &str) -> bool {
    match name {
        "kernel_verity_params" => release.at_least(3, 27),
        "default_vcpus" => !release.is_cc(),
        _ => true,
    }
}

/// The measured annotations this configuration lets pods set, under `release`.
pub fn measured_annotations(config: &KataConfig, release: KataRelease) -> Vec<&'static str> {
    // Compiled once for the three names.
    let patterns = allowed_patterns(config);
    MEASURED_ANNOTATIONS
        .into_iter()
        .filter(|name| release_reads(release, name) && patterns.iter().any(|re| re.is_match(name)))
        .filter(|name| *name != "kernel_verity_params" || config.qemu.is_image_guest())
        .collect()
}

/// One sentence per thing the digests of this configuration do not pin down.
pub fn unmeasured(config: &KataConfig, release: KataRelease) -> Vec<String> {
    let q = &config.qemu;
    let mut out = Vec::new();
    if let Some(image) = &q.image.value {
        let verity_read = !release.is_cc() && release.at_least(3, 27);
        if !verity_read {
            out.push(format!(
                "the root filesystem {} is not measured: Kata {release} passes no root hash on \
                 the command line, so any disk the host attaches boots with the same digest",
                image.display()
            ));
        } else if q.kernel_verity_params.value.trim().is_empty() {
            out.push(format!(
                "the root filesystem {} is not measured: kernel_verity_params is empty, so any \
                 disk the host attaches boots with the same digest",
                image.display()
            ));
        }
    }
    for name in measured_annotations(config, release) {
        out.push(format!(
            "pods may set {name} by annotation (io.katacontainers.config.hypervisor.{name}, \
             allowed by enable_annotations); only the values listed in the agent's \
             [launches.annotations] are registered"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> KataConfig {
        let text = format!(
            "[hypervisor.qemu]\nkernel = \"/k\"\nimage = \"/img\"\nfirmware = \"/fw\"\n{extra}\n"
        );
        KataConfig::parse(Path::new("configuration-qemu-snp.toml"), &text).unwrap()
    }

    fn release(s: &str) -> KataRelease {
        s.parse().unwrap()
    }

    #[test]
    fn annotations_match_as_unanchored_expressions() {
        let c = config("enable_annotations = [\"kernel_params\", \"default_v.*\", \"[\"]");
        assert!(annotation_allowed(&c, "kernel_params"));
        assert!(annotation_allowed(&c, "default_vcpus"));
        // Unanchored, as Go's regexp.MatchString: a longer name matches too.
        assert!(annotation_allowed(&c, "kernel_params_extra"));
        assert!(!annotation_allowed(&c, "kernel_verity_params"));
        assert!(!annotation_allowed(&c, "enable_iommu"));
        let all = config("enable_annotations = [\".*\"]");
        assert_eq!(
            measured_annotations(&all, release("4.1.0")),
            ["kernel_params", "kernel_verity_params", "default_vcpus"]
        );
        assert_eq!(
            measured_annotations(&all, release("3.19.0")),
            ["kernel_params", "default_vcpus"]
        );
        assert_eq!(
            measured_annotations(&all, release("CC-0.8.0")),
            ["kernel_params"]
        );
    }

    #[test]
    fn an_unverified_image_is_named() {
        let plain = unmeasured(&config(""), release("4.1.0"));
        assert_eq!(plain.len(), 1);
        assert!(plain[0].contains("/img") && plain[0].contains("kernel_verity_params is empty"));
        let verified = config("kernel_verity_params = \"root_hash=a,salt=b,data_blocks=1,data_block_size=512,hash_block_size=512\"");
        assert!(unmeasured(&verified, release("4.1.0")).is_empty());
        let old = unmeasured(&verified, release("3.26.0"));
        assert!(
            old[0].contains("Kata 3.26.0 passes no root hash"),
            "{old:?}"
        );
    }
}
