//! The key broker's gRPC contracts, generated from `proto/`.
//!
//! `keybroker` is the simple-kbs protocol, kept wire-compatible with the Kata
//! shim and the guest's attestation agent. `kbsadmin` is the broker's own admin
//! API (digests, secrets, keysets, resources, attestation records).

pub mod admin_client;

/// The simple-kbs `keybroker` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod keybroker {
    tonic::include_proto!("keybroker");
}

/// The `kbsadmin` package: the broker's authenticated admin API.
#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod kbsadmin {
    tonic::include_proto!("kbsadmin");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_the_wire_contract() {
        assert_eq!(
            keybroker::key_broker_service_server::SERVICE_NAME,
            "keybroker.KeyBrokerService"
        );
        assert_eq!(kbsadmin::admin_server::SERVICE_NAME, "kbsadmin.Admin");
    }

    #[test]
    fn admin_messages_round_trip() {
        use prost::Message as _;
        let d = kbsadmin::ReplaceDigestsRequest {
            node: "n".into(),
            runtime_class: "kata-qemu-snp".into(),
            digests: vec![kbsadmin::Digest {
                mode: "snp".into(),
                digest: vec![7; 48],
                vcpus: 2,
                vcpu_type: "EPYC-v4".into(),
                config: "c".into(),
            }],
        };
        let back = kbsadmin::ReplaceDigestsRequest::decode(d.encode_to_vec().as_slice());
        assert_eq!(back.ok(), Some(d));
    }
}
