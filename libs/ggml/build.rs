//! Compiles our own CPU kernels (src/kernels.c) for the instruction sets rustc
//! compiles this build for (the kernel is empty where AVX-512 VNNI is not
//! among them, and ggml's own product is used instead).

fn main() {
    println!("cargo:rerun-if-changed=src/kernels.c");
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
