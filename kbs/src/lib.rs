//! The key broker (relying party) for SEV pre-attestation of Kata confidential
//! guests: the simple-kbs `keybroker` protocol, with AMD root pinning, durable
//! launch sessions, measurement verification before policy, and a record of
//! every attestation outcome.

pub mod broker;
pub mod cli;
pub mod grpc;
pub mod store;
pub mod trust;
