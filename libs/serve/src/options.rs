//! Request fields into runner options: `options`, `keep_alive`.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::http::ApiError;
use crate::sched::KeepAlive;

/// Integer options: a float is truncated, as Ollama does.
const INT_OPTIONS: &[&str] = &[
    "num_ctx",
    "num_keep",
    "num_predict",
    "top_k",
    "repeat_last_n",
    "seed",
    "num_batch",
    "num_gpu",
    "num_thread",
];

/// Parses `keep_alive`: a number of seconds, or a Go duration string
/// (`"5m"`, `"1h30m"`, `"-1s"`); negative is forever. A unit-less string
/// is an error, as in Ollama.
pub fn parse_keep_alive(v: &Value) -> Result<KeepAlive, String> {
    let secs = match v {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => go_duration(s)?,
        _ => return Err(format!("invalid keep_alive {v}")),
    };
    if secs < 0.0 {
        return Ok(KeepAlive::Forever);
    }
    Ok(KeepAlive::For(Duration::from_secs_f64(secs.min(1e10))))
}

/// A Go duration (`300ms`, `1.5h`, `2h45m`, `-1s`, `0`) in seconds.
fn go_duration(s: &str) -> Result<f64, String> {
    let bad = || format!("time: invalid duration \"{s}\"");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration \"{s}\""))?;
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += num * scale;
        rest = &rest[u..];
    }
    Ok(if neg { -total } else { total })
}

/// Applies an Ollama `options` object to `o`: nulls skipped, floats in
/// integer fields truncated, a negative seed random, unknown keys ignored;
/// a known key of the wrong type is a 500 (`option "top_k" must be of type
/// integer`), as in Ollama.
pub(crate) fn apply_options(o: &mut runner::InferOptions, opts: &Value) -> Result<(), ApiError> {
    let Some(obj) = opts.as_object() else {
        if opts.is_null() {
            return Ok(());
        }
        return Err(ApiError::bad("options must be an object"));
    };
    let mut clean = Map::new();
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        if INT_OPTIONS.contains(&k.as_str()) {
            let n = v.as_f64().ok_or_else(|| {
                ApiError::internal(format!("option \"{k}\" must be of type integer"))
            })?;
            if k == "seed" && n < 0.0 {
                continue; // random: the caller seeded from the clock
            }
            clean.insert(k.clone(), Value::from(n.trunc() as i64));
        } else {
            clean.insert(k.clone(), v.clone());
        }
    }
    if let Some(Value::String(s)) = clean.get("stop") {
        clean.insert("stop".into(), Value::from(vec![s.clone()]));
    }
    o.apply_params(&Value::Object(clean.clone()).to_string())
        .map_err(|e| ApiError::internal(e.replace("params ", "option ")))?;
    apply_load_options(o, &clean)
}

/// The load-time options runner's params leave alone: `num_thread` (0: the
/// server's; at most the CPUs there are), `num_batch` (below 1: the
/// server's; at most the context), `num_gpu` (negative: the server's; in a
/// GPU build its layers, else ignored, as Ollama ignores it on a CPU) and `use_mmap`. A model with other values than the loaded one's
/// loads again (`sched`). `obj`: a request's cleaned `options` or a
/// model's params layer.
pub(crate) fn apply_load_options(
    o: &mut runner::InferOptions,
    obj: &Map<String, Value>,
) -> Result<(), ApiError> {
    let int = |k: &str| -> Result<Option<i64>, ApiError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(|n| Some(n.trunc() as i64)).ok_or_else(|| {
                ApiError::internal(format!("option \"{k}\" must be of type integer"))
            }),
        }
    };
    if let Some(n) = int("num_thread")?.filter(|&n| n > 0) {
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        o.n_threads = (n as u64).min(cpus as u64) as usize;
    }
    if let Some(n) = int("num_batch")?.filter(|&n| n > 0) {
        o.n_batch = (n as u64).min(o.n_ctx.max(1) as u64) as usize;
    }
    if let Some(n) = int("num_gpu")?.filter(|&n| n >= 0) {
        if engine::llama_cpp::supports_gpu_offload() {
            o.gpu_layers = i32::try_from(n).unwrap_or(i32::MAX);
        }
    }
    match obj.get("use_mmap") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => o.no_mmap = !b,
        Some(_) => {
            return Err(ApiError::internal(
                "option \"use_mmap\" must be of type boolean",
            ))
        }
    }
    Ok(())
}

/// A seed from the clock, for requests that give none (Ollama's -1).
pub(crate) fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keep_alive_forms() {
        let k = |v: Value| parse_keep_alive(&v);
        assert_eq!(k(json!(0)), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(k(json!(10)), Ok(KeepAlive::For(Duration::from_secs(10))));
        assert_eq!(k(json!("5m")), Ok(KeepAlive::For(Duration::from_secs(300))));
        assert_eq!(
            k(json!("1h30m")),
            Ok(KeepAlive::For(Duration::from_secs(5400)))
        );
        assert_eq!(k(json!("0")), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(k(json!(-1)), Ok(KeepAlive::Forever));
        assert_eq!(k(json!("-1s")), Ok(KeepAlive::Forever));
        assert!(k(json!("10")).is_err());
        assert!(k(json!("5x")).is_err());
        assert!(k(json!(true)).is_err());
    }

    #[test]
    fn options_truncate_ignore_and_reject() {
        let mut o = runner::InferOptions::default();
        apply_options(
            &mut o,
            &json!({"top_k": 7.9, "temperature": 0.0, "num_predict": 5, "seed": -1,
                    "mirostat": 0, "numa": false, "stop": ["x"], "top_p": null}),
        )
        .unwrap();
        assert_eq!(o.sampler.top_k, 7);
        assert_eq!(o.sampler.temperature, 0.0);
        assert_eq!(o.num_predict, Some(5));
        assert_eq!(o.stop, vec!["x".to_string()]);
        let e = apply_options(&mut o, &json!({"top_k": "x"})).unwrap_err();
        assert_eq!(e.status, 500);
        assert_eq!(e.msg, "option \"top_k\" must be of type integer");
    }

    #[test]
    fn load_time_options_bounded_and_typed() {
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        let server = runner::InferOptions {
            n_ctx: 1024,
            n_threads: 1,
            ..Default::default()
        };
        let mut o = server.clone();
        apply_options(
            &mut o,
            &json!({"num_thread": 1e12, "num_batch": 100000, "use_mmap": false, "num_gpu": 99}),
        )
        .unwrap();
        assert_eq!((o.n_threads, o.n_batch, o.no_mmap), (cpus, 1024, true));
        if !engine::llama_cpp::supports_gpu_offload() {
            assert_eq!(o.gpu_layers, 0, "num_gpu ignored without a GPU build");
        }
        // 0, negative or absent: the server's
        let mut o = server.clone();
        apply_options(
            &mut o,
            &json!({"num_thread": 0, "num_batch": -1, "num_gpu": -1, "use_mmap": null}),
        )
        .unwrap();
        assert_eq!(
            (o.n_threads, o.n_batch, o.gpu_layers, o.no_mmap),
            (1, server.n_batch, 0, false)
        );
        let e = apply_options(&mut o, &json!({"use_mmap": "no"})).unwrap_err();
        assert_eq!(e.status, 500);
        assert_eq!(e.msg, "option \"use_mmap\" must be of type boolean");
        let e = apply_options(&mut o, &json!({"num_thread": "2"})).unwrap_err();
        assert_eq!(e.status, 500);
    }
}
