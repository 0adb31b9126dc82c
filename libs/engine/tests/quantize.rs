//! Quantizing with llama.cpp's quantizer (`engine::quantize`): a real model
//! to F16 (requantized) and that to Q8_0, which loads and generates.

use engine::llama_cpp::{ContextOptions, LlamaContext, LlamaModel, ModelOptions};
use engine::quantize::{quantize, QuantType, QuantizeOptions};

#[test]
fn f16_to_q8_0_loads_and_generates_and_a_quantized_model_needs_requantize() {
    let src = pipeline_tests::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !src.exists() {
        println!(
            "quantize: SKIPPED: {} missing (scripts/fetch-models.sh)",
            src.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (f16, q8) = (dir.path().join("f16.gguf"), dir.path().join("q8.gguf"));
    let to = |t: &str, allow_requantize| QuantizeOptions {
        to: QuantType::parse(t).unwrap(),
        threads: 2,
        allow_requantize,
    };
    // a quantized source is refused without --allow-requantize, and leaves nothing
    let e = quantize(&src, &f16, &to("q8_0", false)).unwrap_err();
    assert!(e.contains("could not quantize"), "{e}");
    assert!(!f16.exists());
    quantize(&src, &f16, &to("f16", true)).unwrap();
    quantize(&f16, &q8, &to("Q8_0", false)).unwrap();
    // an existing output is never overwritten
    assert!(quantize(&f16, &q8, &to("q4_0", false))
        .unwrap_err()
        .contains("exists"));

    let bytes = std::fs::read(&q8).unwrap();
    let gg = gguf::parse(&bytes).unwrap();
    assert_eq!(gg.file_type().map(|f| f.name()), Some("Q8_0"));
    let w = gg.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!(w.ggml_type.name(), "Q8_0");
    let f16_size = std::fs::metadata(&f16).unwrap().len();
    assert!(
        bytes.len() as u64 * 10 < f16_size * 6,
        "Q8_0 is about half of F16"
    );

    let model = LlamaModel::load(&q8, &ModelOptions::default()).unwrap();
    let mut ctx = LlamaContext::new(&model, &ContextOptions::default()).unwrap();
    let prompt = model
        .tokenize("The capital of France is", true, false)
        .unwrap();
    let out = ctx.greedy(&prompt, 4).unwrap();
    let text = String::from_utf8_lossy(&model.detokenize(&out, false, false).unwrap()).into_owned();
    assert!(text.contains("Paris"), "{text:?}");
}
