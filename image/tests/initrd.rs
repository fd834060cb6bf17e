//! End-to-end tests of `guest-image initrd` and `guest-image rootfs` on real files.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use guest_image::add::AddSpec;
use guest_image::archive::{self, Entry};
use guest_image::edit::Change;
use guest_image::{initrd, rootfs, Error, FormatError};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One entry of a test archive, written by the independent encoder below.
struct Raw {
    name: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    ino: u32,
    rdev: (u32, u32),
    data: &'static [u8],
    upper_case: bool,
}

fn raw(name: &'static str, mode: u32, ino: u32, data: &'static [u8]) -> Raw {
    Raw {
        name,
        mode,
        uid: 0,
        gid: 0,
        nlink: if mode & 0o170000 == 0o040000 { 2 } else { 1 },
        mtime: 1_600_000_000,
        ino,
        rdev: (0, 0),
        data,
        upper_case: false,
    }
}

/// A newc archive written with `format!`, independently of the crate's encoder.
fn newc(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    let trailer = raw("TRAILER!!!", 0, 0, b"");
    for e in entries.iter().chain(std::iter::once(&trailer)) {
        let fields = [
            e.ino,
            e.mode,
            e.uid,
            e.gid,
            e.nlink,
            e.mtime,
            e.data.len() as u32,
            8,
            3,
            e.rdev.0,
            e.rdev.1,
            e.name.len() as u32 + 1,
            0,
        ];
        let mut h = String::from("070701");
        for f in fields {
            h += &if e.upper_case {
                format!("{f:08X}")
            } else {
                format!("{f:08x}")
            };
        }
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(e.data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    while out.len() % 512 != 0 {
        out.push(0);
    }
    out
}

fn sample_entries() -> Vec<Raw> {
    let mut init = raw("./init", 0o100755, 2, b"#!/bin/sh\nexec /sbin/kata-agent\n");
    init.uid = 1000;
    init.gid = 100;
    init.upper_case = true;
    let mut console = raw("./dev/console", 0o020600, 9, b"");
    console.rdev = (5, 1);
    let mut sda = raw("./dev/sda", 0o060660, 10, b"");
    sda.rdev = (8, 0);
    let mut link_a = raw("./usr/bin/a", 0o100755, 20, b"");
    link_a.nlink = 2;
    let mut link_b = raw("./usr/bin/b", 0o100755, 20, b"hard-linked data");
    link_b.nlink = 2;
    vec![
        raw(".", 0o040755, 1, b""),
        init,
        raw("./dev", 0o040755, 3, b""),
        console,
        sda,
        raw("./usr", 0o040755, 4, b""),
        raw("./usr/bin", 0o040755, 5, b""),
        raw("./bin", 0o120777, 6, b"usr/bin"),
        link_a,
        link_b,
        raw("./etc", 0o040755, 7, b""),
        raw("./etc/hostname", 0o100600, 8, b"kata\n"),
        raw("./run.fifo", 0o010644, 11, b""),
    ]
}

fn gzip(data: &[u8]) -> Vec<u8> {
    // An ordinary gzip stream with a file name and mtime in its header.
    let mut enc = flate2::GzBuilder::new()
        .filename("initrd.cpio")
        .mtime(1_234_567)
        .write(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn write_file(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    adds: Vec<AddSpec>,
}

fn fixture(compress: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let plain = newc(&sample_entries());
    let input = root.join("kata-containers-initrd-sev.img");
    std::fs::write(&input, if compress { gzip(&plain) } else { plain }).unwrap();
    write_file(&root.join("guest-client"), b"\x7fELF guest client", 0o700);
    write_file(&root.join("guest-client.service"), b"[Unit]\n", 0o600);
    write_file(&root.join("hostname"), b"confidential\n", 0o755);
    let adds = [
        format!(
            "{}:/usr/bin/guest-client:0755",
            root.join("guest-client").display()
        ),
        format!(
            "{}:/etc/systemd/system/guest-client.service",
            root.join("guest-client.service").display()
        ),
        format!("{}:/etc/hostname", root.join("hostname").display()),
    ]
    .iter()
    .map(|s| AddSpec::parse(s).unwrap())
    .collect();
    Fixture {
        _dir: dir,
        root,
        input,
        adds,
    }
}

fn find<'a>(entries: &'a [Entry<'a>], name: &str) -> &'a Entry<'a> {
    entries
        .iter()
        .find(|e| &*e.name == name.as_bytes())
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn adds_files_and_keeps_every_original_entry() {
    for compress in [true, false] {
        let f = fixture(compress);
        let output = f.root.join("new.img");
        let built = initrd::build(&f.input, &output, &f.adds, 1_700_000_000).unwrap();
        assert_eq!(
            built.changes,
            vec![
                Change::Added {
                    name: "usr/bin/guest-client".into(),
                    mode: 0o755
                },
                Change::CreatedDir {
                    name: "etc/systemd".into()
                },
                Change::CreatedDir {
                    name: "etc/systemd/system".into()
                },
                Change::Added {
                    name: "etc/systemd/system/guest-client.service".into(),
                    mode: 0o644
                },
                Change::Replaced {
                    name: "etc/hostname".into(),
                    mode: 0o600
                },
            ]
        );
        let original = newc(&sample_entries());
        let before = archive::parse(&original).unwrap();
        let out = gunzip(&std::fs::read(&output).unwrap());
        assert_eq!(out.len() % 512, 0);
        assert_eq!(out.len() as u64, built.archive_bytes);
        let after = archive::parse(&out).unwrap();
        assert_eq!(after.len(), before.len() + 4);
        assert_eq!(built.entries, after.len());

        // Every original entry in its place, byte for byte, except the replaced one.
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(a.name, b.name);
            if &*b.name == b"./etc/hostname" {
                assert_eq!(a.header.ino, b.header.ino);
                assert_eq!(a.header.mode, 0o100600);
                assert_eq!((a.header.uid, a.header.gid, a.header.nlink), (0, 0, 1));
                assert_eq!(a.header.mtime, 1_700_000_000);
                assert_eq!(&*a.data, b"confidential\n");
                continue;
            }
            assert_eq!(a.raw, b.raw, "{}", String::from_utf8_lossy(&b.name));
            assert_eq!(a.header, b.header);
            assert_eq!(a.data, b.data);
            assert_eq!(a.link_target(), b.link_target());
        }
        for (spec, e) in sample_entries().iter().zip(&after) {
            assert_eq!(&*e.name, spec.name.as_bytes());
            if spec.name == "./etc/hostname" {
                continue; // replaced, checked above
            }
            assert_eq!(e.header.mode, spec.mode);
            assert_eq!((e.header.uid, e.header.gid), (spec.uid, spec.gid));
            assert_eq!(e.header.mtime, spec.mtime);
            assert_eq!(e.header.nlink, spec.nlink);
            assert_eq!((e.header.rdevmajor, e.header.rdevminor), spec.rdev);
            assert_eq!(&*e.data, spec.data);
        }
        assert_eq!(find(&after, "./bin").link_target(), Some(&b"usr/bin"[..]));
        assert_eq!(&*find(&after, "./usr/bin/b").data, b"hard-linked data");
        assert_eq!(find(&after, "./usr/bin/a").header.ino, 20);
        assert_eq!(find(&after, "./dev/console").header.rdevminor, 1);

        let client = find(&after, "./usr/bin/guest-client");
        assert_eq!(client.header.mode, 0o100755);
        assert_eq!(&*client.data, b"\x7fELF guest client");
        assert_eq!((client.header.uid, client.header.gid), (0, 0));
        assert_eq!(client.header.mtime, 1_700_000_000);
        assert_eq!(client.header.ino, 21);
        let dir = find(&after, "./etc/systemd");
        assert_eq!(dir.header.mode, 0o040755);
        assert_eq!(find(&after, "./etc/systemd/system").header.mode, 0o040755);
        let unit = find(&after, "./etc/systemd/system/guest-client.service");
        assert_eq!(unit.header.mode, 0o100644);
        assert_eq!(unit.header.ino, 24);

        // The trailer ends the entries, and only zeros follow it.
        let at = out.windows(10).rposition(|w| w == b"TRAILER!!!").unwrap();
        let header = &out[at - 110..at];
        assert_eq!(&header[..6], b"070701");
        assert_eq!(&header[94..102], b"0000000b");
        assert!(out[at + 11..].iter().all(|&b| b == 0));
    }
}

#[test]
fn builds_are_byte_identical() {
    let f = fixture(true);
    let one = f.root.join("one.img");
    let two = f.root.join("two.img");
    initrd::build(&f.input, &one, &f.adds, 0).unwrap();
    // Source timestamps and permissions do not reach the output when MODE is given.
    std::fs::set_permissions(
        f.root.join("guest-client"),
        std::fs::Permissions::from_mode(0o500),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(f.root.join("guest-client.service"), b"[Unit]\n").unwrap();
    initrd::build(&f.input, &two, &f.adds, 0).unwrap();
    let a = std::fs::read(&one).unwrap();
    let b = std::fs::read(&two).unwrap();
    assert_eq!(a, b);
    // gzip header: magic, deflate, no flags (no name), mtime 0, XFL 2 (level 9), OS 3.
    assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
    assert_eq!(
        std::fs::metadata(&one).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Rebuilding from the output with the same files changes nothing but replacements.
    let three = f.root.join("three.img");
    let built = initrd::build(&one, &three, &f.adds, 0).unwrap();
    assert!(built
        .changes
        .iter()
        .all(|c| matches!(c, Change::Replaced { .. })));
    assert_eq!(std::fs::read(&three).unwrap(), a);
}

fn malformed(bytes: &[u8], compress: bool) -> (String, usize, FormatError) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("broken.img");
    std::fs::write(
        &input,
        if compress {
            gzip(bytes)
        } else {
            bytes.to_vec()
        },
    )
    .unwrap();
    let add = dir.path().join("x");
    std::fs::write(&add, b"x").unwrap();
    let spec = AddSpec::parse(&format!("{}:/x", add.display())).unwrap();
    match initrd::build(&input, &dir.path().join("out.img"), &[spec], 0) {
        Err(e @ Error::Malformed { .. }) => {
            let text = e.to_string();
            assert!(text.contains("broken.img"), "{text}");
            let Error::Malformed { offset, kind, .. } = e else {
                unreachable!()
            };
            assert!(text.contains(&format!("byte {offset} ")), "{text}");
            (text, offset, kind)
        }
        other => panic!("expected a malformed-archive error, got {other:?}"),
    }
}

#[test]
fn malformed_archives_give_named_errors() {
    let good = newc(&sample_entries());
    let entries = archive::parse(&good).unwrap();
    let off1 = entries[0].raw.unwrap().len();
    for compress in [false, true] {
        // Truncated header of the second entry.
        let (_, at, kind) = malformed(&good[..off1 + 50], compress);
        assert_eq!(at, off1);
        assert!(matches!(kind, FormatError::Header(_)), "{kind:?}");

        // Bad magic.
        let mut bad = good.clone();
        bad[off1..off1 + 6].copy_from_slice(b"070707");
        let (text, at, _) = malformed(&bad, compress);
        assert_eq!(at, off1);
        assert!(text.contains("bad magic"), "{text}");

        // Name longer than the data left.
        let mut short = newc(&[raw("./x", 0o100644, 1, b"")]);
        short.truncate(110);
        short[94..102].copy_from_slice(b"00000100");
        let (_, at, kind) = malformed(&short, compress);
        assert_eq!(at, 0);
        assert!(
            matches!(kind, FormatError::NameBeyondData { .. }),
            "{kind:?}"
        );

        // Name beyond the limit.
        let mut long = good.clone();
        long[94..102].copy_from_slice(b"00001388");
        let (_, _, kind) = malformed(&long, compress);
        assert_eq!(kind, FormatError::NameTooLong(5000));

        // Data beyond the end.
        let mut big = good.clone();
        big[off1 + 54..off1 + 62].copy_from_slice(b"7fffffff");
        let (_, at, kind) = malformed(&big, compress);
        assert_eq!(at, off1);
        assert!(
            matches!(kind, FormatError::DataBeyondEnd { .. }),
            "{kind:?}"
        );

        // Not hexadecimal.
        let mut hex = good.clone();
        hex[off1 + 14] = b'g';
        let (text, _, _) = malformed(&hex, compress);
        assert!(text.contains("mode"), "{text}");

        // No trailer.
        let at_trailer = good.windows(10).rposition(|w| w == b"TRAILER!!!").unwrap() - 110;
        let (_, at, kind) = malformed(&good[..at_trailer], compress);
        assert_eq!((at, kind), (at_trailer, FormatError::MissingTrailer));

        // Something after the trailer.
        let mut tail = good.clone();
        tail.extend_from_slice(b"070701");
        let (_, at, kind) = malformed(&tail, compress);
        assert_eq!((at, kind), (good.len(), FormatError::DataAfterTrailer));
    }
}

#[test]
fn never_panics_on_damaged_archives() {
    let good = newc(&sample_entries());
    for len in 0..good.len() {
        let _ = archive::parse(&good[..len]);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        let mut bad = good.clone();
        for _ in 0..3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % bad.len() as u64) as usize;
            bad[i] = (state >> 32) as u8;
        }
        let _ = archive::parse(&bad);
    }
}

#[test]
fn refuses_to_replace_what_is_not_a_plain_file() {
    let f = fixture(true);
    let src = f.root.join("guest-client").display().to_string();
    for (dest, why) in [
        ("/usr/bin", "directory"),
        ("/bin", "symbolic link"),
        ("/bin/guest-client", "not a directory"),
        ("/usr/bin/a", "hard links"),
        ("/dev/console", "character device"),
    ] {
        let spec = AddSpec::parse(&format!("{src}:{dest}")).unwrap();
        let err = initrd::build(&f.input, &f.root.join("out.img"), &[spec], 0).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Conflict { .. }), "{text}");
        assert!(text.contains(why), "{dest}: {text}");
    }
    assert!(!f.root.join("out.img").exists());
}

#[test]
fn cli_uses_source_date_epoch_and_rejects_bad_input() {
    let f = fixture(true);
    let output = f.root.join("new.img");
    let run = |epoch: &str, add: &str| {
        Command::new(env!("CARGO_BIN_EXE_guest-image"))
            .env("SOURCE_DATE_EPOCH", epoch)
            .arg("initrd")
            .arg("--input")
            .arg(&f.input)
            .arg("--output")
            .arg(&output)
            .arg("--add")
            .arg(add)
            .output()
            .unwrap()
    };
    let add = format!(
        "{}:/usr/bin/guest-client:755",
        f.root.join("guest-client").display()
    );
    let r = run("1700000001", &add);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let log = String::from_utf8_lossy(&r.stderr);
    assert!(
        log.contains("added usr/bin/guest-client (mode 0755)"),
        "{log}"
    );
    let out = gunzip(&std::fs::read(&output).unwrap());
    let entries = archive::parse(&out).unwrap();
    assert_eq!(
        find(&entries, "./usr/bin/guest-client").header.mtime,
        1_700_000_001
    );

    let r = run("soon", &add);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("SOURCE_DATE_EPOCH"));
    let r = run("0", "no-destination");
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("SRC:DEST"));
}

#[test]
fn kata_config_digests_match_host_agent() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_artefacts::write_sample(&dir.path().join("sample")).unwrap();
    // The sample initrd is random bytes; start from a real cpio initrd instead.
    let input = dir.path().join("kata-containers-initrd-sev.img");
    std::fs::write(&input, gzip(&newc(&sample_entries()))).unwrap();
    let client = dir.path().join("guest-client");
    write_file(&client, b"\x7fELF", 0o755);
    let output = dir.path().join("new.img");
    let r = Command::new(env!("CARGO_BIN_EXE_guest-image"))
        .env_remove("SOURCE_DATE_EPOCH")
        .args(["initrd", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--add")
        .arg(format!("{}:/usr/bin/guest-client", client.display()))
        .arg("--kata-config")
        .arg(&sample.config)
        .args(["--pod-cpus", "0,2", "--fips", "false"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let printed = String::from_utf8(r.stdout).unwrap();

    // What `host-agent digests` prints for the configuration naming the new initrd.
    let expected_dir = dir.path().join("expected");
    std::fs::create_dir(&expected_dir).unwrap();
    let config = expected_dir.join("configuration-qemu-sev.toml");
    let text = sample_artefacts::sample_config(&sample.firmware, &sample.kernel, &output);
    std::fs::write(&config, text).unwrap();
    let host_agent = |config: &Path| {
        let args = host_agent::digests_cmd::DigestsArgs {
            fips: Some(false),
            ..host_agent::digests_cmd::DigestsArgs::new(vec![config.to_path_buf()], vec![0, 2])
        };
        let mut out = Vec::new();
        host_agent::digests_cmd::run(&args, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let expected = host_agent(&config);
    let lines = |s: &str, key: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.trim_start().starts_with(key))
            .map(str::to_string)
            .collect()
    };
    for key in [
        "digest ", "base64 ", "cmdline ", "initrd ", "mode ", "vcpus ",
    ] {
        assert_eq!(
            lines(&printed, key),
            lines(&expected, key),
            "{key}\n{printed}"
        );
    }
    assert_eq!(lines(&printed, "digest ").len(), 2);
    assert!(printed.starts_with(&format!(
        "kata-qemu-sev ({}, pod CPUs 0)",
        sample.config.display()
    )));
    // The initrd is measured: the original one gives other digests.
    assert_ne!(
        lines(&host_agent(&sample.config), "digest "),
        lines(&printed, "digest ")
    );

    // JSON carries the same digests.
    let r = Command::new(env!("CARGO_BIN_EXE_guest-image"))
        .args(["initrd", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("again.img"))
        .arg("--add")
        .arg(format!("{}:/usr/bin/guest-client", client.display()))
        .arg("--kata-config")
        .arg(&sample.config)
        .args(["--fips", "false", "--json"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let json: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let first = lines(&expected, "digest ")[0].clone();
    assert_eq!(
        json[0]["digest"].as_str().unwrap(),
        first.trim().trim_start_matches("digest").trim()
    );
}

#[test]
fn rootfs_copies_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    let client = dir.path().join("guest-client");
    write_file(&client, b"\x7fELF", 0o700);
    let unit = dir.path().join("guest-client.service");
    write_file(&unit, b"[Unit]\n", 0o600);
    let adds = [
        AddSpec::parse(&format!("{}:/usr/bin/guest-client", client.display())).unwrap(),
        AddSpec::parse(&format!(
            "{}:/etc/systemd/system/guest-client.service:0644",
            unit.display()
        ))
        .unwrap(),
    ];
    let changes = rootfs::add(&root, &adds, 0).unwrap();
    assert_eq!(changes.len(), 5, "{changes:?}");
    let meta = std::fs::metadata(root.join("usr/bin/guest-client")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(meta.modified().unwrap(), std::time::UNIX_EPOCH);
    let meta = std::fs::metadata(root.join("etc/systemd/system/guest-client.service")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    assert_eq!(
        std::fs::read(root.join("usr/bin/guest-client")).unwrap(),
        b"\x7fELF"
    );
    // Again: replacements keep the permissions they have.
    std::fs::set_permissions(
        root.join("usr/bin/guest-client"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let again = rootfs::add(&root, &adds[..1], 0).unwrap();
    assert_eq!(
        again,
        vec![Change::Replaced {
            name: "usr/bin/guest-client".into(),
            mode: 0o750
        }]
    );
    // Through a symbolic link: refused, nothing written on the build machine.
    let through = AddSpec::parse(&format!("{}:/bin/guest-client", client.display())).unwrap();
    let err = rootfs::add(&root, &[through], 0).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
}
