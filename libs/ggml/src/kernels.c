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


#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512VL__) &&               \
    defined(__AVX512BW__)
// Prompt products (many columns) of Q5_0 and Q8_0 weights, equal to ggml's
// tinyBLAS bit for bit, in fewer operations per block product.
//
// tinyBLAS takes each product of a weight block (values a, signed) and an
// activation block (b) as dpbusd(0, |a|, sign(b, a)): 4-byte integer sums,
// to floats, times the product of the two f16 scales, added to the output's
// 8 lanes by one fused multiply-add per block, in block order; then one
// horizontal sum. We compute the same integers differently: with a' = a +
// off unsigned (a Q5_0 value's raw five bits; a Q8_0 value + 128),
// dpbusd(-off · sum4(b), a', b) = sum4(a · b) exactly (no term overflows
// 32 bits). The correction depends on the column only, so it is computed
// once per activation block and loaded, not computed, where the sign
// operations were; a weight block is unpacked once per row group, not once
// per tile. The floats after that are tinyBLAS's operation for operation,
// two rows to a 512-bit register (lanes 0-7 one row's, 8-15 the next's).
// Tiles are 8 rows by 6 columns: 24 accumulators of the 32 registers (of
// 4x8, 8x4 and 8x6, the fastest here). On a Sapphire Rapids core a 640 x
// 2048 Q5_0 matrix times 512 columns takes a third of tinyBLAS's time, a
// Q8_0 one half; the same tiles in 256-bit registers only 15-30% less.
#define GEMM 1
// More columns than this go to i8_gemm (at most this many to i8_rows).
#define GEMM_MIN_COLS 8
#define TILE_M 8
#define TILE_N 6

// A column block as the tiles read it: its 32 quants, then the 8 lanes of
// -off · sum4(quants).
typedef struct {
    int8_t qs[32];
    int32_t corr[8];
} col_block;

// Row group: the values (32 bytes) of TILE_M rows per block, a pair of rows
// in 64 bytes, as the tiles take them (kind 0 Q4_1: its nibbles; 1 Q8_0:
// value + 128; 2 Q5_0: the five raw bits), their scales d as floats, 8
// copies of each (a pair's 16 lanes), and for Q4_1 the rows' minimums m
// (`am`, 8 floats per block). Rows past rm are zeros.
static void pack_rows(const void *w, size_t w_stride, int64_t r, int rm, int nb, int kind,
                      uint8_t *ap, float *ad, float *am) {
    for (int l = 0; l < nb; l++)
        for (int i = 0; i < TILE_M; i++) {
            uint8_t *dst = ap + ((size_t)l * TILE_M + i) * 32;
            float *d = ad + ((size_t)l * TILE_M + i) * 8;
            __m256i v = _mm256_setzero_si256();
            float scale = 0, m = 0;
            const char *row = i < rm ? (const char *)w + (r + i) * w_stride : NULL;
            if (!row) {
            } else if (kind == 2) {
                const block_q5_0 *b = &((const block_q5_0 *)row)[l];
                uint32_t h;
                memcpy(&h, b->qh, 4);
                v = _mm256_or_si256(nibbles(b->qs),
                                    _mm256_maskz_mov_epi8((__mmask32)h, _mm256_set1_epi8(16)));
                scale = f16(b->d);
            } else if (kind == 1) {
                const block_q8_0 *b = &((const block_q8_0 *)row)[l];
                v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)b->qs),
                                     _mm256_set1_epi8((char)0x80));
                scale = f16(b->d);
            } else {
                const block_q4_1 *b = &((const block_q4_1 *)row)[l];
                v = nibbles(b->qs);
                const __m128 dm = dm_of(b);
                scale = _mm_cvtss_f32(dm);
                m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
            }
            _mm256_storeu_si256((__m256i *)dst, v);
            _mm256_storeu_ps(d, _mm256_set1_ps(scale));
            if (am) am[l * TILE_M + i] = m;
        }
}

// ggml's hsum_float_8 of each half of x.
static inline void hsum_halves(__m512 x, float *lo, float *hi) {
    *lo = hsum8(_mm512_castps512_ps256(x));
    *hi = hsum8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}

// One tile: rows r.. (2·np ≤ TILE_M, packed in ap/ad; a row past rm is
// computed but not written), columns c.. (rn ≤ TILE_N). np and rn are
// constants where inlined. Lanes 0-7 of a register are one row's, 8-15 the
// next row's, each lane as tinyBLAS's.
static inline __attribute__((always_inline)) void gemm_tile(
    const uint8_t *ap, const float *ad, const col_block *cols, const float *yd, int nb, int c,
    int rn, int np, int rm, int64_t r, float *dst, size_t dst_stride) {
    __m512 acc[TILE_N][TILE_M / 2];
    for (int j = 0; j < rn; j++)
        for (int p = 0; p < np; p++) acc[j][p] = _mm512_setzero_ps();
    for (int l = 0; l < nb; l++) {
        __m512i a[TILE_M / 2];
        __m512 da[TILE_M / 2];
        for (int p = 0; p < np; p++) {
            a[p] = _mm512_loadu_si512(ap + ((size_t)l * TILE_M + 2 * p) * 32);
            da[p] = _mm512_loadu_ps(ad + ((size_t)l * TILE_M + 2 * p) * 8);
        }
        for (int j = 0; j < rn; j++) {
            const col_block *b = &cols[(size_t)(c + j) * nb + l];
            const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->qs));
            const __m512i corr =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->corr));
            const __m512 db = _mm512_set1_ps(yd[(size_t)(c + j) * nb + l]);
            for (int p = 0; p < np; p++) {
                const __m512i sum = _mm512_dpbusd_epi32(corr, a[p], q);
                // the scale products, as tinyBLAS's _mm_mul_ps(da, db)
                acc[j][p] = _mm512_fmadd_ps(_mm512_mul_ps(da[p], db), _mm512_cvtepi32_ps(sum),
                                            acc[j][p]);
            }
        }
    }
    for (int j = 0; j < rn; j++)
        for (int p = 0; p < np; p++) {
            float lo, hi;
            hsum_halves(acc[j][p], &lo, &hi);
            dst[(c + j) * dst_stride + r + 2 * p] = lo;
            if (2 * p + 1 < rm) dst[(c + j) * dst_stride + r + 2 * p + 1] = hi;
        }
}

// Every tile shape (row pairs P ≤ 4, columns N ≤ TILE_N), each compiled
// with its constants.
#define TILE_CASE(P, N)                                                                      \
    case (P) * 8 + (N):                                                                      \
        gemm_tile(ap, ad, cols, yd, nb, c, N, P, rm, r, dst, dst_stride);                    \
        break;
#define TILE_ROW(P) TILE_CASE(P, 1) TILE_CASE(P, 2) TILE_CASE(P, 3) TILE_CASE(P, 4)            \
    TILE_CASE(P, 5) TILE_CASE(P, 6)

// Bytes of scratch gemm needs for n_cols columns of nb blocks.
static size_t gemm_scratch(int nb, int n_cols) {
    return 64 + (size_t)n_cols * nb * (sizeof(col_block) + sizeof(float)) +
           (size_t)nb * TILE_M * (32 + 8 * sizeof(float));
}

// As i8_rows, for many columns: the columns are copied once with their
// corrections and scales, then each group of TILE_M rows is unpacked and
// goes over all of them, a tile at a time.
static void i8_gemm(const void *w, size_t w_stride, int64_t r0, int64_t r1, int nb,
                    const void *y, size_t y_stride, int n_cols, float *dst, size_t dst_stride,
                    void *scratch, int q5) {
    char *p = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    col_block *cols = (col_block *)p;
    p += (size_t)n_cols * nb * sizeof(col_block);
    uint8_t *ap = (uint8_t *)p;
    p += (size_t)nb * TILE_M * 32;
    float *ad = (float *)p;
    p += (size_t)nb * TILE_M * 8 * sizeof(float);
    float *yd = (float *)p;
    const __m256i off = _mm256_set1_epi8(q5 ? 16 : (char)0x80);
    for (int c = 0; c < n_cols; c++) {
        const block_q8_0 *yc = (const block_q8_0 *)((const char *)y + c * y_stride);
        for (int l = 0; l < nb; l++) {
            col_block *b = &cols[(size_t)c * nb + l];
            const __m256i q = _mm256_loadu_si256((const __m256i *)yc[l].qs);
            const __m256i sum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), off, q);
            _mm256_storeu_si256((__m256i *)b->qs, q);
            _mm256_storeu_si256((__m256i *)b->corr, _mm256_sub_epi32(_mm256_setzero_si256(), sum));
            yd[(size_t)c * nb + l] = f16(yc[l].d);
        }
    }
    for (int64_t r = r0; r < r1; r += TILE_M) {
        const int rm = r1 - r < TILE_M ? (int)(r1 - r) : TILE_M;
        pack_rows(w, w_stride, r, rm, nb, q5 ? 2 : 1, ap, ad, NULL);
        for (int c = 0; c < n_cols; c += TILE_N) {
            const int rn = n_cols - c < TILE_N ? n_cols - c : TILE_N;
            switch ((rm + 1) / 2 * 8 + rn) {
                TILE_ROW(1) TILE_ROW(2) TILE_ROW(3) TILE_ROW(4)
            }
        }
    }
}

// Q4_1 weights times many Q8_1 columns, ggml's vec_dot_q4_1_q8_1 per
// output bit for bit (as dotn): acc += (d·d') · sum4(q · q') per block (q
// unsigned already: no sign trick to undo), summs += m · s' in block order,
// then hsum(acc) + summs; in the same 8-row tiles, two rows per register,
// the summs of a column's 8 rows in one 256-bit register. 4 columns a
// tile: the summs take the registers a fifth and sixth column would.
#define Q41_TILE_N 4

static inline __attribute__((always_inline)) void q4_1_tile(
    const uint8_t *ap, const float *ad, const float *am, const void *y, size_t y_stride,
    const float *ys, int nb, int c, int rn, int np, int rm, int64_t r, float *dst,
    size_t dst_stride) {
    __m512 acc[Q41_TILE_N][TILE_M / 2];
    __m256 summs[Q41_TILE_N];
    for (int j = 0; j < rn; j++) {
        summs[j] = _mm256_setzero_ps();
        for (int p = 0; p < np; p++) acc[j][p] = _mm512_setzero_ps();
    }
    for (int l = 0; l < nb; l++) {
        __m512i a[TILE_M / 2];
        __m512 da[TILE_M / 2];
        for (int p = 0; p < np; p++) {
            a[p] = _mm512_loadu_si512(ap + ((size_t)l * TILE_M + 2 * p) * 32);
            da[p] = _mm512_loadu_ps(ad + ((size_t)l * TILE_M + 2 * p) * 8);
        }
        const __m256 m = _mm256_loadu_ps(am + l * TILE_M);
        for (int j = 0; j < rn; j++) {
            const block_q8_1 *b = &((const block_q8_1 *)((const char *)y + (c + j) * y_stride))[l];
            const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->qs));
            const float *s = ys + ((size_t)(c + j) * nb + l) * 2;  // [d', s']
            const __m512 db = _mm512_set1_ps(s[0]);
            summs[j] = _mm256_fmadd_ps(m, _mm256_set1_ps(s[1]), summs[j]);
            for (int p = 0; p < np; p++) {
                const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), a[p], q);
                acc[j][p] = _mm512_fmadd_ps(_mm512_mul_ps(da[p], db), _mm512_cvtepi32_ps(sum),
                                            acc[j][p]);
            }
        }
    }
    for (int j = 0; j < rn; j++) {
        float sm[8];
        _mm256_storeu_ps(sm, summs[j]);
        for (int p = 0; p < np; p++) {
            float lo, hi;
            hsum_halves(acc[j][p], &lo, &hi);
            dst[(c + j) * dst_stride + r + 2 * p] = lo + sm[2 * p];
            if (2 * p + 1 < rm) dst[(c + j) * dst_stride + r + 2 * p + 1] = hi + sm[2 * p + 1];
        }
    }
}

#define Q41_CASE(P, N)                                                                       \
    case (P) * 8 + (N):                                                                      \
        q4_1_tile(ap, ad, am, y, y_stride, ys, nb, c, N, P, rm, r, dst, dst_stride);         \
        break;
#define Q41_ROW(P) Q41_CASE(P, 1) Q41_CASE(P, 2) Q41_CASE(P, 3) Q41_CASE(P, 4)

// Bytes of scratch q4_1_gemm needs besides the columns' scales.
static size_t q4_1_gemm_scratch(int nb) {
    return 64 + (size_t)nb * TILE_M * (32 + 8 * sizeof(float) + sizeof(float));
}

// As llpipe_q4_1_rows, for many columns; ys holds each column's [d, s]
// per block as floats.
static void q4_1_gemm(const void *w, size_t w_stride, int64_t r0, int64_t r1, int nb,
                      const void *y, size_t y_stride, int n_cols, float *dst, size_t dst_stride,
                      const float *ys, void *scratch) {
    char *p = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    uint8_t *ap = (uint8_t *)p;
    p += (size_t)nb * TILE_M * 32;
    float *ad = (float *)p;
    p += (size_t)nb * TILE_M * 8 * sizeof(float);
    float *am = (float *)p;
    for (int64_t r = r0; r < r1; r += TILE_M) {
        const int rm = r1 - r < TILE_M ? (int)(r1 - r) : TILE_M;
        pack_rows(w, w_stride, r, rm, nb, 0, ap, ad, am);
        for (int c = 0; c < n_cols; c += Q41_TILE_N) {
            const int rn = n_cols - c < Q41_TILE_N ? n_cols - c : Q41_TILE_N;
            switch ((rm + 1) / 2 * 8 + rn) {
                Q41_ROW(1) Q41_ROW(2) Q41_ROW(3) Q41_ROW(4)
            }
        }
    }
}
#endif

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

// Whether Q8_0 and Q5_0 matrices times more than 8 columns have a kernel
// here (AVX-512 VNNI, VL and BW); else ggml's tinyBLAS does those.
int llpipe_gemm_available(void) {
#ifdef GEMM
    return 1;
#else
    return 0;
#endif
}

// Bytes of scratch llpipe_rows needs for n_cols columns of nb blocks.
size_t llpipe_scratch_bytes(int type, int nb, int n_cols) {
    size_t bytes = (size_t)n_cols * nb * 2 * sizeof(float);
#ifdef GEMM
    if ((type == 1 || type == 2) && n_cols > GEMM_MIN_COLS) bytes = gemm_scratch(nb, n_cols);
    if (type == 0 && n_cols > GEMM_MIN_COLS) bytes += q4_1_gemm_scratch(nb);
#else
    (void)type;
#endif
    return bytes;
}

// The rows of a Q4_1 (type 0), Q8_0 (type 1) or Q5_0 (type 2) matrix, as
// above; `scratch` holds llpipe_scratch_bytes bytes.
void llpipe_rows(int type, const void *w, size_t w_stride, int64_t r0, int64_t r1, int nb,
                 const void *y, size_t y_stride, int n_cols, float *dst, size_t dst_stride,
                 void *scratch) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    float *scales = scratch;
#ifdef GEMM
    if ((type == 1 || type == 2) && n_cols > GEMM_MIN_COLS) {
        i8_gemm(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride, scratch, type == 2);
        return;
    }
#endif
    if (type == 1)
        i8_rows(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride, scales, 0);
    else if (type == 2)
        i8_rows(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride, scales, 1);
    else {
#ifdef GEMM
        if (n_cols > GEMM_MIN_COLS) {
            // the columns' scales first, as llpipe_q4_1_rows keeps them
            for (int c = 0; c < n_cols; c++) {
                const block_q8_1 *yc = (const block_q8_1 *)((const char *)y + c * y_stride);
                for (int i = 0; i < nb; i++) {
                    scales[(c * nb + i) * 2] = f16(yc[i].d);
                    scales[(c * nb + i) * 2 + 1] = f16(yc[i].s);
                }
            }
            q4_1_gemm(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride, scales,
                      scales + (size_t)n_cols * nb * 2);
            return;
        }
#endif
        llpipe_q4_1_rows(w, w_stride, r0, r1, nb, y, y_stride, n_cols, dst, dst_stride, scales);
    }
#else
    (void)type, (void)w, (void)w_stride, (void)r0, (void)r1, (void)nb, (void)y;
    (void)y_stride, (void)n_cols, (void)dst, (void)dst_stride, (void)scratch;
#endif
}

#if !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
int llpipe_kernels_available(void) { return 0; }
#endif
