//! The two real models from the cache: header facts `ollama show` reports.

mod common;

use common::model_path;

fn read(file: &str) -> Vec<u8> {
    std::fs::read(model_path(file)).unwrap()
}

#[test]
fn smollm2_header() {
    let bytes = read("SmolLM2-135M-Instruct.Q4_1.gguf");
    let g = gguf::parse(&bytes).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.arch_u64("context_length"), Some(8192));
    assert_eq!(g.arch_u64("embedding_length"), Some(576));
    assert_eq!(g.file_type().unwrap().name(), "Q4_1");
    assert_eq!(gguf::format_parameter_count(g.parameter_count()), "135M");
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    // every tensor's bytes are exactly the type's size for its shape
    for t in g.tensors() {
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes, "{}", t.name);
        assert_eq!(
            t.ggml_type.bytes_for(t.n_elements()),
            Some(t.n_bytes),
            "{}",
            t.name
        );
    }
    let last = g
        .tensors()
        .iter()
        .map(|t| g.data_offset() + t.offset + t.n_bytes)
        .max()
        .unwrap();
    assert!(last <= bytes.len() as u64 && bytes.len() as u64 - last < 32);
}

#[test]
fn gemma3_header() {
    let bytes = read("gemma-3-270m-q4_k_m.gguf");
    let g = gguf::parse(&bytes).unwrap();
    assert_eq!(g.architecture(), Some("gemma3"));
    assert_eq!(g.arch_u64("context_length"), Some(32768));
    assert_eq!(g.arch_u64("embedding_length"), Some(640));
    assert_eq!(g.file_type().unwrap().name(), "Q4_K_M");
    assert_eq!(gguf::format_parameter_count(g.parameter_count()), "268M");
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 262144);
    assert_eq!(
        g.get_f32_array("tokenizer.ggml.scores").unwrap().len(),
        262144
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        262144
    );
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![640, 262144]);
    // keys come back in file order
    assert_eq!(g.metadata()[0].0, "general.architecture");
}
