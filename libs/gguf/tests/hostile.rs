//! Many small broken files, each of which must fail cleanly with a one-line
//! error naming the field: the idea of llama.cpp's tests/test-gguf.cpp and
//! ollama's TestDecodeRejectsMalformedGGUFMetadata, ported as fixtures.
//! See /work/shared/HOSTILE.md rows 19–32 for where each case comes from.

mod common;

use std::time::Instant;

use common::{info_fields, model_path, small_model, vt, Builder, V, W};

/// Parses `bytes`, expects an error whose message holds every `needle`.
#[track_caller]
fn fails(bytes: &[u8], needles: &[&str]) -> String {
    let t = Instant::now();
    let err = match gguf::parse(bytes) {
        Ok(_) => panic!("parse accepted a file that should fail with {needles:?}"),
        Err(e) => e.to_string(),
    };
    assert!(t.elapsed().as_millis() < 500, "slow rejection: {err}");
    assert!(!err.contains('\n'), "multi-line error: {err}");
    for n in needles {
        assert!(err.contains(n), "error {err:?} does not mention {n:?}");
    }
    err
}

fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

// ---- header (row 19, 21, 22) ----

#[test]
fn every_prefix_of_a_valid_file_fails() {
    let bytes = small_model().build();
    gguf::parse(&bytes).unwrap();
    for n in 0..bytes.len() {
        assert!(
            gguf::parse(&bytes[..n]).is_err(),
            "prefix of {n} bytes parsed"
        );
    }
    let e = fails(b"GGUF", &["truncated", "version"]);
    assert!(e.contains("needs 4 bytes but 0 are left"), "{e}");
    fails(&bytes[..12], &["truncated", "tensor count"]);
    fails(&bytes[..20], &["truncated", "metadata count"]);
}

#[test]
fn prefixes_of_a_real_header_fail() {
    let bytes = std::fs::read(model_path("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let data_offset = gguf::parse(&bytes).unwrap().data_offset() as usize;
    // a spread of cut points through the header (the vocab is most of it)
    let mut n = 0usize;
    while n < data_offset + 64 {
        assert!(
            gguf::parse(&bytes[..n]).is_err(),
            "prefix of {n} bytes parsed"
        );
        n += 1 + n / 16;
    }
}

#[test]
fn bad_magic() {
    let mut b = small_model().build();
    b[..4].copy_from_slice(b"FUGG");
    fails(&b, &["not a gguf file", "FUGG"]);
    fails(b"", &["truncated", "magic"]);
}

#[test]
fn bad_versions() {
    for v in [0u32, 1, 4, 0xFFFF_FFFF] {
        let mut b = small_model().build();
        set_u32(&mut b, 4, v);
        fails(&b, &["unsupported gguf version", &v.to_string()]);
    }
    for v in [2u32, 3] {
        let mut b = small_model().build();
        set_u32(&mut b, 4, v.swap_bytes());
        fails(&b, &["byte-swapped"]);
    }
}

#[test]
fn huge_counts_in_a_tiny_file() {
    let mut w = W::default();
    w.header(3, 0, 1 << 63);
    fails(&w.buf, &["metadata count", "9223372036854775808"]);
    let mut w = W::default();
    w.header(3, 1 << 63, 0);
    fails(&w.buf, &["tensor count"]);
    let mut w = W::default();
    w.header(3, u64::MAX, u64::MAX).bytes(&[0; 64]);
    fails(&w.buf, &["count"]);
}

// ---- metadata (rows 20, 21, 23, 30) ----

#[test]
fn string_length_all_ones() {
    let mut w = W::default();
    w.header(3, 0, 1).u64(u64::MAX).bytes(b"general.name");
    fails(&w.buf, &["key of metadata entry 0", "18446744073709551615"]);
    let mut w = W::default();
    w.header(3, 0, 1)
        .str("general.name")
        .u32(vt::STRING)
        .u64(u64::MAX)
        .bytes(b"x");
    fails(&w.buf, &["general.name"]);
    // 2^40: over the hard string cap even before the bytes-left check
    let mut w = W::default();
    w.header(3, 0, 1)
        .str("general.name")
        .u32(vt::STRING)
        .u64(1 << 40);
    fails(&w.buf, &["general.name", "limit"]);
}

#[test]
fn array_length_2_pow_63() {
    for elem in [vt::U8, vt::U64, vt::STRING, vt::ARRAY, vt::BOOL] {
        let mut w = W::default();
        w.header(3, 0, 1)
            .str("tokenizer.ggml.tokens")
            .u32(vt::ARRAY)
            .u32(elem)
            .u64(1 << 63)
            .bytes(&[0; 16]);
        fails(&w.buf, &["array tokenizer.ggml.tokens", "cannot fit"]);
    }
}

#[test]
fn nested_arrays_deeper_than_the_limit() {
    // [[1]] is fine, [[[[1]]]] is not
    let leaf = V::i32s(&[1]);
    let ok = Builder::default()
        .kv("x.nested", V::nested(std::slice::from_ref(&leaf)))
        .build();
    let g = gguf::parse(&ok).unwrap();
    let a = g.get("x.nested").unwrap().as_array().unwrap();
    assert_eq!(a.arrays()[0].to_i32_vec().unwrap(), [1]);
    let deep = V::nested(&[V::nested(&[V::nested(&[leaf])])]);
    fails(
        &Builder::default().kv("x.deep", deep).build(),
        &["array x.deep", "nested deeper"],
    );
}

#[test]
fn bad_alignments() {
    let with = |v: V| small_model().kv("general.alignment", v).build();
    for a in [0u32, 13, 0x8000_0000, 1 << 21] {
        fails(&with(V::u32(a)), &["general.alignment", "power of two"]);
    }
    fails(&with(V::i32(32)), &["general.alignment", "i32"]);
    fails(&with(V::u64(32)), &["general.alignment", "u64"]);
    // alignment 1 is valid (test-gguf TENSORS_CUSTOM_ALIGN)
    let mut b = small_model().kv("general.alignment", V::u32(1));
    b.alignment = 1;
    assert_eq!(gguf::parse(&b.build()).unwrap().alignment(), 1);
}

#[test]
fn duplicate_and_empty_keys() {
    let b = small_model()
        .kv("general.architecture", V::str("gemma3"))
        .build();
    fails(&b, &["duplicate metadata key", "general.architecture"]);
    let b = small_model().kv("", V::u32(1)).build();
    fails(&b, &["empty key", "metadata entry 12"]);
}

#[test]
fn unknown_value_types() {
    let b = small_model()
        .kv(
            "x.bad",
            V {
                ty: 13,
                payload: vec![0; 8],
            },
        )
        .build();
    fails(&b, &["type of x.bad", "unknown value type 13"]);
    let mut w = W::default();
    w.u32(99).u64(1).bytes(&[0; 8]);
    let b = small_model()
        .kv(
            "x.arr",
            V {
                ty: vt::ARRAY,
                payload: w.buf,
            },
        )
        .build();
    fails(&b, &["array x.arr", "unknown element type 99"]);
    let b = small_model()
        .kv(
            "x.flag",
            V {
                ty: vt::BOOL,
                payload: vec![2],
            },
        )
        .build();
    fails(&b, &["value of x.flag", "bool"]);
}

#[test]
fn control_characters_in_keys_stay_on_one_line() {
    let b = small_model().kv("general.name", V::u32(1)).build();
    fails(&b, &["duplicate metadata key"]);
    let b = small_model()
        .kv("evil\nkey", V::u32(1))
        .kv("evil\nkey", V::u32(2))
        .build();
    fails(&b, &["evil\\nkey"]);
    let b = small_model()
        .kv(
            "x\r\u{1b}[2J",
            V {
                ty: 99,
                payload: vec![],
            },
        )
        .build();
    fails(&b, &["x\\r\\u{1b}[2J", "unknown value type 99"]);
}

#[test]
fn invalid_utf8_key() {
    let mut w = W::default();
    w.header(3, 0, 1)
        .u64(3)
        .bytes(&[0x66, 0xFF, 0x66])
        .u32(vt::U8)
        .u8(1);
    fails(&w.buf, &["key of metadata entry 0", "UTF-8"]);
}

// ---- tensor infos (rows 26, 27, 29, 30) ----

/// small_model with its first tensor info patched by `f(bytes, type_at, offset_at)`.
fn patched(f: impl FnOnce(&mut Vec<u8>, usize, usize)) -> Vec<u8> {
    let (mut b, infos) = small_model().build_with_infos();
    let (type_at, offset_at) = info_fields(&b, infos[0]);
    f(&mut b, type_at, offset_at);
    b
}

#[test]
fn too_many_dims() {
    let b = Builder::default()
        .tensor("t", &[1, 1, 1, 1, 1], 0, vec![0; 4])
        .build();
    fails(&b, &["tensor \"t\"", "n_dims 5"]);
    let mut w = W::default();
    w.header(3, 1, 0).str("t").u32(u32::MAX).bytes(&[0; 32]);
    fails(&w.buf, &["n_dims 4294967295"]);
}

#[test]
fn negative_and_overflowing_dims() {
    let b = Builder::default()
        .tensor("t", &[u64::MAX], 0, vec![0; 4])
        .build();
    fails(&b, &["tensor \"t\"", "negative"]);
    let big = 4 * i32::MAX as u64;
    let b = Builder::default()
        .tensor("t", &[big, big, big, big], 0, vec![0; 4])
        .build();
    fails(&b, &["tensor \"t\"", "overflows"]);
    // elements fit but bytes do not (llama.cpp NBYTES_TOO_BIG)
    let b = Builder::default()
        .tensor("t", &[1 << 62], 0, vec![0; 4])
        .build();
    fails(&b, &["tensor \"t\"", "data size overflows"]);
}

#[test]
fn zero_dims_load() {
    // test-gguf TENSORS_ZERO_DIM: must load, with no division by ne
    let b = small_model()
        .tensor("empty", &[32, 0], vt::U8, vec![])
        .build();
    let g = gguf::parse(&b).unwrap();
    let t = g.tensor("empty").unwrap();
    assert_eq!((t.n_elements(), t.n_bytes), (0, 0));
    assert_eq!(g.parameter_count(), 40);
}

#[test]
fn type_id_past_the_table() {
    // last tensor: its size cannot be computed
    let b = small_model().tensor("odd", &[4], 43, vec![0; 4]).build();
    fails(&b, &["tensor \"odd\"", "unknown", "43"]);
    let b = patched(|b, type_at, _| set_u32(b, type_at, u32::MAX));
    let g = gguf::parse(&b).unwrap();
    // not last: kept raw, its size is the gap to the next tensor
    let t = g.tensor("token_embd.weight").unwrap();
    assert_eq!(t.ggml_type.id(), u32::MAX);
    assert!(!t.ggml_type.is_known());
    assert_eq!(t.ggml_type.to_string(), "type=4294967295");
    assert_eq!(t.n_bytes, 128);
    // a removed type id (Q4_2) as the last tensor
    let b = small_model().tensor("old", &[32], 4, vec![0; 10]).build();
    fails(&b, &["tensor \"old\"", "Q4_2"]);
}

#[test]
fn row_not_a_multiple_of_the_block_size() {
    let b = Builder::default()
        .tensor("q", &[33, 2], 2, vec![0; 36])
        .build();
    fails(&b, &["tensor \"q\"", "row length 33", "Q4_0", "32"]);
}

#[test]
fn tensor_names() {
    let b = small_model().f32_tensor("output_norm.weight", &[8]).build();
    fails(&b, &["duplicate tensor name", "output_norm.weight"]);
    let b = small_model().f32_tensor("", &[8]).build();
    fails(&b, &["name of tensor 2", "length 0"]);
    let long = "x".repeat(64);
    let b = small_model().f32_tensor(&long, &[8]).build();
    fails(&b, &["name of tensor 2", "length 64"]);
}

// ---- tensor data (rows 28, 29) ----

#[test]
fn data_outside_the_file() {
    let b = patched(|b, _, off| set_u64(b, off, u64::MAX - 31));
    fails(&b, &["tensor \"token_embd.weight\"", "outside"]);
    let b = patched(|b, _, off| set_u64(b, off, 1 << 20));
    fails(&b, &["tensor \"token_embd.weight\"", "outside"]);
    // one byte short (test-gguf DATA_NOT_ENOUGH_DATA)
    let b = small_model().build();
    fails(
        &b[..b.len() - 1],
        &["tensor \"output_norm.weight\"", "outside"],
    );
}

#[test]
fn misaligned_and_overlapping_data() {
    let b = patched(|b, _, off| set_u64(b, off, 4));
    fails(
        &b,
        &[
            "tensor \"token_embd.weight\"",
            "not a multiple of the alignment 32",
        ],
    );
    // second tensor moved onto the first
    let (mut b, infos) = small_model().build_with_infos();
    let (_, off) = info_fields(&b, infos[1]);
    set_u64(&mut b, off, 96);
    fails(&b, &["overlaps", "token_embd.weight"]);
}

#[test]
fn size_sum_overflow() {
    // test-gguf DATA_MEM_SIZE_OVERFLOW: two I8 tensors of 2^63-64 elements, 32 bytes of data
    let n = 0x7FFF_FFFF_FFFF_FFC0;
    let b = Builder::default()
        .tensor("a", &[n, 1, 1, 1], 24, vec![0; 32])
        .tensor("b", &[n, 1, 1, 1], 24, vec![0; 32]);
    fails(&b.build(), &["tensor \"a\"", "outside"]);
}

// ---- tokenizer (rows 31, 32) ----

#[test]
fn special_token_ids_past_the_vocab() {
    let b = small_model()
        .kv("tokenizer.ggml.padding_token_id", V::u32(4))
        .build();
    fails(
        &b,
        &["tokenizer.ggml.padding_token_id", "vocabulary size 4"],
    );
    let mut w = W::default();
    w.header(3, 0, 2);
    w.str("tokenizer.ggml.tokens")
        .u32(vt::ARRAY)
        .u32(vt::STRING)
        .u64(1)
        .str("a");
    w.str("tokenizer.ggml.eos_token_id")
        .u32(vt::U32)
        .u32(u32::MAX);
    fails(&w.buf, &["tokenizer.ggml.eos_token_id", "4294967295"]);
    let b = small_model()
        .kv("tokenizer.ggml.unknown_token_id", V::i32(-1))
        .build();
    fails(&b, &["tokenizer.ggml.unknown_token_id"]);
}

#[test]
fn tokenizer_arrays_of_different_lengths_or_types() {
    let mut b = small_model();
    b.kv.retain(|(k, _)| k != "tokenizer.ggml.scores");
    let b2 = b
        .clone()
        .kv("tokenizer.ggml.scores", V::f32s(&[0.0; 3]))
        .build();
    fails(&b2, &["tokenizer.ggml.scores", "3 entries", "has 4"]);
    let mut w = W::default();
    w.u32(vt::U8).u64(4).bytes(&[0; 4]);
    let b3 = b
        .clone()
        .kv(
            "tokenizer.ggml.scores",
            V {
                ty: vt::ARRAY,
                payload: w.buf,
            },
        )
        .build();
    fails(&b3, &["tokenizer.ggml.scores", "array of u8", "f32"]);
    let mut b = small_model();
    b.kv.retain(|(k, _)| k != "tokenizer.ggml.token_type");
    let b4 = b
        .kv("tokenizer.ggml.token_type", V::i32s(&[1; 100]))
        .build();
    fails(&b4, &["tokenizer.ggml.token_type", "100 entries"]);
    let mut b = small_model();
    b.kv.retain(|(k, _)| k != "tokenizer.ggml.tokens");
    let b5 = b.kv("tokenizer.ggml.tokens", V::u32(4)).build();
    fails(&b5, &["tokenizer.ggml.tokens", "array of strings"]);
}

#[test]
fn valid_edge_cases_load() {
    // test-gguf HEADER_EMPTY: no tensors, no metadata
    let mut w = W::default();
    w.header(3, 0, 0);
    let g = gguf::parse(&w.buf).unwrap();
    assert_eq!(
        (g.tensors().len(), g.metadata().len(), g.parameter_count()),
        (0, 0, 0)
    );
    // every scalar type
    let b = Builder::default()
        .kv(
            "a.u8",
            V {
                ty: vt::U8,
                payload: vec![200],
            },
        )
        .kv(
            "a.i8",
            V {
                ty: vt::I8,
                payload: vec![0xFF],
            },
        )
        .kv(
            "a.u16",
            V {
                ty: vt::U16,
                payload: 65535u16.to_le_bytes().to_vec(),
            },
        )
        .kv(
            "a.i16",
            V {
                ty: vt::I16,
                payload: (-2i16).to_le_bytes().to_vec(),
            },
        )
        .kv(
            "a.i64",
            V {
                ty: vt::I64,
                payload: (-3i64).to_le_bytes().to_vec(),
            },
        )
        .kv(
            "a.f64",
            V {
                ty: vt::F64,
                payload: 0.5f64.to_le_bytes().to_vec(),
            },
        )
        .kv("a.b", V::bool(false))
        .build();
    let g = gguf::parse(&b).unwrap();
    assert_eq!(g.get_u64("a.u8"), Some(200));
    assert_eq!(g.get_u64("a.i8"), None);
    assert_eq!(g.get("a.i8").unwrap().as_i64(), Some(-1));
    assert_eq!(g.get_u64("a.u16"), Some(65535));
    assert_eq!(g.get_f32("a.i16"), Some(-2.0));
    assert_eq!(g.get_f32("a.i64"), Some(-3.0));
    assert_eq!(g.get_f32("a.f64"), Some(0.5));
    assert_eq!(g.get_bool("a.b"), Some(false));
}
