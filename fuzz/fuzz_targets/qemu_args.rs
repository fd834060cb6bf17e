//! The command lines of running processes are read from /proc and are not ours:
//! parse any argument vector (laid out as /proc/<pid>/cmdline is, NUL-separated,
//! not necessarily UTF-8) as a QEMU command line without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = data
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let _ = host_agent::drift::parse_qemu_args(&args);
});
