//! The accessors the engine, tokenizer and store use, on a small built file.

mod common;

use common::{small_model, V};
use gguf::{GgmlType, Value, ValueType};

#[test]
fn accessors_on_small_model() {
    let bytes = small_model()
        .kv("llama.use_parallel_residual", V::bool(true))
        .build();
    let g = gguf::parse(&bytes).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.data_offset() % 32, 0);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_str("general.name"), Some("tiny"));
    assert_eq!(g.arch_u64("context_length"), Some(128));
    assert_eq!(g.get_u64("llama.embedding_length"), Some(8));
    assert_eq!(g.arch_f32("rope.freq_base"), Some(10000.0));
    assert_eq!(g.get_f32("llama.context_length"), Some(128.0));
    assert_eq!(g.get_bool("llama.use_parallel_residual"), Some(true));
    assert_eq!(g.get_u64("general.name"), None);
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "</s>", "a", "b"]
    );
    assert_eq!(
        g.get_f32_array("tokenizer.ggml.scores").unwrap(),
        [0.0, 0.0, -1.0, -2.0]
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [3, 3, 1, 1]
    );
    // exact element types only
    assert_eq!(g.get_i32_array("tokenizer.ggml.scores"), None);
    assert_eq!(g.file_type().unwrap().name(), "F32");

    // metadata in file order, with typed values
    let keys: Vec<&str> = g.metadata().iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys[..3],
        ["general.architecture", "general.name", "general.file_type"]
    );
    assert_eq!(g.get("general.file_type"), Some(&Value::U32(0)));
    let toks = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(toks.elem_type(), ValueType::String);
    assert_eq!(
        toks.iter()
            .map(|v| v.as_str().unwrap().len())
            .sum::<usize>(),
        9
    );

    // tensors
    assert_eq!(g.tensors().len(), 2);
    let t = g.tensor("token_embd.weight").unwrap();
    assert_eq!(t.dims, [8, 4]);
    assert_eq!(t.ggml_type, GgmlType::F32);
    assert_eq!((t.offset, t.n_bytes), (0, 128));
    let data = g.tensor_data(t);
    assert_eq!(f32::from_le_bytes(data[4..8].try_into().unwrap()), 1.0);
    let n = g.tensor("output_norm.weight").unwrap();
    assert_eq!(n.offset, 128);
    assert_eq!(g.parameter_count(), 40);
    assert!(g.tensor("missing").is_none());
}

#[test]
fn require_accessors_name_the_key() {
    let bytes = small_model().build();
    let g = gguf::parse(&bytes).unwrap();
    assert_eq!(g.require_u64("llama.context_length").unwrap(), 128);
    let e = g.require_u64("llama.block_count").unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot find llama.block_count in gguf metadata"
    );
    let e = g.require_u64("general.name").unwrap_err();
    assert_eq!(
        e.to_string(),
        "gguf metadata general.name is string, expected an integer"
    );
    let e = g.require_str("tokenizer.ggml.scores").unwrap_err();
    assert!(e.to_string().contains("array of f32"), "{e}");
}

#[test]
fn version_2_reads_like_3() {
    let mut b = small_model();
    b.version = 2;
    let bytes = b.build();
    let g = gguf::parse(&bytes).unwrap();
    assert_eq!(g.version(), 2);
    assert_eq!(g.tensors().len(), 2);
}

#[test]
fn keys_with_dashes_and_custom_alignment() {
    let mut b = small_model()
        .kv("command-r.some-key", V::u32(1))
        .kv("general.alignment", V::u32(64));
    b.alignment = 64;
    let bytes = b.build();
    let g = gguf::parse(&bytes).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.get_u64("command-r.some-key"), Some(1));
    assert_eq!(g.tensor("output_norm.weight").unwrap().offset, 128);
}
