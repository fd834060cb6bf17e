//! The guest client: inside an SEV guest, checks that the secrets reached it
//! through the PSP-protected path (securityfs, `efi_secret`, the entries the
//! launch's mode needs, an online round trip) and reports the outcome to the
//! key broker with a key only an attested guest holds.

pub mod cli;
pub mod delivered;
pub mod entries;
pub mod init;
pub mod online;
pub mod report;
pub mod verify;
