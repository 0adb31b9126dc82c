// Matrix products of generation (a few activation columns) for Q4_1 and Q8_0
// weights, equal to ggml's bit for bit, with software prefetch.
//
// Generating a token streams every weight from memory once, and ggml's dot
// products (ggml_vec_dot_q4_1_q8_1, ggml_vec_dot_q8_0_q8_0: AVX2 with VNNI,
// one row per call) leave the loop waiting on memory: the hardware
// prefetcher alone does not keep up. These kernels do each row's arithmetic
// exactly as ggml's x86 code does (same products, the same fused
// multiply-adds in the same order, the same horizontal sum), so results are
// ggml's bit for bit (tested against ggml_mul_mat in tests.rs), and ask for
// the rows PREFETCH bytes ahead (the hardware prefetcher alone leaves the
// loop waiting on memory). Needs AVX2, FMA and F16C. (Two rows per AVX-512
// register, each lane as ggml's, was slower here: the loop is bound by
// memory latency, not arithmetic.)
#include <stddef.h>
#include <stdint.h>

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

// One row, as ggml does it.
static float dot1(const block_q4_1 *x, const block_q8_1 *y, int nb) {
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int i = 0; i < nb; i++) {
        const float d0 = f16(x[i].d), d1 = f16(y[i].d);
        summs += f16(x[i].m) * f16(y[i].s);
        const __m256 d0d1 = _mm256_mul_ps(_mm256_set1_ps(d0), _mm256_set1_ps(d1));
        const __m256i qx = nibbles(x[i].qs);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 xy = mul_sum_us8(qx, qy);
        acc = _mm256_fmadd_ps(d0d1, xy, acc);
    }
    return hsum8(acc) + summs;
}

// Four columns at once: dot1's arithmetic for each (the same operations in
// the same order per column), with the row's nibbles and scales unpacked
// once instead of four times.
static void dot4(const block_q4_1 *x, const block_q8_1 *const y[4], int nb, float out[4]) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    float summs[4] = {0, 0, 0, 0};
    for (int i = 0; i < nb; i++) {
        const float d0 = f16(x[i].d), m = f16(x[i].m);
        const __m256i qx = nibbles(x[i].qs);
        for (int c = 0; c < 4; c++) {
            const float d1 = f16(y[c][i].d);
            summs[c] += m * f16(y[c][i].s);
            const __m256 d0d1 = _mm256_mul_ps(_mm256_set1_ps(d0), _mm256_set1_ps(d1));
            const __m256i qy = _mm256_loadu_si256((const __m256i *)y[c][i].qs);
            acc[c] = _mm256_fmadd_ps(d0d1, mul_sum_us8(qx, qy), acc[c]);
        }
    }
    for (int c = 0; c < 4; c++) out[c] = hsum8(acc[c]) + summs[c];
}

// ggml's ggml_vec_dot_q8_0_q8_0 (its AVX2 path): |x| · sign(y, x).
static float dot_q8_0(const block_q8_0 *x, const block_q8_0 *y, int nb) {
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(f16(x[i].d) * f16(y[i].d));
        const __m256i qx = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256i ax = _mm256_sign_epi8(qx, qx);
        const __m256i sy = _mm256_sign_epi8(qy, qx);
        const __m256 q = mul_sum_us8(ax, sy);
        acc = _mm256_fmadd_ps(d, q, acc);
    }
    return hsum8(acc);
}

int llpipe_kernels_available(void) { return 1; }

// As llpipe_q4_1_rows, for Q8_0 weights and Q8_0 activations.
static void llpipe_q8_0_rows(const void *w, size_t w_stride, int64_t r0, int64_t r1, int nb,
                      const void *y, size_t y_stride, int n_cols, float *dst, size_t dst_stride) {
    for (int64_t r = r0; r < r1; r++) {
        const char *a = (const char *)w + r * w_stride;
        for (size_t o = 0; o < w_stride; o += 64)
            _mm_prefetch(a + PREFETCH + o, _MM_HINT_T0);
        // every column while the row is in the cache: weights are read once
        for (int c = 0; c < n_cols; c++) {
            const block_q8_0 *yc = (const block_q8_0 *)((const char *)y + c * y_stride);
            dst[c * dst_stride + r] = dot_q8_0((const block_q8_0 *)a, yc, nb);
        }
    }
}

// dst[c * dst_stride + r] = row r of w · column c of y, for rows r0..r1 and
// columns 0..n_cols; w rows are w_stride bytes apart, y columns y_stride.
// Columns go in blocks of 16 (their activations stay in L1 while the rows
// pass), four at a time; for a few columns (generation) that is one pass
// over the rows, each read from memory once.
static void llpipe_q4_1_rows(const void *w, size_t w_stride, int64_t r0, int64_t r1, int nb,
                      const void *y, size_t y_stride, int n_cols, float *dst, size_t dst_stride) {
    for (int c0 = 0; c0 < n_cols; c0 += 16) {
        const int c1 = c0 + 16 < n_cols ? c0 + 16 : n_cols;
        for (int64_t r = r0; r < r1; r++) {
            const char *a = (const char *)w + r * w_stride;
            for (size_t o = 0; o < w_stride; o += 64)
                _mm_prefetch(a + PREFETCH + o, _MM_HINT_T0);
            int c = c0;
            for (; c + 4 <= c1; c += 4) {
                const block_q8_1 *yc[4];
                for (int k = 0; k < 4; k++)
                    yc[k] = (const block_q8_1 *)((const char *)y + (c + k) * y_stride);
                float out[4];
                dot4((const block_q4_1 *)a, yc, nb, out);
                for (int k = 0; k < 4; k++) dst[(c + k) * dst_stride + r] = out[k];
            }
            for (; c < c1; c++) {
                const block_q8_1 *yc = (const block_q8_1 *)((const char *)y + c * y_stride);
                dst[c * dst_stride + r] = dot1((const block_q4_1 *)a, yc, nb);
            }
        }
    }
}
#endif

// The rows of a Q8_0 (q8_0 != 0) or Q4_1 matrix, as above.
void llpipe_rows(int q8_0, const void *w, size_t w_stride, int64_t r0, int64_t r1, int nb,
                 const void *y, size_t y_stride, int n_cols, float *dst, size_t dst_stride) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    if (q8_0)
        llpipe_q8_0_rows(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride);
    else
        llpipe_q4_1_rows(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride);
#else
    (void)q8_0, (void)w, (void)w_stride, (void)r0, (void)r1, (void)nb, (void)y;
    (void)y_stride, (void)n_cols, (void)dst, (void)dst_stride;
#endif
}

#if !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
int llpipe_kernels_available(void) { return 0; }


#endif
