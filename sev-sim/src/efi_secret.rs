//! The guest's view of injected secrets: the EFI secret table that
//! LAUNCH_SECRET writes into OVMF's secret area, and the files the guest
//! kernel's `efi_secret` module makes of it under
//! `/sys/kernel/security/secrets/coco/`.
//!
//! Table layout, little-endian, GUIDs in EFI mixed-endian byte order (the
//! first three fields little-endian, as Python's `uuid.bytes_le`):
//! header {GUID 1e74f542-71dd-4d66-963e-ef4287ff173b, u32 total length
//! including the 20-byte header}, then entries {GUID, u32 length including the
//! entry's 20-byte header, data}, then zero padding to a multiple of 16.
//!
//! The kernel exposes each entry whose GUID is not all-zero as a file named by
//! the lower-case GUID, mode 0440, holding the entry's data, and stops after
//! 64 files. [`parse_table`] is stricter than the kernel so that a key broker
//! bug shows up in tests: it also refuses more than 64 entries, duplicate
//! GUIDs, stray bytes inside the declared length and non-zero padding.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::bytes::{array_at, u32_at};
use crate::error::SimError;

/// GUID of the secret table header.
pub const TABLE_GUID: &str = "1e74f542-71dd-4d66-963e-ef4287ff173b";
/// Most entries the guest's `efi_secret` module exposes.
pub const MAX_ENTRIES: usize = 64;
/// Length of the table header and of each entry header.
pub const HEADER_LEN: usize = 20;
/// Mode of each file the guest sees.
pub const FILE_MODE: u32 = 0o440;

/// The 16 bytes (EFI mixed-endian order) of a GUID in canonical text form
/// (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, either case).
pub fn guid_from_text(text: &str) -> Result<[u8; 16], SimError> {
    let bad = || SimError::GuidText(text.to_owned());
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return Err(bad());
    }
    let mut be = Vec::with_capacity(16);
    for group in &groups {
        let digits = group.as_bytes();
        for pair in digits.chunks(2) {
            let s = std::str::from_utf8(pair).map_err(|_| bad())?;
            if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            be.push(u8::from_str_radix(s, 16).map_err(|_| bad())?);
        }
    }
    let be: [u8; 16] = be.try_into().map_err(|_| bad())?;
    let [a0, a1, a2, a3, b0, b1, c0, c1, rest @ ..] = be;
    let mut out = [0u8; 16];
    out.iter_mut()
        .zip([a3, a2, a1, a0, b1, b0, c1, c0].iter().chain(rest.iter()))
        .for_each(|(d, s)| *d = *s);
    Ok(out)
}

/// The canonical lower-case text of a GUID stored in EFI mixed-endian order.
pub fn guid_to_text(bytes: &[u8; 16]) -> String {
    let [a0, a1, a2, a3, b0, b1, c0, c1, d0, d1, e @ ..] = *bytes;
    let hex = |bs: &[u8]| bs.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        hex(&[a3, a2, a1, a0]),
        hex(&[b1, b0]),
        hex(&[c1, c0]),
        hex(&[d0, d1]),
        hex(&e)
    )
}

/// A secret table holding `entries` (GUID text, data) in order, zero-padded
/// to a multiple of 16 bytes: what a key broker encrypts for LAUNCH_SECRET.
pub fn build_table(entries: &[(&str, &[u8])]) -> Result<Vec<u8>, SimError> {
    let mut body = Vec::new();
    for (guid, data) in entries {
        let too_large = || SimError::EntryTooLarge {
            guid: (*guid).to_owned(),
        };
        let len = data.len().checked_add(HEADER_LEN).ok_or_else(too_large)?;
        let len = u32::try_from(len).map_err(|_| too_large())?;
        body.extend_from_slice(&guid_from_text(guid)?);
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(data);
    }
    let total = body
        .len()
        .checked_add(HEADER_LEN)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| SimError::EntryTooLarge {
            guid: TABLE_GUID.to_owned(),
        })?;
    let mut table = Vec::with_capacity(body.len() + HEADER_LEN + 16);
    table.extend_from_slice(&guid_from_text(TABLE_GUID)?);
    table.extend_from_slice(&total.to_le_bytes());
    table.extend_from_slice(&body);
    let padded = table.len().div_ceil(16).saturating_mul(16);
    table.resize(padded, 0);
    Ok(table)
}

/// The entries the guest sees in `table`: (lower-case GUID text, data) for
/// each entry whose GUID is not all-zero, in table order. Bounds-checked:
/// malformed input is an error, never a panic.
pub fn parse_table(table: &[u8]) -> Result<Vec<(String, Vec<u8>)>, SimError> {
    let header_guid: [u8; 16] =
        array_at(table, 0).ok_or(SimError::TableTruncated { len: table.len() })?;
    let declared = u32_at(table, 16).ok_or(SimError::TableTruncated { len: table.len() })?;
    if header_guid != guid_from_text(TABLE_GUID)? {
        return Err(SimError::TableGuid {
            found: guid_to_text(&header_guid),
        });
    }
    let end = usize::try_from(declared).unwrap_or(usize::MAX);
    if end < HEADER_LEN || end > table.len() {
        return Err(SimError::TableLength {
            declared,
            available: table.len(),
        });
    }
    if let Some(offset) = table
        .iter()
        .enumerate()
        .skip(end)
        .find(|(_, b)| **b != 0)
        .map(|(i, _)| i)
    {
        return Err(SimError::TablePadding { offset });
    }

    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    let mut offset = HEADER_LEN;
    let mut index = 0usize;
    while offset < end {
        let remaining = end - offset;
        if remaining < HEADER_LEN {
            return Err(SimError::TableTrailing { index, remaining });
        }
        let guid: [u8; 16] =
            array_at(table, offset).ok_or(SimError::TableTrailing { index, remaining })?;
        let len = u32_at(table, offset + 16).ok_or(SimError::TableTrailing { index, remaining })?;
        let bad_entry = SimError::TableEntry {
            index,
            declared: len,
            remaining,
        };
        let entry_len = usize::try_from(len).unwrap_or(usize::MAX);
        if entry_len < HEADER_LEN || entry_len > remaining {
            return Err(bad_entry);
        }
        let data = table
            .get(offset + HEADER_LEN..offset + entry_len)
            .ok_or(bad_entry)?;
        if guid != [0u8; 16] {
            let text = guid_to_text(&guid);
            if !seen.insert(text.clone()) {
                return Err(SimError::DuplicateEntry { guid: text });
            }
            if entries.len() == MAX_ENTRIES {
                return Err(SimError::TooManyEntries { max: MAX_ENTRIES });
            }
            entries.push((text, data.to_vec()));
        }
        offset += entry_len;
        index += 1;
    }
    Ok(entries)
}

/// Plays the guest's `efi_secret` module: creates `dir` (and its parents) and
/// writes one file per entry of `table`, named by the GUID, mode 0440,
/// holding the entry's data. The table is parsed first, so a malformed table
/// writes nothing. A file left by an earlier call is replaced.
pub fn write_dir(table: &[u8], dir: &Path) -> Result<(), SimError> {
    let entries = parse_table(table)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SimError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    for (guid, data) in entries {
        let path = dir.join(&guid);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(&data).map_err(io(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE)).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "e6f5a162-d67f-4750-a67c-5d065f2a9910";
    const B: &str = "1ee27366-0c87-43a6-af48-28543eaf7cb0";

    #[test]
    fn guids_use_efi_mixed_endian_order() {
        // Python: uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b").bytes_le.hex()
        assert_eq!(
            hex::encode(guid_from_text(TABLE_GUID).unwrap()),
            "42f5741edd71664d963eef4287ff173b"
        );
        let upper = guid_from_text(&A.to_uppercase()).unwrap();
        assert_eq!(guid_to_text(&upper), A);
        for bad in [
            "",
            "e6f5a162d67f4750a67c5d065f2a9910",
            "e6f5a162-d67f-4750-a67c-5d065f2a991",
            "e6f5a162-d67f-4750-a67c-5d065f2a99100",
            "g6f5a162-d67f-4750-a67c-5d065f2a9910",
            "e6f5a16-2d67f-4750-a67c-5d065f2a9910",
            "+6f5a162-d67f-4750-a67c-5d065f2a9910",
            "é6f5a16-d67f-4750-a67c-5d065f2a9910",
        ] {
            assert!(guid_from_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn table_layout_is_as_the_kernel_reads_it() {
        let table = build_table(&[(A, b"abc")]).unwrap();
        assert_eq!(table.len(), 48);
        assert_eq!(&table[16..20], &43u32.to_le_bytes());
        assert_eq!(&table[20..36], &guid_from_text(A).unwrap());
        assert_eq!(&table[36..40], &23u32.to_le_bytes());
        assert_eq!(&table[40..43], b"abc");
        assert!(table[43..].iter().all(|b| *b == 0));
    }

    #[test]
    fn parse_round_trips_and_skips_null_entries() {
        let mut table = build_table(&[(A, b"first"), (B, b"")]).unwrap();
        assert_eq!(
            parse_table(&table).unwrap(),
            vec![(A.to_owned(), b"first".to_vec()), (B.to_owned(), vec![])]
        );
        // Wipe the first GUID, as unlinking the file does in the guest.
        table[20..36].fill(0);
        assert_eq!(parse_table(&table).unwrap(), vec![(B.to_owned(), vec![])]);
        assert_eq!(parse_table(&build_table(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn write_dir_creates_one_0440_file_per_entry() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secrets/coco");
        let table = build_table(&[(A, b"bundle"), (B, b"\x00\x01")]).unwrap();
        write_dir(&table, &target).unwrap();
        write_dir(&table, &target).unwrap(); // again, over the same files
        let mut names: Vec<String> = fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![B.to_owned(), A.to_owned()]);
        assert_eq!(fs::read(target.join(A)).unwrap(), b"bundle");
        assert_eq!(fs::read(target.join(B)).unwrap(), b"\x00\x01");
        let mode = fs::metadata(target.join(A)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o440);

        let empty = dir.path().join("empty");
        assert!(write_dir(&table[..10], &empty).is_err());
        assert!(!empty.exists(), "a malformed table writes nothing");
    }

    #[test]
    fn malformed_tables_are_errors() {
        let good = build_table(&[(A, b"abc"), (B, b"defgh")]).unwrap();

        for len in 0..good.len() {
            if len >= 68 {
                // Only the zero padding was cut: still a valid table.
                assert!(parse_table(&good[..len]).is_ok(), "len {len}");
                continue;
            }
            assert!(parse_table(&good[..len]).is_err(), "len {len}");
        }

        let mut wrong_guid = good.clone();
        wrong_guid[0] ^= 1;
        assert!(matches!(
            parse_table(&wrong_guid),
            Err(SimError::TableGuid { .. })
        ));

        for declared in [0u32, 19, 65, u32::MAX] {
            let mut t = good.clone();
            t[16..20].copy_from_slice(&declared.to_le_bytes());
            assert!(parse_table(&t).is_err(), "declared {declared}");
        }
        // Declared length cuts the last entry.
        let mut t = good.clone();
        t[16..20].copy_from_slice(&64u32.to_le_bytes());
        t[64..].fill(0);
        assert!(matches!(parse_table(&t), Err(SimError::TableEntry { .. })));
        // Declared length leaves stray bytes after the last entry.
        let mut t = good.clone();
        t[16..20].copy_from_slice(&72u32.to_le_bytes());
        t.resize(80, 0);
        assert!(matches!(
            parse_table(&t),
            Err(SimError::TableTrailing { .. })
        ));

        for entry_len in [0u32, 19, 24, 1000, u32::MAX] {
            let mut t = good.clone();
            t[36..40].copy_from_slice(&entry_len.to_le_bytes());
            assert!(parse_table(&t).is_err(), "entry length {entry_len}");
        }

        let mut junk = good.clone();
        *junk.last_mut().unwrap() = 1;
        assert!(matches!(
            parse_table(&junk),
            Err(SimError::TablePadding { .. })
        ));

        let dup = build_table(&[(A, b"1"), (A, b"2")]).unwrap();
        assert!(matches!(
            parse_table(&dup),
            Err(SimError::DuplicateEntry { .. })
        ));
    }

    #[test]
    fn at_most_64_entries() {
        let guids: Vec<String> = (0..=MAX_ENTRIES)
            .map(|i| format!("00000000-0000-0000-0000-{i:012x}"))
            .collect();
        // GUID 0 is the null GUID: a deleted entry, not counted.
        let entries: Vec<(&str, &[u8])> = guids.iter().map(|g| (g.as_str(), &b"x"[..])).collect();
        let table = build_table(&entries).unwrap();
        assert_eq!(parse_table(&table).unwrap().len(), MAX_ENTRIES);

        let more = format!("00000000-0000-0000-0000-{:012x}", MAX_ENTRIES + 1);
        let mut entries = entries;
        entries.push((more.as_str(), b"y"));
        let table = build_table(&entries).unwrap();
        assert!(matches!(
            parse_table(&table),
            Err(SimError::TooManyEntries { max: 64 })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let header = guid_from_text(TABLE_GUID).unwrap();
        for round in 0..2000usize {
            let len = round % 97;
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24).to_le_bytes()[0]
                })
                .collect();
            if round % 2 == 0 && buf.len() >= 20 {
                buf[..16].copy_from_slice(&header);
                let declared = u32::try_from(state % 120).unwrap();
                buf[16..20].copy_from_slice(&declared.to_le_bytes());
            }
            let _ = parse_table(&buf);
        }
    }
}
