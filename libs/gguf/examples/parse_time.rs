//! Times `gguf::parse` alone (file already in memory) on one file:
//! `cargo run --release -p gguf --example parse_time -- FILE [RUNS]`.
//! Prints min and median milliseconds over RUNS parses (default 50), plus
//! the time to collect the vocabulary with `get_str_array`.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: parse_time FILE [RUNS]");
    let runs: usize = args
        .next()
        .map_or(50, |r| r.parse().expect("RUNS is a number"));
    let bytes = std::fs::read(&path).expect("read the file");
    let mut parse_ms = Vec::with_capacity(runs);
    let mut vocab_ms = Vec::with_capacity(runs);
    let mut n_tokens = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let g = gguf::parse(&bytes).expect("parse");
        parse_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        n_tokens = g
            .get_str_array("tokenizer.ggml.tokens")
            .map_or(0, |v| v.len());
        vocab_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let (pmin, pmed) = stats(&mut parse_ms);
    let (vmin, vmed) = stats(&mut vocab_ms);
    println!("parse: min {pmin:.3} ms, median {pmed:.3} ms over {runs} runs");
    println!("vocab ({n_tokens} tokens) as Vec<&str>: min {vmin:.3} ms, median {vmed:.3} ms");
}
