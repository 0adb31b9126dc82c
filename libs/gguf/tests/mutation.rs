//! Bounded mutation test: thousands of deterministic mutations of a small
//! valid file must each parse or fail cleanly, quickly, and without large
//! allocations. (The open-ended version is the cargo-fuzz target in fuzz/.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts live heap bytes and remembers the peak, so a header value that
/// drives an allocation shows up even when the allocation would succeed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values that break length and count fields in interesting ways.
const NASTY: [u64; 10] = [
    0,
    1,
    0x7F,
    0xFF,
    0xFFFF_FFFF,
    1 << 31,
    1 << 32,
    1 << 62,
    1 << 63,
    u64::MAX,
];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(b.len());
        match rng.below(6) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            2 => {
                // overwrite a little-endian u64 (or u32) with a nasty value
                let v = NASTY[rng.below(NASTY.len())].to_le_bytes();
                let n = if rng.below(2) == 0 { 8 } else { 4 };
                for (i, x) in v.iter().take(n).enumerate() {
                    if let Some(slot) = b.get_mut(at + i) {
                        *slot = *x;
                    }
                }
            }
            3 => b.truncate(at),
            4 => {
                let n = 1 + rng.below(16);
                b.splice(at..at, (0..n).map(|_| rng.next() as u8));
            }
            _ => {
                let n = (1 + rng.below(16)).min(b.len() - at);
                b.drain(at..at + n);
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

#[test]
fn thousands_of_mutations_fail_cleanly() {
    let base = common::small_model()
        .kv(
            "x.nested",
            common::V::nested(&[common::V::i32s(&[1, 2]), common::V::strs(&["q"])]),
        )
        .tensor("blk.0.ffn_down.weight", &[32, 2], 2, vec![7; 36])
        .build();
    gguf::parse(&base).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut err) = (0usize, 0usize);
    let start = Instant::now();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    for _ in 0..5000 {
        let m = mutate(&mut rng, &base);
        match gguf::parse(&m) {
            Ok(g) => {
                ok += 1;
                // whatever parsed must be self-consistent
                for t in g.tensors() {
                    assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes, "{}", t.name);
                }
                let _ = g.parameter_count();
                let opts = gguf::show::ShowOptions {
                    verbose: true,
                    tensors: true,
                };
                if let Ok(info) = gguf::show::inspect(&g, &gguf::show::Layers::default(), &opts) {
                    assert!(!gguf::show::table(&info, &opts).is_empty());
                }
            }
            Err(e) => {
                err += 1;
                let s = e.to_string();
                assert!(!s.is_empty() && !s.contains('\n'), "{s}");
            }
        }
    }
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert!(
        peak < 1 << 20,
        "peak heap during parsing was {peak} bytes for a {}-byte file",
        base.len()
    );
    assert!(
        start.elapsed().as_secs() < 10,
        "5000 parses took {:?}",
        start.elapsed()
    );
    assert!(
        ok > 100 && err > 1000,
        "mutations too tame or too wild: {ok} ok, {err} errors"
    );
}
