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

/// Token ids and the done record of a raw run of `prompt` with `args`.
fn run_with(model: &str, prompt: &str, args: &[&str]) -> (Vec<i64>, Value) {
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
        .args(["--threads", "2"])
        .args(args)
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

/// A greedy run of 64 tokens with at most `draft_max` drafts a pass.
fn run(model: &str, prompt: &str, draft_max: usize) -> (Vec<i64>, Value) {
    let d = draft_max.to_string();
    let args = [
        "-n",
        "64",
        "--ignore-eos",
        "--temperature",
        "0",
        "--draft-max",
        &d,
    ];
    run_with(model, prompt, &args)
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
    let args = ["-n", "32", "--temperature", "0.8", "--seed", "1"];
    let (_, done) = run_with("SmolLM2-135M-Instruct.Q4_1.gguf", "Once upon a time", &args);
    assert_eq!(done["draft_count"], 0);
}
