//! The 110-byte header of the newc ("070701") cpio format, encoded and decoded
//! field by field.
//!
//! Layout: the magic `070701`, then thirteen fields of eight ASCII hexadecimal
//! digits each: inode, mode, uid, gid, nlink, mtime, filesize, devmajor,
//! devminor, rdevmajor, rdevminor, namesize (including the terminating NUL) and
//! check (0 in this format). The name follows, then NUL padding so that header
//! and name end on a multiple of 4 bytes; then the data, padded to 4 bytes again.

/// The magic of the newc format (no checksums).
pub const MAGIC: &[u8; 6] = b"070701";
/// Length of the header: magic plus 13 fields of 8 hex digits.
pub const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
pub const TRAILER_NAME: &[u8] = b"TRAILER!!!";

/// File type bits of `mode`.
pub const S_IFMT: u32 = 0o170_000;
/// A regular file.
pub const S_IFREG: u32 = 0o100_000;
/// A directory.
pub const S_IFDIR: u32 = 0o040_000;
/// A symbolic link (its data is the target).
pub const S_IFLNK: u32 = 0o120_000;

/// The thirteen numeric fields of a newc header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Inode number; entries sharing one (with `nlink` > 1) are hard links.
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Length of the data that follows the name.
    pub filesize: u32,
    /// Major number of the device holding the file.
    pub devmajor: u32,
    /// Minor number of the device holding the file.
    pub devminor: u32,
    /// Major number of a device node.
    pub rdevmajor: u32,
    /// Minor number of a device node.
    pub rdevminor: u32,
    /// Length of the name including its terminating NUL.
    pub namesize: u32,
    /// Checksum field; 0 in newc.
    pub check: u32,
}

/// Why a header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than 110 bytes remain.
    #[error("truncated header: {0} bytes left, a header has 110")]
    Truncated(usize),
    /// The first six bytes are not `070701`.
    #[error("bad magic {0:?}, expected \"070701\" (newc)")]
    BadMagic(String),
    /// A field holds something other than eight hexadecimal digits.
    #[error("field {0} is not 8 hexadecimal digits")]
    BadField(&'static str),
}

const FIELD_NAMES: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];

impl Header {
    fn fields(&self) -> [u32; 13] {
        [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.devmajor,
            self.devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            self.check,
        ]
    }

    /// The 110 header bytes, hexadecimal digits in lower case.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut text = String::with_capacity(HEADER_LEN);
        text.push_str("070701");
        for v in self.fields() {
            text.push_str(&format!("{v:08x}"));
        }
        let mut out = [0u8; HEADER_LEN];
        for (o, b) in out.iter_mut().zip(text.bytes()) {
            *o = b;
        }
        out
    }

    /// Decodes the header at the start of `bytes` (upper or lower case digits).
    pub fn decode(bytes: &[u8]) -> Result<Header, HeaderError> {
        let head = bytes
            .get(..HEADER_LEN)
            .ok_or(HeaderError::Truncated(bytes.len()))?;
        let (magic, rest) = head.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(
                String::from_utf8_lossy(magic).into_owned(),
            ));
        }
        let mut v = [0u32; 13];
        for ((slot, chunk), name) in v.iter_mut().zip(rest.chunks(8)).zip(FIELD_NAMES) {
            *slot = parse_hex(chunk).ok_or(HeaderError::BadField(name))?;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check] =
            v;
        Ok(Header {
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            filesize,
            devmajor,
            devminor,
            rdevmajor,
            rdevminor,
            namesize,
            check,
        })
    }

    /// The file type bits of `mode`.
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
}

fn parse_hex(chunk: &[u8]) -> Option<u32> {
    if chunk.len() != 8 {
        return None;
    }
    chunk.iter().try_fold(0u32, |acc, &b| {
        let d = char::from(b).to_digit(16)?;
        Some((acc << 4) | d)
    })
}

/// Number of NUL bytes that bring `len` to a multiple of 4.
pub fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            ino: 0x1234,
            mode: S_IFREG | 0o755,
            uid: 0,
            gid: 0xffff_ffff,
            nlink: 1,
            mtime: 1_700_000_000,
            filesize: 3,
            devmajor: 8,
            devminor: 1,
            rdevmajor: 0,
            rdevminor: 0,
            namesize: 5,
            check: 0,
        };
        let b = h.encode();
        assert_eq!(&b[..6], b"070701");
        assert_eq!(&b[6..14], b"00001234");
        assert_eq!(&b[14..22], b"000081ed");
        assert_eq!(Header::decode(&b), Ok(h));
    }

    #[test]
    fn upper_case_and_errors() {
        let mut b = Header::default().encode();
        b[6..14].copy_from_slice(b"0000ABCD");
        assert_eq!(Header::decode(&b).unwrap().ino, 0xabcd);
        b[6] = b'x';
        assert_eq!(Header::decode(&b), Err(HeaderError::BadField("ino")));
        assert_eq!(Header::decode(&b[..50]), Err(HeaderError::Truncated(50)));
        b[5] = b'2';
        assert!(matches!(Header::decode(&b), Err(HeaderError::BadMagic(_))));
    }

    #[test]
    fn padding() {
        assert_eq!(pad4(110 + 5), 1);
        assert_eq!(pad4(112), 0);
        assert_eq!(pad4(3), 1);
    }
}
