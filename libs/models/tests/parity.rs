//! Token-for-token parity with llama.cpp's engine (in process, same ggml) on
//! SmolLM2-135M (llama) and Gemma3-270M: greedy decoding of raw prompts, f16
//! and q8_0 KV caches.

use std::path::PathBuf;

use engine::kv_cache::KvType;
use engine::reference::{
    argmax, ContextOptions, KvType as RefKv, ModelOptions, RefContext, RefModel,
};
use engine::session::{Session, SessionOptions};

const N_GEN: usize = 64;
// Results do not depend on the thread count (each row is computed by one
// thread); one thread keeps the test steady on a busy machine.
const THREADS: usize = 1;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

fn prompts() -> Vec<String> {
    let long = (1..=42)
        .map(|i| format!("Item {i}: the quick brown fox jumps over the lazy dog."))
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        "The capital of France is".into(),
        "Once upon a time, in a small village by the sea,".into(),
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n".into(),
        "日本の首都は東京です。東京は".into(),
        "Москва — столица России. Это город".into(),
        "Q: What is 17 * 23?\nA:".into(),
        "<html>\n  <body>\n    <h1>".into(),
        "The three laws of thermodynamics are".into(),
        "   lots   of    spaces\tand\ttabs\n\n\nand newlines".into(),
        "🙂 Emoji are fun: 🚀🔥".into(),
        format!("Summarize the following list. {long}\nSummary:"),
    ]
}

/// Our greedy tokens and first-step logits.
fn ours(sess: &mut Session, prompt: &[i32]) -> (Vec<i32>, Vec<f32>) {
    sess.clear();
    let first = sess.decode(prompt).unwrap().to_vec();
    let mut logits = first.clone();
    let mut out = vec![];
    while out.len() < N_GEN {
        let t = argmax(&logits);
        out.push(t);
        if out.len() < N_GEN {
            logits = sess.decode(&[t]).unwrap().to_vec();
        }
    }
    (out, first)
}

fn check(model: &str, kv: KvType, ref_kv: RefKv, flash: bool, n_prompts: usize) {
    let path: PathBuf = pipeline_tests::real_model(model);
    // Plain kernels on both sides: llama.cpp's repacked Q4_K/Q8_0 kernels
    // sum in another order (Gemma's first-step logits then differ by ~0.3).
    let mo = ModelOptions {
        repack: false,
        ..Default::default()
    };
    let rm = RefModel::load(&path, &mo).unwrap();
    let co = ContextOptions {
        n_ctx: 1024,
        n_batch: 512,
        n_threads: THREADS as i32,
        type_k: ref_kv,
        type_v: ref_kv,
        flash_attn: flash,
    };
    let mut rc = RefContext::new(&rm, &co).unwrap();
    let loaded = models::load(&path, &Default::default()).unwrap();
    let so = SessionOptions {
        n_ctx: 1024,
        n_batch: 512,
        n_threads: THREADS,
        kv_type: kv,
        flash_attn: flash,
    };
    let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
    let mut long_seen = false;
    let all = prompts();
    let long = all.last().cloned().unwrap();
    for text in all.into_iter().take(n_prompts - 1).chain([long]) {
        let prompt = rm.tokenize(&text, true, false).unwrap();
        long_seen |= prompt.len() > 512;
        let want = rc.greedy(&prompt, N_GEN).unwrap();
        rc.clear();
        rc.decode(&prompt, 0).unwrap();
        let want_logits = rc.logits_last().to_vec();
        let (got, got_logits) = ours(&mut sess, &prompt);
        let diff = got_logits
            .iter()
            .zip(&want_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "{model} {kv:?} {} prompt tokens: max |Δlogit| {diff:.2e}",
            prompt.len()
        );
        assert!(
            diff < 1e-2,
            "{kv:?} prompt {text:?}: first-step logits differ by {diff}"
        );
        assert_eq!(
            got, want,
            "{kv:?} prompt {text:?}: tokens differ from llama.cpp"
        );
    }
    assert!(long_seen, "one prompt must be longer than the batch");
}

#[test]
fn greedy_tokens_match_llama_cpp_f16_cache() {
    check(SMOLLM2, KvType::F16, RefKv::F16, false, 11);
}

#[test]
fn greedy_tokens_match_llama_cpp_q8_0_cache() {
    check(SMOLLM2, KvType::Q8_0, RefKv::Q8_0, true, 11);
}

#[test]
fn greedy_tokens_match_llama_cpp_f16_flash() {
    check(SMOLLM2, KvType::F16, RefKv::F16, true, 3);
}

// Gemma 3: its 631-token prompt crosses the 512-token sliding window of the
// local layers, so the window mask is exercised, not just the causal one.

#[test]
fn gemma3_greedy_tokens_match_llama_cpp_f16_cache() {
    check(GEMMA3, KvType::F16, RefKv::F16, false, 11);
}

#[test]
fn gemma3_greedy_tokens_match_llama_cpp_q8_0_cache() {
    check(GEMMA3, KvType::Q8_0, RefKv::Q8_0, true, 3);
}

#[test]
fn generation_reuses_one_graph_per_256_cells() {
    let path = pipeline_tests::real_model(SMOLLM2);
    let loaded = models::load(&path, &Default::default()).unwrap();
    let so = SessionOptions {
        n_ctx: 1024,
        n_threads: THREADS,
        ..Default::default()
    };
    let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
    let mut t = argmax(sess.decode(&[1, 504, 3575, 282, 4649, 314]).unwrap());
    assert_eq!(sess.graphs_built(), 1, "the prompt's graph");
    while sess.history().len() < 300 {
        t = argmax(sess.decode(&[t]).unwrap());
    }
    // one graph for steps attending 256 cells, one for 512
    assert_eq!(sess.graphs_built(), 3);
}
