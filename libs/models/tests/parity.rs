//! Token-for-token parity with llama.cpp's engine (in process, same ggml) on
//! SmolLM2-135M (llama) and Gemma3-270M: greedy decoding of raw prompts, f16
//! and q8_0 KV caches; on the CPU, and on a GPU when the build has a GPU
//! backend and the machine a device (`gpu_*` tests say SKIPPED otherwise).

use std::path::PathBuf;

use engine::kv_cache::KvType;
use engine::llama_cpp::{argmax, ContextOptions, LlamaContext, LlamaModel, ModelOptions};
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

fn check(model: &str, kv: KvType, ref_kv: KvType, flash: bool, n_prompts: usize) {
    // On the CPU both engines run the same kernels in the same order: the
    // first-step logits are equal, not merely close.
    check_on(None, model, kv, ref_kv, flash, n_prompts, 0.0);
}

/// Both engines on `gpu` (the whole model) or the CPU; first-step logits
/// must differ by at most `tolerance` and the greedy tokens not at all.
fn check_on(
    gpu: Option<ggml::Device>,
    model: &str,
    kv: KvType,
    ref_kv: KvType,
    flash: bool,
    n_prompts: usize,
    tolerance: f32,
) {
    let path: PathBuf = pipeline_tests::real_model(model);
    // Both engines with their defaults: both repack the weights the CPU
    // backend has faster kernels for (Gemma's Q4_K attn_output on AVX2), so
    // both use the same kernels. Were only one of them to repack, the
    // kernels would sum in another order and logits would drift by ~0.3.
    let mo = ModelOptions {
        n_gpu_layers: if gpu.is_some() { -1 } else { 0 },
        ..Default::default()
    };
    let rm = LlamaModel::load(&path, &mo).unwrap();
    let co = ContextOptions {
        n_ctx: 1024,
        n_seq: 1,
        n_batch: 512,
        n_threads: THREADS as i32,
        type_k: ref_kv,
        type_v: ref_kv,
        flash_attn: flash,
    };
    let mut rc = LlamaContext::new(&rm, &co).unwrap();
    let lo = models::LoadOptions {
        gpu,
        ..Default::default()
    };
    let loaded = models::load(&path, &lo).unwrap();
    let so = SessionOptions {
        n_ctx: 1024,
        n_batch: 512,
        n_threads: THREADS,
        kv_type: kv,
        flash_attn: flash,
        ..Default::default()
    };
    let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
    let where_ = gpu.map_or("CPU".into(), |d| d.description());
    let mut long_seen = false;
    let mut failures = vec![];
    let all = prompts();
    let long = all.last().cloned().unwrap();
    for text in all.into_iter().take(n_prompts - 1).chain([long]) {
        let prompt = rm.tokenize(&text, true, false).unwrap();
        long_seen |= prompt.len() > 512;
        let want = rc.greedy(&prompt, N_GEN).unwrap();
        rc.clear();
        rc.decode(&prompt, 0).unwrap();
        let want_logits = rc.logits_last().unwrap().to_vec();
        let (got, got_logits) = ours(&mut sess, &prompt);
        let diff = got_logits
            .iter()
            .zip(&want_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!(
            "{model} {kv:?} on {where_}: {} prompt tokens: max |Δlogit| {diff:.2e}, \
             {same}/{N_GEN} tokens equal",
            prompt.len()
        );
        if diff > tolerance {
            failures.push(format!(
                "{kv:?} prompt {text:?}: first-step logits differ by {diff}"
            ));
        }
        if got != want {
            failures.push(format!(
                "{kv:?} prompt {text:?}: tokens differ from llama.cpp after {same}: \
                 {got:?} vs {want:?}"
            ));
        }
    }
    // every prompt is reported before the first failure stops the test
    assert!(failures.is_empty(), "on {where_}: {}", failures.join("\n"));
    assert!(long_seen, "one prompt must be longer than the batch");
}

#[test]
fn greedy_tokens_match_llama_cpp_f16_cache() {
    check(SMOLLM2, KvType::F16, KvType::F16, false, 11);
}

#[test]
fn greedy_tokens_match_llama_cpp_q8_0_cache() {
    check(SMOLLM2, KvType::Q8_0, KvType::Q8_0, true, 11);
}

#[test]
fn greedy_tokens_match_llama_cpp_f16_flash() {
    check(SMOLLM2, KvType::F16, KvType::F16, true, 3);
}

// Gemma 3: its 631-token prompt crosses the 512-token sliding window of the
// local layers, so the window mask is exercised, not just the causal one.

#[test]
fn gemma3_greedy_tokens_match_llama_cpp_f16_cache() {
    check(GEMMA3, KvType::F16, KvType::F16, false, 11);
}

#[test]
fn gemma3_greedy_tokens_match_llama_cpp_q8_0_cache() {
    check(GEMMA3, KvType::Q8_0, KvType::Q8_0, true, 3);
}

// On a GPU both engines run the whole model there with the same CUDA (or
// Metal, Vulkan) kernels; our graph is not llama.cpp's node for node, so
// fused kernels and reduction orders may differ: logits within 0.05, tokens
// equal. A CPU-only build, or a machine without a device, skips them and
// says so (scripts/test.sh prints these lines).

fn gpu() -> Option<ggml::Device> {
    let dev = ggml::Device::gpu();
    match dev {
        Some(d) => eprintln!("gpu parity: on {} ({})", d.description(), d.name()),
        None => eprintln!("gpu parity: SKIPPED: no GPU (a CPU-only build, or no device found)"),
    }
    dev
}

#[test]
fn gpu_greedy_tokens_match_llama_cpp_f16_cache() {
    if let Some(dev) = gpu() {
        check_on(
            Some(dev),
            SMOLLM2,
            KvType::F16,
            KvType::F16,
            false,
            11,
            0.05,
        );
    }
}

#[test]
fn gpu_greedy_tokens_match_llama_cpp_q8_0_cache() {
    if let Some(dev) = gpu() {
        check_on(
            Some(dev),
            SMOLLM2,
            KvType::Q8_0,
            KvType::Q8_0,
            true,
            11,
            0.05,
        );
    }
}

#[test]
fn gpu_gemma3_greedy_tokens_match_llama_cpp_f16_cache() {
    if let Some(dev) = gpu() {
        check_on(Some(dev), GEMMA3, KvType::F16, KvType::F16, false, 11, 0.05);
    }
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

/// Fills a small context, shifts it (keep 8, drop half of the rest) on both
/// engines, then generates greedily: our moved-and-re-rotated cells against
/// llama.cpp's own K-shift. On SmolLM2 the first tokens after the shift get
/// exactly llama.cpp's logits (seen: the first 9); later, llama.cpp's cache
/// places tokens in other cells than ours, so attention sums in another
/// order and logits drift by up to ~1. Gemma's two caches (sliding-window
/// and global) drift from the first token (seen: ≤ 1.3). Rebuilding the
/// cache from the kept tokens instead, as we did before, differs from
/// llama.cpp by 3–8 (the kept tokens lose the context they were computed
/// in). The tokens must agree.
fn context_shift_matches_llama_cpp(model: &str, first_tolerance: f32) {
    let path = pipeline_tests::real_model(model);
    let rm = LlamaModel::load(&path, &ModelOptions::default()).unwrap();
    let n_ctx = 256;
    let co = ContextOptions {
        n_ctx: n_ctx as u32,
        n_seq: 1,
        n_batch: 256,
        n_threads: THREADS as i32,
        type_k: KvType::F16,
        type_v: KvType::F16,
        flash_attn: false,
    };
    let mut rc = LlamaContext::new(&rm, &co).unwrap();
    let loaded = models::load(&path, &Default::default()).unwrap();
    let so = SessionOptions {
        n_ctx,
        n_batch: 256,
        n_threads: THREADS,
        ..Default::default()
    };
    let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
    let text = (1..=40)
        .map(|i| format!("Line {i}: the quick brown fox jumps over the lazy dog."))
        .collect::<Vec<_>>()
        .join(" ");
    let mut prompt = rm.tokenize(&text, true, false).unwrap();
    prompt.truncate(n_ctx);
    assert_eq!(prompt.len(), n_ctx, "the prompt fills the context");
    let keep = 8;
    let discard = (n_ctx - keep) / 2;
    // ours
    sess.decode(&prompt).unwrap();
    let builds = sess.graphs_built();
    sess.shift(keep).unwrap();
    assert_eq!(
        sess.graphs_built(),
        builds,
        "the shift computed no forward pass"
    );
    assert_eq!(sess.history().len(), n_ctx - discard);
    assert_eq!(&sess.history()[..keep], &prompt[..keep]);
    // llama.cpp
    rc.decode(&prompt, 0).unwrap();
    rc.shift(keep, discard);
    let (mut ours, mut theirs) = (vec![], vec![]);
    let mut t = argmax(rc.logits_last().unwrap());
    let mut diffs = vec![];
    for _ in 0..32 {
        let a = sess.decode(&[t]).unwrap().to_vec();
        rc.decode(&[t], rc.n_past()).unwrap();
        let b = rc.logits_last().unwrap();
        diffs.push(
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max),
        );
        ours.push(argmax(&a));
        theirs.push(argmax(b));
        t = argmax(b);
    }
    eprintln!("{model}: after the shift, max |Δlogit| per step {diffs:.2?}");
    assert!(
        diffs[0] < first_tolerance,
        "{model}: first logits after the shift differ by {}",
        diffs[0]
    );
    assert_eq!(ours, theirs, "{model}: tokens after the shift");
}

#[test]
fn context_shift_matches_llama_cpp_smollm2() {
    context_shift_matches_llama_cpp(SMOLLM2, 1e-3);
}

#[test]
fn context_shift_matches_llama_cpp_gemma3() {
    context_shift_matches_llama_cpp(GEMMA3, 2.0);
}

#[test]
fn no_mmap_reads_weights_into_memory_with_the_same_results() {
    let path = pipeline_tests::real_model(GEMMA3);
    let so = SessionOptions {
        n_ctx: 256,
        n_threads: THREADS,
        ..Default::default()
    };
    let prompt = [2, 818, 5279, 529, 7001, 563]; // <bos> and five text tokens
    let logits = |no_mmap: bool| {
        let lo = models::LoadOptions {
            no_mmap,
            ..Default::default()
        };
        let loaded = models::load(&path, &lo).unwrap();
        let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
        sess.decode(&prompt).unwrap().to_vec()
    };
    let (mapped, read) = (logits(false), logits(true));
    assert_eq!(mapped.len(), read.len());
    assert!(mapped == read, "the same weights give the same logits");
}

/// Moving the weights from the mapped file into huge pages while the model
/// runs changes nothing: logits bit for bit equal to a run that keeps them
/// on the mapping, at every step, and the move completes within 40 passes.
#[test]
fn weights_moved_into_huge_pages_give_the_same_logits() {
    for model in [SMOLLM2, GEMMA3] {
        let path = pipeline_tests::real_model(model);
        let stay = models::LoadOptions {
            huge_pages: false,
            ..Default::default()
        };
        let a = models::load(&path, &stay).unwrap();
        let b = models::load(&path, &Default::default()).unwrap();
        assert!(a.in_huge_pages.is_none());
        let moved = b.in_huge_pages.clone().expect("a mapped load moves");
        let tok =
            engine::tokenizer::Tokenizer::from_gguf(&gguf::parse((*a.bytes).as_ref()).unwrap())
                .unwrap();
        let prompt: Vec<i32> = tok
            .encode("The capital of France is", true, false)
            .into_iter()
            .map(|t| t as i32)
            .collect();
        let so = SessionOptions {
            n_ctx: 256,
            n_threads: THREADS,
            ..Default::default()
        };
        let mut sa = Session::new(a.model.as_ref(), &so).unwrap();
        let mut sb = Session::new(b.model.as_ref(), &so).unwrap();
        let mut la = sa.decode(&prompt).unwrap().to_vec();
        assert_eq!(la, sb.decode(&prompt).unwrap(), "{model}: prompt");
        for step in 0..40 {
            let t = argmax(&la);
            la = sa.decode(&[t]).unwrap().to_vec();
            assert_eq!(la, sb.decode(&[t]).unwrap(), "{model}: step {step}");
        }
        assert!(
            moved.load(std::sync::atomic::Ordering::Relaxed),
            "{model}: weights not all moved after 40 passes"
        );
    }
}
