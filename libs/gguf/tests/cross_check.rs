//! Cross-check against an independent reader (gguf-rs-lib, dev-dependency
//! only): both must see the same tensors and the same metadata values in the
//! two real models.

mod common;

use gguf::Value;
use gguf_rs_lib::format::metadata::MetadataValue;

fn check(file: &str) {
    let path = common::model_path(file);
    let bytes = std::fs::read(&path).unwrap();
    let ours = gguf::parse(&bytes).unwrap();
    let theirs = gguf_rs_lib::reader::open_gguf_file(&path).unwrap();

    assert_eq!(
        ours.data_offset(),
        theirs.tensor_data_offset(),
        "data offset"
    );
    assert_eq!(ours.tensors().len(), theirs.tensor_count());
    for (a, b) in ours.tensors().iter().zip(theirs.tensor_infos()) {
        assert_eq!(a.name, b.name());
        assert_eq!(a.dims, b.shape().dims(), "{}", a.name);
        assert_eq!(a.ggml_type.id(), b.tensor_type() as u32, "{}", a.name);
        assert_eq!(a.offset, b.data_offset(), "{}", a.name);
        assert_eq!(a.n_bytes, b.expected_data_size(), "{}", a.name);
    }

    let md = theirs.metadata();
    assert_eq!(ours.metadata().len(), md.len());
    for (key, v) in ours.metadata() {
        let t = md
            .get(key)
            .unwrap_or_else(|| panic!("gguf-rs-lib lacks {key}"));
        match (v, t) {
            (Value::Str(s), MetadataValue::String(u)) => assert_eq!(s, u, "{key}"),
            (Value::Array(a), MetadataValue::Array(u)) => {
                assert_eq!(a.len(), u.len(), "{key}");
                if let Some(strs) = a.strs() {
                    for (i, (s, u)) in strs.zip(u.iter()).enumerate() {
                        assert_eq!(Some(s), u.as_str(), "{key}[{i}]");
                    }
                } else {
                    for (i, (x, u)) in a.iter().zip(u.iter()).enumerate() {
                        same_number(&x, u, &format!("{key}[{i}]"));
                    }
                }
            }
            (Value::Bool(b), t) => assert_eq!(Some(*b), t.as_bool(), "{key}"),
            (v, t) => same_number(v, t, key),
        }
    }
}

#[track_caller]
fn same_number(v: &Value<'_>, t: &MetadataValue, what: &str) {
    match v {
        Value::F32(_) | Value::F64(_) => assert_eq!(v.as_f64(), t.as_f64(), "{what}"),
        Value::I8(_) | Value::I16(_) | Value::I32(_) | Value::I64(_) => {
            assert_eq!(v.as_i64(), t.as_i64(), "{what}")
        }
        _ => assert_eq!(v.as_u64(), t.as_u64(), "{what}"),
    }
}

#[test]
fn smollm2_agrees_with_gguf_rs_lib() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_agrees_with_gguf_rs_lib() {
    check("gemma-3-270m-q4_k_m.gguf");
}
