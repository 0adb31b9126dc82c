//! The chat prompt `infer` builds: rendered with the model's template and
//! tokenized exactly as llama.cpp tokenizes the same text, except that control
//! tokens typed by the user stay characters.

use std::path::PathBuf;

use engine::llama_cpp::{LlamaModel, ModelOptions};
use engine::tokenizer::Tokenizer;
use runner::prompt::{encode_prompt, render_prompt};
use runner::{InferOptions, Message};

fn model(file: &str) -> PathBuf {
    pipeline_tests::real_model(file)
}

/// Our tokenizer, the GGUF's chat template and llama.cpp's vocabulary.
fn load(file: &str) -> (Tokenizer, Option<String>, LlamaModel) {
    let path = model(file);
    let map = models::File::map(&path).unwrap();
    let gg = gguf::parse(map.bytes()).unwrap();
    let tok = Tokenizer::from_gguf(&gg).unwrap();
    let tmpl = gg.get_str("tokenizer.chat_template").map(str::to_owned);
    let opts = ModelOptions {
        vocab_only: true,
        ..ModelOptions::default()
    };
    (tok, tmpl, LlamaModel::load(&path, &opts).unwrap())
}

fn smollm2() -> (Tokenizer, Option<String>, LlamaModel) {
    load("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn opts(prompt: &str) -> InferOptions {
    InferOptions {
        prompt: prompt.into(),
        ..InferOptions::default()
    }
}

const SMOL_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

fn chatml(turns: &[(&str, &str)]) -> String {
    let mut s: String = turns
        .iter()
        .map(|(r, c)| format!("<|im_start|>{r}\n{c}<|im_end|>\n"))
        .collect();
    s.push_str("<|im_start|>assistant\n");
    s
}

#[test]
fn smollm2_chat_prompt_matches_llama_cpp() {
    let (tok, tmpl, rm) = smollm2();
    let got = encode_prompt(&tok, tmpl.as_deref(), &opts("Hi")).unwrap();
    let text = chatml(&[("system", SMOL_SYSTEM), ("user", "Hi")]);
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(got, rm.tokenize(&text, true, true).unwrap());
    assert_eq!(
        got.first(),
        rm.tokenize("<|im_start|>", false, true).unwrap().first()
    );
}

#[test]
fn control_token_typed_by_the_user_stays_text() {
    let (tok, tmpl, rm) = smollm2();
    let im_end = rm.tokenize("<|im_end|>", false, true).unwrap();
    assert_eq!(im_end.len(), 1);
    let im_end = im_end[0];
    let user = "a <|im_end|> b";
    let got = encode_prompt(&tok, tmpl.as_deref(), &opts(user)).unwrap();
    let count = |ids: &[i32]| ids.iter().filter(|&&t| t == im_end).count();
    // Two turn ends written by the template (system, user), none from the user.
    assert_eq!(count(&got), 2, "{got:?}");
    let as_text = rm.tokenize(user, false, false).unwrap();
    assert!(!as_text.contains(&im_end));
    assert!(
        got.windows(as_text.len()).any(|w| w == as_text),
        "{got:?} lacks {as_text:?}"
    );
    // What a naive whole-text tokenization would have produced.
    let naive = rm
        .tokenize(
            &chatml(&[("system", SMOL_SYSTEM), ("user", user)]),
            true,
            true,
        )
        .unwrap();
    assert_eq!(count(&naive), 3);
    assert_ne!(got, naive);
}

#[test]
fn system_flag_and_earlier_messages() {
    let (tok, tmpl, rm) = smollm2();
    let mut o = opts("And 3+3?");
    o.system = Some("Answer with a number.".into());
    o.apply_messages(r#"[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]"#)
        .unwrap();
    assert_eq!(
        o.messages,
        vec![Message::user("2+2?"), Message::assistant("4")]
    );
    let got = encode_prompt(&tok, tmpl.as_deref(), &o).unwrap();
    let text = chatml(&[
        ("system", "Answer with a number."),
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "And 3+3?"),
    ]);
    assert_eq!(
        render_prompt(&tok, tmpl.as_deref(), &o).unwrap().text(),
        text
    );
    assert_eq!(got, rm.tokenize(&text, true, true).unwrap());
    assert!(o.apply_messages(r#"{"role":"user"}"#).is_err());
}

#[test]
fn template_layer_wins_and_raw_skips_it() {
    let (tok, tmpl, rm) = smollm2();
    let mut o = opts("Hi");
    o.template = Some("<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n".into());
    let got = encode_prompt(&tok, tmpl.as_deref(), &o).unwrap();
    assert_eq!(
        got,
        rm.tokenize(&chatml(&[("user", "Hi")]), true, true).unwrap()
    );
    o.raw = true;
    o.prompt = "<|im_start|>Hi".into();
    let got = encode_prompt(&tok, tmpl.as_deref(), &o).unwrap();
    assert_eq!(got, rm.tokenize(&o.prompt, true, false).unwrap());
}

#[test]
fn text_is_joined_across_template_seams() {
    // " " from the template and "Hi" from the user are one token, " Hi",
    // as in llama.cpp's tokenization of the whole text.
    let (tok, _, rm) = smollm2();
    let t = "<|im_start|>user {{ messages[0]['content'] }}<|im_end|>";
    let got = encode_prompt(&tok, Some(t), &opts("Hi")).unwrap();
    let want = rm
        .tokenize("<|im_start|>user Hi<|im_end|>", true, true)
        .unwrap();
    assert_eq!(got, want);
    let per_segment = [
        rm.tokenize("<|im_start|>user ", true, true).unwrap(),
        rm.tokenize("Hi", false, false).unwrap(),
        rm.tokenize("<|im_end|>", false, true).unwrap(),
    ]
    .concat();
    assert_ne!(got, per_segment);
}

#[test]
fn gemma_gets_one_bos() {
    let (tok, tmpl, rm) = load("gemma-3-270m-q4_k_m.gguf");
    assert!(tok.add_bos());
    let bos = rm.bos();
    // No template in this GGUF: the prompt as it is, after BOS.
    assert!(tmpl.is_none());
    let got = encode_prompt(&tok, None, &opts("Hi")).unwrap();
    assert_eq!(got, rm.tokenize("Hi", true, false).unwrap());
    assert_eq!(got[0], bos);
    // A template that writes BOS itself: llama.cpp's chat code adds no second one.
    let t = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n\
             {{ m.content }}<end_of_turn>\n{% endfor %}{{ '<start_of_turn>model\\n' }}";
    let got = encode_prompt(&tok, Some(t), &opts("Hi")).unwrap();
    let body = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n";
    assert_eq!(got, rm.tokenize(body, true, true).unwrap());
    assert_eq!(got.iter().filter(|&&t| t == bos).count(), 1);
    // A user typing the BOS text gets characters, and BOS is still added.
    let got = encode_prompt(&tok, None, &opts("<bos>Hi")).unwrap();
    assert_eq!(got, rm.tokenize("<bos>Hi", true, false).unwrap());
    assert_eq!(got.iter().filter(|&&t| t == bos).count(), 1);
}

#[test]
fn broken_template_is_a_one_line_error() {
    let (tok, _, _) = smollm2();
    let e = encode_prompt(&tok, Some("{% for m in messages %}"), &opts("Hi")).unwrap_err();
    assert!(e.starts_with("cannot render the chat template: "), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let mut o = opts("Hi");
    o.raw = true;
    assert!(encode_prompt(&tok, Some("{% for m in messages %}"), &o).is_ok());
    o.prompt.clear();
    assert_eq!(
        encode_prompt(&tok, None, &o).unwrap_err(),
        "the prompt is empty"
    );
}
