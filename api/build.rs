//! Compiles the protos with protox (pure Rust), so building Vigil needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/vigil/v1/identity.proto",
        "proto/vigil/v1/discovery.proto",
        "proto/spiffe/workload.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;

    // The control plane's side of discovery, wire-identical to the proxy's, compiled on its
    // own (it reuses the names of vigil.v1) with `bytes` fields as `Bytes`, cheap to share.
    let wire = "proto/wire/vigil/v1/discovery.proto";
    println!("cargo:rerun-if-changed={wire}");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("wire");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .bytes(".")
        .codec_path("crate::wire::StreamCodec")
        .out_dir(out)
        .compile_fds(protox::compile([wire], ["proto/wire"])?)?;
    Ok(())
}
