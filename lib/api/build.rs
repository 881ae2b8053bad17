//! Generates the gRPC code for the machine API from `proto/`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let protos = [
        "proto/bramble/machine/v1/machine.proto",
        "proto/bramble/runtime/v1/runtime.proto",
    ];
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The transport (TCP + TLS) is chosen by the server and client crates;
        // this crate stays free of it, so no generated `connect()` helper.
        .build_transport(false)
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
