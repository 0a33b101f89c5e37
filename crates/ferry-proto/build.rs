//! Compiles `proto/*.proto` with protox (a pure-Rust protobuf compiler, so no `protoc`
//! is needed on the machine) and generates the Rust types with prost-build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script binary may be reused from another checkout.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest).join("../../proto");
    let files = [root.join("ferry.proto"), root.join("bus.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    // A reply's quote is boxed: inline it made `Message` (the largest variant of the
    // entry oneofs) 328 bytes, far larger than the other kinds.
    config.boxed(".ferry.v1.Message.quote");
    // So is a forward's origin, for the same reason.
    config.boxed(".ferry.v1.Message.forwarded");
    // And so is a message's media (120 bytes inline, in a send's request too): most
    // messages are text, and every 1:1 send moves its message (and the futures that hold
    // it) several times on its way to the store and the notify (docs/benchmarks.md,
    // *Smaller messages in memory, cheaper hashes, fewer checkpoint copies*).
    config.boxed(".ferry.v1.Message.media");
    config.boxed(".ferry.v1.SendMsg.media");
    config.compile_fds(fds)?;
    Ok(())
}
