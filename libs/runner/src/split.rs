//! `--rpc`: a model's layers split between the local CPU and ggml RPC
//! workers, on llama.cpp's engine (its scheduler runs split graphs).
//!
//! llama.cpp places layers by two numbers: `n_gpu_layers`, how many of the
//! last layer slots (the repeating layers and then the output, `n_layer + 1`
//! slots) leave the CPU, and `tensor_split`, how those slots are shared
//! between the offload devices, in order. The input embedding always stays
//! on the CPU. [`layout`] mirrors llama.cpp's placement
//! (`llama_model_base::load_tensors`) to say in the notice where each layer
//! goes.

use ggml::rpc::Worker;

use crate::InferOptions;

/// How llama.cpp is asked to place the layers.
#[derive(Debug, Clone)]
pub(crate) struct RpcPlan {
    /// The workers' devices, in `--rpc` order.
    pub(crate) workers: Vec<Worker>,
    /// Layer slots offloaded (to the workers).
    pub(crate) n_gpu_layers: i32,
    /// Each worker device's share of them.
    pub(crate) tensor_split: Vec<f32>,
}

/// Connects to the workers of `opts.rpc` and splits `n_layer` layers
/// between them and the local CPU: by `opts.tensor_split`, else in
/// proportion to free memory (the workers' as they report it, ours
/// `MemAvailable`). Returns the plan and the notice that says it.
pub(crate) fn plan(opts: &InferOptions, n_layer: usize) -> Result<(RpcPlan, String), String> {
    for e in &opts.rpc {
        ggml::rpc::check_endpoint(e).map_err(|e| e.to_string())?;
    }
    let workers = ggml::rpc::connect(&opts.rpc).map_err(|e| e.to_string())?;
    let n = workers.len();
    let (devices, local): (Vec<f32>, f32) = if opts.tensor_split.is_empty() {
        let free = |(f, t): (usize, usize)| if f > 0 { f } else { t } as f32;
        (
            workers.iter().map(|w| free(w.memory())).collect(),
            mem_available().unwrap_or(0) as f32,
        )
    } else {
        let ts = &opts.tensor_split;
        if ts.len() != n && ts.len() != n + 1 {
            return Err(format!(
                "--tensor-split has {} proportions: give one per RPC device ({n}), \
                 then optionally the local CPU's",
                ts.len()
            ));
        }
        if ts.iter().any(|v| !v.is_finite() || *v < 0.0) || ts.iter().sum::<f32>() <= 0.0 {
            return Err("--tensor-split proportions must be ≥ 0 and not all 0".into());
        }
        (ts[..n].to_vec(), ts.get(n).copied().unwrap_or(0.0))
    };
    let (devices, local) = if devices.iter().sum::<f32>() + local <= 0.0 {
        (vec![1.0; n], 1.0) // nothing reported: evenly
    } else {
        (devices, local)
    };
    let l = layout(n_layer, local, &devices);
    let mut parts = vec![format!("{} on the local CPU", l.local)];
    for (w, c) in workers.iter().zip(&l.per_device) {
        parts.push(format!("{c} on {} ({})", w.endpoint, w.name()));
    }
    let notice = format!(
        "infer: splitting {n_layer} layers over RPC: {}; running on llama.cpp's engine",
        parts.join(", ")
    );
    let plan = RpcPlan {
        workers,
        n_gpu_layers: l.n_gpu_layers as i32,
        tensor_split: devices,
    };
    Ok((plan, notice))
}

/// Where llama.cpp puts the layers (see the module doc).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// `n_gpu_layers` to ask for.
    pub(crate) n_gpu_layers: usize,
    /// Repeating layers left on the local CPU (the first ones).
    pub(crate) local: usize,
    /// Repeating layers on each device.
    pub(crate) per_device: Vec<usize>,
}

/// Splits `n_layer` layers: `local` and `devices` are shares (any scale).
/// The local share is rounded to whole slots of the `n_layer + 1`; the
/// devices' are placed as llama.cpp places them: slot `i` of the `n`
/// offloaded goes to the first device whose cumulative share exceeds `i/n`.
pub(crate) fn layout(n_layer: usize, local: f32, devices: &[f32]) -> Layout {
    let slots = n_layer + 1;
    let total: f32 = local + devices.iter().sum::<f32>();
    let n_gpu = if devices.is_empty() || total <= 0.0 {
        0
    } else {
        ((slots as f32 * (1.0 - local / total)).round() as usize).min(slots)
    };
    let start = slots - n_gpu;
    // llama.cpp's split points: cumulative shares, normalised (in f32, as it does)
    let mut cum = Vec::with_capacity(devices.len());
    let mut sum = 0f32;
    for &d in devices {
        sum += d;
        cum.push(sum);
    }
    for c in &mut cum {
        *c /= sum;
    }
    let mut per_device = vec![0; devices.len()];
    for il in start..n_layer {
        let x = (il - start) as f32 / n_gpu as f32;
        let dev = cum.partition_point(|&c| c <= x).min(devices.len() - 1);
        per_device[dev] += 1;
    }
    Layout {
        n_gpu_layers: n_gpu,
        local: start.min(n_layer),
        per_device,
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_even_ways() {
        // SmolLM2: 30 layers + output = 31 slots; 21 leave the CPU
        let l = layout(30, 1.0, &[1.0, 1.0]);
        assert_eq!(l.n_gpu_layers, 21);
        assert_eq!(l.local, 10);
        assert_eq!(l.per_device, vec![11, 9]); // the output is the second's too
        assert_eq!(l.local + l.per_device.iter().sum::<usize>(), 30);
    }

    #[test]
    fn everything_remote_or_local() {
        let l = layout(18, 0.0, &[1.0, 3.0]);
        assert_eq!((l.n_gpu_layers, l.local), (19, 0));
        assert_eq!(l.per_device.iter().sum::<usize>(), 18);
        assert!(l.per_device[1] > 2 * l.per_device[0], "{l:?}");
        let l = layout(18, 1.0, &[0.0, 0.0]);
        assert_eq!((l.n_gpu_layers, l.local), (0, 18));
        assert_eq!(l.per_device, vec![0, 0]);
    }

    #[test]
    fn shares_by_memory() {
        // a worker with twice the local free memory takes about two thirds
        let l = layout(30, 8e9, &[16e9]);
        assert_eq!(l.n_gpu_layers, 21);
        assert_eq!(l.per_device, vec![20]);
    }
}
