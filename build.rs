//! Generates the gRPC service and messages from `proto/keibi.proto` with a vendored protoc,
//! so a build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Chunk payloads are `bytes::Bytes`, so a received chunk is not copied again.
    config.bytes([".keibi.v1.ChunkData.data"]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["proto/keibi.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/keibi.proto");
    Ok(())
}
