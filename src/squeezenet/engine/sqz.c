/* sqz: SqueezeNet inference in C11 (see sqz.h). Written by hand rather than taken from a runtime
 * because it is what makes the model small everywhere: a few KB of code that runs the file
 * `squeezenet export` writes, in fp32, int8 or from Deep Compression's codebooks, with every
 * buffer placed at export time, on a microcontroller or in a browser page.
 *
 * Tensors are HWC (channels last). A convolution runs one block of SQZ_BLOCK output channels at
 * a time over every pixel (the block's weights stay in cache), TILE pixels at once: for each
 * input channel, one weight row of the block times each pixel's value, accumulated. fp32 uses
 * GCC/clang vector extensions (SSE/AVX, NEON, wasm SIMD128); int8 multiplies uint8 activations by
 * 7-bit weights, 4 input channels at a time (x86's vpmaddubsw, whose 16-bit pair sums 7-bit
 * weights cannot overflow; wasm's i32x4.dot_i16x8_s), summed in 32 bits, so every target computes
 * the same integers; plain C where neither is available. */
#include "sqz.h"

#if defined(__wasm_simd128__) && !defined(SQZ_SCALAR)
#include <wasm_simd128.h>
#define I8_WASM 1
#elif defined(__AVX2__) && !defined(SQZ_SCALAR)
#include <immintrin.h>
#define I8_AVX2 1
#endif

#if (defined(__GNUC__) || defined(__clang__)) && !defined(SQZ_SCALAR)
#if defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
typedef float vacc __attribute__((vector_size(VL * 4)));
typedef float vunaligned __attribute__((vector_size(VL * 4), aligned(4)));
static inline vacc vload(const float *p) { return *(const vunaligned *)p; }
#if VL == 8
static inline vacc vsplat(float x) { return (vacc){x, x, x, x, x, x, x, x}; }
#else
static inline vacc vsplat(float x) { return (vacc){x, x, x, x}; }
#endif
#define COPY(d, s, n) __builtin_memcpy(d, s, n)
#else
#define VL 1
typedef float vacc;
static inline vacc vload(const float *p) { return *p; }
static inline vacc vsplat(float x) { return x; }
static void copy_bytes(void *d, const void *s, size_t n) {
    for (size_t i = 0; i < n; i++) ((uint8_t *)d)[i] = ((const uint8_t *)s)[i];
}
#define COPY(d, s, n) copy_bytes(d, s, n)
#endif
#define NV (SQZ_BLOCK / VL)   /* vectors per block row */
#ifndef SQZ_TILE
#define SQZ_TILE (NV == 1 ? 8 : 4) /* pixels at once: enough independent sums in flight */
#endif
#define TILE SQZ_TILE

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

static inline int blocks(uint32_t channels) { return (int)((channels + SQZ_BLOCK - 1) / SQZ_BLOCK); }
static inline uint32_t round4(uint32_t n) { return (n + 3u) & ~3u; }
static inline const float *file_f32(const sqz_model *m, uint32_t off) { return (const float *)(m->file + off); }

/* ---------------------------------------------------------------------------- fp32 kernels */

/* out[p] = sum over taps t and k of in[t][p][k] * w[t][k][0..SQZ_BLOCK), for the np <= TILE
 * pixels of a tile; in[t] holds TILE row pointers, w[t] K x SQZ_BLOCK weights. The sums stay in
 * registers across every tap. */
static void mk_f32(int taps, int K, const float *const *in, const float *const *wt, int np, float out[TILE][SQZ_BLOCK]) {
    vacc a[TILE][NV];
    for (int p = 0; p < TILE; p++)
        for (int v = 0; v < NV; v++) a[p][v] = vsplat(0.0f);
    for (int t = 0; t < taps; t++, in += TILE) {
        const float *w = wt[t];
        if (np == TILE) {
            const float *i0 = in[0], *i1 = in[1], *i2 = in[2], *i3 = in[3];
#if TILE == 8
            const float *i4 = in[4], *i5 = in[5], *i6 = in[6], *i7 = in[7];
#define STEP8(j)                                                                                       \
    {                                                                                                  \
        vacc x4 = vsplat(i4[k + (j)]), x5 = vsplat(i5[k + (j)]), x6 = vsplat(i6[k + (j)]), x7 = vsplat(i7[k + (j)]);           \
        a[4][0] += x4 * wv[0];                                                                         \
        a[5][0] += x5 * wv[0];                                                                         \
        a[6][0] += x6 * wv[0];                                                                         \
        a[7][0] += x7 * wv[0];                                                                         \
    }
#else
#define STEP8(j)
#endif
/* input channel k + j: a weight row times each pixel's value (constant offsets j: fewer pointer steps) */
#define STEP(j)                                                                                        \
    {                                                                                                  \
        vacc wv[NV];                                                                                   \
        for (int v = 0; v < NV; v++) wv[v] = vload(w + (j) * SQZ_BLOCK + v * VL);                      \
        vacc x0 = vsplat(i0[k + (j)]), x1 = vsplat(i1[k + (j)]), x2 = vsplat(i2[k + (j)]), x3 = vsplat(i3[k + (j)]);           \
        for (int v = 0; v < NV; v++) {                                                                 \
            a[0][v] += x0 * wv[v];                                                                     \
            a[1][v] += x1 * wv[v];                                                                     \
            a[2][v] += x2 * wv[v];                                                                     \
            a[3][v] += x3 * wv[v];                                                                     \
        }                                                                                              \
        STEP8(j)                                                                                       \
    }
            int k = 0;
            for (; k + 4 <= K; k += 4, w += 4 * SQZ_BLOCK) { /* four channels a turn: fewer steps */
                STEP(0) STEP(1) STEP(2) STEP(3)
            }
            for (; k < K; k++, w += SQZ_BLOCK) STEP(0)
#undef STEP
#undef STEP8
        } else {
            for (int k = 0; k < K; k++, w += SQZ_BLOCK) {
                vacc wv[NV];
                for (int v = 0; v < NV; v++) wv[v] = vload(w + v * VL);
                for (int p = 0; p < np; p++) {
                    vacc x = vsplat(in[p][k]);
                    for (int v = 0; v < NV; v++) a[p][v] += x * wv[v];
                }
            }
        }
    }
    for (int p = 0; p < np; p++) COPY(out[p], a[p], sizeof out[p]);
}

/* One block of compressed weights as fp32: codebook (mask bit set -> codebook[code] x the
 * channel's scale) or int8 (code x the channel's scale). */
static void decode_block(const sqz_model *m, const sqz_layer *L, int K, int b, float *dst) {
    const float *scale = file_f32(m, L->mult_off) + b * SQZ_BLOCK;
    if (L->form == SQZ_W_I8F) {
        const int8_t *q = (const int8_t *)(m->file + L->weights_off) + (size_t)b * K * SQZ_BLOCK;
        for (int i = 0; i < K * SQZ_BLOCK; i++) dst[i] = (float)q[i] * scale[i % SQZ_BLOCK];
        return;
    }
    const uint8_t *mask = m->file + L->weights_off, *codes = m->file + L->codes_off;
    const float *book = file_f32(m, L->codebook_off);
    const uint32_t *first = (const uint32_t *)(m->file + L->blocks_off);
    uint32_t bit = (uint32_t)b * (uint32_t)K * SQZ_BLOCK, j = first[b], bits = L->bits, keep = (1u << bits) - 1;
    for (int i = 0; i < K * SQZ_BLOCK; i++, bit++) {
        float w = 0.0f;
        if ((mask[bit >> 3] >> (bit & 7)) & 1u) {
            uint32_t at = j++ * bits;
            uint32_t v = (uint32_t)codes[at >> 3] | (uint32_t)codes[(at >> 3) + 1] << 8;
            w = book[(v >> (at & 7)) & keep] * scale[i % SQZ_BLOCK];
        }
        dst[i] = w;
    }
}

/* Block b of a layer's fp32 weights (K x SQZ_BLOCK): in the file, in the decoded cache, or
 * decoded now into the arena's scratch. */
static const float *weights_f32(const sqz_model *m, const sqz_layer *L, int K, int b) {
    if (L->form == SQZ_W_F32) return file_f32(m, L->weights_off) + (size_t)b * K * SQZ_BLOCK;
    /* codebook or int8 weights of an fp32 model: from the cache, or decoded now */
    if (m->decoded) return m->decoded + L->decoded_off + (size_t)b * K * SQZ_BLOCK;
    float *scratch = (float *)(m->arena + m->header->scratch_off);
    decode_block(m, L, K, b, scratch);
    return scratch;
}

static inline uint8_t quantize(float v) { /* v: real / scale + zero; NaN -> 0 */
    if (!(v > 0.0f)) return 0;
    return v >= 255.0f ? 255 : (uint8_t)(v + 0.5f);
}

/* y = acc + bias, ReLU, plus the destination's old value (a Fire's shortcut), stored as the
 * layer's activations; np pixels, n <= SQZ_BLOCK channels, pixel stride `stride` elements. */
static void epilogue_f32(const sqz_model *m, const sqz_layer *L, float acc[TILE][SQZ_BLOCK], int np,
                         const float *bias, int n, void *dst, int stride) {
    for (int p = 0; p < np; p++) {
        for (int c = 0; c < n; c++) {
            float v = acc[p][c] + bias[c];
            if (L->flags & SQZ_RELU) v = MAX(v, 0.0f);
            if (m->header->precision == SQZ_I8) { /* the fp32 stem of an int8 model */
                uint8_t *d = (uint8_t *)dst + (size_t)p * stride;
                d[c] = quantize(v / L->out_scale + (float)L->out_zero);
            } else {
                float *d = (float *)dst + (size_t)p * stride;
                d[c] = (L->flags & SQZ_ACCUM) ? d[c] + v : v;
            }
        }
    }
}

/* The input pointers of a tile's pixels for each kernel tap whose row is inside the input (the
 * rows outside add zeros: skipped), the columns outside pointing at a row of zeros; returns the
 * number of taps, their weights' offsets (in rows of SQZ_BLOCK) in `row`. */
static int taps_of(const uint8_t *in, const uint8_t *zeros, int H, int W, int k, int x0, int y, int np, size_t pixel,
                   const uint8_t **px, int *row) {
    int taps = 0, pad = (k - 1) / 2;
    for (int ky = 0; ky < k; ky++) {
        int iy = y + ky - pad;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < k; kx++, taps++) {
            for (int p = 0; p < TILE; p++) {
                int ix = x0 + MIN(p, np - 1) + kx - pad;
                px[taps * TILE + p] = (ix < 0 || ix >= W) ? zeros : in + ((size_t)iy * W + ix) * pixel;
            }
            row[taps] = ky * k + kx;
        }
    }
    return taps;
}

/* ---------------------------------------------------------------------------- Winograd F(2x2, 3x3)
 * (Lavin and Gray, 2016) for the 3x3 convolutions of an fp32 model, where sqz_decode gave a cache
 * and the build has SQZ_WINOGRAD (the default for wasm):
 * each 4x4 input tile (stride 2) is transformed, V = B'dB; the 16 products with the transformed
 * weights, U = GgG', are 16 matrix products (tiles x cin) x (cin x cout), run by mk_f32; each 2x2
 * output is A'MA. */

#ifndef SQZ_WINOGRAD /* where it pays: 1.2-1.3x faster in wasm SIMD128 (no FMA), slower beside AVX2's FMA */
#if defined(__wasm__)
#define SQZ_WINOGRAD 1
#else
#define SQZ_WINOGRAD 0
#endif
#endif

static size_t wino_tiles(const sqz_layer *L) { return (size_t)((L->h + 1) / 2) * ((L->w + 1) / 2); }
static int wino_layer(const sqz_model *m, const sqz_layer *L) {
    return SQZ_WINOGRAD && m->header->precision == SQZ_F32 && L->op == SQZ_CONV && L->k == 3;
}

/* U for one block of 8 output channels: [16][cin][8] from the block's 3x3 weights [9][cin][8]. */
static void wino_weights(const float *g, int C, float *u, size_t stride) {
    for (int ci = 0; ci < C; ci++) {
        for (int c = 0; c < SQZ_BLOCK; c++) {
            float w[3][3], t[4][3];
            for (int y = 0; y < 3; y++)
                for (int x = 0; x < 3; x++) w[y][x] = g[((size_t)(y * 3 + x) * C + ci) * SQZ_BLOCK + c];
            for (int x = 0; x < 3; x++) { /* G w, G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1] */
                t[0][x] = w[0][x];
                t[1][x] = 0.5f * (w[0][x] + w[1][x] + w[2][x]);
                t[2][x] = 0.5f * (w[0][x] - w[1][x] + w[2][x]);
                t[3][x] = w[2][x];
            }
            for (int y = 0; y < 4; y++) { /* (G w) G' */
                float r[4] = {t[y][0], 0.5f * (t[y][0] + t[y][1] + t[y][2]), 0.5f * (t[y][0] - t[y][1] + t[y][2]),
                              t[y][2]};
                for (int x = 0; x < 4; x++) u[(size_t)(y * 4 + x) * stride + (size_t)ci * SQZ_BLOCK + c] = r[x];
            }
        }
    }
}

/* V for every tile: [16][tiles][cin], each channel of a 4x4 input patch (zero outside the input). */
static void wino_input(const float *in, const float *zeros, int H, int W, int C, float *v, size_t tiles) {
    int TW = (W + 1) / 2;
    for (size_t t = 0; t < tiles; t++) {
        int y0 = (int)(t / TW) * 2 - 1, x0 = (int)(t % TW) * 2 - 1;
        const float *d[4][4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                int y = y0 + i, x = x0 + j;
                d[i][j] = (y < 0 || y >= H || x < 0 || x >= W) ? zeros : in + ((size_t)y * W + x) * C;
            }
        float *o = v + t * C;
        size_t plane = tiles * C;
        for (int c = 0; c < C; c++) {
            float r[4][4], s[4][4];
            for (int j = 0; j < 4; j++) { /* B'd, B' = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] */
                r[0][j] = d[0][j][c] - d[2][j][c];
                r[1][j] = d[1][j][c] + d[2][j][c];
                r[2][j] = d[2][j][c] - d[1][j][c];
                r[3][j] = d[1][j][c] - d[3][j][c];
            }
            for (int i = 0; i < 4; i++) { /* (B'd) B */
                s[i][0] = r[i][0] - r[i][2];
                s[i][1] = r[i][1] + r[i][2];
                s[i][2] = r[i][2] - r[i][1];
                s[i][3] = r[i][1] - r[i][3];
            }
            for (int i = 0; i < 16; i++) o[i * plane + c] = s[i / 4][i % 4];
        }
    }
}

static void conv3x3_winograd(const sqz_model *m, const sqz_layer *L, const float *u) {
    const float *in = (const float *)(m->arena + L->in_off), *zeros = (const float *)(m->arena + m->header->zeros_off);
    float *out = (float *)(m->arena + L->out_off) + L->out_first, *v = m->wino_v, *prod = m->wino_m;
    int H = (int)L->h, W = (int)L->w, C = (int)L->cin, OC = (int)L->out_channels, nb = blocks(L->cout), TW = (W + 1) / 2;
    size_t tiles = wino_tiles(L);
    const float *bias = file_f32(m, L->bias_off);
    wino_input(in, zeros, H, W, C, v, tiles);
    for (int b = 0; b < nb; b++) {
        int n = MIN(SQZ_BLOCK, (int)L->cout - b * SQZ_BLOCK);
        for (int xi = 0; xi < 16; xi++) { /* the 16 products of this block: tiles x 8 each */
            const float *ub = u + ((size_t)xi * nb + b) * C * SQZ_BLOCK, *vx = v + (size_t)xi * tiles * C;
            for (size_t t0 = 0; t0 < tiles; t0 += TILE) {
                int np = (int)MIN((size_t)TILE, tiles - t0);
                const float *px[TILE];
                for (int p = 0; p < TILE; p++) px[p] = vx + (t0 + (size_t)MIN(p, np - 1)) * C;
                mk_f32(1, C, px, &ub, np, (float(*)[SQZ_BLOCK])(prod + ((size_t)xi * tiles + t0) * SQZ_BLOCK));
            }
        }
        for (size_t t = 0; t < tiles; t++) { /* A'MA, A' = [1 1 1 0; 0 1 -1 -1], then bias, ReLU, shortcut */
            int y0 = (int)(t / TW) * 2, x0 = (int)(t % TW) * 2;
            for (int c = 0; c < n; c++) {
                float q[16], r[2][4], y[2][2];
                for (int i = 0; i < 16; i++) q[i] = prod[((size_t)i * tiles + t) * SQZ_BLOCK + c];
                for (int j = 0; j < 4; j++) {
                    r[0][j] = q[j] + q[4 + j] + q[8 + j];
                    r[1][j] = q[4 + j] - q[8 + j] - q[12 + j];
                }
                for (int i = 0; i < 2; i++) {
                    y[i][0] = r[i][0] + r[i][1] + r[i][2];
                    y[i][1] = r[i][1] - r[i][2] - r[i][3];
                }
                for (int i = 0; i < 2 && y0 + i < H; i++) {
                    for (int j = 0; j < 2 && x0 + j < W; j++) {
                        float *d = out + ((size_t)(y0 + i) * W + x0 + j) * OC + b * SQZ_BLOCK + c;
                        float val = y[i][j] + bias[b * SQZ_BLOCK + c];
                        if (L->flags & SQZ_RELU) val = MAX(val, 0.0f);
                        *d = (L->flags & SQZ_ACCUM) ? *d + val : val;
                    }
                }
            }
        }
    }
}

/* A stride-1 convolution (1x1, or 3x3 with padding 1) in fp32. */
static void conv_f32(const sqz_model *m, const sqz_layer *L) {
    if (m->wino && m->wino[L - m->layers]) {
        conv3x3_winograd(m, L, m->decoded + m->wino[L - m->layers]);
        return;
    }
    const uint8_t *in = m->arena + L->in_off, *zeros = m->arena + m->header->zeros_off;
    float *out = (float *)(m->arena + L->out_off) + L->out_first;
    int H = (int)L->h, W = (int)L->w, C = (int)L->cin, k = (int)L->k, K = k * k * C, OC = (int)L->out_channels;
    const float *bias = file_f32(m, L->bias_off);
    for (int b = 0; b < blocks(L->cout); b++) {
        const float *wb = weights_f32(m, L, K, b);
        int n = MIN(SQZ_BLOCK, (int)L->cout - b * SQZ_BLOCK);
        for (int y = 0; y < H; y++) {
            for (int x0 = 0; x0 < W; x0 += TILE) {
                int np = MIN(TILE, W - x0), row[SQZ_MAX_STEM * SQZ_MAX_STEM];
                const float *px[SQZ_MAX_STEM * SQZ_MAX_STEM * TILE], *wt[SQZ_MAX_STEM * SQZ_MAX_STEM];
                int taps = taps_of(in, zeros, H, W, k, x0, y, np, (size_t)C * 4, (const uint8_t **)px, row);
                for (int t = 0; t < taps; t++) wt[t] = wb + (size_t)row[t] * C * SQZ_BLOCK;
                float acc[TILE][SQZ_BLOCK];
                mk_f32(taps, C, px, wt, np, acc);
                epilogue_f32(m, L, acc, np, bias + b * SQZ_BLOCK, n, out + ((size_t)y * W + x0) * OC + b * SQZ_BLOCK, OC);
            }
        }
    }
}

/* ---------------------------------------------------------------------------- int8 kernels */

/* acc[p][c] = sum over taps t and quads q of in[t][p][4q..4q+4) . w[t][q][c][0..4): uint8
 * activations, 7-bit weights packed as [quad of input channels][SQZ_BLOCK][4]. */
static void mk_i8(int taps, int quads, const uint8_t *const *in, const int8_t *const *wt, int np,
                  int32_t acc[TILE][SQZ_BLOCK]) {
#if defined(I8_AVX2)
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a[TILE];
    for (int p = 0; p < TILE; p++) a[p] = _mm256_setzero_si256();
    for (int t = 0; t < taps; t++, in += TILE) {
        const int8_t *w = wt[t];
        for (int q = 0; q < quads; q++, w += 32) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)w);
            for (int p = 0; p < np; p++) {
                int32_t x;
                __builtin_memcpy(&x, in[p] + 4 * q, 4);
                __m256i pairs = _mm256_maddubs_epi16(_mm256_set1_epi32(x), wv); /* 255 x 63 x 2 < 2^15 */
                a[p] = _mm256_add_epi32(a[p], _mm256_madd_epi16(pairs, ones));
            }
        }
    }
    for (int p = 0; p < np; p++) _mm256_storeu_si256((__m256i *)acc[p], a[p]);
#elif defined(I8_WASM)
    v128_t a[TILE][4]; /* lanes: channel pairs (2c, 2c+1), two partial sums each */
    for (int p = 0; p < TILE; p++) a[p][0] = a[p][1] = a[p][2] = a[p][3] = wasm_i32x4_splat(0);
    for (int t = 0; t < taps; t++, in += TILE) {
        const int8_t *w = wt[t];
        for (int q = 0; q < quads; q++, w += 32) {
            v128_t w0 = wasm_v128_load(w), w1 = wasm_v128_load(w + 16);
            v128_t w01 = wasm_i16x8_extend_low_i8x16(w0), w23 = wasm_i16x8_extend_high_i8x16(w0);
            v128_t w45 = wasm_i16x8_extend_low_i8x16(w1), w67 = wasm_i16x8_extend_high_i8x16(w1);
            for (int p = 0; p < np; p++) {
                int32_t x4;
                __builtin_memcpy(&x4, in[p] + 4 * q, 4);
                v128_t x = wasm_u16x8_extend_low_u8x16(wasm_i32x4_splat(x4));
                a[p][0] = wasm_i32x4_add(a[p][0], wasm_i32x4_dot_i16x8(w01, x));
                a[p][1] = wasm_i32x4_add(a[p][1], wasm_i32x4_dot_i16x8(w23, x));
                a[p][2] = wasm_i32x4_add(a[p][2], wasm_i32x4_dot_i16x8(w45, x));
                a[p][3] = wasm_i32x4_add(a[p][3], wasm_i32x4_dot_i16x8(w67, x));
            }
        }
    }
    for (int p = 0; p < np; p++) {
        for (int v = 0; v < 4; v++) {
            int32_t s[4];
            wasm_v128_store(s, a[p][v]);
            acc[p][2 * v] = s[0] + s[1];
            acc[p][2 * v + 1] = s[2] + s[3];
        }
    }
#else
    for (int p = 0; p < np; p++)
        for (int c = 0; c < SQZ_BLOCK; c++) acc[p][c] = 0;
    for (int t = 0; t < taps; t++, in += TILE) {
        const int8_t *w = wt[t];
        for (int q = 0; q < quads; q++, w += 4 * SQZ_BLOCK) {
            for (int p = 0; p < np; p++) {
                const uint8_t *x = in[p] + 4 * q;
                for (int c = 0; c < SQZ_BLOCK; c++)
                    acc[p][c] += w[4 * c] * x[0] + w[4 * c + 1] * x[1] + w[4 * c + 2] * x[2] + w[4 * c + 3] * x[3];
            }
        }
    }
#endif
}

/* y = acc x mult + bias (the real value), ReLU, plus the destination's old value, requantized. */
static void epilogue_i8(const sqz_layer *L, int32_t acc[TILE][SQZ_BLOCK], int np, const float *mult,
                        const float *bias, int n, uint8_t *dst, int stride) {
    float inv = 1.0f / L->out_scale, zero = (float)L->out_zero;
#if (defined(__GNUC__) || defined(__clang__)) && !defined(SQZ_SCALAR)
    if (n == SQZ_BLOCK) { /* the block's 8 channels at once: this step costs as much as the sums otherwise */
        typedef float f8 __attribute__((vector_size(32)));
        typedef int32_t i8v __attribute__((vector_size(32)));
        typedef uint8_t u8v __attribute__((vector_size(8)));
        f8 m8, b8;
        __builtin_memcpy(&m8, mult, sizeof m8);
        __builtin_memcpy(&b8, bias, sizeof b8);
        for (int p = 0; p < np; p++) {
            i8v a;
            __builtin_memcpy(&a, acc[p], sizeof a);
            f8 y = __builtin_convertvector(a, f8) * m8 + b8;
            if (L->flags & SQZ_RELU) y = (f8)((i8v)y & (i8v)(y > 0.0f));
            uint8_t *d = dst + (size_t)p * stride;
            if (L->flags & SQZ_ACCUM) {
                u8v old;
                __builtin_memcpy(&old, d, sizeof old);
                y += __builtin_convertvector(__builtin_convertvector(old, i8v) - L->res_zero, f8) * L->res_scale;
            }
            f8 v = y * inv + (zero + 0.5f);
            i8v big = v > 300.0f; /* past int32 before converting: 255 then */
            v = (f8)(((i8v)v & ~big) | ((i8v)((f8){0} + 300.0f) & big));
            i8v q = __builtin_convertvector(v, i8v), hi = q > 255; /* truncated: rounded (v >= 0) */
            q = (q & (q > 0) & ~hi) | (255 & hi);                   /* NaN and below 0 -> 0 */
            u8v out = __builtin_convertvector(q, u8v);
            __builtin_memcpy(d, &out, sizeof out);
        }
        return;
    }
#endif
    for (int p = 0; p < np; p++) {
        uint8_t *d = dst + (size_t)p * stride;
        for (int c = 0; c < n; c++) {
            float v = (float)acc[p][c] * mult[c] + bias[c];
            if (L->flags & SQZ_RELU) v = MAX(v, 0.0f);
            if (L->flags & SQZ_ACCUM) v += L->res_scale * (float)((int32_t)d[c] - L->res_zero);
            d[c] = quantize(v * inv + zero);
        }
    }
}

static void conv_i8(const sqz_model *m, const sqz_layer *L) {
    const uint8_t *in = m->arena + L->in_off, *zeros = m->arena + m->header->zeros_off;
    uint8_t *out = m->arena + L->out_off + L->out_first;
    int H = (int)L->h, W = (int)L->w, C = (int)L->cin, k = (int)L->k, C4 = (int)round4(L->cin), OC = (int)L->out_channels;
    const float *bias = file_f32(m, L->bias_off), *mult = file_f32(m, L->mult_off);
    for (int b = 0; b < blocks(L->cout); b++) {
        const int8_t *wb = (const int8_t *)(m->file + L->weights_off) + (size_t)b * k * k * C4 * SQZ_BLOCK;
        int n = MIN(SQZ_BLOCK, (int)L->cout - b * SQZ_BLOCK);
        for (int y = 0; y < H; y++) {
            for (int x0 = 0; x0 < W; x0 += TILE) {
                int np = MIN(TILE, W - x0), row[SQZ_MAX_STEM * SQZ_MAX_STEM];
                const uint8_t *px[SQZ_MAX_STEM * SQZ_MAX_STEM * TILE];
                const int8_t *wt[SQZ_MAX_STEM * SQZ_MAX_STEM];
                int taps = taps_of(in, zeros, H, W, k, x0, y, np, (size_t)C, px, row);
                for (int t = 0; t < taps; t++) wt[t] = wb + (size_t)row[t] * C4 * SQZ_BLOCK;
                int32_t acc[TILE][SQZ_BLOCK];
                mk_i8(taps, C4 / 4, px, wt, np, acc);
                epilogue_i8(L, acc, np, mult + b * SQZ_BLOCK, bias + b * SQZ_BLOCK, n,
                            out + ((size_t)y * W + x0) * OC + b * SQZ_BLOCK, OC);
            }
        }
    }
}

/* ---------------------------------------------------------------------------- stem, pools, head */

/* One output row of conv1 (+ ReLU), from the input image's pixels, normalised on the fly (a
 * one-channel model sees PIL's integer luma); fp32 math, stored as the model's activations. */
static void stem_row(const sqz_model *m, const sqz_layer *L, int y, uint8_t *dst) {
    const sqz_header *h = m->header;
    const uint8_t *image = m->arena + h->input_off;
    int S = (int)L->w, k = (int)L->k, s = (int)L->stride, pad = (int)L->pad, cin = (int)L->cin;
    int K = k * k * cin, elem = h->precision == SQZ_I8 ? 1 : 4, C = (int)L->cout;
    float patch[TILE][SQZ_MAX_STEM * SQZ_MAX_STEM * 3];
    const float *rows[TILE];
    for (int x0 = 0; x0 < (int)L->ow; x0 += TILE) {
        int np = MIN(TILE, (int)L->ow - x0);
        for (int p = 0; p < np; p++) {
            float *v = patch[p];
            for (int ky = 0; ky < k; ky++) {
                int iy = y * s + ky - pad;
                for (int kx = 0; kx < k; kx++, v += cin) {
                    int ix = (x0 + p) * s + kx - pad;
                    if (iy < 0 || iy >= S || ix < 0 || ix >= S) {
                        for (int c = 0; c < cin; c++) v[c] = 0.0f;
                        continue;
                    }
                    const uint8_t *px = image + ((size_t)iy * S + ix) * 3;
                    if (cin == 1) {
                        uint32_t luma = (19595u * px[0] + 38470u * px[1] + 7471u * px[2] + 0x8000u) >> 16;
                        v[0] = (float)luma * h->pixel_scale[0] + h->pixel_shift[0];
                    } else {
                        for (int c = 0; c < 3; c++) v[c] = (float)px[c] * h->pixel_scale[c] + h->pixel_shift[c];
                    }
                }
            }
            rows[p] = patch[p];
        }
        for (int p = np; p < TILE; p++) rows[p] = rows[0];
        for (int b = 0; b < blocks(L->cout); b++) {
            const float *wt[1] = {weights_f32(m, L, K, b)};
            float acc[TILE][SQZ_BLOCK];
            mk_f32(1, K, rows, wt, np, acc);
            epilogue_f32(m, L, acc, np, file_f32(m, L->bias_off) + b * SQZ_BLOCK,
                         MIN(SQZ_BLOCK, C - b * SQZ_BLOCK), dst + ((size_t)x0 * C + b * SQZ_BLOCK) * elem, C);
        }
    }
}

/* One row of a 3x3 stride-2 max pool (PyTorch's ceil mode: windows cut at the edge); r[1], r[2]
 * NULL past the input's last row. */
static void pool_row(const uint8_t *r[3], int w, int c, int ow, int i8, uint8_t *out) {
    for (int ox = 0; ox < ow; ox++) {
        int x1 = MIN(2 * ox + 3, w);
        if (i8) {
            uint8_t *o = out + (size_t)ox * c;
            COPY(o, r[0] + (size_t)2 * ox * c, (size_t)c);
            for (int i = 0; i < 3; i++) {
                if (!r[i]) continue;
                for (int x = 2 * ox + (i == 0); x < x1; x++) {
                    const uint8_t *a = r[i] + (size_t)x * c;
                    for (int j = 0; j < c; j++) o[j] = MAX(o[j], a[j]);
                }
            }
        } else {
            float *o = (float *)out + (size_t)ox * c;
            COPY(o, (const float *)r[0] + (size_t)2 * ox * c, (size_t)c * 4);
            for (int i = 0; i < 3; i++) {
                if (!r[i]) continue;
                for (int x = 2 * ox + (i == 0); x < x1; x++) {
                    const float *a = (const float *)r[i] + (size_t)x * c;
                    for (int j = 0; j < c; j++) o[j] = MAX(o[j], a[j]);
                }
            }
        }
    }
}

/* conv1 over the whole image; with SQZ_POOLED its rows go through a ring of three and only the
 * pooled output is stored (conv1's output at 224 px is the largest tensor of the net). */
static void stem(const sqz_model *m, const sqz_layer *L) {
    int i8 = m->header->precision == SQZ_I8;
    size_t row = (size_t)L->ow * L->cout * (i8 ? 1 : 4);
    uint8_t *out = m->arena + L->out_off;
    if (!(L->flags & SQZ_POOLED)) {
        for (int y = 0; y < (int)L->oh; y++) stem_row(m, L, y, out + y * row);
        return;
    }
    uint8_t *ring = m->arena + L->ring_off;
    int next = 0, H = (int)L->oh;
    for (int py = 0; py < (int)L->pool_oh; py++) {
        for (; next <= MIN(2 * py + 2, H - 1); next++) stem_row(m, L, next, ring + (next % 3) * row);
        const uint8_t *r[3];
        for (int i = 0; i < 3; i++) r[i] = 2 * py + i < H ? ring + ((2 * py + i) % 3) * row : 0;
        pool_row(r, (int)L->ow, (int)L->cout, (int)L->pool_ow, i8, out + (size_t)py * L->pool_ow * L->cout * (i8 ? 1 : 4));
    }
}

static void pool(const sqz_model *m, const sqz_layer *L) {
    int i8 = m->header->precision == SQZ_I8;
    size_t row = (size_t)L->w * L->cin * (i8 ? 1 : 4), orow = (size_t)L->ow * L->cout * (i8 ? 1 : 4);
    const uint8_t *in = m->arena + L->in_off;
    for (int oy = 0; oy < (int)L->oh; oy++) {
        const uint8_t *r[3];
        for (int i = 0; i < 3; i++) r[i] = 2 * oy + i < (int)L->h ? in + (2 * oy + i) * row : 0;
        pool_row(r, (int)L->w, (int)L->cin, (int)L->ow, i8, m->arena + L->out_off + oy * orow);
    }
}

/* conv10 (1x1) + bias (+ ReLU), averaged over every pixel: the logits. */
static void head(const sqz_model *m, const sqz_layer *L) {
    float *logits = (float *)(m->arena + m->header->logits_off);
    int HW = (int)(L->h * L->w), C = (int)L->cin, i8 = m->header->precision == SQZ_I8;
    const float *bias = file_f32(m, L->bias_off);
    for (int c = 0; c < (int)L->cout; c++) logits[c] = 0.0f;
    for (int b = 0; b < blocks(L->cout); b++) {
        int n = MIN(SQZ_BLOCK, (int)L->cout - b * SQZ_BLOCK);
        const float *wb = i8 ? 0 : weights_f32(m, L, C, b);
        for (int x0 = 0; x0 < HW; x0 += TILE) {
            int np = MIN(TILE, HW - x0);
            float y[TILE][SQZ_BLOCK];
            if (i8) {
                const uint8_t *px[TILE];
                int C4 = (int)round4(L->cin);
                int32_t acc[TILE][SQZ_BLOCK];
                for (int p = 0; p < TILE; p++) px[p] = m->arena + L->in_off + (size_t)(x0 + MIN(p, np - 1)) * C;
                const int8_t *wt[1] = {(const int8_t *)(m->file + L->weights_off) + (size_t)b * C4 * SQZ_BLOCK};
                mk_i8(1, C4 / 4, px, wt, np, acc);
                const float *mult = file_f32(m, L->mult_off) + b * SQZ_BLOCK;
                for (int p = 0; p < np; p++)
                    for (int c = 0; c < SQZ_BLOCK; c++) y[p][c] = (float)acc[p][c] * mult[c];
            } else {
                const float *px[TILE];
                for (int p = 0; p < TILE; p++) px[p] = (const float *)(m->arena + L->in_off) + (size_t)(x0 + MIN(p, np - 1)) * C;
                mk_f32(1, C, px, &wb, np, y);
            }
            for (int p = 0; p < np; p++) {
                for (int c = 0; c < n; c++) {
                    float v = y[p][c] + bias[b * SQZ_BLOCK + c];
                    logits[b * SQZ_BLOCK + c] += (L->flags & SQZ_RELU) ? MAX(v, 0.0f) : v;
                }
            }
        }
    }
    for (int c = 0; c < (int)L->cout; c++) logits[c] /= (float)HW;
}

/* e^x for x <= 0 (softmax after subtracting the maximum), relative error below 2e-7 */
static float exp_neg(float x) {
    if (!(x >= -87.0f)) return 0.0f; /* NaN too */
    float n = (float)(int)(x * 1.44269504f - 0.5f); /* round to nearest (x <= 0) */
    float r = (x - n * 0.693145752f) - n * 1.42860677e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    union { uint32_t i; float f; } two = {(uint32_t)((int32_t)n + 127) << 23};
    return p * two.f;
}

/* ---------------------------------------------------------------------------- the file, checked */

static int fits(uint64_t off, uint64_t bytes, uint64_t size) { return off <= size && bytes <= size - off; }

/* Every offset and size of one layer inside the file and the arena, so that no file, however
 * damaged or hostile, makes the engine read or write outside them. */
static int check_layer(const sqz_header *h, const sqz_layer *L, const uint8_t *file) {
    uint64_t F = h->file_bytes, A = h->arena_bytes - 16u, elem = h->precision == SQZ_I8 ? 1 : 4;
    uint64_t big = 1u << 16, nb = (uint64_t)blocks(L->cout), K = (uint64_t)L->k * L->k * L->cin;
    if (L->h == 0 || L->w == 0 || L->cin == 0 || L->cout == 0 || L->oh == 0 || L->ow == 0 || L->h > big ||
        L->w > big || L->cin > big || L->cout > big || L->oh > L->h || L->ow > L->w || L->k == 0 || L->k > SQZ_MAX_STEM)
        return 0;
    if (L->op != SQZ_STEM && !fits(L->in_off, (uint64_t)L->h * L->w * L->cin * elem, A)) return 0;
    if (L->op == SQZ_POOL) /* 3x3/2, ceil mode: h / 2 rows */
        return L->k == 3 && L->stride == 2 && L->cin == L->cout && L->h >= 2 && L->oh == L->h / 2 &&
               L->ow == L->w / 2 && fits(L->out_off, (uint64_t)L->oh * L->ow * L->cout * elem, A);
    if (L->op == SQZ_STEM) {
        if (L->h != h->image_size || L->w != h->image_size || L->cin != h->in_channels || L->stride == 0 ||
            L->stride > 2 || L->pad >= L->k || L->oh != (L->h + 2 * L->pad - L->k) / L->stride + 1 ||
            L->ow != L->oh || L->out_first != 0 || L->out_channels != L->cout || L->form == SQZ_W_I8)
            return 0;
        uint64_t rows = L->oh;
        if (L->flags & SQZ_POOLED) {
            rows = L->oh / 2;
            if (L->oh < 2 || L->pool_oh != rows || L->pool_ow != rows ||
                !fits(L->ring_off, 3 * (uint64_t)L->ow * L->cout * elem, A))
                return 0;
        }
        if (!fits(L->out_off, rows * rows * L->cout * elem, A)) return 0;
    } else if (L->op == SQZ_CONV) {
        uint64_t row = h->precision == SQZ_I8 ? round4(L->cin) : 4u * L->cin;
        if (L->stride != 1 || L->pad != (L->k - 1) / 2 || L->k % 2 == 0 || L->oh != L->h || L->ow != L->w ||
            row > h->zeros_bytes || L->out_first + (uint64_t)L->cout > L->out_channels ||
            !fits(L->out_off, (uint64_t)L->oh * L->ow * L->out_channels * elem, A))
            return 0;
        if (h->precision == SQZ_I8 && L->k > 1 && L->in_zero != 0) return 0; /* padding must be a real 0 */
    } else if (L->op == SQZ_HEAD) {
        if (L->k != 1 || L->cout != h->num_classes || L->stride != 1) return 0;
    } else {
        return 0;
    }
    if (!fits(L->bias_off, nb * SQZ_BLOCK * 4, F) || L->bias_off % 4) return 0;
    if (h->precision == SQZ_I8 && L->op != SQZ_HEAD && !(L->out_scale > 0.0f)) return 0;
    if (h->precision == SQZ_I8 && L->op != SQZ_STEM)
        return L->form == SQZ_W_I8 && L->mult_off % 4 == 0 && fits(L->mult_off, nb * SQZ_BLOCK * 4, F) &&
               fits(L->weights_off, nb * L->k * L->k * round4(L->cin) * SQZ_BLOCK, F);
    if (L->form == SQZ_W_F32) return L->weights_off % 4 == 0 && fits(L->weights_off, nb * K * SQZ_BLOCK * 4, F);
    if ((L->form == SQZ_W_I8F || L->form == SQZ_W_CODEBOOK) &&
        ((uint64_t)L->decoded_off + nb * K * SQZ_BLOCK > h->decode_bytes / 4 || K * SQZ_BLOCK * 4 > h->scratch_bytes ||
         L->mult_off % 4 || !fits(L->mult_off, nb * SQZ_BLOCK * 4, F)))
        return 0;
    if (L->form == SQZ_W_I8F) return fits(L->weights_off, nb * K * SQZ_BLOCK, F);
    if (L->form != SQZ_W_CODEBOOK || L->bits < 1 || L->bits > 8 || L->codebook_off % 4 || L->blocks_off % 4 ||
        L->mult_off % 4 || !fits(L->codebook_off, 4u << L->bits, F) || !fits(L->blocks_off, (nb + 1) * 4, F) ||
        !fits(L->mult_off, nb * SQZ_BLOCK * 4, F) || !fits(L->weights_off, (nb * K * SQZ_BLOCK + 7) / 8, F) ||
        (uint64_t)L->decoded_off + nb * K * SQZ_BLOCK > h->decode_bytes / 4 || K * SQZ_BLOCK * 4 > h->scratch_bytes)
        return 0;
    const uint32_t *first = (const uint32_t *)(file + L->blocks_off);
    const uint8_t *mask = file + L->weights_off;
    if (first[0] != 0 || !fits(L->codes_off, ((uint64_t)first[nb] * L->bits + 7) / 8 + 2, F)) return 0;
    for (uint64_t b = 0, bit = 0; b < nb; b++) { /* each block's codes are where its mask says */
        uint64_t set = 0;
        for (uint64_t i = 0; i < K * SQZ_BLOCK; i++, bit++) set += (mask[bit >> 3] >> (bit & 7)) & 1u;
        if (first[b + 1] < first[b] || first[b + 1] - first[b] != set) return 0;
    }
    return 1;
}

size_t sqz_arena_bytes(const void *file) {
    const sqz_header *h = (const sqz_header *)file;
    return h && h->magic == SQZ_MAGIC ? h->arena_bytes : 0;
}

size_t sqz_model_size(void) { return sizeof(sqz_model); }

int sqz_init(sqz_model *m, const void *file, size_t file_bytes, void *arena, size_t arena_bytes) {
    const sqz_header *h = (const sqz_header *)file;
    if (((uintptr_t)file & 15) || ((uintptr_t)arena & 15)) return SQZ_E_ALIGN;
    if (file_bytes < sizeof(sqz_header) || h->magic != SQZ_MAGIC) return SQZ_E_MAGIC;
    if (h->version != SQZ_VERSION) return SQZ_E_VERSION;
    if (h->file_bytes > file_bytes || !fits(sizeof(sqz_header), (uint64_t)h->n_layers * sizeof(sqz_layer), h->file_bytes))
        return SQZ_E_TRUNCATED;
    if (h->arena_bytes > arena_bytes) return SQZ_E_ARENA;
    uint64_t A = h->arena_bytes, S = h->image_size;
    if (h->n_layers < 2 || h->arena_bytes < 16 || (h->in_channels != 1 && h->in_channels != 3) || h->num_classes == 0 ||
        h->precision > SQZ_I8 || h->zeros_off % 4 || h->scratch_off % 4 || h->logits_off % 4 ||
        !fits(h->input_off, S * S * 3, A) || !fits(h->logits_off, 8u * h->num_classes, A) ||
        !fits(h->zeros_off, h->zeros_bytes, A) || !fits(h->scratch_off, h->scratch_bytes, A) ||
        !fits(h->names_off, 0, h->file_bytes) || !fits(h->meta_off, h->meta_bytes, h->file_bytes))
        return SQZ_E_LAYER;
    const sqz_layer *layers = (const sqz_layer *)(h + 1);
    const uint8_t *f = (const uint8_t *)file;
    uint32_t names = 0; /* every class name NUL-terminated inside the file */
    for (uint32_t i = h->names_off; i < h->file_bytes && names < h->num_classes; i++) names += f[i] == 0;
    if (names < h->num_classes) return SQZ_E_LAYER;
    for (uint32_t i = 0; i < h->n_layers; i++) {
        const sqz_layer *L = layers + i;
        int ends = L->op == SQZ_HEAD, starts = L->op == SQZ_STEM;
        if ((i == 0) != starts || (i + 1 == h->n_layers) != ends || !check_layer(h, L, f)) return SQZ_E_LAYER;
    }
    m->file = f, m->header = h, m->layers = layers, m->arena = (uint8_t *)arena, m->decoded = 0, m->wino = 0;
    uint8_t *zeros = m->arena + h->zeros_off;
    for (uint32_t i = 0; i < h->zeros_bytes; i++) zeros[i] = 0;
    return SQZ_OK;
}

uint8_t *sqz_input(const sqz_model *m) { return m->arena + m->header->input_off; }
size_t sqz_input_bytes(const sqz_model *m) { return (size_t)m->header->image_size * m->header->image_size * 3; }
const float *sqz_logits(const sqz_model *m) { return (const float *)(m->arena + m->header->logits_off); }

const float *sqz_run(sqz_model *m) {
    const sqz_header *h = m->header;
    for (uint32_t i = 0; i < h->n_layers; i++) {
        const sqz_layer *L = m->layers + i;
        switch (L->op) {
        case SQZ_STEM: stem(m, L); break;
        case SQZ_CONV: h->precision == SQZ_I8 ? conv_i8(m, L) : conv_f32(m, L); break;
        case SQZ_POOL: pool(m, L); break;
        default: head(m, L); break;
        }
    }
    float *logits = (float *)(m->arena + h->logits_off), *probs = logits + h->num_classes, top = logits[0], sum = 0.0f;
    for (uint32_t c = 1; c < h->num_classes; c++) top = MAX(top, logits[c]);
    for (uint32_t c = 0; c < h->num_classes; c++) sum += probs[c] = exp_neg(logits[c] - top);
    for (uint32_t c = 0; c < h->num_classes; c++) probs[c] /= sum;
    return probs;
}

int sqz_top1(const sqz_model *m) {
    const float *logits = sqz_logits(m);
    int best = 0;
    for (int c = 1; c < (int)m->header->num_classes; c++) best = logits[c] > logits[best] ? c : best;
    return best;
}

const char *sqz_class_name(const sqz_model *m, int index) {
    const char *s = (const char *)m->file + m->header->names_off, *end = (const char *)m->file + m->header->file_bytes;
    for (int i = 0; i < index && s < end; s++) i += *s == 0;
    return s < end ? s : "?";
}

/* The cache's layout, in floats: the decoded weights (the file's decode_bytes), then a table of
 * each layer's Winograd weights, those weights, and the scratch of the largest 3x3 layer. */
static size_t cache_plan(const sqz_model *m, uint32_t *table, size_t *v_at, size_t *m_at) {
    const sqz_header *h = m->header;
    size_t at = h->decode_bytes / 4 + ((h->n_layers + 3) & ~3u), v = 0, p = 0;
    for (uint32_t i = 0; i < h->n_layers; i++) {
        const sqz_layer *L = m->layers + i;
        if (table) table[i] = 0;
        if (!wino_layer(m, L)) continue;
        if (table) table[i] = (uint32_t)at;
        at += 16 * (size_t)blocks(L->cout) * L->cin * SQZ_BLOCK;
        v = MAX(v, 16 * wino_tiles(L) * L->cin);
        p = MAX(p, 16 * (wino_tiles(L) + TILE) * SQZ_BLOCK);
    }
    if (v_at) *v_at = at, *m_at = at + v;
    return at + v + p;
}

size_t sqz_decode_bytes(const sqz_model *m) { return 4 * cache_plan(m, 0, 0, 0); }

int sqz_decode(sqz_model *m, void *cache, size_t bytes) {
    if (((uintptr_t)cache & 15) || bytes < sqz_decode_bytes(m)) return SQZ_E_DECODE;
    float *f = (float *)cache;
    uint32_t *table = (uint32_t *)(f + m->header->decode_bytes / 4);
    size_t v_at, m_at;
    cache_plan(m, table, &v_at, &m_at);
    for (uint32_t i = 0; i < m->header->n_layers; i++) {
        const sqz_layer *L = m->layers + i;
        int K = (int)(L->k * L->k * L->cin);
        if (L->form == SQZ_W_CODEBOOK || L->form == SQZ_W_I8F)
            for (int b = 0; b < blocks(L->cout); b++)
                decode_block(m, L, K, b, f + L->decoded_off + (size_t)b * K * SQZ_BLOCK);
    }
    m->decoded = f;
    for (uint32_t i = 0; i < m->header->n_layers; i++) { /* Winograd's weights, from the decoded ones */
        const sqz_layer *L = m->layers + i;
        int K = (int)(9 * L->cin), nb = blocks(L->cout);
        if (!table[i]) continue;
        for (int b = 0; b < nb; b++)
            wino_weights(weights_f32(m, L, K, b), (int)L->cin, f + table[i] + (size_t)b * L->cin * SQZ_BLOCK,
                         (size_t)nb * L->cin * SQZ_BLOCK);
    }
    m->wino = table, m->wino_v = f + v_at, m->wino_m = f + m_at;
    return SQZ_OK;
}

size_t sqz_arena_high_water(const sqz_model *m) {
    size_t n = m->header->arena_bytes;
    while (n > 0 && m->arena[n - 1] == SQZ_CANARY) n--;
    return n;
}

const char *sqz_status_text(int status) {
    switch (status) {
    case SQZ_OK: return "ok";
    case SQZ_E_MAGIC: return "not a squeezenet model file (no SQZ1 header)";
    case SQZ_E_VERSION: return "a model file of another version of this engine";
    case SQZ_E_TRUNCATED: return "the model file is truncated";
    case SQZ_E_LAYER: return "the model file is damaged (a layer or offset out of range)";
    case SQZ_E_ARENA: return "the arena is smaller than the model's plan (sqz_arena_bytes)";
    case SQZ_E_ALIGN: return "the model file and the arena must be 16-byte aligned";
    default: return "the decode cache is too small or not 16-byte aligned";
    }
}
