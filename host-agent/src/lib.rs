//! The host agent: derives the launches Kata will perform on this node and the
//! launch digests the key broker must expect for them.
//!
//! The pure parts live in `sev-core` (measurement) and `kata-launch`
//! (configuration and command line); this crate reads files and drives them.

pub mod agent;
pub mod artefacts;
pub mod cli;
pub mod cosign_cmd;
pub mod digests_cmd;
pub mod drift;
pub mod host_cpu;
pub mod kata_cmd;
pub mod kata_edit;
pub mod kata_release;
pub mod knative_cmd;
pub mod launch;
pub mod measure_cmd;
pub mod platform;
pub mod provision;
pub mod status_cmd;
pub mod systemd;
