use super::*;

/// Runs `f` on a graph with inputs set by `set`, returning the output values.
fn run(
    build: impl FnOnce(&Context) -> (Tensor, Vec<(Tensor, Vec<f32>)>, Vec<(Tensor, Vec<i32>)>),
) -> Vec<f32> {
    let backend = Backend::cpu(1).unwrap();
    let ctx = Context::new(64);
    let (out, f32s, i32s) = build(&ctx);
    let g = ctx.graph(64);
    g.expand(out);
    let mut alloc = Allocator::new(&backend);
    alloc.alloc(&g).unwrap();
    for (t, v) in f32s {
        t.set_f32(&v);
    }
    for (t, v) in i32s {
        t.set_i32(&v);
    }
    backend.compute(&g).unwrap();
    out.to_f32()
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
        let a = ctx
            .tensor(Type::F32, &[d as i64, heads as i64, toks as i64])
            .set_input();
        let p = ctx.tensor(Type::I32, &[toks as i64]).set_input();
        let out = ctx.rope(a, p, None, &Rope::new(d as i32, mode, 10000.0));
        (out, vec![(a, x.clone())], vec![(p, pos.clone())])
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
        let backend = Backend::cpu(1).unwrap();
        let ctx = Context::new(64);
        let q = ctx.tensor(Type::F32, &[d, t, n_head]).set_input();
        let k = ctx.tensor(Type::F16, &[d, kv, n_kv_head]).set_input();
        let v = ctx.tensor(Type::F16, &[d, kv, n_kv_head]).set_input();
        let m = ctx.tensor(Type::F16, &[kv, t]).set_input();
        let out = ctx.scaled_dot_product_attention(q, k, v, m, 0.5, flash);
        let g = ctx.graph(64);
        g.expand(out);
        let mut alloc = Allocator::new(&backend);
        alloc.alloc(&g).unwrap();
        q.set_f32(&vals(d * t * n_head, 1));
        k.set_f32_as_f16(&vals(d * kv * n_kv_head, 2));
        v.set_f32_as_f16(&vals(d * kv * n_kv_head, 3));
        m.set_f32_as_f16(&mask);
        backend.compute(&g).unwrap();
        assert_eq!(out.ne()[..2], [d * n_head, t]);
        out.to_f32()
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

#[test]
fn misaligned_host_bytes_are_refused() {
    let v: Arc<dyn AsRef<[u8]> + Send + Sync> =
        Arc::new(AlignedBytes::read_exact(&[0u8; 100][..], 100).unwrap());
    assert!(Buffer::from_host_bytes(v).is_ok());
    struct Off(AlignedBytes);
    impl AsRef<[u8]> for Off {
        fn as_ref(&self) -> &[u8] {
            &self.0.as_ref()[1..]
        }
    }
    let off = Off(AlignedBytes::read_exact(&[0u8; 100][..], 100).unwrap());
    assert!(Buffer::from_host_bytes(Arc::new(off)).is_err());
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
        let a = ctx.tensor(Type::F32, &[n as i64, 2]).set_input();
        let m = ctx.tensor(Type::F32, &[n as i64, n as i64]).set_input();
        let out = ctx.hadamard_rotate(ctx.hadamard_rotate(a, m), m);
        (out, vec![(a, x.clone()), (m, h.clone())], vec![])
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

#[test]
fn repacked_weights_multiply_like_plain_ones() {
    let (k, m, n) = (256usize, 16usize, 3usize);
    let (wbytes, wvals) = q4_0_blocks(k * m / 32);
    let x: Vec<f32> = (0..k * n)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let repack = Repack::cpu();
    let ctx = Context::new(16);
    let plain_w = ctx.tensor(Type::Q4_0, &[k as i64, m as i64]);
    let packed_w = ctx.tensor(Type::Q4_0, &[k as i64, m as i64]);
    let chosen = repack.choose(packed_w);
    if std::is_x86_feature_detected!("avx2") {
        assert!(chosen.is_some(), "AVX2 has repacked Q4_0 kernels");
    }
    let plain_f32 = ctx.tensor(Type::F32, &[k as i64, m as i64]);
    assert!(repack.choose(plain_f32).is_none(), "f32 is never repacked");
    let aligned = AlignedBytes::read_exact(&wbytes[..], wbytes.len()).unwrap();
    let host = Buffer::from_host_bytes(Arc::new(aligned)).unwrap();
    host.place(plain_w, 0);
    let _packed_buf = match chosen {
        Some(rt) => rt.upload(&[(packed_w, &wbytes[..])]).unwrap(),
        None => {
            let aligned = AlignedBytes::read_exact(&wbytes[..], wbytes.len()).unwrap();
            let b = Buffer::from_host_bytes(Arc::new(aligned)).unwrap();
            b.place(packed_w, 0);
            b
        }
    };
    let backend = Backend::cpu(1).unwrap();
    let xt = ctx.tensor(Type::F32, &[k as i64, n as i64]).set_input();
    let (a, b) = (ctx.mul_mat(plain_w, xt), ctx.mul_mat(packed_w, xt));
    let g = ctx.graph(16);
    g.expand(a);
    g.expand(b);
    let mut alloc = Allocator::new(&backend);
    alloc.alloc(&g).unwrap();
    xt.set_f32(&x);
    backend.compute(&g).unwrap();
    let (a, b) = (a.to_f32(), b.to_f32());
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
    let mul = |backend: &Backend, on: Option<Device>| {
        let wctx = Context::new(4);
        let w = wctx.tensor(Type::Q4_0, &[k as i64, m as i64]);
        let _wbuf = match on {
            Some(d) => {
                let b = wctx.alloc_tensors_on(d).unwrap();
                w.set_bytes(&wbytes);
                b
            }
            None => {
                let aligned = AlignedBytes::read_exact(&wbytes[..], wbytes.len()).unwrap();
                let b = Buffer::from_host_bytes(Arc::new(aligned)).unwrap();
                b.place(w, 0);
                b
            }
        };
        let ctx = Context::new(8);
        let xt = ctx.tensor(Type::F32, &[k as i64, n as i64]).set_input();
        let y = ctx.mul_mat(w, xt);
        let g = ctx.graph(8);
        g.expand(y);
        backend.check_supports(&g).unwrap();
        let mut alloc = Allocator::new(backend);
        alloc.alloc(&g).unwrap();
        xt.set_f32(&x);
        backend.compute(&g).unwrap();
        y.to_f32()
    };
    let cpu = mul(&Backend::cpu(1).unwrap(), None);
    let gpu_backend = Backend::on(dev).unwrap();
    assert_ne!(gpu_backend.name(), "CPU");
    let gpu = mul(&gpu_backend, Some(dev));
    for (a, b) in gpu.iter().zip(&cpu) {
        assert!(
            (a - b).abs() < 1e-2 * b.abs().max(1.0),
            "gpu {a} vs cpu {b}"
        );
    }
}

#[test]
fn cpu_backend_supports_what_it_computes() {
    let backend = Backend::cpu(1).unwrap();
    assert_eq!(backend.name(), "CPU");
    let ctx = Context::new(8);
    let a = ctx.tensor(Type::F32, &[4, 4]);
    let g = ctx.graph(8);
    g.expand(ctx.mul_mat(a, a));
    backend.check_supports(&g).unwrap();
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
    let backend = Backend::cpu(2).unwrap();
    let ctx = Context::new(16);
    ctx.use_own_kernels(own);
    let w = ctx.tensor(ty, &[k as i64, m as i64]).set_input();
    let x = ctx.tensor(Type::F32, &[k as i64, n as i64]).set_input();
    let used = kernels::takes(w, x);
    let out = ctx.mul_mat(w, x);
    let g = ctx.graph(16);
    g.expand(out);
    let mut alloc = Allocator::new(&backend);
    alloc.alloc(&g).unwrap();
    w.set_bytes(&wq);
    x.set_f32(&xf);
    backend.compute(&g).unwrap();
    (out.to_f32(), own && used)
}

#[test]
fn own_kernels_equal_ggml_bit_for_bit() {
    if !kernels::available() {
        println!("own kernels: SKIPPED: not compiled for this CPU (needs AVX2, FMA, F16C)");
        return;
    }
    // odd row counts, 1 to 8 columns (Q4_1: up to 64, across column blocks), two threads
    for ty in [Type::Q4_1, Type::Q8_0] {
        for (k, m) in [(96, 37), (576, 64), (1536, 129)] {
            let ns: &[usize] = if ty == Type::Q4_1 {
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
