//! Guest initrds given to `guest-image` are input: parse any bytes as a newc
//! cpio archive without panicking, and write back what parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = guest_image::archive::parse(data) {
        let mut out = Vec::new();
        let _ = guest_image::archive::write(&entries, &mut out);
    }
});
