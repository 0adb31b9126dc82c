//! A small GGUF writer for tests: builds valid files and raw pieces to break.
#![allow(dead_code)]

use std::path::PathBuf;

/// Metadata value type ids.
pub mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Little-endian byte sink.
#[derive(Default, Clone)]
pub struct W {
    pub buf: Vec<u8>,
}

impl W {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    pub fn header(&mut self, version: u32, n_tensors: u64, n_kv: u64) -> &mut Self {
        self.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv)
    }
}

/// One metadata value, encoded (type id + payload).
#[derive(Clone)]
pub struct V {
    pub ty: u32,
    pub payload: Vec<u8>,
}

impl V {
    pub fn u32(v: u32) -> V {
        V {
            ty: vt::U32,
            payload: v.to_le_bytes().to_vec(),
        }
    }
    pub fn i32(v: i32) -> V {
        V {
            ty: vt::I32,
            payload: v.to_le_bytes().to_vec(),
        }
    }
    pub fn u64(v: u64) -> V {
        V {
            ty: vt::U64,
            payload: v.to_le_bytes().to_vec(),
        }
    }
    pub fn f32(v: f32) -> V {
        V {
            ty: vt::F32,
            payload: v.to_le_bytes().to_vec(),
        }
    }
    pub fn bool(v: bool) -> V {
        V {
            ty: vt::BOOL,
            payload: vec![v as u8],
        }
    }
    pub fn str(s: &str) -> V {
        let mut w = W::default();
        w.str(s);
        V {
            ty: vt::STRING,
            payload: w.buf,
        }
    }
    pub fn strs(items: &[&str]) -> V {
        let mut w = W::default();
        w.u32(vt::STRING).u64(items.len() as u64);
        for s in items {
            w.str(s);
        }
        V {
            ty: vt::ARRAY,
            payload: w.buf,
        }
    }
    pub fn f32s(items: &[f32]) -> V {
        let mut w = W::default();
        w.u32(vt::F32).u64(items.len() as u64);
        for v in items {
            w.bytes(&v.to_le_bytes());
        }
        V {
            ty: vt::ARRAY,
            payload: w.buf,
        }
    }
    pub fn i32s(items: &[i32]) -> V {
        let mut w = W::default();
        w.u32(vt::I32).u64(items.len() as u64);
        for v in items {
            w.bytes(&v.to_le_bytes());
        }
        V {
            ty: vt::ARRAY,
            payload: w.buf,
        }
    }
    /// An array of `inner` arrays (payloads of V::…s without the ARRAY tag).
    pub fn nested(inner: &[V]) -> V {
        let mut w = W::default();
        w.u32(vt::ARRAY).u64(inner.len() as u64);
        for v in inner {
            w.bytes(&v.payload);
        }
        V {
            ty: vt::ARRAY,
            payload: w.buf,
        }
    }
}

/// A tensor to write: name, dims (ne[0] first), ggml type id, data.
#[derive(Clone)]
pub struct T {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

/// Builds a valid GGUF file.
#[derive(Clone)]
pub struct Builder {
    pub version: u32,
    pub alignment: u64,
    pub kv: Vec<(String, V)>,
    pub tensors: Vec<T>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            version: 3,
            alignment: 32,
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl Builder {
    pub fn kv(mut self, key: &str, v: V) -> Self {
        self.kv.push((key.to_string(), v));
        self
    }
    /// An F32 tensor with data (j as f32) of the given shape.
    pub fn f32_tensor(mut self, name: &str, dims: &[u64]) -> Self {
        let n: u64 = dims.iter().product();
        let data = (0..n).flat_map(|j| (j as f32).to_le_bytes()).collect();
        self.tensors.push(T {
            name: name.into(),
            dims: dims.to_vec(),
            ty: 0,
            data,
        });
        self
    }
    pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(T {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        self
    }
    /// Bytes, and the offset where each tensor info starts.
    pub fn build_with_infos(&self) -> (Vec<u8>, Vec<usize>) {
        let mut w = W::default();
        w.header(
            self.version,
            self.tensors.len() as u64,
            self.kv.len() as u64,
        );
        for (k, v) in &self.kv {
            w.str(k).u32(v.ty).bytes(&v.payload);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        let mut infos = Vec::new();
        for t in &self.tensors {
            infos.push(w.buf.len());
            w.str(&t.name).u32(t.dims.len() as u32);
            for d in &t.dims {
                w.u64(*d);
            }
            w.u32(t.ty).u64(offset);
            offsets.push(offset);
            offset += (t.data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        let pad = |w: &mut W, a: u64| {
            while w.buf.len() as u64 % a != 0 {
                w.u8(0);
            }
        };
        pad(&mut w, self.alignment);
        let start = w.buf.len() as u64;
        for (i, (t, off)) in self.tensors.iter().zip(offsets).enumerate() {
            assert_eq!(w.buf.len() as u64, start + off);
            w.bytes(&t.data);
            if i + 1 < self.tensors.len() {
                pad(&mut w, self.alignment);
            }
        }
        (w.buf, infos)
    }
    pub fn build(&self) -> Vec<u8> {
        self.build_with_infos().0
    }
}

/// Where the type and offset fields of the tensor info at `info` are.
pub fn info_fields(bytes: &[u8], info: usize) -> (usize, usize) {
    let rd = |at: usize, n: usize| {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(&bytes[at..at + n]);
        u64::from_le_bytes(a) as usize
    };
    let name_len = rd(info, 8);
    let n_dims_at = info + 8 + name_len;
    let n_dims = rd(n_dims_at, 4);
    let type_at = n_dims_at + 4 + 8 * n_dims;
    (type_at, type_at + 4)
}

/// A small, valid model-like file: llama metadata, a 4-token vocab, two tensors.
pub fn small_model() -> Builder {
    Builder::default()
        .kv("general.architecture", V::str("llama"))
        .kv("general.name", V::str("tiny"))
        .kv("general.file_type", V::u32(0))
        .kv("llama.context_length", V::u32(128))
        .kv("llama.embedding_length", V::u32(8))
        .kv("llama.rope.freq_base", V::f32(10000.0))
        .kv("tokenizer.ggml.model", V::str("gpt2"))
        .kv("tokenizer.ggml.tokens", V::strs(&["<s>", "</s>", "a", "b"]))
        .kv("tokenizer.ggml.scores", V::f32s(&[0.0, 0.0, -1.0, -2.0]))
        .kv("tokenizer.ggml.token_type", V::i32s(&[3, 3, 1, 1]))
        .kv("tokenizer.ggml.bos_token_id", V::u32(0))
        .kv("tokenizer.ggml.eos_token_id", V::u32(1))
        .f32_tensor("token_embd.weight", &[8, 4])
        .f32_tensor("output_norm.weight", &[8])
}

/// `$LLPIPE_MODELS_DIR/<file>`, failing clearly if absent.
pub fn model_path(file: &str) -> PathBuf {
    pipeline_tests::real_model(file)
}
