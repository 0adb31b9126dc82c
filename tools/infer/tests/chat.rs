//! `infer --chat --model FILE` with the turns scripted on stdin (stdin is
//! not a terminal and --model leaves it free): answers equal one-shot
//! runs, commands reply as `ollama run` does, `/bye` ends the chat.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn smollm2() -> String {
    pipeline_tests::real_model("SmolLM2-135M-Instruct.Q4_1.gguf")
        .to_str()
        .unwrap()
        .to_string()
}

const COMMON: &[&str] = &["--temperature", "0", "-n", "8", "--threads", "1"];

fn infer(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run infer");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn chat_over_stdin_answers_like_one_shot_and_stops_at_bye() {
    let m = smollm2();
    let one_shot = stdout(infer(&[&["--model", &m, "-p", "Hi"], COMMON].concat(), ""));
    let got = stdout(infer(
        &[&["--chat", "--model", &m], COMMON].concat(),
        "Hi\n/set parameter bogus 1\n/set parameter top_k 5\n/bye\nNot read\n",
    ));
    // one-shot prints the answer and a newline; a chat leaves a blank line
    let want = format!(
        "{one_shot}\nCouldn't set parameter: unknown parameter \"bogus\" (known: seed, num_predict, top_k, top_p, min_p, temperature, repeat_penalty, repeat_last_n, num_keep, stop)\nSet parameter 'top_k' to '5'\n"
    );
    assert_eq!(got, want, "\n--- expected ---\n{want}--- got ---\n{got}");
}

#[test]
fn chat_prompt_is_the_first_turn() {
    let m = smollm2();
    let one_shot = stdout(infer(&[&["--model", &m, "-p", "Hi"], COMMON].concat(), ""));
    let got = stdout(infer(
        &[&["--chat", "--model", &m, "-p", "Hi"], COMMON].concat(),
        "/clear\n",
    ));
    assert_eq!(got, format!("{one_shot}\nCleared session context\n"));
}

#[test]
fn chat_refuses_json_and_raw() {
    let m = smollm2();
    for flag in ["--json", "--raw"] {
        let out = infer(&["--chat", "--model", &m, flag], "");
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
