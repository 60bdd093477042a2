//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed)
//! into tonic/prost code, and writes the descriptor set that the reflection
//! service serves. `compile_fds` does not write that set itself.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO: &str = "rendezvous/v1/sync.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    // Source info keeps the proto comments, so `grpcurl describe` shows them;
    // imports make the set self-contained (google/protobuf/duration.proto).
    let fds = protox::Compiler::new(["proto"])?
        .include_source_info(true)
        .include_imports(true)
        .open_file(PROTO)?
        .file_descriptor_set();

    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("rendezvous_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Payloads stay `Bytes`: decoded without a copy, and passed between
        // the two callers without another.
        .bytes(".rendezvous.v1")
        .compile_fds(fds)?;
    Ok(())
}
