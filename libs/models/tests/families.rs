//! More native architectures (qwen3, qwen2, phi3, mistral3), each checked on
//! a tiny random-weight GGUF with SmolLM2's real vocabulary against
//! llama.cpp's engine: the same greedy tokens, first-step logits within 1e-3
//! (f32 weights and the same ops in the same order make them equal in
//! practice). Broken variants must fail to load naming the problem.

mod common;

use std::path::Path;

use common::{check_against_llama_cpp, load_error, Tiny};

const N_EMBD: u64 = 128;
const N_FF: u64 = 256;
const N_LAYER: usize = 2;
const N_HEAD: u64 = 4;
const N_HEAD_KV: u64 = 2;
const N_GEN: usize = 32;
const TOL: f32 = 1e-3;

/// The metadata every family shares.
fn common_keys(m: &mut Tiny, head_count: u32) {
    m.u32("context_length", 4096);
    m.u32("embedding_length", N_EMBD as u32);
    m.u32("block_count", N_LAYER as u32);
    m.u32("feed_forward_length", N_FF as u32);
    m.u32("attention.head_count", head_count);
    m.u32("attention.head_count_kv", N_HEAD_KV as u32);
    m.f32("attention.layer_norm_rms_epsilon", 1e-6);
}

/// SwiGLU MLP with separate gate and up.
fn swiglu_mlp(m: &mut Tiny, p: &str) {
    let (e, f) = (N_EMBD, N_FF);
    m.norm(&format!("{p}.ffn_norm.weight"), &[e]);
    m.weight(&format!("{p}.ffn_gate.weight"), &[e, f]);
    m.weight(&format!("{p}.ffn_up.weight"), &[e, f]);
    m.weight(&format!("{p}.ffn_down.weight"), &[f, e]);
}

fn embeddings_and_output(m: &mut Tiny, tied: bool) {
    let nv = m.n_vocab;
    m.tensor("token_embd.weight", &[N_EMBD, nv], 0.5, 0.0);
    m.norm("output_norm.weight", &[N_EMBD]);
    if !tied {
        m.tensor("output.weight", &[N_EMBD, nv], 0.5, 0.0);
    }
}

// ---- qwen3 ----

/// Qwen3: q/k norms, a head size (48) that is not n_embd / n_head (32), tied output.
fn qwen3(path: &Path, skip: &str, head_count: u32, q8_0: bool) {
    let mut m = Tiny::new("qwen3", skip);
    m.q8_0 = q8_0;
    common_keys(&mut m, head_count);
    let hd = 48u64;
    m.u32("attention.key_length", hd as u32);
    m.u32("attention.value_length", hd as u32);
    m.f32("rope.freq_base", 1_000_000.0);
    embeddings_and_output(&mut m, true);
    for i in 0..N_LAYER {
        let p = format!("blk.{i}");
        m.norm(&format!("{p}.attn_norm.weight"), &[N_EMBD]);
        m.weight(&format!("{p}.attn_q.weight"), &[N_EMBD, N_HEAD * hd]);
        m.weight(&format!("{p}.attn_k.weight"), &[N_EMBD, N_HEAD_KV * hd]);
        m.weight(&format!("{p}.attn_v.weight"), &[N_EMBD, N_HEAD_KV * hd]);
        m.norm(&format!("{p}.attn_q_norm.weight"), &[hd]);
        m.norm(&format!("{p}.attn_k_norm.weight"), &[hd]);
        m.weight(&format!("{p}.attn_output.weight"), &[N_HEAD * hd, N_EMBD]);
        swiglu_mlp(&mut m, &p);
    }
    m.write(path);
}

#[test]
fn qwen3_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen3.gguf");
    qwen3(&path, "", N_HEAD as u32, false);
    let diff = check_against_llama_cpp(&path, 512, N_GEN, TOL);
    eprintln!("qwen3: max |Δlogit| {diff:.2e}");
}

#[test]
fn qwen3_q8_0_matches_llama_cpp() {
    // quantized projections, which both engines may repack for their kernels
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen3.gguf");
    qwen3(&path, "", N_HEAD as u32, true);
    let diff = check_against_llama_cpp(&path, 512, N_GEN, TOL);
    eprintln!("qwen3 q8_0: max |Δlogit| {diff:.2e}");
}

#[test]
fn qwen3_missing_k_norm_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    qwen3(&path, "blk.1.attn_k_norm.weight", N_HEAD as u32, false);
    let err = load_error(&path);
    assert!(
        err.contains("cannot find tensor blk.1.attn_k_norm.weight"),
        "{err}"
    );
}

#[test]
fn qwen3_zero_heads_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    qwen3(&path, "", 0, false);
    let err = load_error(&path);
    assert!(err.contains("qwen3.attention.head_count"), "{err}");
}

// ---- qwen2 ----

/// Qwen2: biases on q/k/v (when `biases`), untied output with a bias, or tied.
fn qwen2(path: &Path, skip: &str, biases: bool) {
    let mut m = Tiny::new("qwen2", skip);
    common_keys(&mut m, N_HEAD as u32);
    m.f32("rope.freq_base", 1_000_000.0);
    let kvd = N_HEAD_KV * N_EMBD / N_HEAD;
    embeddings_and_output(&mut m, !biases);
    if biases {
        m.weight("output.bias", &[m.n_vocab]);
    }
    for i in 0..N_LAYER {
        let p = format!("blk.{i}");
        m.norm(&format!("{p}.attn_norm.weight"), &[N_EMBD]);
        m.weight(&format!("{p}.attn_q.weight"), &[N_EMBD, N_EMBD]);
        m.weight(&format!("{p}.attn_k.weight"), &[N_EMBD, kvd]);
        m.weight(&format!("{p}.attn_v.weight"), &[N_EMBD, kvd]);
        if biases {
            m.weight(&format!("{p}.attn_q.bias"), &[N_EMBD]);
            m.weight(&format!("{p}.attn_k.bias"), &[kvd]);
            m.weight(&format!("{p}.attn_v.bias"), &[kvd]);
        }
        m.weight(&format!("{p}.attn_output.weight"), &[N_EMBD, N_EMBD]);
        swiglu_mlp(&mut m, &p);
    }
    m.write(path);
}

#[test]
fn qwen2_with_biases_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen2.gguf");
    qwen2(&path, "", true);
    let diff = check_against_llama_cpp(&path, 512, N_GEN, TOL);
    eprintln!("qwen2 with biases: max |Δlogit| {diff:.2e}");
}

#[test]
fn qwen2_tied_without_biases_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen2.gguf");
    qwen2(&path, "", false);
    let diff = check_against_llama_cpp(&path, 512, N_GEN, TOL);
    eprintln!("qwen2 tied, no biases: max |Δlogit| {diff:.2e}");
}

#[test]
fn qwen2_missing_attn_v_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    qwen2(&path, "blk.0.attn_v.weight", true);
    let err = load_error(&path);
    assert!(
        err.contains("cannot find tensor blk.0.attn_v.weight"),
        "{err}"
    );
}

// ---- phi3 ----

const PHI3_ORIG_CTX: u32 = 256;

/// Phi-3: fused QKV and gate+up, RoPE on 24 of 32 dimensions per head,
/// LongRoPE factors (long past 256 tokens of context) and attention factor,
/// a sliding window that llama.cpp ignores; untied output. Separate Q/K/V
/// matrices unless `fused`.
fn phi3(path: &Path, skip: &str, fused: bool, q8_0: bool) {
    let mut m = Tiny::new("phi3", skip);
    m.q8_0 = q8_0;
    common_keys(&mut m, N_HEAD as u32);
    let (hd, n_rot) = (N_EMBD / N_HEAD, 24u64);
    m.u32("rope.dimension_count", n_rot as u32);
    m.u32("rope.scaling.original_context_length", PHI3_ORIG_CTX);
    m.f32("rope.scaling.attn_factor", 1.19);
    m.u32("attention.sliding_window", 16);
    embeddings_and_output(&mut m, false);
    // wavelength factors ≥ 1, like LongRoPE's
    m.tensor("rope_factors_long.weight", &[n_rot / 2], 2.0, 3.0);
    m.tensor("rope_factors_short.weight", &[n_rot / 2], 0.2, 1.2);
    for i in 0..N_LAYER {
        let p = format!("blk.{i}");
        m.norm(&format!("{p}.attn_norm.weight"), &[N_EMBD]);
        if fused {
            let qkv = (N_HEAD + 2 * N_HEAD_KV) * hd;
            m.weight(&format!("{p}.attn_qkv.weight"), &[N_EMBD, qkv]);
        } else {
            m.weight(&format!("{p}.attn_q.weight"), &[N_EMBD, N_EMBD]);
            m.weight(&format!("{p}.attn_k.weight"), &[N_EMBD, N_HEAD_KV * hd]);
            m.weight(&format!("{p}.attn_v.weight"), &[N_EMBD, N_HEAD_KV * hd]);
        }
        m.weight(&format!("{p}.attn_output.weight"), &[N_EMBD, N_EMBD]);
        m.norm(&format!("{p}.ffn_norm.weight"), &[N_EMBD]);
        m.weight(&format!("{p}.ffn_up.weight"), &[N_EMBD, 2 * N_FF]);
        m.weight(&format!("{p}.ffn_down.weight"), &[N_FF, N_EMBD]);
    }
    m.write(path);
}

#[test]
fn phi3_short_context_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phi3.gguf");
    phi3(&path, "", true, false);
    let diff = check_against_llama_cpp(&path, PHI3_ORIG_CTX as usize, N_GEN, TOL);
    eprintln!("phi3, short factors: max |Δlogit| {diff:.2e}");
}

#[test]
fn phi3_long_context_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phi3.gguf");
    phi3(&path, "", true, false);
    let diff = check_against_llama_cpp(&path, 2 * PHI3_ORIG_CTX as usize, N_GEN, TOL);
    eprintln!("phi3, long factors: max |Δlogit| {diff:.2e}");
}

#[test]
fn phi3_separate_qkv_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phi3.gguf");
    phi3(&path, "", false, false);
    let diff = check_against_llama_cpp(&path, PHI3_ORIG_CTX as usize, N_GEN, TOL);
    eprintln!("phi3, separate q/k/v: max |Δlogit| {diff:.2e}");
}

#[test]
fn phi3_q8_0_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phi3.gguf");
    phi3(&path, "", true, true);
    let diff = check_against_llama_cpp(&path, PHI3_ORIG_CTX as usize, N_GEN, TOL);
    eprintln!("phi3 q8_0: max |Δlogit| {diff:.2e}");
}

#[test]
fn phi3_missing_fused_up_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    phi3(&path, "blk.1.ffn_up.weight", true, false);
    let err = load_error(&path);
    assert!(
        err.contains("cannot find tensor blk.1.ffn_up.weight"),
        "{err}"
    );
}

#[test]
fn phi3_missing_qkv_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    phi3(&path, "blk.0.attn_qkv.weight", true, false);
    // neither the fused matrix nor the three separate ones
    let err = load_error(&path);
    assert!(
        err.contains("cannot find tensor blk.0.attn_qkv.weight"),
        "{err}"
    );
}

// ---- mistral3 ----

const MISTRAL3_ORIG_CTX: u32 = 256;

/// Mistral 3 as Ministral 3 ships: YaRN (factor 16, with a log multiplier)
/// and attention temperature when `yarn`; else plain RoPE with biases on
/// the attention output and the MLP. Untied output.
fn mistral3(path: &Path, skip: &str, yarn: bool) {
    let mut m = Tiny::new("mistral3", skip);
    common_keys(&mut m, N_HEAD as u32);
    m.f32("rope.freq_base", 1_000_000.0);
    if yarn {
        m.str("rope.scaling.type", "yarn");
        m.f32("rope.scaling.factor", 16.0);
        m.u32("rope.scaling.original_context_length", MISTRAL3_ORIG_CTX);
        m.f32("rope.scaling.yarn_log_multiplier", 1.0);
        m.f32("rope.scaling.yarn_beta_fast", 32.0);
        m.f32("rope.scaling.yarn_beta_slow", 1.0);
        m.f32("attention.temperature_scale", 0.1);
    }
    let kvd = N_HEAD_KV * N_EMBD / N_HEAD;
    embeddings_and_output(&mut m, false);
    for i in 0..N_LAYER {
        let p = format!("blk.{i}");
        m.norm(&format!("{p}.attn_norm.weight"), &[N_EMBD]);
        m.weight(&format!("{p}.attn_q.weight"), &[N_EMBD, N_EMBD]);
        m.weight(&format!("{p}.attn_k.weight"), &[N_EMBD, kvd]);
        m.weight(&format!("{p}.attn_v.weight"), &[N_EMBD, kvd]);
        m.weight(&format!("{p}.attn_output.weight"), &[N_EMBD, N_EMBD]);
        swiglu_mlp(&mut m, &p);
        if !yarn {
            m.weight(&format!("{p}.attn_output.bias"), &[N_EMBD]);
            m.weight(&format!("{p}.ffn_gate.bias"), &[N_FF]);
            m.weight(&format!("{p}.ffn_up.bias"), &[N_FF]);
            m.weight(&format!("{p}.ffn_down.bias"), &[N_EMBD]);
        }
    }
    m.write(path);
}

#[test]
fn mistral3_yarn_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mistral3.gguf");
    mistral3(&path, "", true);
    let diff = check_against_llama_cpp(&path, MISTRAL3_ORIG_CTX as usize, N_GEN, TOL);
    eprintln!("mistral3 with YaRN: max |Δlogit| {diff:.2e}");
}

#[test]
fn mistral3_with_biases_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mistral3.gguf");
    mistral3(&path, "", false);
    let diff = check_against_llama_cpp(&path, 512, N_GEN, TOL);
    eprintln!("mistral3 with biases: max |Δlogit| {diff:.2e}");
}

#[test]
fn mistral3_temperature_caps_the_context() {
    // past the original context the queries would need a per-position
    // temperature, which we do not build: the context stops there
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mistral3.gguf");
    mistral3(&path, "", true);
    let loaded = models::load(&path, &Default::default()).unwrap();
    assert_eq!(loaded.model.n_ctx_train(), MISTRAL3_ORIG_CTX as usize);
}

#[test]
fn mistral3_missing_ffn_gate_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    mistral3(&path, "blk.1.ffn_gate.weight", true);
    let err = load_error(&path);
    assert!(
        err.contains("cannot find tensor blk.1.ffn_gate.weight"),
        "{err}"
    );
}

#[test]
fn mistral3_reads_ollamas_yarn_keys_like_llama_cpps() {
    // Ollama's converter writes beta_fast/beta_slow/mscale_all_dim and the
    // temperature as rope.scaling_beta; llama.cpp's writes yarn_* keys
    let dir = tempfile::tempdir().unwrap();
    let config = |ollama: bool| {
        let mut m = Tiny::new("mistral3", "");
        common_keys(&mut m, N_HEAD as u32);
        m.str("rope.scaling.type", "yarn");
        m.f32("rope.scaling.factor", 16.0);
        m.u32("rope.scaling.original_context_length", MISTRAL3_ORIG_CTX);
        let (fast, slow, mul, temp) = if ollama {
            (
                "beta_fast",
                "beta_slow",
                "mscale_all_dim",
                "rope.scaling_beta",
            )
        } else {
            let t = "attention.temperature_scale";
            ("yarn_beta_fast", "yarn_beta_slow", "yarn_log_multiplier", t)
        };
        m.f32(&format!("rope.scaling.{fast}"), 24.0);
        m.f32(&format!("rope.scaling.{slow}"), 2.0);
        m.f32(&format!("rope.scaling.{mul}"), 1.0);
        m.f32(temp, 0.1);
        let path = dir.path().join(format!("{ollama}.gguf"));
        m.write(&path);
        let bytes = std::fs::read(&path).unwrap();
        let gg = gguf::parse(&bytes).unwrap();
        models::mistral3::Config::from_meta(&models::Meta::new(&gg).unwrap()).unwrap()
    };
    let (ours, theirs) = (config(false), config(true));
    assert_eq!(ours, theirs);
    assert_eq!((ours.rope.beta_fast, ours.rope.beta_slow), (24.0, 2.0));
    assert_eq!(ours.hp.n_ctx_train, MISTRAL3_ORIG_CTX as usize);
}

// ---- gemma3 ----

/// Gemma 3: head size 64 (not n_embd / n_head), q/k norms, post norms,
/// GeGLU, local layers with a window, tied output. Loaded by our engine
/// only (the parity of Gemma 3 is checked on the real 270M model).
fn gemma3(path: &Path) {
    let mut m = Tiny::new("gemma3", "");
    common_keys(&mut m, N_HEAD as u32);
    let hd = 64u64;
    m.u32("attention.key_length", hd as u32);
    m.u32("attention.value_length", hd as u32);
    m.u32("attention.sliding_window", 16);
    embeddings_and_output(&mut m, true);
    for i in 0..N_LAYER {
        let p = format!("blk.{i}");
        m.norm(&format!("{p}.attn_norm.weight"), &[N_EMBD]);
        m.weight(&format!("{p}.attn_q.weight"), &[N_EMBD, N_HEAD * hd]);
        m.weight(&format!("{p}.attn_k.weight"), &[N_EMBD, N_HEAD_KV * hd]);
        m.weight(&format!("{p}.attn_v.weight"), &[N_EMBD, N_HEAD_KV * hd]);
        m.norm(&format!("{p}.attn_q_norm.weight"), &[hd]);
        m.norm(&format!("{p}.attn_k_norm.weight"), &[hd]);
        m.weight(&format!("{p}.attn_output.weight"), &[N_HEAD * hd, N_EMBD]);
        m.norm(&format!("{p}.post_attention_norm.weight"), &[N_EMBD]);
        swiglu_mlp(&mut m, &p);
        m.norm(&format!("{p}.post_ffw_norm.weight"), &[N_EMBD]);
    }
    m.write(path);
}

// ---- every family ----

#[test]
fn r12_odd_rope_dimension_count_is_a_clear_error() {
    // See: issue 12 ("one decoder for every family"): only phi3 checked, and
    // ggml aborted the process (GGML_ASSERT(n_dims % 2 == 0)) on the others.
    let dir = tempfile::tempdir().unwrap();
    type Build = fn(&Path);
    let families: [(&str, Build, u32); 5] = [
        ("qwen3", |p| qwen3(p, "", N_HEAD as u32, false), 47),
        ("qwen2", |p| qwen2(p, "", true), 31),
        ("phi3", |p| phi3(p, "", true, false), 23),
        ("mistral3", |p| mistral3(p, "", true), 31),
        ("gemma3", gemma3, 63),
    ];
    for (arch, build, odd) in families {
        let path = dir.path().join(format!("{arch}.gguf"));
        build(&path);
        // the file as written loads: only the edit breaks it
        models::load(&path, &Default::default()).unwrap();
        let key = format!("{arch}.rope.dimension_count");
        common::edit_u32(&path, &key, odd);
        let err = load_error(&path);
        assert!(err.contains(&format!("{key} = {odd} is odd")), "{err}");
    }
}

#[test]
fn r12_inconsistent_tiny_models_are_refused() {
    // See: issue 12: every GGML_ASSERT reachable from a model file is
    // preceded by a clear error, in all six families (llama and gemma3 on
    // the real models in inconsistent.rs).
    let dir = tempfile::tempdir().unwrap();
    type Build = fn(&Path);
    let families: [(&str, Build); 5] = [
        ("qwen3", |p| qwen3(p, "", N_HEAD as u32, false)),
        ("qwen2", |p| qwen2(p, "", true)),
        ("phi3", |p| phi3(p, "", true, false)),
        ("mistral3", |p| mistral3(p, "", true)),
        ("gemma3", gemma3),
    ];
    for (arch, build) in families {
        let src = dir.path().join(format!("{arch}.gguf"));
        build(&src);
        common::check_breakages(&src, arch, dir.path());
    }
}
