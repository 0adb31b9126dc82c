//! Shared by the tiny random-weight model tests: a small GGUF writer (f32
//! or q8_0 tensors, SmolLM2's real vocabulary copied in) and the comparison
//! of our engine with llama.cpp's on the file written.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use engine::llama_cpp::{argmax, ContextOptions, LlamaContext, LlamaModel, ModelOptions};
use engine::session::{Session, SessionOptions};

pub fn smollm2() -> PathBuf {
    pipeline_tests::real_model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

// ---- a small GGUF writer ----

#[derive(Default)]
pub struct Writer {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>, // name, dims, ggml type, data
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl Writer {
    fn key(&mut self, k: &str, ty: u32) {
        put_str(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        self.n_kv += 1;
    }
    pub fn u32(&mut self, k: &str, v: u32) {
        self.key(k, 4);
        self.kv.extend(v.to_le_bytes());
    }
    pub fn f32(&mut self, k: &str, v: f32) {
        self.key(k, 6);
        self.kv.extend(v.to_le_bytes());
    }
    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k, 8);
        put_str(&mut self.kv, v);
    }
    /// Copies a value as stored in another file.
    pub fn copy(&mut self, k: &str, v: &gguf::Value) {
        let (ty, bytes) = encode(v);
        self.raw(k, ty, &bytes);
    }
    /// A value of GGUF type id `ty`, already encoded.
    fn raw(&mut self, k: &str, ty: u32, bytes: &[u8]) {
        self.key(k, ty);
        self.kv.extend_from_slice(bytes);
    }
    /// Copies SmolLM2's tokenizer (not its chat template); returns the vocabulary size.
    pub fn smollm2_vocab(&mut self) -> u64 {
        // read once per test binary: the file is 100 MB
        static VOCAB: OnceLock<(Vec<u8>, u64, u64)> = OnceLock::new();
        let (kv, n_kv, n_vocab) = VOCAB.get_or_init(|| {
            let bytes = std::fs::read(smollm2()).unwrap();
            let src = gguf::parse(&bytes).unwrap();
            let mut w = Writer::default();
            for (k, v) in src.metadata() {
                if k.starts_with("tokenizer.") && *k != "tokenizer.chat_template" {
                    w.copy(k, v);
                }
            }
            let n = src
                .get("tokenizer.ggml.tokens")
                .and_then(gguf::Value::as_array);
            (w.kv, w.n_kv, n.unwrap().len() as u64)
        });
        self.kv.extend_from_slice(kv);
        self.n_kv += n_kv;
        *n_vocab
    }
    /// An f32 tensor of uniform random values in `offset ± scale` (xorshift on `rng`).
    pub fn tensor(&mut self, name: &str, dims: &[u64], rng: &mut u64, scale: f32, offset: f32) {
        // Unoptimised test builds take seconds for an embedding matrix:
        // large tensors are kept per test binary, by everything that makes them.
        type Key = (Vec<u64>, u64, u32, u32); // dims, rng state, scale, offset
        type Made = (Vec<u8>, u64); // data, rng state after
        static LARGE: OnceLock<Mutex<HashMap<Key, Made>>> = OnceLock::new();
        let n: u64 = dims.iter().product();
        let generate = |mut x: u64| {
            let mut data = Vec::with_capacity(n as usize * 4);
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = offset + scale * ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0);
                data.extend_from_slice(&v.to_le_bytes());
            }
            (data, x)
        };
        let (data, next) = if n < 1 << 20 {
            generate(*rng)
        } else {
            let key = (dims.to_vec(), *rng, scale.to_bits(), offset.to_bits());
            let mut large = LARGE.get_or_init(Default::default).lock().unwrap();
            large.entry(key).or_insert_with(|| generate(*rng)).clone()
        };
        *rng = next;
        self.tensors.push((name.into(), dims.to_vec(), 0, data)); // F32
    }
    /// Like [`Writer::tensor`], quantized to q8_0 (`dims[0]` a multiple of 32).
    pub fn tensor_q8_0(
        &mut self,
        name: &str,
        dims: &[u64],
        rng: &mut u64,
        scale: f32,
        offset: f32,
    ) {
        self.tensor(name, dims, rng, scale, offset);
        let (_, _, ty, data) = self.tensors.last_mut().unwrap();
        assert_eq!(dims[0] % 32, 0, "q8_0 rows of {name}");
        *ty = 8; // Q8_0
        *data = q8_0(data);
    }
    /// A tensor of ggml type `ty` with its bytes as they are.
    pub fn raw_tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: &[u8]) {
        self.tensors
            .push((name.into(), dims.to_vec(), ty, data.to_vec()));
    }
    pub fn write(&self, path: &Path) {
        let mut b = Vec::new();
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        let mut off = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
            off += (data.len() as u64).div_ceil(32) * 32;
        }
        b.resize(b.len().div_ceil(32) * 32, 0);
        for (_, _, _, data) in &self.tensors {
            b.extend_from_slice(data);
            b.resize(b.len().div_ceil(32) * 32, 0);
        }
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(&b))
            .expect("write gguf");
    }
}

/// f32 values (little-endian bytes) as q8_0 blocks: an f16 scale `d` and
/// 32 signed bytes `round(x / d)` each.
fn q8_0(f32_bytes: &[u8]) -> Vec<u8> {
    let xs: Vec<f32> = f32_bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mut out = Vec::with_capacity(xs.len() / 32 * 34);
    for block in xs.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        // a scale that f16 holds exactly: 10 mantissa bits, normal exponent
        let d = f32::from_bits((amax / 127.0).to_bits() & 0xffff_e000);
        let (bits, exp) = (d.to_bits(), ((d.to_bits() >> 23) & 0xff) as i32 - 112);
        assert!(
            (1..31).contains(&exp),
            "scale {d} outside f16's normal range"
        );
        let half = ((exp as u32) << 10) | ((bits >> 13) & 0x3ff);
        out.extend_from_slice(&(half as u16).to_le_bytes());
        out.extend(
            block
                .iter()
                .map(|x| (x / d).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    out
}

// ---- a model being written ----

/// A tiny model of architecture `arch` being written: metadata keys get the
/// `arch.` prefix, and the tensor named `skip` is left out (broken variants).
pub struct Tiny {
    pub w: Writer,
    pub arch: String,
    pub n_vocab: u64,
    /// Write 2-d [`Tiny::weight`]s as q8_0 (the rest stays f32).
    pub q8_0: bool,
    rng: u64,
    skip: String,
}

impl Tiny {
    pub fn new(arch: &str, skip: &str) -> Tiny {
        let mut w = Writer::default();
        w.str("general.architecture", arch);
        let n_vocab = w.smollm2_vocab();
        Tiny {
            w,
            arch: arch.into(),
            n_vocab,
            q8_0: false,
            rng: 0x1234_5678_9abc_def1,
            skip: skip.into(),
        }
    }
    pub fn u32(&mut self, k: &str, v: u32) {
        self.w.u32(&format!("{}.{k}", self.arch), v);
    }
    pub fn f32(&mut self, k: &str, v: f32) {
        self.w.f32(&format!("{}.{k}", self.arch), v);
    }
    pub fn str(&mut self, k: &str, v: &str) {
        self.w.str(&format!("{}.{k}", self.arch), v);
    }
    /// Random values in `offset ± scale`.
    pub fn tensor(&mut self, name: &str, dims: &[u64], scale: f32, offset: f32) {
        if name != self.skip {
            self.w.tensor(name, dims, &mut self.rng, scale, offset);
        }
    }
    /// A projection matrix or bias: values in ±0.2.
    pub fn weight(&mut self, name: &str, dims: &[u64]) {
        if self.q8_0 && dims.len() == 2 && name != self.skip {
            self.w.tensor_q8_0(name, dims, &mut self.rng, 0.2, 0.0);
        } else {
            self.tensor(name, dims, 0.2, 0.0);
        }
    }
    /// A norm weight: values in 1 ± 0.1.
    pub fn norm(&mut self, name: &str, dims: &[u64]) {
        self.tensor(name, dims, 0.1, 1.0);
    }
    pub fn write(&self, path: &Path) {
        self.w.write(path);
    }
}

// ---- comparison with llama.cpp ----

pub const PROMPTS: [&str; 3] = [
    "Hello world, this is a test",
    "fn main() { println!(\"hi\"); }",
    "The quick brown fox jumps over the lazy dog. Then the dog",
];

/// Greedy decoding of `n_gen` tokens after each prompt, by llama.cpp's engine
/// and ours, in a context of `n_ctx`: the tokens must be the same, and the
/// logits of the first step within `tol`. Returns the largest logit difference.
pub fn check_against_llama_cpp(path: &Path, n_ctx: usize, n_gen: usize, tol: f32) -> f32 {
    // both engines with their defaults (both repack what their CPU backend
    // has faster kernels for; nothing, for f32 weights)
    let rm = LlamaModel::load(path, &ModelOptions::default()).unwrap();
    let co = ContextOptions {
        n_ctx: n_ctx as u32,
        n_threads: 1,
        ..Default::default()
    };
    let mut rc = LlamaContext::new(&rm, &co).unwrap();
    let loaded = models::load(path, &Default::default()).unwrap();
    let so = SessionOptions {
        n_ctx,
        n_threads: 1,
        ..Default::default()
    };
    let mut sess = Session::new(loaded.model.as_ref(), &so).unwrap();
    let mut worst = 0.0f32;
    for text in PROMPTS {
        let prompt = rm.tokenize(text, true, false).unwrap();
        let want = rc.greedy(&prompt, n_gen).unwrap();
        rc.clear();
        rc.decode(&prompt, 0).unwrap();
        let want_logits = rc.logits_last().unwrap().to_vec();
        sess.clear();
        let mut logits = sess.decode(&prompt).unwrap().to_vec();
        let diff = logits
            .iter()
            .zip(&want_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= tol,
            "prompt {text:?}: first-step logits differ by {diff}"
        );
        worst = worst.max(diff);
        let mut got = vec![];
        for _ in 0..n_gen {
            let t = argmax(&logits);
            got.push(t);
            logits = sess.decode(&[t]).unwrap().to_vec();
        }
        assert_eq!(got, want, "prompt {text:?}: tokens differ from llama.cpp");
        assert!(
            got.iter().collect::<std::collections::HashSet<_>>().len() > 1,
            "degenerate output {got:?}"
        );
    }
    worst
}

/// A GGUF read for editing in place: its metadata as `(key, type id,
/// encoded value)` and its tensors as `(name, dims, ggml type, bytes)`.
pub struct Edited {
    pub kv: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Edited {
    fn set(&mut self, key: &str, ty: u32, v: Vec<u8>) {
        match self.kv.iter_mut().find(|(k, _, _)| k == key) {
            Some(e) => *e = (key.into(), ty, v),
            None => self.kv.push((key.into(), ty, v)),
        }
    }
    /// Sets (or adds) the u32 `key`.
    pub fn set_u32(&mut self, key: &str, v: u32) {
        self.set(key, 4, v.to_le_bytes().to_vec());
    }
    /// Sets (or adds) the f32 `key`.
    pub fn set_f32(&mut self, key: &str, v: f32) {
        self.set(key, 6, v.to_le_bytes().to_vec());
    }
    /// Sets (or adds) `key` to an array of `n` bools, all `v`.
    pub fn set_bools(&mut self, key: &str, n: usize, v: bool) {
        let mut b = 7u32.to_le_bytes().to_vec();
        b.extend((n as u64).to_le_bytes());
        b.extend(std::iter::repeat_n(v as u8, n));
        self.set(key, 9, b);
    }
    /// The u32 (or other unsigned) value of `key`.
    pub fn u32(&self, key: &str) -> u32 {
        let (_, _, v) = self.kv.iter().find(|(k, _, _)| k == key).expect(key);
        u32::from_le_bytes(v[..4].try_into().unwrap())
    }
    /// Removes the metadata `key`.
    pub fn remove(&mut self, key: &str) {
        self.kv.retain(|(k, _, _)| k != key);
    }
    /// The tensor `name`.
    pub fn tensor(&mut self, name: &str) -> &mut (String, Vec<u64>, u32, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).expect(name)
    }
    /// Removes the tensor `name`.
    pub fn remove_tensor(&mut self, name: &str) {
        self.tensors.retain(|t| t.0 != name);
    }
}

/// A metadata value as GGUF encodes it: (type id, bytes).
fn encode(v: &gguf::Value) -> (u32, Vec<u8>) {
    use gguf::Value as V;
    match v {
        V::U8(x) => (0, vec![*x]),
        V::I8(x) => (1, x.to_le_bytes().to_vec()),
        V::U16(x) => (2, x.to_le_bytes().to_vec()),
        V::I16(x) => (3, x.to_le_bytes().to_vec()),
        V::U32(x) => (4, x.to_le_bytes().to_vec()),
        V::I32(x) => (5, x.to_le_bytes().to_vec()),
        V::F32(x) => (6, x.to_le_bytes().to_vec()),
        V::Bool(x) => (7, vec![*x as u8]),
        V::Str(s) => {
            let mut b = (s.len() as u64).to_le_bytes().to_vec();
            b.extend(s.as_bytes());
            (8, b)
        }
        V::U64(x) => (10, x.to_le_bytes().to_vec()),
        V::I64(x) => (11, x.to_le_bytes().to_vec()),
        V::F64(x) => (12, x.to_le_bytes().to_vec()),
        V::Array(a) => {
            let id = (0..13)
                .find(|&i| gguf::ValueType::from_id(i) == Some(a.elem_type()))
                .expect("type id");
            let mut b = id.to_le_bytes().to_vec();
            b.extend((a.len() as u64).to_le_bytes());
            b.extend(a.raw_bytes());
            (9, b)
        }
    }
}

/// Reads the GGUF `src`, lets `f` edit it, and writes the result to `dst`
/// (tensor data 32-byte aligned, GGUF's default).
pub fn edit(src: &Path, dst: &Path, f: impl FnOnce(&mut Edited)) {
    let bytes = std::fs::read(src).unwrap();
    let gg = gguf::parse(&bytes).unwrap();
    let mut e = Edited {
        kv: gg
            .metadata()
            .iter()
            .filter(|(k, _)| *k != "general.alignment")
            .map(|(k, v)| {
                let (ty, b) = encode(v);
                (k.to_string(), ty, b)
            })
            .collect(),
        tensors: gg
            .tensors()
            .iter()
            .map(|t| {
                let data = gg.tensor_data(t).to_vec();
                (t.name.clone(), t.dims.clone(), t.ggml_type.id(), data)
            })
            .collect(),
    };
    f(&mut e);
    let mut w = Writer::default();
    for (k, ty, v) in &e.kv {
        w.raw(k, *ty, v);
    }
    w.tensors = e.tensors;
    w.write(dst);
}

/// Rewrites the GGUF at `path` with the u32 metadata key `key` (added when
/// absent) set to `value`; everything else stays as it was.
pub fn edit_u32(path: &Path, key: &str, value: u32) {
    edit(path, path, |e| e.set_u32(key, value));
}

/// The error loading `path` gives (it must fail).
pub fn load_error(path: &Path) -> String {
    models::load(path, &Default::default())
        .err()
        .expect("must fail to load")
        .to_string()
}

// ---- inconsistent models ----

/// One edit that makes a model inconsistent: what it does, and the edit,
/// which returns a piece of text the loading error must contain (the key or
/// tensor it names; `a|b`: either).
pub type Breakage = (&'static str, fn(&mut Edited, &str) -> String);

/// Head size as the file implies it: `attention.key_length`, else width / heads.
fn head_dim(e: &Edited, a: &str) -> u32 {
    match e
        .kv
        .iter()
        .any(|(k, _, _)| *k == format!("{a}.attention.key_length"))
    {
        true => e.u32(&format!("{a}.attention.key_length")),
        false => {
            e.u32(&format!("{a}.embedding_length")) / e.u32(&format!("{a}.attention.head_count"))
        }
    }
}

/// Edits that each reach a `GGML_ASSERT` (or a wrong result) unless the
/// loader refuses them first, for a model of architecture `a` with blocks
/// `blk.0`… and the usual tensor names (issue 12).
pub const BREAKAGES: &[Breakage] = &[
    ("odd rope.dimension_count", |e, a| {
        let (k, n) = (format!("{a}.rope.dimension_count"), head_dim(e, a) - 1);
        e.set_u32(&k, n);
        format!("{k} = {n} is odd")
    }),
    ("rope.dimension_count above the head size", |e, a| {
        let k = format!("{a}.rope.dimension_count");
        e.set_u32(&k, head_dim(e, a) * 2);
        k
    }),
    ("no heads", |e, a| {
        let k = format!("{a}.attention.head_count");
        e.set_u32(&k, 0);
        k
    }),
    ("more kv heads than heads", |e, a| {
        let k = format!("{a}.attention.head_count_kv");
        e.set_u32(&k, e.u32(&format!("{a}.attention.head_count")) + 1);
        k
    }),
    ("kv heads that do not divide the heads", |e, a| {
        let n_head = e.u32(&format!("{a}.attention.head_count"));
        let kv = (2..n_head)
            .rev()
            .find(|d| n_head % d != 0)
            .unwrap_or(n_head + 1);
        let k = format!("{a}.attention.head_count_kv");
        e.set_u32(&k, kv);
        k
    }),
    ("zero-length context", |e, a| {
        let k = format!("{a}.context_length");
        e.set_u32(&k, 0);
        k
    }),
    ("negative RMSNorm epsilon", |e, a| {
        let k = format!("{a}.attention.layer_norm_rms_epsilon");
        e.set_f32(&k, -1.0);
        k
    }),
    ("NaN RMSNorm epsilon", |e, a| {
        let k = format!("{a}.attention.layer_norm_rms_epsilon");
        e.set_f32(&k, f32::NAN);
        k
    }),
    ("zero RoPE base", |e, a| {
        let k = format!("{a}.rope.freq_base");
        e.set_f32(&k, 0.0);
        k
    }),
    ("wider model than its tensors", |e, a| {
        let k = format!("{a}.embedding_length");
        e.set_u32(&k, e.u32(&k) + 64);
        "has shape|embedding_length".into()
    }),
    ("more blocks than tensors", |e, a| {
        let k = format!("{a}.block_count");
        let n = e.u32(&k);
        e.set_u32(&k, n + 1);
        format!("blk.{n}.")
    }),
    ("wider MLP than its tensors", |e, a| {
        let k = format!("{a}.feed_forward_length");
        e.set_u32(&k, e.u32(&k) * 2);
        "has shape".into()
    }),
    ("larger vocabulary than the embeddings", |e, a| {
        let n = e.tensor("token_embd.weight").1[1] as u32;
        e.set_u32(&format!("{a}.vocab_size"), n + 1);
        "token_embd.weight".into()
    }),
    ("unknown tensor type", |e, _| {
        e.tensor("blk.0.attn_output.weight").2 = 99;
        "blk.0.attn_output.weight".into()
    }),
    ("transposed matrix", |e, _| {
        let t = e.tensor("blk.0.ffn_down.weight");
        t.1.swap(0, 1);
        "blk.0.ffn_down.weight".into()
    }),
    ("integer matrix", |e, _| {
        // i32 with bytes to match: ggml has no dot product for it
        let t = e.tensor("blk.0.attn_output.weight");
        t.2 = 26; // I32
        t.3 = vec![0; t.1.iter().product::<u64>() as usize * 4];
        "blk.0.attn_output.weight".into()
    }),
    ("missing output norm", |e, _| {
        e.remove_tensor("output_norm.weight");
        "output_norm.weight".into()
    }),
    ("norm weight of another type", |e, _| {
        // f16 of the same length: the bytes fit, the type does not
        let t = e.tensor("blk.0.attn_norm.weight");
        t.2 = 1; // F16
        t.3.truncate(t.3.len() / 2);
        "blk.0.attn_norm.weight".into()
    }),
    ("truncated tensor", |e, _| {
        let t = e.tensor("blk.0.attn_norm.weight");
        t.1[0] *= 2; // twice the elements, the same bytes
        "blk.0.attn_norm.weight".into()
    }),
];

/// Writes each of [`BREAKAGES`] of the model `src` (architecture `arch`)
/// into `dir` and loads it: each must be refused with an error naming the
/// key or tensor. Panics listing the ones that were not.
pub fn check_breakages(src: &Path, arch: &str, dir: &Path) {
    let mut failures = vec![];
    for (i, (what, edit_fn)) in BREAKAGES.iter().enumerate() {
        let dst = dir.join(format!("{arch}-{i}.gguf"));
        let mut want = String::new();
        edit(src, &dst, |e| want = edit_fn(e, arch));
        match models::load(&dst, &Default::default()) {
            Ok(_) => failures.push(format!("{arch}: {what}: loaded")),
            Err(err) if !want.split('|').any(|w| err.to_string().contains(w)) => failures.push(
                format!("{arch}: {what}: error does not name {want:?}: {err}"),
            ),
            Err(err) => eprintln!("{arch}: {what}: {err}"),
        }
        let _ = std::fs::remove_file(&dst);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
