use super::*;

/// Values for a graph input.
enum Vals {
    F32(Vec<f32>),
    F16(Vec<f32>),
    I32(Vec<i32>),
    Bytes(Vec<u8>),
}

/// Builds the graph `build` returns (its output and inputs with their
/// values) in a plan on a CPU backend of `threads` threads, writes the
/// inputs, computes, and returns the output values.
fn run_with<F>(threads: usize, own: bool, build: F) -> Vec<f32>
where
    F: for<'c> FnOnce(&'c Context) -> (Tensor<'c>, Vec<(TensorMut<'c>, Vals)>),
{
    let mut plan = Plan::new(Backend::cpu(threads).unwrap(), 64, ());
    plan.use_own_kernels(own);
    let mut vals = vec![];
    plan.build(|ctx, _g, _, _| {
        let (out, ins) = build(ctx);
        let mut inputs = vec![];
        for (t, v) in ins {
            inputs.push(Some(t));
            vals.push(v);
        }
        Built {
            inputs,
            outputs: vec![out],
        }
    });
    plan.check_supports().unwrap();
    plan.alloc().unwrap();
    for (i, v) in vals.iter().enumerate() {
        let t = plan.input(i).unwrap();
        match v {
            Vals::F32(v) => t.set_f32(v),
            Vals::F16(v) => t.set_f32_as_f16(v),
            Vals::I32(v) => t.set_i32(v),
            Vals::Bytes(v) => t.set_bytes(v),
        }
    }
    plan.compute().unwrap();
    plan.output(0).to_f32()
}

fn run<F>(build: F) -> Vec<f32>
where
    F: for<'c> FnOnce(&'c Context) -> (Tensor<'c>, Vec<(TensorMut<'c>, Vals)>),
{
    run_with(1, false, build)
}

/// Reference RoPE on one head vector at `pos`.
fn rope_ref(x: &[f32], pos: f32, base: f32, neox: bool) -> Vec<f32> {
    let n = x.len();
    let mut out = x.to_vec();
    for i in 0..n / 2 {
        let theta = pos * base.powf(-2.0 * i as f32 / n as f32);
        let (a, b) = if neox {
            (i, i + n / 2)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (s, c) = theta.sin_cos();
        out[a] = x[a] * c - x[b] * s;
        out[b] = x[a] * s + x[b] * c;
    }
    out
}

fn check_rope(mode: RopeMode) {
    let (d, heads, toks) = (8usize, 2usize, 3usize);
    let x: Vec<f32> = (0..d * heads * toks)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let pos = vec![0, 5, 123];
    let got = run(|ctx| {
        let a = ctx.input(Type::F32, &[d as i64, heads as i64, toks as i64]);
        let p = ctx.input(Type::I32, &[toks as i64]);
        let out = ctx.rope(a, p, None, &Rope::new(d as i32, mode, 10000.0));
        (
            out,
            vec![(a, Vals::F32(x.clone())), (p, Vals::I32(pos.clone()))],
        )
    });
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let o = (t * heads + h) * d;
            let want = rope_ref(&x[o..o + d], p as f32, 10000.0, mode == RopeMode::Neox);
            for (g, w) in got[o..o + d].iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-4,
                    "{mode:?} token {t} head {h}: got {:?} want {:?}",
                    &got[o..o + d],
                    want
                );
            }
        }
    }
}

#[test]
fn rope_normal_rotates_adjacent_pairs() {
    check_rope(RopeMode::Normal);
}

#[test]
fn rope_neox_rotates_halves() {
    check_rope(RopeMode::Neox);
}

#[test]
fn attention_flash_matches_unfused() {
    let (d, n_head, n_kv_head, t, kv) = (4i64, 4i64, 2i64, 3i64, 5i64);
    let vals = |n: i64, s: usize| {
        (0..n as usize)
            .map(|i| (((i * 13 + s) % 17) as f32 - 8.0) / 8.0)
            .collect::<Vec<f32>>()
    };
    // causal mask for 3 query tokens at positions 2..5 over 5 keys
    let mut mask = vec![0f32; (kv * t) as usize];
    for q in 0..t {
        for k in 0..kv {
            if k > q + 2 {
                mask[(q * kv + k) as usize] = f32::NEG_INFINITY;
            }
        }
    }
    let attn = |flash: bool| {
        let out = run(|ctx| {
            let q = ctx.input(Type::F32, &[d, t, n_head]);
            let k = ctx.input(Type::F16, &[d, kv, n_kv_head]);
            let v = ctx.input(Type::F16, &[d, kv, n_kv_head]);
            let m = ctx.input(Type::F16, &[kv, t]);
            let out = ctx.scaled_dot_product_attention(q.t(), k.t(), v.t(), m.t(), 0.5, flash);
            assert_eq!(out.ne()[..2], [d * n_head, t]);
            let ins = vec![
                (q, Vals::F32(vals(d * t * n_head, 1))),
                (k, Vals::F16(vals(d * kv * n_kv_head, 2))),
                (v, Vals::F16(vals(d * kv * n_kv_head, 3))),
                (m, Vals::F16(mask.clone())),
            ];
            (out, ins)
        });
        assert_eq!(out.len() as i64, d * n_head * t);
        out
    };
    let (a, b) = (attn(true), attn(false));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-2, "flash {a:?}\nunfused {b:?}");
    }
}

#[test]
fn type_names_and_unknown_ids() {
    assert_eq!(Type::Q4_1.name(), "q4_1");
    assert_eq!(Type::Q8_0.block_size(), 32);
    assert!(!Type(4).is_known(), "removed type 4 must be unknown");
    assert_eq!(Type(999).name(), "type=999");
}

fn host(bytes: &[u8]) -> HostBytes {
    std::sync::Arc::new(AlignedBytes::read_exact(bytes, bytes.len()).unwrap())
}

#[test]
fn misaligned_host_bytes_are_refused() {
    assert!(WeightLoader::new(host(&[0u8; 100]), 1, None, false).is_ok());
    struct Off(AlignedBytes);
    impl AsRef<[u8]> for Off {
        fn as_ref(&self) -> &[u8] {
            &self.0.as_ref()[1..]
        }
    }
    let off = Off(AlignedBytes::read_exact(&[0u8; 100][..], 100).unwrap());
    let off: HostBytes = std::sync::Arc::new(off);
    let e = WeightLoader::new(off, 1, None, false).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Misaligned);
}

#[test]
fn hadamard_is_orthonormal_and_rotation_round_trips() {
    let n = 64;
    let h = hadamard(n);
    for i in 0..n {
        for j in 0..n {
            let dot: f32 = (0..n).map(|k| h[i * n + k] * h[j * n + k]).sum();
            assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
        }
    }
    let x: Vec<f32> = (0..2 * n).map(|i| (i % 7) as f32 - 3.0).collect();
    let got = run(|ctx| {
        let a = ctx.input(Type::F32, &[n as i64, 2]);
        let m = ctx.input(Type::F32, &[n as i64, n as i64]);
        let out = ctx.hadamard_rotate(ctx.hadamard_rotate(a, m), m);
        (
            out,
            vec![(a, Vals::F32(x.clone())), (m, Vals::F32(h.clone()))],
        )
    });
    for (g, w) in got.iter().zip(&x) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
}

/// Q4_0 blocks (f16 scale, 16 bytes of nibbles) with pseudo-random values,
/// and their dequantized values.
fn q4_0_blocks(n_blocks: usize) -> (Vec<u8>, Vec<f32>) {
    let (mut bytes, mut vals, mut s) = (vec![], vec![], 0x1234_5678_u32);
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    for _ in 0..n_blocks {
        let d = 0.01 + (next() % 100) as f32 / 1000.0; // rounded to f16 below
        let d16 = half_bits(d);
        let d = half_value(d16);
        bytes.extend(d16.to_le_bytes());
        let q: Vec<u8> = (0..32).map(|_| (next() % 16) as u8).collect();
        for i in 0..16 {
            bytes.push(q[i] | (q[i + 16] << 4));
        }
        vals.extend(q.iter().map(|&v| (v as f32 - 8.0) * d));
    }
    (bytes, vals)
}

fn half_bits(x: f32) -> u16 {
    // SAFETY: pure conversion.
    unsafe { sys::ggml_fp32_to_fp16(x) }
}

fn half_value(h: u16) -> f32 {
    // SAFETY: pure conversion.
    unsafe { sys::ggml_fp16_to_fp32(h) }
}

/// `w · x` for a weight `w` given by its bytes, loaded by a
/// [`WeightLoader`] (with `repack`, or into `gpu`) and computed on `backend`;
/// also whether the weight was read in place from the bytes.
fn weight_mul(
    backend: Backend,
    gpu: Option<Device>,
    repack: bool,
    w: (Type, [i64; 2], &[u8]),
    x: &[f32],
) -> (Vec<f32>, bool) {
    let (ty, ne, bytes) = w;
    let loader = WeightLoader::new(host(bytes), 4, gpu, repack).unwrap();
    let w = loader.weight("w", ty, &ne, 0..bytes.len(), true).unwrap();
    let placed = loader.finish().unwrap();
    let in_place = placed.iter().any(|(p, off)| p.t() == w.t() && *off == 0);
    let n = x.len() as i64 / ne[0];
    let mut plan = Plan::new(backend, 8, ());
    plan.build(|ctx, _, _, _| {
        let xt = ctx.input(Type::F32, &[ne[0], n]);
        Built {
            inputs: vec![Some(xt)],
            outputs: vec![ctx.mul_mat(&w, xt)],
        }
    });
    plan.check_supports().unwrap();
    plan.alloc().unwrap();
    plan.input(0).unwrap().set_f32(x);
    plan.compute().unwrap();
    (plan.output(0).to_f32(), in_place)
}

#[test]
fn repacked_weights_multiply_like_plain_ones() {
    let (k, m, n) = (256usize, 16usize, 3usize);
    let (wbytes, wvals) = q4_0_blocks(k * m / 32);
    let x: Vec<f32> = (0..k * n)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let w = (Type::Q4_0, [k as i64, m as i64], &wbytes[..]);
    let (a, plain_in_place) = weight_mul(Backend::cpu(1).unwrap(), None, false, w, &x);
    let (b, packed_in_place) = weight_mul(Backend::cpu(1).unwrap(), None, true, w, &x);
    assert!(
        plain_in_place,
        "without repacking the weight is read in place"
    );
    if std::is_x86_feature_detected!("avx2") {
        assert!(!packed_in_place, "AVX2 has repacked Q4_0 kernels");
    }
    let f = (Type::F32, [4, 4], &[0u8; 64][..]);
    let (_, f32_in_place) = weight_mul(Backend::cpu(1).unwrap(), None, true, f, &[0.0; 4]);
    assert!(f32_in_place, "f32 is never repacked");
    for j in 0..n {
        for i in 0..m {
            let exact: f32 = (0..k).map(|l| wvals[i * k + l] * x[j * k + l]).sum();
            let (pa, pb) = (a[j * m + i], b[j * m + i]);
            // both quantize x to 8 bits: close to the exact product, and to each other
            let tol = 0.02 * exact.abs().max(1.0);
            assert!((pa - exact).abs() < tol, "plain {pa} vs {exact}");
            assert!(
                (pb - pa).abs() < 1e-3 * pa.abs().max(1.0),
                "repacked {pb} vs plain {pa}"
            );
        }
    }
}

/// Weights uploaded to a GPU multiply like on the CPU. Without a GPU (a
/// CPU-only build, or no device) it checks only that none is reported.
#[test]
fn gpu_weights_multiply_like_cpu_ones() {
    let Some(dev) = Device::gpu() else {
        eprintln!("gpu ggml: SKIPPED: no GPU (a CPU-only build, or no device found)");
        return;
    };
    eprintln!("gpu ggml: on {} ({})", dev.description(), dev.name());
    let (k, m, n) = (256usize, 16usize, 3usize);
    let (wbytes, _) = q4_0_blocks(k * m / 32);
    let x: Vec<f32> = (0..k * n)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let w = (Type::Q4_0, [k as i64, m as i64], &wbytes[..]);
    let (cpu, _) = weight_mul(Backend::cpu(1).unwrap(), None, false, w, &x);
    let gpu_backend = Backend::on(dev).unwrap();
    assert_ne!(gpu_backend.name(), "CPU");
    let (gpu, in_place) = weight_mul(gpu_backend, Some(dev), false, w, &x);
    assert!(!in_place, "GPU weights are copies");
    for (a, b) in gpu.iter().zip(&cpu) {
        assert!(
            (a - b).abs() < 1e-2 * b.abs().max(1.0),
            "gpu {a} vs cpu {b}"
        );
    }
}

#[test]
fn cpu_backend_supports_what_it_computes() {
    let mut plan = Plan::new(Backend::cpu(1).unwrap(), 8, ());
    assert_eq!(plan.backend().name(), "CPU");
    plan.build(|ctx, _, _, _| {
        let a = ctx.tensor(Type::F32, &[4, 4]);
        Built {
            inputs: vec![],
            outputs: vec![ctx.mul_mat(a, a)],
        }
    });
    plan.check_supports().unwrap();
}

/// `w [k, m] · x [k, n]` on a 2-thread CPU backend, with or without our kernels.
fn mul_mat_with(own: bool, ty: Type, k: usize, m: usize, n: usize) -> (Vec<f32>, bool) {
    let wf: Vec<f32> = (0..k * m)
        .map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0 - 1.0) * 0.7)
        .collect();
    let xf: Vec<f32> = (0..k * n)
        .map(|i| ((i * 40503usize % 997) as f32 / 498.5 - 1.0) * 1.3)
        .collect();
    // SAFETY: pure size computation.
    let row = unsafe { sys::ggml_row_size(ty.0, k as i64) };
    let mut wq = vec![0u8; row * m];
    // SAFETY: `wf` holds m rows of k floats, `wq` m quantized rows.
    unsafe {
        sys::ggml_quantize_chunk(
            ty.0,
            wf.as_ptr(),
            wq.as_mut_ptr().cast(),
            0,
            m as i64,
            k as i64,
            std::ptr::null(),
        );
    }
    let mut used = false;
    let out = run_with(2, own, |ctx| {
        let w = ctx.input(ty, &[k as i64, m as i64]);
        let x = ctx.input(Type::F32, &[k as i64, n as i64]);
        used = kernels::takes(w.t(), x.t());
        let out = ctx.mul_mat(w, x);
        (out, vec![(w, Vals::Bytes(wq)), (x, Vals::F32(xf))])
    });
    (out, own && used)
}

/// A prompt-sized product (Gemma 3 270M's FFN: 640 x 2048 times 512 columns)
/// by our prompt kernel equals ggml's (tinyBLAS) bit for bit; prints the
/// best of 5 times of each (the kernel's speed claim in kernels.c).
#[test]
fn prompt_kernel_equals_tinyblas_at_model_size() {
    if !kernels::gemm_available() {
        println!(
            "prompt kernel: SKIPPED: not compiled for this CPU (needs AVX-512 F, BW, VL, VNNI)"
        );
        return;
    }
    let (k, m, n) = (640usize, 2048usize, 512usize);
    for ty in [Type::Q5_0, Type::Q8_0] {
        // SAFETY: pure size computation.
        let row = unsafe { sys::ggml_row_size(ty.0, k as i64) };
        let wf: Vec<f32> = (0..k * m)
            .map(|i| (i * 2654435761usize % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut wq = vec![0u8; row * m];
        // SAFETY: `wf` holds m rows of k floats, `wq` m quantized rows.
        unsafe {
            sys::ggml_quantize_chunk(
                ty.0,
                wf.as_ptr(),
                wq.as_mut_ptr().cast(),
                0,
                m as i64,
                k as i64,
                std::ptr::null(),
            );
        }
        let xf: Vec<f32> = (0..k * n)
            .map(|i| (i * 40503usize % 997) as f32 / 498.5 - 1.0)
            .collect();
        let mut plans = vec![];
        for own in [false, true] {
            let mut plan = Plan::new(Backend::cpu(2).unwrap(), 64, ());
            plan.use_own_kernels(own);
            plan.build(|ctx, _, _, _| {
                let w = ctx.input(ty, &[k as i64, m as i64]);
                let x = ctx.input(Type::F32, &[k as i64, n as i64]);
                Built {
                    inputs: vec![Some(w), Some(x)],
                    outputs: vec![ctx.mul_mat(w, x)],
                }
            });
            plan.alloc().unwrap();
            plan.input(0).unwrap().set_bytes(&wq);
            plan.input(1).unwrap().set_f32(&xf);
            plans.push(plan);
        }
        let mut best = [f64::MAX; 2];
        for _ in 0..5 {
            for (i, p) in plans.iter_mut().enumerate() {
                let t = std::time::Instant::now();
                p.compute().unwrap();
                best[i] = best[i].min(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (want, got) = (plans[0].output(0).to_f32(), plans[1].output(0).to_f32());
        assert_eq!(want.len(), m * n);
        let differ = want
            .iter()
            .zip(&got)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differ, 0, "{ty:?}: {differ} of {} values differ", m * n);
        println!(
            "{ty:?} {k}x{m}x{n}: tinyBLAS {:.2} ms, ours {:.2} ms (best of 5, 2 threads)",
            best[0], best[1]
        );
    }
}

#[test]
fn own_kernels_equal_ggml_bit_for_bit() {
    if !kernels::available() {
        println!("own kernels: SKIPPED: not compiled for this CPU (needs AVX2, FMA, F16C)");
        return;
    }
    // odd row counts, 1 to 8 columns (Q4_1: up to 64, across column blocks), two threads
    for ty in [Type::Q4_1, Type::Q8_0, Type::Q5_0] {
        for (k, m) in [(96, 37), (576, 64), (1536, 129)] {
            let ns: &[usize] = if ty == Type::Q4_1 || kernels::gemm_available() {
                &[1, 2, 3, 4, 5, 7, 8, 9, 17, 33, 64]
            } else {
                &[1, 2, 3, 4, 5, 6, 7, 8]
            };
            for &n in ns {
                let (want, _) = mul_mat_with(false, ty, k, m, n);
                let (got, used) = mul_mat_with(true, ty, k, m, n);
                assert!(used, "{ty:?} {k}x{m}x{n} did not take our kernel");
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{ty:?} {k}x{m}x{n}: {:?} vs {:?}",
                    &want[..4],
                    &got[..4]
                );
            }
        }
    }
}

/// Whether `f` panics (quietly).
fn panics(f: impl FnOnce()) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
}

#[test]
fn views_stay_inside_the_viewed_tensor() {
    let ctx = Context::new(32);
    let a = ctx.tensor(Type::F32, &[4, 3]).t(); // 3 rows of 16 bytes
                                                // inside: whole, a column pair, every other row, a 3-d split
    assert_eq!(ctx.view_2d(a, [4, 3], 16, 0).n_bytes(), 48);
    assert_eq!(ctx.view_2d(a, [2, 3], 16, 8).ne()[..2], [2, 3]);
    ctx.view_2d(a, [4, 2], 32, 0);
    ctx.view_3d(a, [2, 2, 3], 8, 16, 0);
    ctx.view_2d(a, [0, 3], 16, 48); // empty
                                    // a view of a view is checked against the view
    let v = ctx.view_2d(a, [4, 2], 16, 16);
    ctx.view_2d(v, [4, 2], 16, 0);
    assert!(panics(|| {
        ctx.view_2d(v, [4, 2], 16, 4);
    }));
    // outside: offset, rows, stride, third dimension, overflow, negative
    assert!(panics(|| {
        ctx.view_2d(a, [4, 3], 16, 4);
    }));
    assert!(panics(|| {
        ctx.view_2d(a, [4, 4], 16, 0);
    }));
    assert!(panics(|| {
        ctx.view_2d(a, [4, 3], 20, 0);
    }));
    assert!(panics(|| {
        ctx.view_3d(a, [4, 3, 2], 16, 48, 0);
    }));
    assert!(panics(|| {
        ctx.view_2d(a, [4, 3], usize::MAX / 2, 0);
    }));
    assert!(panics(|| {
        ctx.view_2d(a, [1, 1], 16, usize::MAX);
    }));
    assert!(panics(|| {
        ctx.view_2d(a, [-1, 3], 16, 0);
    }));
    // quantized rows are whole blocks
    let q = ctx.tensor(Type::Q8_0, &[64, 2]).t(); // 2 rows of 2 blocks of 34 bytes
    ctx.view_2d(q, [32, 2], 68, 34);
    assert!(panics(|| {
        ctx.view_2d(q, [16, 2], 68, 0);
    }));
    assert!(panics(|| {
        ctx.view_2d(q, [64, 2], 68, 34);
    }));
}

#[test]
fn writes_check_their_tensor() {
    let mut plan = Plan::new(Backend::cpu(1).unwrap(), 8, ());
    plan.build(|ctx, _, _, _| {
        let a = ctx.input(Type::F32, &[4]);
        Built {
            inputs: vec![Some(a)],
            outputs: vec![ctx.scale(a, 2.0)],
        }
    });
    plan.alloc().unwrap();
    let a = plan.input(0).unwrap();
    assert!(panics(|| a.set_f32(&[1.0; 3])), "too few values");
    assert!(panics(|| a.set_i32(&[1; 4])), "wrong type");
    assert!(panics(|| a.set_bytes(&[0; 17])), "too many bytes");
    let mut out = [0.0; 2];
    assert!(
        panics(|| plan.output(0).read_f32_at(3, &mut out)),
        "read past the end"
    );
    a.set_f32(&[1.0, 2.0, 3.0, 4.0]);
    plan.compute().unwrap();
    plan.output(0).read_f32_at(2, &mut out);
    assert_eq!(out, [6.0, 8.0]);
}

/// A 4 × 4 f32 weight over the file bytes.
fn f32_weight(repack: bool) -> (Weight, Vec<(Weight, usize)>, Vec<u8>) {
    let bytes: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let loader = WeightLoader::new(host(&bytes), 2, None, repack).unwrap();
    let w = loader.weight("w", Type::F32, &[4, 4], 0..64, true).unwrap();
    let placed = loader.finish().unwrap();
    (w, placed, bytes)
}

#[test]
fn weights_move_into_huge_pages_and_compute_the_same() {
    let (w, placed, bytes) = f32_weight(false);
    assert_eq!(placed.len(), 1);
    let mut plan = Plan::new(Backend::cpu(1).unwrap(), 8, ());
    plan.build(|ctx, _, _, _| {
        let x = ctx.input(Type::F32, &[4, 1]);
        Built {
            inputs: vec![Some(x)],
            outputs: vec![ctx.mul_mat(&w, x)],
        }
    });
    plan.alloc().unwrap();
    plan.input(0).unwrap().set_f32(&[1.0, 0.0, 0.0, 1.0]);
    plan.compute().unwrap();
    let before = plan.output(0).to_f32();
    assert_eq!(before, vec![3.0, 11.0, 19.0, 27.0]);

    let dst = std::rc::Rc::new(Buffer::huge_pages(128).unwrap());
    dst.write(64, &bytes);
    assert!(panics(|| w.move_to(&dst, 100)), "does not fit");
    w.move_to(&dst, 64);
    plan.compute().unwrap();
    assert_eq!(plan.output(0).to_f32(), before);
    // the moved-into range takes no more writes; the rest does
    assert!(panics(|| dst.write(60, &[0; 8])));
    assert!(panics(|| dst.write(120, &[0; 9])), "outside the buffer");
    dst.write(0, &[7; 64]);
    plan.compute().unwrap();
    assert_eq!(plan.output(0).to_f32(), before);
    drop(placed);
    drop(dst); // the weight keeps its memory alive
    plan.compute().unwrap();
    assert_eq!(plan.output(0).to_f32(), before);
}

#[test]
fn repacked_and_gpu_weights_do_not_move() {
    let (k, m) = (256usize, 16usize);
    let (wbytes, _) = q4_0_blocks(k * m / 32);
    let loader = WeightLoader::new(host(&wbytes), 2, None, true).unwrap();
    let w = loader
        .weight(
            "w",
            Type::Q4_0,
            &[k as i64, m as i64],
            0..wbytes.len(),
            true,
        )
        .unwrap();
    let placed = loader.finish().unwrap();
    let dst = std::rc::Rc::new(Buffer::huge_pages(wbytes.len()).unwrap());
    if placed.is_empty() {
        assert!(panics(|| w.move_to(&dst, 0)), "a repacked weight moved");
    } else {
        w.move_to(&dst, 0);
    }
    if let Some(dev) = Device::gpu() {
        let loader = WeightLoader::new(host(&wbytes), 2, Some(dev), false).unwrap();
        let w = loader
            .weight(
                "w",
                Type::Q4_0,
                &[k as i64, m as i64],
                0..wbytes.len(),
                true,
            )
            .unwrap();
        assert!(loader.finish().unwrap().is_empty());
        assert!(panics(|| w.move_to(&dst, 0)), "a GPU weight moved");
    }
}

#[test]
fn weights_must_fit_the_file_and_their_shape() {
    let loader = WeightLoader::new(host(&[0u8; 64]), 4, None, false).unwrap();
    let e = |r: Result<Weight, Error>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e(loader.weight("a", Type::F32, &[4, 4], 0..60, false)).contains("bytes"));
    assert!(e(loader.weight("b", Type::F32, &[4, 4], 32..96, false)).contains("outside"));
    assert!(e(loader.weight("c", Type(4), &[4], 0..8, false)).contains("unsupported"));
    assert!(loader.weight("d", Type::F32, &[4, 4], 0..64, false).is_ok());
}

#[test]
fn persistent_tensors_keep_their_values_across_graphs() {
    let backend = Backend::cpu(1).unwrap();
    let cache = Persistent::new(&backend, &[(Type::F32, vec![4])]).unwrap();
    assert_eq!(cache.get(0).to_f32(), vec![0.0; 4], "zeroed");
    let mut plan = Plan::new(backend, 8, cache);
    for step in 1..=2 {
        plan.build(|ctx, _, cache, _| {
            let x = ctx.input(Type::F32, &[4]);
            let c = cache.get(0);
            Built {
                inputs: vec![Some(x)],
                outputs: vec![ctx.cpy(ctx.add(c, x), c)],
            }
        });
        plan.alloc().unwrap();
        plan.input(0).unwrap().set_f32(&[step as f32; 4]);
        plan.compute().unwrap();
    }
    assert_eq!(plan.state().get(0).to_f32(), vec![3.0; 4]);
}

#[test]
fn plans_queue_writes_only_into_their_own_graph() {
    let backend = Backend::cpu(1).unwrap();
    let other = Persistent::new(&backend, &[(Type::I32, vec![2])]).unwrap();
    let mut plan = Plan::new(backend, 8, ());
    plan.build(|ctx, _, _, _| {
        let a = ctx.input(Type::I32, &[2]);
        Built {
            inputs: vec![Some(a)],
            outputs: vec![ctx.cast(a, Type::F32)],
        }
    });
    plan.alloc().unwrap();
    assert!(panics(|| plan.set_i32(other.get(0), &[1, 2])));
    plan.set_i32(plan.input(0).unwrap(), &[1, 2]);
    plan.compute().unwrap();
    assert_eq!(plan.output(0).to_f32(), vec![1.0, 2.0]);
}

/// A CPU plan cannot read a weight in a GPU's memory (it would read device
/// addresses); without a GPU it checks a CPU weight is fine.
#[test]
fn plans_read_only_memory_their_backend_can_use() {
    let bytes = [0u8; 64];
    let gpu = Device::gpu();
    let loader = WeightLoader::new(host(&bytes), 2, gpu, false).unwrap();
    let w = loader.weight("w", Type::F32, &[4, 4], 0..64, true).unwrap();
    loader.finish().unwrap();
    let mut plan = Plan::new(Backend::cpu(1).unwrap(), 8, ());
    let build = std::panic::AssertUnwindSafe(|| {
        plan.build(|ctx, _, _, _| Built {
            inputs: vec![],
            outputs: vec![ctx.scale(&w, 2.0)],
        })
    });
    assert_eq!(std::panic::catch_unwind(build).is_err(), gpu.is_some());
}
