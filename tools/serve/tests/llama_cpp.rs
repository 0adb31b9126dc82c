//! serve on llama.cpp's engine (`--engine llama.cpp`): continuous batching
//! over a context of several sequences, a client gone freeing its slot,
//! and embeddings that match the native engine's.

use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::{parallel_streams_equal_runs_alone, smol_path, start_with as start, stream_raw};

/// Continuous batching on llama.cpp's engine: 8 streaming clients on
/// `OLLAMA_NUM_PARALLEL=4` plus one that goes away mid-stream. Every answer
/// equals the one the same prompt gets on a one-sequence llama.cpp server
/// (one request at a time), exactly: the context keeps a cache per
/// sequence (`kv_unified` off), so a sequence attends over its own cells
/// as it would alone, and on the CPU a row of a batched matrix product
/// does not depend on the other rows (SmolLM2's Q4_1 weights are not
/// repacked; repacked ones, such as Q4_K, round apart in steps of four
/// rows or more: see engine's `llama_cpp` tests). The prompts start with different
/// words (no cached prefix changes how a prompt is split into batches).
/// The streams overlap, and the gone client's slot serves the next request.
#[test]
fn llama_cpp_parallel_streams_equal_runs_one_at_a_time() {
    let Some(model) = smol_path("llama_cpp_parallel_streams_equal_runs_one_at_a_time") else {
        return;
    };
    let subjects = [
        "Paris",
        "Water",
        "Sunlight",
        "Cats",
        "Music",
        "Volcanoes",
        "Python",
        "Mountains",
    ];
    parallel_streams_equal_runs_alone(&model, &["--engine", "llama.cpp"], &subjects);
}

/// Cosine similarity of two unit vectors given as JSON arrays.
fn cosine(a: &Value, b: &Value) -> f64 {
    let a: Vec<f64> = serde_json::from_value(a.clone()).unwrap();
    let b: Vec<f64> = serde_json::from_value(b.clone()).unwrap();
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Embeddings on llama.cpp's engine (its embeddings mode, per-token final
/// hidden states, mean-pooled and scaled to unit length as the native
/// engine does): `/api/embed`, `/api/embeddings` and `/v1/embeddings`
/// answer, and each vector matches the native engine's for the same text
/// with a cosine above 0.9999 (measured: 1.0 for short texts, 0.9999997
/// for 300 tokens, which llama.cpp reads in other batches), while a
/// generation runs beside them.
#[test]
fn llama_cpp_embeddings_match_the_native_engine() {
    let Some(model) = smol_path("llama_cpp_embeddings_match_the_native_engine") else {
        return;
    };
    let long = "word ".repeat(300);
    let texts = json!(["Why is the sky blue?", "A cat sat on the mat.", long]);
    let body = json!({"model": "smollm2:135m", "input": texts});
    let native = {
        let s = start(&model, &["--engine", "native"], &[]);
        let (code, v) = s.post("/api/embed", body.clone());
        assert_eq!(code, 200, "{v}");
        v
    };
    let s = start(
        &model,
        &["--engine", "llama.cpp"],
        &[("OLLAMA_NUM_PARALLEL", "2")],
    );
    let port = s.port;
    let gen = std::thread::spawn(move || stream_raw(port, "Once upon a time", 32).0);
    std::thread::sleep(Duration::from_millis(300));
    let (code, v) = s.post("/api/embed", body);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["prompt_eval_count"], native["prompt_eval_count"]);
    let (got, want) = (
        v["embeddings"].as_array().unwrap(),
        native["embeddings"].as_array().unwrap(),
    );
    assert_eq!(got.len(), 3);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.as_array().unwrap().len(), 576, "SmolLM2's n_embd");
        assert!((cosine(g, g) - 1.0).abs() < 1e-6);
        let norm: f64 = g
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i}: unit length: {norm}");
        let c = cosine(g, w);
        assert!(c > 0.9999, "text {i}: cosine with the native engine's {c}");
    }
    assert!(!gen.join().unwrap().is_empty());
    let (code, legacy) = s.post(
        "/api/embeddings",
        json!({"model": "smollm2:135m", "prompt": "Why is the sky blue?"}),
    );
    assert_eq!(code, 200, "{legacy}");
    assert!(cosine(&legacy["embedding"], &want[0]) > 0.9999);
    let (code, oa) = s.post(
        "/v1/embeddings",
        json!({"model": "smollm2:135m", "input": "Why is the sky blue?"}),
    );
    assert_eq!(code, 200, "{oa}");
    assert!(cosine(&oa["data"][0]["embedding"], &want[0]) > 0.9999);
}
