//! The key broker's gRPC contracts, generated from `proto/`.
//!
//! `keybroker` is the simple-kbs protocol, kept wire-compatible with the Kata
//! shim and the guest's attestation agent.

#![allow(missing_docs, clippy::all, clippy::pedantic)] // generated code

/// The simple-kbs `keybroker` package.
pub mod keybroker {
    tonic::include_proto!("keybroker");
}
