//! What a Trustee answers reaches the broker from the network: any value held
//! under a name, compared with what the broker wants, and any resource policy
//! text, judged, without panicking.
#![no_main]

use kbs::store::{NodeTcb, PlatformTcb, TcbPin};
use kbs::trustee::client::judge_policy;
use kbs::trustee::values::{differences, ReferenceValues, NAMES};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = judge_policy(&text);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let want = ReferenceValues::desired(
        &["ab".repeat(48)],
        &[NodeTcb {
            node: "n".into(),
            tcb: PlatformTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 209,
            },
            product: "Milan".into(),
            reported_at: 0,
        }],
        true,
        &TcbPin::default(),
    );
    let held: BTreeMap<String, Option<serde_json::Value>> = NAMES
        .iter()
        .map(|n| (n.to_string(), Some(value.clone())))
        .collect();
    for d in differences(&want, &held) {
        let _ = d.describe();
    }
});
