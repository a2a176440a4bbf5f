//! Generates the gRPC code of `proto/amdim/v1/amdim.proto` with
//! tonic-prost-build, using the vendored protoc (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let proto = "../proto/amdim/v1/amdim.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        // The coordinator keeps rank 0's latest numbers in its store (a job row's JSON) as they came.
        .type_attribute(
            ".amdim.v1.TrainingStats",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .compile_protos(&[proto], &["../proto"])?;
    Ok(())
}
