//! infer runs on the machine that built it, through the batched matmul path,
//! and refuses (exit 2, one line) a CPU that lacks what it was compiled for.
//!
//! The batched path matters: on Intel Sapphire Rapids, ggml built by GCC 12
//! with AMX dies of SIGILL at the first matmul of more than one token, while
//! one-token steps never reach it. These tests run a long prompt through both
//! engines and both models, so that class of fault fails here on any machine
//! that has it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn model(name: &str) -> PathBuf {
    pipeline_tests::real_model(name)
}

fn infer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(args)
        .output()
        .expect("run infer")
}

/// About 150 tokens: long enough that every matmul of the prompt's pass is a
/// batched one (ggml's repacked and tiled kernels start at a few rows).
const LONG_PROMPT: &str = "The history of the lighthouse begins with fires lit on hilltops \
to guide ships home at night. Later, towers of stone carried those fires higher, and by \
the eighteenth century oil lamps with polished reflectors threw their light for miles \
across the water. Keepers trimmed the wicks, cleaned the glass, and logged every passing \
vessel in thick ledgers. When electricity arrived, the keepers' work changed again, and \
today most lights run by themselves, watched from far away. Summarize this in one sentence:";

fn run_long_prompt(model_file: &str, engine: &str) {
    let m = model(model_file);
    let out = infer(&[
        "--model",
        m.to_str().unwrap(),
        "--engine",
        engine,
        "--raw",
        "--json",
        "-p",
        LONG_PROMPT,
        "-n",
        "8",
        "--temperature",
        "0",
        "--threads",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{model_file} --engine {engine}: {:?}\n{stderr}",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let done: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a done record")).unwrap();
    let prompt_tokens = done["data"]["prompt_eval_count"].as_u64().unwrap();
    assert!(
        prompt_tokens > 64,
        "{model_file}: the prompt was {prompt_tokens} tokens, not a batched pass"
    );
    assert_eq!(done["data"]["eval_count"].as_u64(), Some(8), "{stdout}");
}

#[test]
fn long_prompt_native_smollm2() {
    run_long_prompt("SmolLM2-135M-Instruct.Q4_1.gguf", "native");
}

#[test]
fn long_prompt_llama_cpp_smollm2() {
    run_long_prompt("SmolLM2-135M-Instruct.Q4_1.gguf", "llama.cpp");
}

#[test]
fn long_prompt_native_gemma3() {
    run_long_prompt("gemma-3-270m-q4_k_m.gguf", "native");
}

#[test]
fn long_prompt_llama_cpp_gemma3() {
    run_long_prompt("gemma-3-270m-q4_k_m.gguf", "llama.cpp");
}

/// A CPU model of 2008 (SSE4.2, no AVX) under qemu's user-mode emulator: a
/// binary built for AVX or later must say so in one line and exit 2, not die
/// of SIGILL (qemu reports an illegal instruction as signal 4 like a CPU).
#[test]
fn older_cpu_gets_one_line_naming_the_feature() {
    if !cfg!(all(target_arch = "x86_64", target_feature = "avx")) {
        println!("cpu check under qemu: SKIPPED: this build does not use AVX");
        return;
    }
    let qemu = Command::new("qemu-x86_64")
        .args(["-cpu", "Nehalem", env!("CARGO_BIN_EXE_infer"), "--version"])
        .output();
    let out = match qemu {
        Ok(out) => out,
        Err(e) => {
            println!("cpu check under qemu: SKIPPED: qemu-x86_64 not runnable ({e}); apt-get install qemu-user");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{:?}\n{stderr}", out.status);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("infer: error: this CPU (or its OS) lacks ") && stderr.contains("avx"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
