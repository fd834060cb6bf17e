//! The key broker (relying party) for SEV pre-attestation of Kata confidential
//! guests: the simple-kbs `keybroker` protocol, with AMD root pinning, durable
//! launch sessions, measurement verification before policy, and a record of
//! every attestation outcome; the guest's authenticated report on its secret
//! delivery path (`kbsstatus`); an authenticated admin API for host agents and
//! operators; and Prometheus metrics.

pub mod admin;
pub mod admin_cli;
pub mod approve_cli;
pub mod broker;
pub mod cli;
pub mod connections;
pub mod credentials;
pub mod data_dir;
pub mod grpc;
pub mod metrics;
pub mod policy_requirement;
pub mod refusal_log;
pub mod registration;
pub mod report;
pub mod snp_report;
pub mod store;
pub mod trust;
pub mod trustee;
pub mod trustee_cli;
