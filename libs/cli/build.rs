//! Compiles the start-up CPU check (src/cpu_check.c) for the baseline x86-64,
//! told which target features rustc compiles this build for.

fn main() {
    println!("cargo:rerun-if-changed=src/cpu_check.c");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64")
        || std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
    {
        return;
    }
    // What rustc compiles for (target-cpu=native: this machine's features);
    // ggml's C is built for the same machine (-march=native or the portable
    // build's level), so the list covers both.
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    cc::Build::new()
        .file("src/cpu_check.c")
        // The check must run on any x86-64: the last -march wins.
        .flag("-march=x86-64")
        .flag("-O2")
        .define("LLPIPE_REQUIRED", format!("\"{features}\"").as_str())
        .compile("llpipe_cpu_check");
}
