//! The guest client reads secret entries and online payloads it did not write:
//! parse any bytes as each of them without panicking.
#![no_main]

use guest_client::entries::{
    decode_online_payload, parse_bundle, parse_connection, parse_report_key, summarise_policy,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_bundle(data);
    let _ = parse_connection(data);
    let _ = parse_report_key(data);
    let _ = summarise_policy(data);
    let _ = decode_online_payload(data);
});
