//! An SEV-SNP report and its certificates reach the key broker from a guest:
//! decode and verify any bytes against AMD's roots without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snp_attestation::{verify, AttestationReport, CertChain, TrustedRoots, REPORT_LEN};
use std::sync::OnceLock;

static ROOTS: OnceLock<TrustedRoots> = OnceLock::new();

/// Cuts `len` bytes (or what is left) off the front of `rest`; `None` if empty.
fn take(rest: &mut &[u8], len: usize) -> Option<Vec<u8>> {
    let (head, tail) = rest.split_at(len.min(rest.len()));
    *rest = tail;
    (!head.is_empty()).then(|| head.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let roots = ROOTS.get_or_init(TrustedRoots::amd);
    let (report, mut rest) = data.split_at(data.len().min(REPORT_LEN));
    let _ = AttestationReport::decode(report);
    // Two little-endian u16 lengths split the remainder into ARK, ASK, VEK.
    let mut lens = [0u8; 4];
    if let Some(l) = take(&mut rest, 4) {
        lens[..l.len()].copy_from_slice(&l);
    }
    let ark_len = usize::from(u16::from_le_bytes([lens[0], lens[1]]));
    let ask_len = usize::from(u16::from_le_bytes([lens[2], lens[3]]));
    let chain = CertChain {
        ark: take(&mut rest, ark_len),
        ask: take(&mut rest, ask_len),
        vek: take(&mut rest, usize::MAX),
    };
    let _ = verify(report, &chain, roots);
});
