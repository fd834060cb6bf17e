//! The guest image tool: puts the guest client (and later its unit) into a Kata
//! guest initrd or rootfs, reproducibly, and tells the launch digests the new
//! initrd measures to.
//!
//! The initrd is a gzip'd newc cpio archive. [`archive`] reads and writes it
//! (headers in [`newc`]), keeping every original entry byte for byte; [`edit`]
//! adds files to the entries without I/O; [`initrd`] and [`rootfs`] are the two
//! commands; [`digests`] computes the launch digests with the host agent's code.

pub mod add;
pub mod archive;
pub mod cli;
pub mod digests;
pub mod edit;
pub mod epoch;
pub mod error;
pub mod gz;
pub mod initrd;
pub mod newc;
pub mod rootfs;

pub use error::{Error, FormatError};
