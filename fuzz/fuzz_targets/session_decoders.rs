//! Every decoder the key broker and the guest apply to bytes from the network or
//! the secret area: measurements, headers, blobs, DH certificates, secret tables
//! and secret requests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sev_core::secret_table::SecretTable;
use sev_core::session::{LaunchBlob, LaunchMeasurement, SecretHeader};

fuzz_target!(|data: &[u8]| {
    let _ = LaunchMeasurement::decode(data);
    let _ = SecretHeader::decode(data);
    let _ = LaunchBlob::decode(data);
    let _ = sev_core::cert::ecdh_public_key(data);
    let _ = SecretTable::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let mut parts = text.splitn(4, '\n');
        let (g, f, k, i) = (parts.next(), parts.next(), parts.next(), parts.next());
        let _ = kbs::broker::SecretRequest::parse(
            g.unwrap_or(""),
            f.unwrap_or(""),
            k.unwrap_or(""),
            i.unwrap_or(""),
        );
        let _ = sev_core::Guid::parse(text);
    }
});
