// Matrix products of generation (a few activation columns) for Q4_1, Q8_0
// and Q5_0 weights, equal to ggml's bit for bit, doing less per weight block.
//
// Generating a token streams every weight once, one dot product per row.
// These kernels do each row's arithmetic exactly as ggml's x86 code does
// (ggml_vec_dot_q4_1_q8_1, ggml_vec_dot_q8_0_q8_0, ggml_vec_dot_q5_0_q8_0:
// the same products, the same fused multiply-adds in the same order, the
// same horizontal sum), so results are ggml's bit for bit (tested against ggml_mul_mat in tests.rs),
// and save work around that arithmetic:
// - the activations' f16 block scales are converted to floats once per
//   matrix, not once per row (the conversion is exact), and a Q4_1 block's
//   d and m by one conversion;
// - one column (a generated token) goes two rows at a time, its quants
//   loaded once for both; a few columns go four at a time, each weight
//   block unpacked once for the four;
// - the rows are prefetched PREFETCH bytes ahead: where the loop waits on
//   memory (Intel Sapphire Rapids here) the hardware prefetcher alone does
//   not keep up.
// On a compute-bound core (AMD Zen 1 here: 256-bit operations issue as two
// 128-bit halves) the first two are 20-30% on these products; on a
// latency-bound one the prefetch is. Needs AVX2, FMA and F16C. (Two rows per
// AVX-512 register, each lane as ggml's, was slower; so were four rows per
// column on Zen 1: register pressure.)
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#ifndef PREFETCH
#define PREFETCH 4096
#endif

typedef struct {
    uint16_t d, m;   // f16 scale and minimum
    uint8_t qs[16];  // 32 nibbles
} block_q4_1;

typedef struct {
    uint16_t d, s;   // f16 scale and d * sum(qs)
    int8_t qs[32];
} block_q8_1;

typedef struct {
    uint16_t d;      // f16 scale
    int8_t qs[32];
} block_q8_0;

typedef struct {
    uint16_t d;      // f16 scale
    uint8_t qh[4];   // the fifth bit of each of the 32 values
    uint8_t qs[16];  // their low four bits
} block_q5_0;

static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

// ggml's hsum_float_8, operation for operation.
static inline float hsum8(__m256 x) {
    __m128 r = _mm256_extractf128_ps(x, 1);
    r = _mm_add_ps(r, _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// ggml's bytes_from_nibbles_32: low nibbles in bytes 0..15, high in 16..31.
static inline __m256i nibbles(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(_mm256_set1_epi8(0xF), b);
}

// Sums of 4 adjacent products of unsigned bytes `ax` and signed bytes `sy`,
// as floats (ggml's mul_sum_us8_pairs_float). The instructions differ by CPU
// but the integers are the same (no 16-bit pair sum of these blocks can
// saturate: |products| ≤ 128 · 127), so are the floats.
static inline __m256 mul_sum_us8(__m256i ax, __m256i sy) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy));
#elif defined(__AVXVNNI__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, sy));
#else
    const __m256i pairs = _mm256_maddubs_epi16(ax, sy);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}


// A Q4_1 block's d and m as floats [d, m, 0, 0] by one conversion.
static inline __m128 dm_of(const block_q4_1 *b) {
    uint32_t v;
    memcpy(&v, b, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)v));
}

// One block of one row, as ggml does it: acc += (d0*d1) * sum(qx*qy),
// summs += m * s, where `ys` holds the column's [d1, s] for the block.
static inline void q4_1_step(const block_q4_1 *x, __m256i qy, const float *ys, __m256 *acc,
                             float *summs) {
    const __m128 dm = dm_of(x);
    const float d0 = _mm_cvtss_f32(dm), m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
    *summs += m * ys[1];
    const __m256 d0d1 = _mm256_set1_ps(d0 * ys[0]);
    *acc = _mm256_fmadd_ps(d0d1, mul_sum_us8(nibbles(x->qs), qy), *acc);
}

// One row times one column.
static float dot1(const block_q4_1 *x, const block_q8_1 *y, const float *ys, int nb) {
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int i = 0; i < nb; i++) {
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        q4_1_step(&x[i], qy, ys + 2 * i, &acc, &summs);
    }
    return hsum8(acc) + summs;
}

// Two rows times one column: each row's arithmetic as dot1's, the column's
// quants and scales loaded once for both.
static void dot2(const block_q4_1 *x0, const block_q4_1 *x1, const block_q8_1 *y,
                 const float *ys, int nb, float out[2]) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float summs0 = 0, summs1 = 0;
    for (int i = 0; i < nb; i++) {
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        q4_1_step(&x0[i], qy, ys + 2 * i, &acc0, &summs0);
        q4_1_step(&x1[i], qy, ys + 2 * i, &acc1, &summs1);
    }
    out[0] = hsum8(acc0) + summs0;
    out[1] = hsum8(acc1) + summs1;
}

// Up to four columns at once (n = 2..4, a constant where inlined): dot1's
// arithmetic for each (the same operations in the same order per column),
// with the row's nibbles and scales unpacked once instead of n times.
// ys[c] holds column c's [d, s] per block.
static inline void dotn(const block_q4_1 *x, const block_q8_1 *const y[4],
                        const float *const ys[4], int nb, int n, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    float summs[4] = {0, 0, 0, 0};
    for (int i = 0; i < nb; i++) {
        const __m128 dm = dm_of(&x[i]);
        const float d0 = _mm_cvtss_f32(dm), m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
        const __m256i qx = nibbles(x[i].qs);
        for (int c = 0; c < n; c++) {
            summs[c] += m * ys[c][2 * i + 1];
            const __m256 d0d1 = _mm256_set1_ps(d0 * ys[c][2 * i]);
            const __m256i qy = _mm256_loadu_si256((const __m256i *)y[c][i].qs);
            acc[c] = _mm256_fmadd_ps(d0d1, mul_sum_us8(qx, qy), acc[c]);
        }
    }
    for (int c = 0; c < n; c++) out[c] = hsum8(acc[c]) + summs[c];
}

// ggml's bytes_from_bits_32: byte j is 0xFF where bit j of the 32 is set.
static inline __m256i bytes_from_bits(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v), shuf);
    const __m256i bit = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(bit, _mm256_set1_epi64x(-1));
}

// Block i of a Q8_0 (q5 == 0) or Q5_0 (q5 == 1) row: its f16 scale and its
// 32 values as signed bytes (Q5_0 as ggml unpacks them: the low nibble, with
// 0xF0 or'ed in where the fifth bit is clear, -16..15).
static inline const uint16_t *i8_scale(const void *x, int i, int q5) {
    return q5 ? &((const block_q5_0 *)x)[i].d : &((const block_q8_0 *)x)[i].d;
}
static inline __m256i i8_values(const void *x, int i, int q5) {
    if (!q5)
        return _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)x)[i].qs);
    const block_q5_0 *b = &((const block_q5_0 *)x)[i];
    const __m256i hi = _mm256_andnot_si256(bytes_from_bits(b->qh), _mm256_set1_epi8((char)0xF0));
    return _mm256_or_si256(nibbles(b->qs), hi);
}

// ggml's mul_sum_i8_pairs_float: |x| · sign(y, x), in 4-byte sums as floats.
static inline __m256 mul_sum_i8(__m256i qx, __m256i qy) {
    return mul_sum_us8(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
}

// ggml's ggml_vec_dot_q8_0_q8_0 and ggml_vec_dot_q5_0_q8_0 (their AVX2
// paths): acc += (d0*d1) * sum(qx*qy) per block; yd holds the column's d
// per block.
static inline float dot_i8(const void *x, const block_q8_0 *y, const float *yd, int nb, int q5) {
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(f16(*i8_scale(x, i, q5)) * yd[i]);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, mul_sum_i8(i8_values(x, i, q5), qy), acc);
    }
    return hsum8(acc);
}

// Two rows of dot_i8 with one column, the column loaded once.
static inline void dot2_i8(const void *x0, const void *x1, const block_q8_0 *y, const float *yd,
                           int nb, int q5, float out[2]) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d0 = _mm256_set1_ps(f16(*i8_scale(x0, i, q5)) * yd[i]);
        const __m256 d1 = _mm256_set1_ps(f16(*i8_scale(x1, i, q5)) * yd[i]);
        acc0 = _mm256_fmadd_ps(d0, mul_sum_i8(i8_values(x0, i, q5), qy), acc0);
        acc1 = _mm256_fmadd_ps(d1, mul_sum_i8(i8_values(x1, i, q5), qy), acc1);
    }
    out[0] = hsum8(acc0);
    out[1] = hsum8(acc1);
}

int llpipe_kernels_available(void) { return 1; }

// As llpipe_q4_1_rows, for Q8_0 (q5 == 0) or Q5_0 (q5 == 1) weights and
// Q8_0 activations.
static inline void i8_rows(const void *w, size_t w_stride, int64_t r0, int64_t r1, int nb,
                           const void *y, size_t y_stride, int n_cols, float *dst,
                           size_t dst_stride, float *yd, int q5) {
    for (int c = 0; c < n_cols; c++) {
        const block_q8_0 *yc = (const block_q8_0 *)((const char *)y + c * y_stride);
        for (int i = 0; i < nb; i++) yd[c * nb + i] = f16(yc[i].d);
    }
    int64_t r = r0;
    if (n_cols == 1)
        for (; r + 2 <= r1; r += 2) {
            const char *a = (const char *)w + r * w_stride;
            for (size_t o = 0; o < 2 * w_stride; o += 64)
                _mm_prefetch(a + PREFETCH + o, _MM_HINT_T0);
            float out[2];
            dot2_i8(a, a + w_stride, y, yd, nb, q5, out);
            dst[r] = out[0];
            dst[r + 1] = out[1];
        }
    for (; r < r1; r++) {
        const char *a = (const char *)w + r * w_stride;
        for (size_t o = 0; o < w_stride; o += 64)
            _mm_prefetch(a + PREFETCH + o, _MM_HINT_T0);
        // every column while the row is in the cache: weights are read once
        for (int c = 0; c < n_cols; c++) {
            const block_q8_0 *yc = (const block_q8_0 *)((const char *)y + c * y_stride);
            dst[c * dst_stride + r] = dot_i8(a, yc, yd + c * nb, nb, q5);
        }
    }
}

// dst[c * dst_stride + r] = row r of w · column c of y, for rows r0..r1 and
// columns 0..n_cols; w rows are w_stride bytes apart, y columns y_stride.
// Columns go in blocks of 16 (their activations stay in L1 while the rows
// pass), up to four at a time; for a few columns (generation) that is one pass
// over the rows, each read from memory once. One column (a generated
// token) goes two rows at a time.
static void llpipe_q4_1_rows(const void *w, size_t w_stride, int64_t r0, int64_t r1, int nb,
                             const void *y, size_t y_stride, int n_cols, float *dst,
                             size_t dst_stride, float *ys) {
    for (int c = 0; c < n_cols; c++) {
        const block_q8_1 *yc = (const block_q8_1 *)((const char *)y + c * y_stride);
        for (int i = 0; i < nb; i++) {
            ys[(c * nb + i) * 2] = f16(yc[i].d);
            ys[(c * nb + i) * 2 + 1] = f16(yc[i].s);
        }
    }
    if (n_cols == 1) {
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) {
            const char *a = (const char *)w + r * w_stride;
            for (size_t o = 0; o < 2 * w_stride; o += 64)
                _mm_prefetch(a + PREFETCH + o, _MM_HINT_T0);
            float out[2];
            dot2((const block_q4_1 *)a, (const block_q4_1 *)(a + w_stride), y, ys, nb, out);
            dst[r] = out[0];
            dst[r + 1] = out[1];
        }
        if (r < r1)
            dst[r] = dot1((const block_q4_1 *)((const char *)w + r * w_stride), y, ys, nb);
        return;
    }
    for (int c0 = 0; c0 < n_cols; c0 += 16) {
        const int c1 = c0 + 16 < n_cols ? c0 + 16 : n_cols;
        for (int64_t r = r0; r < r1; r++) {
            const char *a = (const char *)w + r * w_stride;
            for (size_t o = 0; o < w_stride; o += 64)
                _mm_prefetch(a + PREFETCH + o, _MM_HINT_T0);
            for (int c = c0; c < c1; c += 4) {
                const int n = c1 - c < 4 ? c1 - c : 4;
                const block_q8_1 *yc[4];
                const float *sc[4];
                for (int k = 0; k < n; k++) {
                    yc[k] = (const block_q8_1 *)((const char *)y + (c + k) * y_stride);
                    sc[k] = ys + (size_t)(c + k) * nb * 2;
                }
                const block_q4_1 *x = (const block_q4_1 *)a;
                float out[4];
                switch (n) {
                case 4: dotn(x, yc, sc, nb, 4, out); break;
                case 3: dotn(x, yc, sc, nb, 3, out); break;
                case 2: dotn(x, yc, sc, nb, 2, out); break;
                default: out[0] = dot1(x, yc[0], sc[0], nb);
                }
                for (int k = 0; k < n; k++) dst[(c + k) * dst_stride + r] = out[k];
            }
        }
    }
}
#endif

// The rows of a Q4_1 (type 0), Q8_0 (type 1) or Q5_0 (type 2) matrix, as
// above; `scales` is room for n_cols * nb * 2 floats (the activations'
// scales).
void llpipe_rows(int type, const void *w, size_t w_stride, int64_t r0, int64_t r1, int nb,
                 const void *y, size_t y_stride, int n_cols, float *dst, size_t dst_stride,
                 float *scales) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    if (type == 1)
        i8_rows(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride, scales, 0);
    else if (type == 2)
        i8_rows(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride, scales, 1);
    else
        llpipe_q4_1_rows(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride, scales);
#else
    (void)type, (void)w, (void)w_stride, (void)r0, (void)r1, (void)nb, (void)y;
    (void)y_stride, (void)n_cols, (void)dst, (void)dst_stride, (void)scales;
#endif
}

#if !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
int llpipe_kernels_available(void) { return 0; }
#endif
