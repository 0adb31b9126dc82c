//! Tokenizer, KV cache, sampling and the generation loop
#![deny(missing_docs)]

pub mod llama_cpp;
pub mod quantize;
pub mod tokenizer;

pub mod generate;
pub mod grammar;
pub mod kv_cache;
pub mod sampler;
pub mod session;
pub mod stop;

mod error;
pub use error::{Error, ErrorKind, Result};

/// Physical CPU cores (the default thread count): distinct (package, core)
/// pairs in /proc/cpuinfo where available, otherwise the logical count.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let (mut phys, mut core) = (None, None);
    for line in info.lines().chain(std::iter::once("")) {
        let val = line.split(':').nth(1).map(str::trim);
        if line.starts_with("physical id") {
            phys = val.map(str::to_owned);
        } else if line.starts_with("core id") {
            core = val.map(str::to_owned);
        } else if line.trim().is_empty() {
            if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                cores.insert((p, c));
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}
