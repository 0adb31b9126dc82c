//! One engine's figures on one GGUF, as a JSON line (run by scripts/bench-infer.sh):
//! load-to-first-token, pp512 and tg128 (best of `--reps`), peak RSS.
//! After the first token both engines answer on for 32 tokens (a warm-up, as
//! llama-bench has; untimed): pp and tg are measured on a model that has
//! been running, whose mapped weights the native engine has moved into
//! huge pages by then (about 16 MiB per pass).
//!
//! `bench --model FILE --engine native|llama.cpp [--threads 2] [--kv-type f16] [--reps 3]
//! [--no-mmap true] [--gpu-layers 0]` (`--gpu-layers -1`: the whole model on the GPU);
//! `bench --gpu-probe` prints the GPU a GPU build finds, or `none`.

use std::path::PathBuf;
use std::time::Instant;

use engine::kv_cache::KvType;
use engine::llama_cpp::{argmax, ContextOptions, LlamaContext, LlamaModel, ModelOptions};
use engine::session::{Session, SessionOptions};

const PROMPT: &str = "The capital of France is";
/// Tokens generated after the first, untimed, before pp and tg.
const WARM_UP: usize = 32;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// Deterministic pseudo-random token ids (content does not change a dense model's cost).
fn tokens(n: usize, n_vocab: usize) -> Vec<i32> {
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n_vocab as u64) as i32
        })
        .collect()
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: 0 kB");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Best tokens/s over `reps` runs of `f` (which returns seconds for `n` tokens).
fn best(reps: usize, n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..reps).map(|_| n as f64 / f()).fold(0.0, f64::max)
}

fn main() {
    if std::env::args().any(|a| a == "--gpu-probe") {
        // for scripts/bench-infer.sh: the GPU it would use, or "none"
        let gpu = ggml::Device::gpu().map_or("none".to_string(), |d| d.description());
        println!("{gpu}");
        return;
    }
    let model = PathBuf::from(arg("--model", ""));
    let engine_name = arg("--engine", "native");
    let threads: usize = arg("--threads", "2").parse().expect("--threads");
    let kv: KvType = arg("--kv-type", "f16").parse().expect("--kv-type");
    let reps: usize = arg("--reps", "3").parse().expect("--reps");
    let gpu_layers: i32 = arg("--gpu-layers", "0").parse().expect("--gpu-layers");
    let gpu = (gpu_layers != 0).then(|| ggml::Device::gpu().expect("--gpu-layers: no GPU found"));
    let device = gpu.map_or("CPU".to_string(), |d| d.description());
    let (n_pp, n_tg) = (512, 128);
    let t0 = Instant::now();
    let (first_ms, pp, tg);
    if engine_name == "native" {
        let bytes = std::fs::read(&model).expect("model");
        let tok = engine::tokenizer::Tokenizer::from_gguf(&gguf::parse(&bytes).expect("gguf"))
            .expect("tokenizer");
        drop(bytes);
        let t0 = Instant::now();
        let lo = models::LoadOptions {
            no_mmap: arg("--no-mmap", "false") == "true",
            gpu,
            ..Default::default()
        };
        let loaded = models::load(&model, &lo).expect("load");
        let so = SessionOptions {
            n_ctx: 1024,
            n_batch: 512,
            n_threads: threads,
            kv_type: kv,
            flash_attn: kv != KvType::F16,
            ..Default::default()
        };
        let mut s = Session::new(loaded.model.as_ref(), &so).expect("session");
        let p: Vec<i32> = tok
            .encode(PROMPT, true, false)
            .into_iter()
            .map(|t| t as i32)
            .collect();
        let mut t = argmax(s.decode(&p).expect("decode"));
        first_ms = t0.elapsed().as_secs_f64() * 1e3;
        for _ in 0..WARM_UP {
            t = argmax(s.decode(&[t]).expect("warm-up"));
        }
        let nv = loaded.model.n_vocab();
        let (pt, gt) = (tokens(n_pp, nv), tokens(n_tg, nv));
        pp = best(reps, n_pp, || {
            s.clear();
            let t = Instant::now();
            s.decode(&pt).expect("pp");
            t.elapsed().as_secs_f64()
        });
        tg = best(reps, n_tg, || {
            s.clear();
            let t = Instant::now();
            for &x in &gt {
                s.decode(&[x]).expect("tg");
            }
            t.elapsed().as_secs_f64()
        });
    } else {
        let mo = ModelOptions {
            n_gpu_layers: gpu_layers,
            ..Default::default()
        };
        let m = LlamaModel::load(&model, &mo).expect("load");
        let co = ContextOptions {
            n_ctx: 1024,
            n_seq: 1,
            n_batch: 512,
            n_threads: threads as i32,
            type_k: kv,
            type_v: kv,
            flash_attn: kv != KvType::F16,
        };
        let mut c = LlamaContext::new(&m, &co).expect("context");
        let p = m.tokenize(PROMPT, true, false).expect("tokenize");
        c.decode(&p, 0).expect("decode");
        let mut t = argmax(c.logits_last().unwrap());
        first_ms = t0.elapsed().as_secs_f64() * 1e3;
        for i in 0..WARM_UP {
            c.decode(&[t], p.len() + i).expect("warm-up");
            t = argmax(c.logits_last().unwrap());
        }
        let (pt, gt) = (tokens(n_pp, m.n_vocab()), tokens(n_tg, m.n_vocab()));
        pp = best(reps, n_pp, || {
            c.clear();
            let t = Instant::now();
            c.decode(&pt, 0).expect("pp");
            t.elapsed().as_secs_f64()
        });
        tg = best(reps, n_tg, || {
            c.clear();
            let t = Instant::now();
            for (i, &x) in gt.iter().enumerate() {
                c.decode(&[x], i).expect("tg");
            }
            t.elapsed().as_secs_f64()
        });
    }
    println!(
        "{{\"engine\":\"{engine_name}\",\"device\":{device:?},\"threads\":{threads},\"kv\":\"{kv:?}\",\"load_first_token_ms\":{first_ms:.1},\"pp512\":{pp:.1},\"tg128\":{tg:.1},\"peak_rss_kb\":{}}}",
        peak_rss_kb()
    );
}
