//! The guest client: inside an SEV guest, checks that the secrets reached it
//! through the PSP-protected path (securityfs, `efi_secret`, the entries the
//! launch's mode needs, an online round trip) and reports the outcome to the
//! key broker with a key only an attested guest holds; inside an SEV-SNP
//! guest, proves the launch from the chip's signed report, checks the secret
//! path through the guest components, and reports bound to a second report.

pub mod cli;
pub mod delivered;
pub mod entries;
pub mod guest_components;
pub mod init;
pub mod online;
pub mod report;
pub mod snp;
pub mod snp_device;
pub mod verify;
