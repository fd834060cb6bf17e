//! Compiles the .proto contracts with protox (pure Rust), so that building needs
//! no protoc on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/keybroker.proto",
        "proto/kbsadmin.proto",
        "proto/kbsstatus.proto",
        "proto/rvps.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
