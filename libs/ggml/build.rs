//! Compiles our own CPU kernels (src/kernels.c) for the instruction sets rustc
//! compiles this build for (empty without AVX2, FMA and F16C, and the prompt
//! kernel without AVX-512 F, BW, VL and VNNI: ggml's own products are used
//! instead), and reads the RPC
//! protocol version from the ggml-rpc.h that llama-cpp-sys-2 installed
//! (`rpc.rs` speaks its hello handshake).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/kernels.c");
    rpc_proto_version();
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        return;
    }
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let mut b = cc::Build::new();
    b.file("src/kernels.c").flag("-O3");
    for f in features.split(',') {
        // rustc's names of the features the kernel uses, as GCC flags
        let flag = match f {
            "avx2" | "fma" | "f16c" | "avxvnni" | "avx512f" | "avx512bw" | "avx512vl"
            | "avx512dq" | "avx512vnni" => format!("-m{f}"),
            _ => continue,
        };
        b.flag(&flag);
    }
    b.compile("llpipe_kernels");
}

/// Writes `$OUT_DIR/rpc_proto.rs` with `RPC_PROTO: [u8; 3]`, the
/// `RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION` of the vendored ggml-rpc.h
/// (llama-cpp-sys-2 installs ggml's headers beside the cmake package it
/// announces as `DEP_LLAMA_GGML_CMAKE_DIR`). A header that cannot be found
/// or read fails the build: a guessed version would make every worker look
/// incompatible, or worse, compatible.
fn rpc_proto_version() {
    let cmake_dir = std::env::var("DEP_LLAMA_GGML_CMAKE_DIR")
        .expect("llama-cpp-sys-2 did not announce DEP_LLAMA_GGML_CMAKE_DIR");
    // <out>/lib/cmake → <out>/include/ggml-rpc.h
    let header = PathBuf::from(cmake_dir).join("../../include/ggml-rpc.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let text = std::fs::read_to_string(&header)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", header.display()));
    let get = |name: &str| -> u8 {
        text.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("#define") && w.next() == Some(name))
                    .then(|| w.next().and_then(|v| v.parse().ok()))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no {name} in {}", header.display()))
    };
    let v = [
        get("RPC_PROTO_MAJOR_VERSION"),
        get("RPC_PROTO_MINOR_VERSION"),
        get("RPC_PROTO_PATCH_VERSION"),
    ];
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("rpc_proto.rs");
    std::fs::write(
        out,
        format!(
            "/// ggml's RPC protocol version (major, minor, patch), from ggml-rpc.h.\n\
             pub const RPC_PROTO: [u8; 3] = [{}, {}, {}];\n",
            v[0], v[1], v[2]
        ),
    )
    .expect("writing rpc_proto.rs");
}
