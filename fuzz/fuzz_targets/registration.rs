//! RegisterLaunches comes from a node, which may be hostile: whatever it sends
//! on top of a registration the broker would accept, deriving and comparing
//! must answer (accept or refuse), never crash. The fuzz input is merged into
//! a valid request for the sample artefacts, whose inputs are all approved, so
//! that mutations reach the derivation and the comparison, not only the
//! approval lookups.
#![no_main]

use host_agent::agent::cache::ArtefactCache;
use host_agent::agent::config::AgentConfig;
use host_agent::agent::derive::{derive_file, Derived, HostFacts};
use host_agent::agent::inputs::registration_of;
use kbs::credentials::{Caller, Role};
use kbs::registration::{derive, prepare_approval, FirmwareImages};
use kbs::store::Store;
use kbs_proto::kbsadmin::{ApproveRequest, RegisterLaunchesRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::OnceLock;

struct Fixture {
    store: Store,
    images: FirmwareImages,
    valid: RegisterLaunchesRequest,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sample = sample_artefacts::write_sample(&dir.path().join("kata")).expect("sample");
    let store = Store::open(dir.path()).expect("store");
    let host = HostFacts {
        host_sig: Some(sev_core::VcpuSignature(0x00a0_0f11)),
        fips: false,
        host_cpus: Some(2),
        ..HostFacts::for_kernel(None, None)
    };
    let (_, derived) = derive_file(
        &sample.config,
        &AgentConfig::default(),
        &host,
        &mut ArtefactCache::new(),
    )
    .expect("the sample derives");
    let Derived::Launches(c) = derived else {
        panic!("the sample is an SEV launch")
    };
    let reg = registration_of(&c, &host, None);
    let inputs = reg.inputs.clone().expect("inputs");
    let operator = Caller {
        role: Role::Operator,
        name: "fuzz".into(),
    };
    let read = |p: &std::path::Path| std::fs::read(p).expect("sample file");
    for request in [
        ApproveRequest {
            kind: "firmware".into(),
            data: read(&sample.firmware),
            ..ApproveRequest::default()
        },
        ApproveRequest {
            kind: "kernel".into(),
            id: inputs.kernel_sha256.clone(),
            ..ApproveRequest::default()
        },
        ApproveRequest {
            kind: "initrd".into(),
            id: inputs.initrd_sha256.clone(),
            ..ApproveRequest::default()
        },
        ApproveRequest {
            kind: "kata-config".into(),
            data: read(&sample.config),
            runtime_class: inputs.runtime_class.clone(),
            ..ApproveRequest::default()
        },
        ApproveRequest {
            kind: "host-cpu".into(),
            id: "0x00a00f11".into(),
            ..ApproveRequest::default()
        },
    ] {
        let (row, data) = prepare_approval(&request, &operator).expect("approvable");
        store.approve(&row, data.as_deref()).expect("stored");
    }
    let images = FirmwareImages::default();
    // Unmutated, it registers: mutations start from an accepted request.
    derive(&store, &images, &inputs, &reg.launches).expect("the sample registration is accepted");
    Fixture {
        store,
        images,
        valid: RegisterLaunchesRequest {
            node: "node-1".into(),
            inputs: reg.inputs,
            launches: reg.launches,
            platform: None,
        },
        _dir: dir,
    }
}

fuzz_target!(|data: &[u8]| {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    let f = FIXTURE.get_or_init(fixture);
    let mut request = f.valid.clone();
    if request.merge(data).is_err() {
        return;
    }
    let inputs = request.inputs.unwrap_or_default();
    let _ = derive(&f.store, &f.images, &inputs, &request.launches);
});
