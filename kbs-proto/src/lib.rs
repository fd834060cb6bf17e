//! The key broker's gRPC contracts, generated from `proto/`.
//!
//! `keybroker` is the simple-kbs protocol, kept wire-compatible with the Kata
//! shim and the guest's attestation agent. `kbsadmin` is the broker's own admin
//! API (digests, secrets, keysets, resources, attestation records).
//! `kbsstatus` is the guest's authenticated report back to the broker, served
//! beside `keybroker`.

#[cfg(feature = "admin-client")]
pub mod admin_client;

/// The simple-kbs `keybroker` package.
/// Names of the SNP guest's checks that the broker reads from a status
/// report (`kbsstatus.SnpReportBody.checks`): a passed one of these shows
/// the secret path works.
pub mod snp_checks {
    /// A resource fetched through the confidential data hub.
    pub const RESOURCE: &str = "resource";
    /// An attestation token signed by the key the operator pinned.
    pub const TOKEN: &str = "attestation token";
}

#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod keybroker {
    tonic::include_proto!("keybroker");
}

/// The `kbsadmin` package: the broker's authenticated admin API.
#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod kbsadmin {
    tonic::include_proto!("kbsadmin");
}

/// The `kbsstatus` package: the guest's report on its secret delivery path.
#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod kbsstatus {
    tonic::include_proto!("kbsstatus");
}

/// The `reference` package: Trustee's standalone RVPS, which the broker
/// writes reference values to when told to.
#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod rvps {
    tonic::include_proto!("reference");
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
        assert_eq!(
            kbsstatus::guest_status_server::SERVICE_NAME,
            "kbsstatus.GuestStatus"
        );
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

    #[test]
    fn report_body_field_numbers_are_the_wire_contract() {
        use prost::Message as _;
        let body = kbsstatus::ReportBody {
            launch_id: "l".into(),
            checks: vec![kbsstatus::Check {
                name: "n".into(),
                passed: true,
                reason: "r".into(),
            }],
            path_works: true,
            client: "c".into(),
        };
        // Field 1 "l", field 2 {1 "n", 2 true, 3 "r"}, field 3 true, field 4 "c".
        assert_eq!(
            body.encode_to_vec(),
            [
                0x0a, 1, b'l', 0x12, 8, 0x0a, 1, b'n', 0x10, 1, 0x1a, 1, b'r', 0x18, 1, 0x22, 1,
                b'c'
            ]
        );
    }
}
