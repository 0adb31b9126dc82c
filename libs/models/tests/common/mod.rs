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
        let id = |t: gguf::ValueType| {
            (0..13)
                .find(|&i| gguf::ValueType::from_id(i) == Some(t))
                .expect("type id")
        };
        match v {
            gguf::Value::Str(s) => self.str(k, s),
            gguf::Value::U32(x) => self.u32(k, *x),
            gguf::Value::Bool(x) => {
                self.key(k, 7);
                self.kv.push(*x as u8);
            }
            gguf::Value::Array(a) => {
                self.key(k, 9);
                self.kv.extend(id(a.elem_type()).to_le_bytes());
                self.kv.extend((a.len() as u64).to_le_bytes());
                self.kv.extend(a.raw_bytes());
            }
            other => panic!("copy of {k}: unhandled {}", other.type_name()),
        }
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

/// The error loading `path` gives (it must fail).
pub fn load_error(path: &Path) -> String {
    models::load(path, &Default::default())
        .err()
        .expect("must fail to load")
        .to_string()
}
