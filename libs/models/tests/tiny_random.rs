//! A tiny llama with random weights and SmolLM2's real vocabulary, written as
//! a GGUF here, run by our engine and by llama.cpp's: same greedy tokens.
//! Broken variants of it must fail to load with an error naming the problem.

mod common;

use std::path::Path;

use common::Writer;
use engine::llama_cpp::{ContextOptions, LlamaContext, LlamaModel, ModelOptions};
use engine::session::{Session, SessionOptions};

const N_EMBD: usize = 128;
const N_FF: usize = 256;
const N_LAYER: usize = 2;

/// Writes the tiny model, leaving out tensor `skip` and overriding `head_count`.
fn tiny(path: &Path, skip: &str, head_count: u32) {
    let mut w = Writer::default();
    w.str("general.architecture", "llama");
    w.u32("llama.context_length", 512);
    w.u32("llama.embedding_length", N_EMBD as u32);
    w.u32("llama.block_count", N_LAYER as u32);
    w.u32("llama.feed_forward_length", N_FF as u32);
    w.u32("llama.attention.head_count", head_count);
    w.u32("llama.attention.head_count_kv", 2);
    w.f32("llama.rope.freq_base", 500000.0);
    w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    let nv = w.smollm2_vocab();
    let (e, f, kvd) = (N_EMBD as u64, N_FF as u64, 64u64);
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut t = |w: &mut Writer, name: &str, dims: &[u64], scale: f32, offset: f32| {
        if name != skip {
            w.tensor(name, dims, &mut rng, scale, offset)
        }
    };
    t(&mut w, "token_embd.weight", &[e, nv], 0.5, 0.0);
    for i in 0..N_LAYER {
        t(&mut w, &format!("blk.{i}.attn_norm.weight"), &[e], 0.1, 1.0);
        t(&mut w, &format!("blk.{i}.attn_q.weight"), &[e, e], 0.2, 0.0);
        t(
            &mut w,
            &format!("blk.{i}.attn_k.weight"),
            &[e, kvd],
            0.2,
            0.0,
        );
        t(
            &mut w,
            &format!("blk.{i}.attn_v.weight"),
            &[e, kvd],
            0.2,
            0.0,
        );
        t(
            &mut w,
            &format!("blk.{i}.attn_output.weight"),
            &[e, e],
            0.2,
            0.0,
        );
        t(&mut w, &format!("blk.{i}.ffn_norm.weight"), &[e], 0.1, 1.0);
        t(
            &mut w,
            &format!("blk.{i}.ffn_gate.weight"),
            &[e, f],
            0.2,
            0.0,
        );
        t(&mut w, &format!("blk.{i}.ffn_up.weight"), &[e, f], 0.2, 0.0);
        t(
            &mut w,
            &format!("blk.{i}.ffn_down.weight"),
            &[f, e],
            0.2,
            0.0,
        );
    }
    t(&mut w, "output_norm.weight", &[e], 0.1, 1.0);
    t(&mut w, "output.weight", &[e, nv], 0.5, 0.0);
    w.write(path);
}

#[test]
fn tiny_random_llama_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny(&path, "", 4);
    let rm = LlamaModel::load(&path, &ModelOptions::default()).unwrap();
    let co = ContextOptions {
        n_ctx: 512,
        n_threads: 1,
        ..Default::default()
    };
    let mut rc = LlamaContext::new(&rm, &co).unwrap();
    let loaded = models::load(&path, &Default::default()).unwrap();
    let so = SessionOptions {
        n_ctx: 512,
        n_threads: 1,
        ..Default::default()
    };
    let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
    for text in [
        "Hello world, this is a test",
        "fn main() { println!(\"hi\"); }",
    ] {
        let prompt = rm.tokenize(text, true, false).unwrap();
        let want = rc.greedy(&prompt, 32).unwrap();
        sess.clear();
        let mut logits = sess.decode(&prompt).unwrap().to_vec();
        let mut got = vec![];
        for _ in 0..32 {
            let t = engine::llama_cpp::argmax(&logits);
            got.push(t);
            logits = sess.decode(&[t]).unwrap().to_vec();
        }
        assert_eq!(got, want, "prompt {text:?}");
        assert!(
            got.iter().collect::<std::collections::HashSet<_>>().len() > 1,
            "degenerate output {got:?}"
        );
    }
}

#[test]
fn missing_tensor_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    tiny(&path, "blk.1.ffn_up.weight", 4);
    let err = models::load(&path, &Default::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("blk.1.ffn_up.weight"), "{err}");
}

#[test]
fn zero_heads_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    tiny(&path, "", 0);
    let err = models::load(&path, &Default::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("llama.attention.head_count"), "{err}");
}

#[test]
fn r12_odd_rope_dimension_count_is_a_clear_error() {
    // See: issue 12 ("one decoder for every family"): ggml aborted the
    // process (GGML_ASSERT(n_dims % 2 == 0)) instead.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    tiny(&path, "", 4);
    common::edit_u32(&path, "llama.rope.dimension_count", 31);
    let err = models::load(&path, &Default::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("llama.rope.dimension_count = 31 is odd"),
        "{err}"
    );
}

#[test]
fn full_context_shifts_instead_of_failing() {
    use engine::generate::{generate, GenerateOptions};
    use engine::sampler::{Sampler, SamplerOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny(&path, "", 4);
    let loaded = models::load(&path, &Default::default()).unwrap();
    let so = SessionOptions {
        n_ctx: 48,
        n_threads: 1,
        ..Default::default()
    };
    let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
    let mut sampler = Sampler::new(SamplerOptions {
        temperature: 0.0,
        ..Default::default()
    })
    .unwrap();
    let opts = GenerateOptions {
        num_predict: Some(100),
        num_keep: 4,
        ..Default::default()
    };
    let prompt: Vec<i32> = (100..120).collect();
    let mut n = 0;
    let stats = generate(
        &mut sess,
        &prompt,
        &mut sampler,
        &opts,
        &|_| false,
        &mut |_, _| {
            n += 1;
            Ok(true)
        },
    )
    .unwrap();
    assert_eq!((stats.eval_count, n), (100, 100));
    assert!(sess.history().len() <= 48);
    assert_eq!(
        &sess.history()[..4],
        &prompt[..4],
        "num_keep tokens survive the shift"
    );
}
