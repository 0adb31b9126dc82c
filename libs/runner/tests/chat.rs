//! The interactive chat on a scripted conversation with the real SmolLM2,
//! greedy: the cache is reused between turns and the answers are exactly
//! those of a one-shot run of the same conversation.

use std::sync::atomic::AtomicBool;

use runner::{chat, ChatOptions, Turn};
use runner::{infer, Event, InferOptions, Message};

fn options(num_predict: usize) -> ChatOptions {
    let mut o = InferOptions {
        model: pipeline_tests::real_model("SmolLM2-135M-Instruct.Q4_1.gguf"),
        num_predict: Some(num_predict),
        n_ctx: 1024,
        n_threads: 1,
        // These tests compare a chat's turns, decoded in the batches cache
        // reuse leaves, with one-shot runs of the same conversations. ggml's
        // batched kernels (tinyBLAS, tiled flash attention) add in orders
        // that depend on the batch, so a near tie may go the other way (seen
        // on AVX-512); one-row kernels everywhere make the split irrelevant.
        batch_invariant: true,
        ..InferOptions::default()
    };
    o.sampler.temperature = 0.0;
    ChatOptions {
        infer: o,
        ..ChatOptions::default()
    }
}

/// Chats through `lines`; the turns and everything printed.
fn run(o: &ChatOptions, lines: &[&str]) -> (Vec<Turn>, String) {
    let mut input = lines.iter().map(|l| l.to_string());
    let mut out = Vec::new();
    let turns = chat(o, &mut input, &mut out, &AtomicBool::new(false)).unwrap();
    (turns, String::from_utf8(out).unwrap())
}

/// The answer of a fresh one-shot run of `prompt` after `messages`.
fn one_shot(o: &InferOptions, messages: Vec<Message>, prompt: &str) -> String {
    let o = InferOptions {
        messages,
        prompt: prompt.into(),
        ..o.clone()
    };
    let mut text = String::new();
    infer(&o, &mut |ev| {
        if let Event::Token { text: t, .. } | Event::Text(t) = ev {
            text.push_str(t);
        }
        Ok(())
    })
    .unwrap();
    text
}

fn history(turns: &[Turn]) -> Vec<Message> {
    turns
        .iter()
        .flat_map(|t| [Message::user(&t.user), Message::assistant(&t.answer)])
        .collect()
}

#[test]
fn second_turn_decodes_only_new_tokens_and_matches_one_shot() {
    let o = options(20);
    let (turns, out) = run(
        &o,
        &["What is the capital of France?", "And what about Italy?"],
    );
    assert_eq!(turns.len(), 2);
    let (t1, t2) = (&turns[0], &turns[1]);
    assert!(!t1.answer.is_empty() && !t2.answer.is_empty());
    assert_eq!(t1.cached, 0);
    assert_eq!(t1.stats.prompt_eval_count, t1.prompt_tokens);
    // Turn 2 reuses turn 1's prompt and (nearly all of) its answer.
    assert!(
        t2.cached >= t1.prompt_tokens + t1.stats.eval_count - 1,
        "cached {} of turn 2, turn 1 had {} prompt + {} answer tokens",
        t2.cached,
        t1.prompt_tokens,
        t1.stats.eval_count
    );
    assert_eq!(t2.stats.prompt_eval_count, t2.prompt_tokens - t2.cached);
    assert!(
        t2.stats.prompt_eval_count * 3 < t2.prompt_tokens,
        "turn 2 decoded {} of {} tokens",
        t2.stats.prompt_eval_count,
        t2.prompt_tokens
    );
    // Same answers as one-shot runs of the same conversations.
    assert_eq!(t1.answer, one_shot(&o.infer, vec![], &t1.user));
    assert_eq!(
        t2.answer,
        one_shot(&o.infer, history(&turns[..1]), &t2.user)
    );
    assert_eq!(out, format!("{}\n\n{}\n\n", t1.answer, t2.answer));
}

#[test]
fn new_system_prompt_cuts_the_cache_back_and_still_matches_one_shot() {
    let o = options(12);
    let (turns, out) = run(&o, &["Hi", "/set system You are a pirate.", "Hi"]);
    assert!(out.contains("Set system message.\n"), "{out}");
    assert_eq!(turns.len(), 2);
    // The system prompt comes first, so little of the cache is reused.
    assert!(turns[1].cached < 8, "cached {}", turns[1].cached);
    let mut pirate = o.infer.clone();
    pirate.system = Some("You are a pirate.".into());
    assert_eq!(
        turns[1].answer,
        one_shot(&pirate, history(&turns[..1]), "Hi")
    );
}

#[test]
fn clear_forgets_the_conversation_and_the_cache() {
    let o = options(8);
    let (turns, out) = run(&o, &["Hi", "/clear", "Hi"]);
    assert!(out.contains("Cleared session context\n"), "{out}");
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1].cached, 0);
    assert_eq!(turns[1].prompt_tokens, turns[0].prompt_tokens);
    assert_eq!(turns[1].answer, turns[0].answer);
    // Without /clear the same message continues the conversation.
    let (kept, _) = run(&o, &["Hi", "Hi"]);
    assert!(kept[1].cached > kept[0].prompt_tokens);
}

#[test]
fn set_parameter_changes_options_and_rejects_bad_ones() {
    let o = options(16);
    let (turns, out) = run(
        &o,
        &[
            "/set parameter num_predict 3",
            "/set parameter bogus 1",
            "/set parameter temperature abc",
            "/set parameter temperature -1",
            "/set parameter top_k 1 2",
            "/set parameter num_ctx 64",
            "Hi",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Set parameter 'num_predict' to '3'");
    assert!(
        lines[1].starts_with("Couldn't set parameter: unknown parameter \"bogus\" (known: seed,"),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        "Couldn't set parameter: invalid value \"abc\" for temperature: expected a number"
    );
    assert!(
        lines[3].starts_with("Couldn't set parameter:") && lines[3].contains("temperature -1"),
        "{}",
        lines[3]
    );
    assert_eq!(
        lines[4],
        "Couldn't set parameter: top_k takes one value, not 2"
    );
    assert!(lines[5].contains("num_ctx cannot change during a chat"));
    // num_predict took effect; the rejected temperature did not (still greedy).
    assert_eq!(turns[0].stats.eval_count, 3);
    let mut three = o.infer.clone();
    three.num_predict = Some(3);
    assert_eq!(turns[0].answer, one_shot(&three, vec![], "Hi"));
}

#[test]
fn stop_string_cuts_the_answer_and_the_next_turn_matches_one_shot() {
    let o = options(20);
    let plain = one_shot(&o.infer, vec![], "Hi");
    // a word from the middle of the greedy answer (which words it has
    // depends on the CPU's kernels: "help" on some, "assist" on others)
    let words: Vec<&str> = plain.split_whitespace().collect();
    assert!(words.len() >= 3, "{plain:?}");
    let word = words[words.len() / 2];
    let at = plain.find(word).unwrap();
    let set = format!("/set parameter stop {word}");
    let (turns, out) = run(&o, &[&set, "Hi", "What is 2+2?"]);
    assert!(
        out.starts_with(&format!("Set parameter 'stop' to '{word}'\n")),
        "{out}"
    );
    assert_eq!(turns[0].answer, plain[..at]);
    // The cache holds the stop string's tokens, the conversation does not:
    // turn 2 cuts them off and answers as a one-shot run would.
    let mut stop = o.infer.clone();
    stop.stop = vec![word.into()];
    assert_eq!(
        turns[1].answer,
        one_shot(&stop, history(&turns[..1]), &turns[1].user)
    );
}

#[test]
fn small_context_shifts_while_answering_and_drops_old_turns() {
    let mut o = options(72);
    o.infer.n_ctx = 96;
    let (turns, _) = run(&o, &["Tell me about cats.", "Tell me about dogs."]);
    assert_eq!(turns.len(), 2);
    let (t1, t2) = (&turns[0], &turns[1]);
    // turn 1 answered past the end of the context (it was shifted) ...
    assert_eq!(t1.stats.eval_count, 72);
    assert!(t1.prompt_tokens + 72 > 96);
    // ... and turn 2 no longer fits after it: turn 1 was dropped.
    assert!(t2.prompt_tokens < 96, "{t2:?}");
    assert!(t2.prompt_tokens < t1.prompt_tokens + 72, "{t2:?}");
    assert_eq!(t2.stats.eval_count, 72);
}

#[test]
fn bye_ends_the_chat_and_reads_no_further() {
    let o = options(4);
    let mut input = ["/bye", "Hi"].iter().map(|l| l.to_string());
    let mut out = Vec::new();
    let turns = chat(&o, &mut input, &mut out, &AtomicBool::new(false)).unwrap();
    assert!(turns.is_empty());
    assert!(out.is_empty());
    assert_eq!(input.next().as_deref(), Some("Hi"));
}

#[test]
fn show_info_and_multiline_and_unknown_commands() {
    let o = options(2);
    let (turns, out) = run(
        &o,
        &[
            "/show info",
            "/frobnicate",
            "\"\"\"Say",
            "hello\"\"\"",
            "/show parameters",
        ],
    );
    for want in [
        "  Model\n",
        "architecture        llama",
        "context length      8192",
        "embedding length    576",
        "quantization        Q4_1",
        "Unknown command '/frobnicate'. Type /? for help",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].user, "Say\nhello");
}

/// Output that presses Ctrl-C (sets the flag) whenever text is printed.
struct CtrlCOnPrint<'a> {
    flag: &'a AtomicBool,
    text: Vec<u8>,
}

impl std::io::Write for CtrlCOnPrint<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(b);
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn interrupt_stops_the_answer_not_the_chat() {
    let o = options(8);
    let flag = AtomicBool::new(true); // set before the chat: cleared per turn
    let mut out = CtrlCOnPrint {
        flag: &flag,
        text: vec![],
    };
    let mut input = ["Hi", "Tell me a long story about a cat."]
        .iter()
        .map(|l| l.to_string());
    let turns = chat(&o, &mut input, &mut out, &flag).unwrap();
    assert_eq!(turns.len(), 2);
    for t in &turns {
        assert!(t.interrupted, "{t:?}");
        // stopped right after the first printed token
        assert_eq!(t.stats.eval_count, 2, "{t:?}");
    }
    let full = one_shot(&o.infer, vec![], "Hi");
    let cut = &turns[0].answer;
    assert!(!cut.is_empty() && full.starts_with(cut.as_str()) && *cut != full);
}

#[test]
fn raw_is_refused() {
    let mut o = options(4);
    o.infer.raw = true;
    let err = chat(
        &o,
        &mut std::iter::empty(),
        &mut Vec::new(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.contains("--raw"), "{err}");
}

#[test]
fn llama_cpp_engine_reuses_and_cuts_its_cache_too() {
    let mut o = options(12);
    o.infer.engine = runner::EngineChoice::LlamaCpp;
    // batch_invariant is ours; llama.cpp's flash attention takes a tiled
    // kernel for big batches, so turn 3 is compared without it.
    o.infer.flash_attn = false;
    let (turns, out) = run(
        &o,
        &[
            "What is the capital of France?",
            "And what about Italy?",
            "/set system You are a pirate.",
            "Hi",
        ],
    );
    assert!(out.starts_with("infer: running llama with llama.cpp's engine\n"));
    assert_eq!(turns.len(), 3);
    assert!(turns[1].stats.prompt_eval_count * 3 < turns[1].prompt_tokens);
    assert!(turns[2].cached < 8, "cached {}", turns[2].cached);
    // No comparison of turn 2 with a one-shot run: llama.cpp's kernels for
    // one token and for a batch sum in different orders, so a conversation
    // decoded in other batches may pick another token at a near tie (ours
    // agree, see the tests above). After the cut, turn 3 decodes almost
    // the whole conversation in one batch, as a one-shot run does.
    let mut pirate = o.infer.clone();
    pirate.system = Some("You are a pirate.".into());
    assert_eq!(
        turns[2].answer,
        one_shot(&pirate, history(&turns[..2]), "Hi")
    );
}

#[test]
fn session_truncate_then_decode_equals_a_fresh_decode() {
    use engine::session::{Session, SessionOptions};
    let path = pipeline_tests::real_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let loaded = models::load(&path, &models::LoadOptions::default()).unwrap();
    let so = SessionOptions {
        n_ctx: 256,
        n_threads: 1,
        ..SessionOptions::default()
    };
    let a = [504, 3575, 282, 4649, 314, 253, 1345, 282, 1064, 30];
    let b = [1130, 1848, 314];
    let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
    sess.decode(&a).unwrap();
    sess.truncate(4);
    assert_eq!(sess.history(), &a[..4]);
    let cut = sess.decode(&b).unwrap().to_vec();
    let mut fresh = Session::new(loaded.model.as_ref(), &so).unwrap();
    let want = fresh.decode(&[&a[..4], &b[..]].concat()).unwrap().to_vec();
    let diff = cut
        .iter()
        .zip(&want)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-3, "logits differ by {diff}");
}
