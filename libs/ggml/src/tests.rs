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
