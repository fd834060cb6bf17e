//! A guest's report reaches the key broker from the network: decode any body
//! and MAC without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 32 bytes play the MAC, the rest the body, so both vary.
    let (mac, body) = data.split_at(data.len().min(32));
    let _ = kbs::report::parse(body, mac);
});
