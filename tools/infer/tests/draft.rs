//! Greedy generation with drafted tokens (prompt lookup, verified in one
//! pass) gives exactly the tokens of one-token steps, on both real models,
//! with drafts actually kept along the way.

use std::process::Command;

use serde_json::Value;

const PROMPTS: &[&str] = &[
    "Once upon a time",
    "Why is the sky blue?",
    "List the days of the week: Monday, Tuesday,",
];

/// Token ids and the done record of a greedy raw run.
fn run(model: &str, prompt: &str, draft_max: usize) -> (Vec<i64>, Value) {
    let m = pipeline_tests::real_model(model);
    let out = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args([
            "--model",
            m.to_str().unwrap(),
            "--raw",
            "--json",
            "-p",
            prompt,
        ])
        .args([
            "-n",
            "64",
            "--ignore-eos",
            "--temperature",
            "0",
            "--threads",
            "2",
        ])
        .args(["--draft-max", &draft_max.to_string()])
        .output()
        .expect("run infer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids = lines
        .iter()
        .filter_map(|l| l["data"]["id"].as_i64())
        .collect();
    (ids, lines.last().unwrap()["data"].clone())
}

fn same_tokens_with_and_without_drafts(model: &str) {
    let mut kept = 0;
    for p in PROMPTS {
        let (plain, d0) = run(model, p, 0);
        let (drafted, d4) = run(model, p, 2);
        assert_eq!(plain.len(), 64, "{model} {p:?}");
        assert_eq!(d0["draft_count"], 0, "--draft-max 0 drafts nothing");
        assert_eq!(plain, drafted, "{model} {p:?}: drafts changed the output");
        kept += d4["draft_accepted"].as_u64().unwrap();
    }
    assert!(kept > 0, "{model}: no drafted token was ever kept");
}

#[test]
fn drafts_keep_greedy_output_smollm2() {
    same_tokens_with_and_without_drafts("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn drafts_keep_greedy_output_gemma3() {
    same_tokens_with_and_without_drafts("gemma-3-270m-q4_k_m.gguf");
}

#[test]
fn sampling_at_a_temperature_drafts_nothing() {
    let m = pipeline_tests::real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args([
            "--model",
            m.to_str().unwrap(),
            "--raw",
            "--json",
            "-p",
            "Once upon a time",
        ])
        .args([
            "-n",
            "32",
            "--temperature",
            "0.8",
            "--seed",
            "1",
            "--threads",
            "2",
        ])
        .output()
        .expect("run infer");
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let done: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(done["data"]["draft_count"], 0);
}
