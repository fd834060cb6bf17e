//! The host CPU's signature, which SEV and SEV-ES guests started with `-cpu host`
//! see in CPUID and therefore carry in their VMSAs.

use sev_core::VcpuSignature;

/// Reads family, model and stepping of the first processor from the text of
/// `/proc/cpuinfo`. `None` unless it is an AMD CPU with all three fields.
pub fn from_cpuinfo(text: &str) -> Option<VcpuSignature> {
    let mut vendor = None;
    let (mut family, mut model, mut stepping) = (None, None, None);
    for line in text.lines() {
        if line.trim().is_empty() {
            if vendor.is_some() {
                break; // end of the first processor's block
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "vendor_id" => vendor = Some(value.to_string()),
            "cpu family" => family = value.parse::<u32>().ok(),
            "model" => model = value.parse::<u32>().ok(),
            "stepping" => stepping = value.parse::<u32>().ok(),
            _ => {}
        }
    }
    if vendor.as_deref() != Some("AuthenticAMD") {
        return None;
    }
    Some(VcpuSignature::from_family_model_stepping(
        family?, model?, stepping?,
    ))
}

/// The signature of the CPU this process runs on, if it is an AMD CPU.
pub fn detect() -> Option<VcpuSignature> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .as_deref()
        .and_then(from_cpuinfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_amd_processor() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n\
                    model name\t: AMD EPYC 7763\nstepping\t: 1\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\n\
                    cpu family\t: 23\nmodel\t\t: 49\nstepping\t: 0\n";
        assert_eq!(from_cpuinfo(text), Some(VcpuSignature(0x00a0_0f11)));
    }

    #[test]
    fn other_vendors_and_partial_text_give_none() {
        assert_eq!(
            from_cpuinfo("vendor_id : GenuineIntel\ncpu family : 6\nmodel : 85\nstepping : 7\n"),
            None
        );
        assert_eq!(
            from_cpuinfo("vendor_id : AuthenticAMD\ncpu family : 25\n"),
            None
        );
        assert_eq!(from_cpuinfo(""), None);
    }
}
