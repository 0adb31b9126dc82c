//! Inconsistent models, edited in place from the real ones: each must be
//! refused at load with an error naming the key or tensor, never reach a
//! `GGML_ASSERT` (which aborts the process). The other four families are
//! checked on tiny models in `families.rs`.

mod common;

fn check(file: &str, arch: &str) {
    let src = pipeline_tests::real_model(file);
    let dir = tempfile::tempdir().unwrap();
    common::check_breakages(&src, arch, dir.path());
}

#[test]
fn r12_inconsistent_smollm2_is_refused() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf", "llama");
}

#[test]
fn r12_inconsistent_gemma3_is_refused() {
    check("gemma-3-270m-q4_k_m.gguf", "gemma3");
}

#[test]
fn r12_gemma3_sliding_window_pattern_of_the_wrong_length_is_refused() {
    let src = pipeline_tests::real_model("gemma-3-270m-q4_k_m.gguf");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("swa.gguf");
    common::edit(&src, &dst, |e| {
        let n = e.u32("gemma3.block_count") as usize;
        e.set_bools("gemma3.attention.sliding_window_pattern", n + 1, true);
    });
    let err = common::load_error(&dst);
    assert!(
        err.contains("gemma3.attention.sliding_window_pattern"),
        "{err}"
    );
}
