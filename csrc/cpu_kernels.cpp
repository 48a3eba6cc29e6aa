// Fused CPU kernels of the packed runtime: the whole packed linear (rotate, quantize, int8
// products, epilogue), its two halves (rotate + quantize; the epilogue), and the whole integer
// window attention.
//
// Plain C++17 (no torch headers): the functions below take raw pointers, sizes, strides (in
// elements) and a thread count, and return 0 on success or a nonzero code for arguments they
// refuse (the Python side validates first, so a nonzero return is a bug). They are built by g++
// into libcompsrt_cpu.so (compsrt/kernels/cpu_kernels.py) with
//     -O3 -shared -fPIC -fopenmp -march=native -ffp-contract=off -std=c++17
// and called through ctypes; OpenMP parallelizes over rows / (window, head) tasks (in a torch
// process the library binds torch's own libgomp, so both share one thread pool).
//
// Rounding. No -ffast-math and no FMA contraction: every fp32 operation of the quantizers and
// of the epilogues rounds on its own, in the order of the PyTorch references
// (compsrt/kernels/hadamard_quant.py, packed_linear.py, window_attention_int.py). Explicit FMAs
// appear only where they change nothing or follow no reference: a butterfly a +- b written as
// fma(b, +-1, a) (one rounding either way, bit for bit the same), and inside exp. What differs:
//   * rotations: the reference multiplies by the dense matrix H/sqrt(n); here a fast Walsh-
//     Hadamard transform (butterflies) then one multiply by fl(1/sqrt(n)) (exact for n = 4^k).
//     Same linear map, different summation order: the rotated values differ by float rounding,
//     and a code differs (by one) only where that moves a value across a rounding tie.
//   * row means (2DQuant's --row-mean): summed in vector lanes, then divided; torch sums in
//     another order, so a mean may differ by float rounding (and a code on a tie by one).
//   * softmax: max-subtracted exp (own polynomial, about 1 ulp), a two-way sum, multiplication by
//     fl(1/sum) as torch's CPU softmax; torch's exp and summation order differ by a few ulp. With
//     the rotation the 1/sum is applied after the butterflies (see attn_task).
//
// SIMD: GCC vector extensions, 16 fp32 / int32 lanes (one AVX-512 register; two AVX2 registers
// elsewhere), plus intrinsics behind #ifdef, each with a portable twin: masked loads and stores,
// gathers, 16 x 16 transposes, roundscale, scalef (AVX-512F) and the int8 dot product vpdpbusd
// (AVX512-VNNI, else AVX-VNNI, else four byte products in int32 lanes). The integer products are
// exact on every path: byte products of codes 0..15 summed in int32 (no saturating step).
#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

#define INL inline __attribute__((always_inline))

constexpr int L = 16;  // lanes per vector
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef int8_t vb __attribute__((vector_size(16)));

constexpr int NMAX = 4096;     // rotate_quantize: largest n
constexpr int TOK_MAX = 256;   // attention: most tokens per window (MambaIRv2's 16 x 16)
constexpr int DMAX = 32;       // attention: largest head dim

INL vf splat(float a) { return vf{a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }
INL vi splati(int32_t a) { return vi{a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }
INL vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
INL vi vloadi(const int32_t* p) { vi v; std::memcpy(&v, p, sizeof v); return v; }
INL void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
INL vf lanes_below(int n) {   // 1.0 in lanes < n, else 0.0
  const vf idx = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return idx < splat(float(n)) ? splat(1.f) : splat(0.f);
}

#ifdef __AVX512F__
INL __mmask16 first_lanes(int n) { return (__mmask16)((1u << n) - 1u); }  // lanes 0..n-1 (0 <= n <= 16)
#endif

// p[0..n) into lanes 0..n-1 (0 <= n <= 16), the other lanes 0; reads nothing beyond p[n - 1].
INL vf load_n(const float* p, int n) {
#ifdef __AVX512F__
  return (vf)_mm512_maskz_loadu_ps(first_lanes(n), p);
#else
  vf v = splat(0.f);
  for (int i = 0; i < n; ++i) v[i] = p[i];
  return v;
#endif
}

// Lanes 0..n-1 of v to p[0..n): fp32 lanes (vf) to a float*, int32 lanes (vi) to an int32_t*.
template <typename T, typename V>
INL void store_n(T* p, V v, int n) {
  static_assert(std::is_same_v<V, std::conditional_t<std::is_same_v<T, float>, vf, vi>>,
                "store_n: vf to a float*, vi to an int32_t*");
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(p, first_lanes(n), (__m512)v);
  } else {
    _mm512_mask_storeu_epi32(p, first_lanes(n), (__m512i)v);
  }
#else
  for (int i = 0; i < n; ++i) p[i] = v[i];
#endif
}

// Prefetch the cache lines of p[0..n) / of p[0], p[s], ..., p[(n - 1) s].
INL void prefetch_span(const float* p, int64_t n) {
  const char* a = reinterpret_cast<const char*>(p);
  const char* e = reinterpret_cast<const char*>(p + n - 1);
  for (; a <= e; a += 64) _mm_prefetch(a, _MM_HINT_T0);
  _mm_prefetch(e, _MM_HINT_T0);
}
INL void prefetch_strided(const float* p, int64_t n, int64_t s) {
  if (s * 4 <= 64) {
    prefetch_span(p, (n - 1) * s + 1);
  } else {
    for (int64_t i = 0; i < n; ++i) _mm_prefetch(reinterpret_cast<const char*>(p + i * s), _MM_HINT_T0);
  }
}

INL vi iota() { return vi{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }

// Lane i = p[idx[i]] (idx in elements).
INL vf gather(const float* p, vi idx) {
#ifdef __AVX512F__
  return (vf)_mm512_i32gather_ps((__m512i)idx, p, 4);
#else
  vf v;
  for (int i = 0; i < L; ++i) v[i] = p[idx[i]];
  return v;
#endif
}

// Lane permutation i -> i ^ H.
template <int H>
INL vf swap_lanes(vf v) {
  const vi idx = {0 ^ H, 1 ^ H, 2 ^ H, 3 ^ H, 4 ^ H, 5 ^ H, 6 ^ H, 7 ^ H,
                  8 ^ H, 9 ^ H, 10 ^ H, 11 ^ H, 12 ^ H, 13 ^ H, 14 ^ H, 15 ^ H};
  return __builtin_shuffle(v, idx);
}

// Pairwise sum of the 16 lanes (sums of integer codes are exact in any order).
INL float hsum(vf v) {
  v = v + swap_lanes<8>(v);
  v = v + swap_lanes<4>(v);
  v = v + swap_lanes<2>(v);
  v = v + swap_lanes<1>(v);
  return v[0];
}

// acc + sum over the 4 bytes of each int32 lane of a_byte * b_byte (vpdpbusd; bytes 0..127 here).
INL vi dot4(vi acc, vi a, vi b) {
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
  return (vi)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)a, (__m512i)b);
#elif defined(__AVXVNNI__)
  __m256i r[2], x[2], y[2];
  std::memcpy(r, &acc, sizeof acc);
  std::memcpy(x, &a, sizeof a);
  std::memcpy(y, &b, sizeof b);
  r[0] = _mm256_dpbusd_avx_epi32(r[0], x[0], y[0]);
  r[1] = _mm256_dpbusd_avx_epi32(r[1], x[1], y[1]);
  std::memcpy(&acc, r, sizeof acc);
  return acc;
#else
  const vi m = splati(0xff);
  for (int r = 0; r < 32; r += 8) acc += ((a >> r) & m) * ((b >> r) & m);
  return acc;
#endif
}

// 16 float codes (0..15) -> 16 bytes.
INL vb to_bytes(vf codes) { return __builtin_convertvector(__builtin_convertvector(codes, vi), vb); }

const float MAGIC = 12582912.0f;  // 1.5 * 2^23: (y + MAGIC) - MAGIC rounds |y| < 2^22 half to even

// One activation quantizer (a row of qp): quantize_ref's arithmetic on 16 lanes, codes as floats.
struct Quant {
  vf l, u, s, z, lo, hi, qmax, magic, zero;
  Quant(const float* qp, int bits) {
    const float q = float((1 << bits) - 1);
    l = splat(qp[0]); u = splat(qp[1]); s = splat(qp[2]); z = splat(qp[3]);
    lo = splat(-1.f); hi = splat(q + 1.f); qmax = splat(q); magic = splat(MAGIC); zero = splat(0.f);
  }
  // c = clamp(x, l, u) (NaN stays NaN); y = (c - z) / s; round half to even; clamp to [0, qmax];
  // NaN fails r > 0 and ends as code 0, as nan_to_num in the ref. Without AVX-512's roundscale,
  // y is clamped to [-1, qmax + 1] first (the same codes; the magic-number rounding needs
  // |y| < 2^22, and NaN fails y > -1).
  INL vf operator()(vf x) const {
    vf c = x < l ? l : x;
    c = c > u ? u : c;
    vf y = (c - z) / s;
#ifdef __AVX512F__
    vf r = (vf)_mm512_roundscale_ps((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);  // NaN stays NaN
#else
    y = y > lo ? y : lo;
    y = y < hi ? y : hi;
    vf r = (y + magic) - magic;
#endif
    r = r > zero ? r : zero;
    return r < qmax ? r : qmax;
  }
};

// Butterfly stage h (1, 2, 4, 8) inside one vector: lane i < i^h gets a + b, lane i^h gets a - b.
template <int H>
INL vf bfly_in(vf v) {
  const vi up = {0 & H, 1 & H, 2 & H, 3 & H, 4 & H, 5 & H, 6 & H, 7 & H,
                 8 & H, 9 & H, 10 & H, 11 & H, 12 & H, 13 & H, 14 & H, 15 & H};
  vf sw = swap_lanes<H>(v);
#ifdef __AVX512F__
  // sw + v * (+-1) in one rounding: bit for bit the a + b / a - b of the two-op form.
  const vf sign = up != 0 ? splat(-1.f) : splat(1.f);
  return (vf)_mm512_fmadd_ps((__m512)v, (__m512)sign, (__m512)sw);
#else
  return up != 0 ? sw - v : v + sw;
#endif
}

// Unnormalized Walsh-Hadamard transform (natural / Sylvester order) of the first n values held in
// v[0..ceil(n/16)) (n a power of two); lanes beyond n must be 0 and stay 0.
INL void fwht_rows(vf* v, int n) {
  const int nv = (n + L - 1) / L;
  for (int i = 0; i < nv; ++i) {
    vf x = v[i];
    if (n > 1) x = bfly_in<1>(x);
    if (n > 2) x = bfly_in<2>(x);
    if (n > 4) x = bfly_in<4>(x);
    if (n > 8) x = bfly_in<8>(x);
    v[i] = x;
  }
  for (int h = 1; h < nv; h <<= 1)
    for (int i = 0; i < nv; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        vf a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
}

// The same transform across vectors: element t is v[t * stride] (lanes = independent columns).
INL void fwht_vertical(vf* v, int n, int stride) {
  for (int h = 1; h < n; h <<= 1)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        vf a = v[j * stride], b = v[(j + h) * stride];
        v[j * stride] = a + b;
        v[(j + h) * stride] = a - b;
      }
}

// Stages H, 2H, ... < B of the butterflies of r[0..B) (compile-time, fully unrolled).
template <int B, int H>
INL void fwht_stage(vf* r) {
  if constexpr (H < B) {
#pragma GCC unroll 64
    for (int i = 0; i < B; i += 2 * H)
#pragma GCC unroll 64
      for (int j = i; j < i + H; ++j) {
        vf a = r[j], b = r[j + H];
        r[j] = a + b;
        r[j + H] = a - b;
      }
    fwht_stage<B, 2 * H>(r);
  }
}

// Butterflies of B vectors v[0], v[stride], ..., v[(B - 1) stride], held in registers.
template <int B>
INL void fwht_regs(vf* v, int stride) {
  vf r[B];
#pragma GCC unroll 64
  for (int i = 0; i < B; ++i) r[i] = v[i * stride];
  fwht_stage<B, 1>(r);
#pragma GCC unroll 64
  for (int i = 0; i < B; ++i) v[i * stride] = r[i];
}

// fwht_vertical(v, N, 1) for a compile-time N, in two register-blocked passes (stages 1, 2, 4
// within blocks of 8 vectors, then the stages across blocks).
template <int N>
INL void fwht_vert(vf* v) {
  if constexpr (N <= 8) {
    fwht_regs<N>(v, 1);
  } else {
    for (int a = 0; a < N; a += 8) fwht_regs<8>(v + a, 1);
    for (int b = 0; b < 8; ++b) fwht_regs<N / 8>(v + b, 8);
  }
}

INL void fwht_vert_n(vf* v, int n) {
  switch (n) {
    case 1: return;
    case 2: return fwht_vert<2>(v);
    case 4: return fwht_vert<4>(v);
    case 8: return fwht_vert<8>(v);
    case 16: return fwht_vert<16>(v);
    case 32: return fwht_vert<32>(v);
    case 64: return fwht_vert<64>(v);
    default: return fwht_vertical(v, n, 1);
  }
}

// In-place 16 x 16 transpose: r[i][j] -> r[j][i].
INL void transpose16(vf* r) {
#ifdef __AVX512F__
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps((__m512)r[i], (__m512)r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps((__m512)r[i], (__m512)r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {   // u[i + m], 128-bit lane k = column 4k + m of rows i..i+3
    u[i] = (__m512)_mm512_unpacklo_pd((__m512d)t[i], (__m512d)t[i + 2]);
    u[i + 1] = (__m512)_mm512_unpackhi_pd((__m512d)t[i], (__m512d)t[i + 2]);
    u[i + 2] = (__m512)_mm512_unpacklo_pd((__m512d)t[i + 1], (__m512d)t[i + 3]);
    u[i + 3] = (__m512)_mm512_unpackhi_pd((__m512d)t[i + 1], (__m512d)t[i + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xdd);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xdd);
    r[m] = (vf)_mm512_shuffle_f32x4(v0, w0, 0x88);
    r[4 + m] = (vf)_mm512_shuffle_f32x4(v1, w1, 0x88);
    r[8 + m] = (vf)_mm512_shuffle_f32x4(v0, w0, 0xdd);
    r[12 + m] = (vf)_mm512_shuffle_f32x4(v1, w1, 0xdd);
  }
#else
  for (int i = 0; i < L; ++i)
    for (int j = i + 1; j < L; ++j) {
      float a = r[i][j];
      r[i][j] = r[j][i];
      r[j][i] = a;
    }
#endif
}

// exp on 16 lanes for x <= 88 (softmax feeds x <= 0): n = round(x log2 e), r = x - n ln2 (ln2 in
// two parts), a degree-7 Taylor polynomial on |r| <= ln2/2 (truncation error < 2^-27 relative),
// times 2^n. About 1 ulp for normal results; x < -104 gives 0. With AVX-512 the reduction and the
// polynomial use explicit FMAs and 2^n is one vscalefps (subnormal results rounded once); without
// it, separate multiplies and adds and 2^n applied in two exact-power-of-two steps. (The exp has
// no reference rounding to follow: torch's own is another polynomial.)
INL vf vexp(vf x) {
  const vf xmin = splat(-104.f), xmax = splat(88.f);
  x = x < xmin ? xmin : x;
  x = x > xmax ? xmax : x;
#ifdef __AVX512F__
  const __m512 X = (__m512)x;
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(X, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), X);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return (vf)_mm512_scalef_ps(p, n);
#else
  vf n = (x * splat(1.44269504088896341f) + splat(MAGIC)) - splat(MAGIC);
  vf r = (x - n * splat(0.693359375f)) - n * splat(-2.12194440e-4f);
  vf p = splat(1.f / 5040.f);
  p = p * r + splat(1.f / 720.f);
  p = p * r + splat(1.f / 120.f);
  p = p * r + splat(1.f / 24.f);
  p = p * r + splat(1.f / 6.f);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.f);
  p = p * r + splat(1.f);
  vi ni = __builtin_convertvector(n, vi);
  vi n1 = ni >> 1, n2 = ni - n1;
  vf s1 = (vf)((n1 + 127) << 23), s2 = (vf)((n2 + 127) << 23);
  return (p * s1) * s2;
#endif
}

inline int next_pow2(int n) { int p = 1; while (p < n) p <<= 1; return p; }

// ---------------------------------------------------------------------------------------------
// Window attention, one (window, head) per call, in blocks of 16 query tokens held in the 16
// lanes: every reduction of the softmax and every butterfly of the rotation along the keys is a
// vertical operation between vectors (no shuffles, long independent chains). NV = N / 16.
// ---------------------------------------------------------------------------------------------

struct AttnArgs {
  int N, d, nd, nw, keep_dc, rotate, row_mean;
  float scale, inv_d, inv_n;
  // row_mean (rotate = 0): each operand row's mean along the contraction axis stays fp32 and the
  // centred rest is quantized; the epilogues add the means' rank-1 terms (row_mean_epilogue_ref).
  // rowsum Q(c) = (code sum) s + z n per operand: s and z n of q, k (n = d), attn, v (n = N).
  float q_s, q_zn, k_s, k_zn, p_s, p_zn, v_s, v_zn;
  float a1, a2, a3, a4;   // logits epilogue: acc*a1 + sq*a2 + sk*a3 + a4
  float b1, b2, b3, b4;   // output epilogue: acc*b1 + sa*b2 + sv*b3 + b4
  const Quant *quq, *quk, *qua, *quv;
};

// Per-thread scratch (reused across tasks, about 25 KB).
struct AttnScratch {
  alignas(64) vi qpack[DMAX / 4][TOK_MAX / L];   // q codes: word t of token i = its codes 4t..4t+3
  alignas(64) int32_t kpack[DMAX / 4][TOK_MAX];  // k codes, same packing
  alignas(64) float sq[TOK_MAX], dq[TOK_MAX], sk[TOK_MAX], dk[TOK_MAX];
  alignas(64) int32_t vpack[TOK_MAX / 4][DMAX];  // v codes: byte r of word [t][c] = code[4t + r][c]
  alignas(64) float sv[DMAX], dv[DMAX];
};

// Four code vectors (0..15) -> one int32 vector of their bytes.
INL vi pack4(vf c0, vf c1, vf c2, vf c3) {
  return __builtin_convertvector(c0, vi) | (__builtin_convertvector(c1, vi) << 8) |
         (__builtin_convertvector(c2, vi) << 16) | (__builtin_convertvector(c3, vi) << 24);
}

// 16 tokens of q or k (token g*16 + lane): load the rows, transpose (coefficients vertical,
// tokens in lanes), (scale), rotate along d, quantize; packed codes, code sums and DC per token.
inline void prep_qk_block(const float* src, int64_t ts, bool scaled, const AttnArgs& A, const Quant& qz,
                          vi* pack, int pack_stride, float* sums, float* dcs) {
  vf T[DMAX];
  for (int u = 0; u * L < A.nd; ++u) {   // 16 x 16 tiles of (token, coefficient), transposed
    const int cnt = A.d - u * L <= 0 ? 0 : (A.d - u * L < L ? A.d - u * L : L);
    for (int r = 0; r < L; ++r) T[u * L + r] = load_n(src + r * ts + u * L, cnt);
    transpose16(T + u * L);
  }
  if (scaled)
    for (int c = 0; c < A.d; ++c) T[c] = T[c] * splat(A.scale);   // q * scale, in fp32 as torch
  if (A.row_mean) {   // per token: mean over the d coefficients, kept as the "dc"; quantize the rest
    vf sm = splat(0.f);
    for (int c = 0; c < A.d; ++c) sm += T[c];
    const vf mean = sm / splat(float(A.d));
    for (int c = 0; c < A.d; ++c) T[c] = T[c] - mean;
    vstore(dcs, mean);
  } else if (A.rotate) {
    fwht_vert_n(T, A.nd);
    for (int c = 0; c < A.nd; ++c) T[c] = T[c] * splat(A.inv_d);
  }
  if (!A.row_mean) vstore(dcs, T[0]);
  vf tot = splat(0.f);
  for (int c = 0; c < A.nd; ++c) {
    T[c] = (c == 0 && A.keep_dc) ? splat(0.f) : qz(T[c]);
    tot += T[c];
  }
  vstore(sums, tot);
  for (int c = A.nd; c < 4 * A.nw; ++c) T[c] = splat(0.f);
  for (int t = 0; t < A.nw; ++t) pack[t * pack_stride] = pack4(T[4 * t], T[4 * t + 1], T[4 * t + 2], T[4 * t + 3]);
}

template <int NV>
void attn_task(const float* qb, int64_t qts, const float* kb, int64_t kts, const float* vb_, int64_t vts,
               const float* bb, int64_t bis, int64_t bjs, const float* mb, int64_t mis, float* ob, int64_t ots,
               const AttnArgs& A,
               AttnScratch& S) {
  constexpr int N = NV * L;
  const int nw = A.nw, d = A.d;

  // q and k codes.
  for (int g = 0; g < NV; ++g) {
    prep_qk_block(qb + g * L * qts, qts, true, A, *A.quq, &S.qpack[0][g], TOK_MAX / L, S.sq + g * L, S.dq + g * L);
    prep_qk_block(kb + g * L * kts, kts, false, A, *A.quk, (vi*)&S.kpack[0][g * L], TOK_MAX / L, S.sk + g * L,
                  S.dk + g * L);
  }

  // v: token rows, coefficients in lanes; rotate along the tokens (vertical), quantize, pack.
  for (int u = 0; u * L < d; ++u) {
    const int cnt = d - u * L < L ? d - u * L : L;
    vf cv[N];
    for (int j = 0; j < N; ++j) cv[j] = load_n(vb_ + j * vts + u * L, cnt);
    if (A.row_mean) {   // per coefficient: mean over the N tokens
      vf sm = splat(0.f);
      for (int j = 0; j < N; ++j) sm += cv[j];
      const vf mean = sm / splat(float(N));
      for (int j = 0; j < N; ++j) cv[j] = cv[j] - mean;
      store_n(S.dv + u * L, mean, cnt);
    } else {
      if (A.rotate) {
        fwht_vert<N>(cv);
        for (int j = 0; j < N; ++j) cv[j] = cv[j] * splat(A.inv_n);
      }
      store_n(S.dv + u * L, cv[0], cnt);
    }
    vf tot = splat(0.f);
    for (int j = 0; j < N; ++j) {
      cv[j] = (j == 0 && A.keep_dc) ? splat(0.f) : (*A.quv)(cv[j]);
      tot += cv[j];
    }
    store_n(S.sv + u * L, tot, cnt);
    for (int t = 0; t < N / 4; ++t) {
      vi w = pack4(cv[4 * t], cv[4 * t + 1], cv[4 * t + 2], cv[4 * t + 3]);
      store_n(&S.vpack[t][u * L], w, cnt);
    }
  }

  const vf a1 = splat(A.a1), a2 = splat(A.a2), a4 = splat(A.a4), inv_n = splat(A.inv_n);
  const vf b1 = splat(A.b1), b2 = splat(A.b2), b4 = splat(A.b4);
  const vi bidx = iota() * splati(int32_t(bis));
  for (int g = 0; g < NV; ++g) {
    // logits of 16 queries (lanes) x N keys: integer q k^T, epilogue, dc, bias.
    const vf t2 = vload(S.sq + g * L) * a2;
    const vf dqv = vload(S.dq + g * L);
    const float* brow = bb + g * L * bis;
    vf Y[N], BT[N];   // BT[j]: bias of key j for the 16 queries
    if (bjs == 1) {   // rows contiguous: 16 x 16 tiles, loaded and transposed
      for (int kb = 0; kb < NV; ++kb) {
        for (int r = 0; r < L; ++r) BT[kb * L + r] = vload(brow + r * bis + kb * L);
        transpose16(BT + kb * L);
      }
    } else {
      for (int j = 0; j < N; ++j) BT[j] = gather(brow + j * bjs, bidx);
    }
    if (mb) {   // the shift mask's rows of these queries (contiguous): bias + mask, as the model adds them
      const float* mrow = mb + g * L * mis;
      for (int kb = 0; kb < NV; ++kb) {
        vf MT[L];
        for (int r = 0; r < L; ++r) MT[r] = vload(mrow + r * mis + kb * L);
        transpose16(MT);
        for (int r = 0; r < L; ++r) BT[kb * L + r] = BT[kb * L + r] + MT[r];
      }
    }
    if (A.row_mean) {
      // row_mean_epilogue_ref: ((acc sa sk_s + (sq sa zk + za zk d)) + sk za sk_s) + m_q rowsum Q(c_k)
      // + (rowsum Q(c_q) + d m_q) m_k, with rowsum Q(c) = codesum s + z d.
      const vf rows = t2 + a4;
      const vf coef = (vload(S.sq + g * L) * splat(A.q_s) + splat(A.q_zn)) + splat(float(d)) * dqv;
      for (int j = 0; j < N; ++j) {
        vi acc = splati(0);
        for (int t = 0; t < nw; ++t) acc = dot4(acc, S.qpack[t][g], splati(S.kpack[t][j]));
        vf e = (__builtin_convertvector(acc, vf) * a1 + rows) + splat(S.sk[j] * A.a3);
        e = e + dqv * splat(S.sk[j] * A.k_s + A.k_zn);
        e = e + coef * splat(S.dk[j]);
        Y[j] = e + BT[j];
      }
    } else {
      for (int j = 0; j < N; ++j) {
        vi acc = splati(0);
        for (int t = 0; t < nw; ++t) acc = dot4(acc, S.qpack[t][g], splati(S.kpack[t][j]));
        vf e = ((__builtin_convertvector(acc, vf) * a1 + t2) + splat(S.sk[j] * A.a3)) + a4;
        if (A.keep_dc) e = e + dqv * splat(S.dk[j]);
        Y[j] = e + BT[j];
      }
    }
    // softmax along the keys (vertical).
    vf m0 = Y[0], m1 = Y[1];
    for (int j = 2; j < N; j += 2) {
      m0 = Y[j] > m0 ? Y[j] : m0;
      m1 = Y[j + 1] > m1 ? Y[j + 1] : m1;
    }
    const vf mx = m0 > m1 ? m0 : m1;
    // exp and sum; with the rotation, also its butterfly stages 8, 16, 32 (keys j, j + 8, ...).
    vf s0 = splat(0.f), s1 = splat(0.f);
    for (int b8 = 0; b8 < 8; ++b8) {
      vf r[N / 8];
      for (int i = 0; i < N / 8; ++i) {
        r[i] = vexp(Y[b8 + 8 * i] - mx);
        if (i & 1) s1 += r[i]; else s0 += r[i];
      }
      if (A.rotate) fwht_regs<N / 8>(r, 1);
      for (int i = 0; i < N / 8; ++i) Y[b8 + 8 * i] = r[i];
    }
    // p = e * (1/sum), then stages 1, 2, 4 of the rotation (keys 8a .. 8a + 7) and 1/sqrt(N): the
    // rotation is linear, so the normalization is applied once after it (one multiply by
    // fl(1/sum * 1/sqrt(N)), the same rounding as p * 1/sqrt(N) for N = 16, 64 and 256, where
    // 1/sqrt(N) is a power of two); unrotated, p = e * (1/sum) exactly as torch.
    const vf rs = splat(1.f) / (s0 + s1);
    const vf sc = A.rotate ? rs * inv_n : rs;
    vf dav = splat(0.f), tot = splat(0.f);
    vi P[N / 4];
    if (A.row_mean) {   // p = e (1/sum); its mean over the keys stays fp32, the centred rest is quantized
      vf sm = splat(0.f);
      for (int j = 0; j < N; ++j) {
        Y[j] = Y[j] * sc;
        sm += Y[j];
      }
      dav = sm / splat(float(N));
      for (int j = 0; j < N; ++j) {
        Y[j] = (*A.qua)(Y[j] - dav);
        tot += Y[j];
      }
      for (int t = 0; t < N / 4; ++t) P[t] = pack4(Y[4 * t], Y[4 * t + 1], Y[4 * t + 2], Y[4 * t + 3]);
    }
    for (int a8 = 0; a8 < (A.row_mean ? 0 : N / 8); ++a8) {
      vf r[8];
      for (int i = 0; i < 8; ++i) r[i] = Y[8 * a8 + i];
      if (A.rotate) fwht_regs<8>(r, 1);
      for (int i = 0; i < 8; ++i) {
        r[i] = r[i] * sc;
        if (a8 == 0 && i == 0) {
          dav = r[0];
          if (A.keep_dc) { r[0] = splat(0.f); continue; }
        }
        r[i] = (*A.qua)(r[i]);
        tot += r[i];
      }
      P[2 * a8] = pack4(r[0], r[1], r[2], r[3]);
      P[2 * a8 + 1] = pack4(r[4], r[5], r[6], r[7]);
    }
    const vf t2o = tot * b2;
    // attn codes x v codes, epilogue, dc; column c of 16 output rows per vector.
    float* orow = ob + g * L * ots;
    vf O[DMAX];
    for (int c = 0; c < d; ++c) {
      vi o0 = splati(0), o1 = splati(0);
      for (int t = 0; t < N / 4; t += 2) {
        o0 = dot4(o0, P[t], splati(S.vpack[t][c]));
        o1 = dot4(o1, P[t + 1], splati(S.vpack[t + 1][c]));
      }
      vf e;
      if (A.row_mean) {
        e = (__builtin_convertvector(o0 + o1, vf) * b1 + (t2o + b4)) + splat(S.sv[c] * A.b3);
        e = e + dav * splat(S.sv[c] * A.v_s + A.v_zn);
        e = e + ((tot * splat(A.p_s) + splat(A.p_zn)) + splat(float(N)) * dav) * splat(S.dv[c]);
      } else {
        e = ((__builtin_convertvector(o0 + o1, vf) * b1 + t2o) + splat(S.sv[c] * A.b3)) + b4;
        if (A.keep_dc) e = e + dav * splat(S.dv[c]);
      }
      O[c] = e;
    }
    for (int u = 0; u * L < d; ++u) {   // back to (query, coefficient) rows
      const int cnt = d - u * L < L ? d - u * L : L;
      for (int c = cnt; c < L; ++c) O[u * L + c] = splat(0.f);
      transpose16(O + u * L);
      for (int r = 0; r < L; ++r) store_n(orow + r * ots + u * L, O[u * L + r], cnt);
    }
  }
}

typedef void (*AttnFn)(const float*, int64_t, const float*, int64_t, const float*, int64_t, const float*, int64_t,
                       int64_t, const float*, int64_t, float*, int64_t, const AttnArgs&, AttnScratch&);

AttnFn attn_fn(int N) {
  switch (N) {
    case 16: return attn_task<1>;
    case 32: return attn_task<2>;
    case 64: return attn_task<4>;
    case 128: return attn_task<8>;
    case 256: return attn_task<16>;
    default: return nullptr;
  }
}

// ---------------------------------------------------------------------------------------------
// Packed linear, fused: per row, rotate once, then per split quantize, multiply the int8 codes with
// the packed weight codes (dot4 on int32 words of four codes) and apply the epilogue. NB = output
// vectors (16 columns each) per split.
// ---------------------------------------------------------------------------------------------

struct LinArgs {
  int64_t C, ldx, S, KW, NP, per, ldy;
  int n, nv, nb, rotate, keep_dc, row_mean;
  vf inv, keep_lo;
  const Quant* qz;                 // S quantizers
  const int32_t *wpack, *mpack;    // (S, KW, NP) int32 words
  const float *alpha, *beta, *c0, *dc_w, *rm_g;
};

template <int NBT>   // NBT = 0: NB taken from A.nb at run time (up to 16)
void linear_row(const float* xr, float* yr, const LinArgs& A) {
  constexpr int NBA = NBT ? NBT : 16;
  const int NB = NBT ? NBT : A.nb;
  alignas(64) vf buf[NMAX / L];
  alignas(64) int32_t xw[NMAX / 4];
  for (int i = 0; i < A.nv; ++i) {
    const int64_t left = A.C - int64_t(i) * L;
    buf[i] = load_n(xr + i * L, left <= 0 ? 0 : (left < L ? int(left) : L));
  }
  float dcx;
  if (A.row_mean) {   // the row's mean (the DC term's operand) stays fp32; the centred rest is quantized
    vf sm = splat(0.f);
    for (int i = 0; i < A.nv; ++i) sm += buf[i];   // lanes >= C are 0
    dcx = hsum(sm) / float(A.C);
    for (int i = 0; i < A.nv; ++i) buf[i] = buf[i] - splat(dcx);   // lanes >= C: codes masked below
  } else {
    if (A.rotate) {
      fwht_rows(buf, A.n);
      for (int i = 0; i < A.nv; ++i) buf[i] = buf[i] * A.inv;
    }
    dcx = buf[0][0];
  }
  for (int64_t t = 4 * A.nv; t < A.KW; ++t) xw[t] = 0;
  for (int64_t s = 0; s < A.S; ++s) {
    const Quant& qz = A.qz[s];
    vf tot = splat(0.f);
    for (int i = 0; i < A.nv; ++i) {
      vf c = qz(buf[i]);
      if (i == A.nv - 1) c = c * A.keep_lo;
      if (i == 0 && A.keep_dc) c[0] = 0.f;
      tot += c;
      vb b = to_bytes(c);
      std::memcpy(&xw[4 * i], &b, L);
    }
    const int32_t* wp = A.wpack + s * A.KW * A.NP;
    vi acc[NBA], accm[NBA];
    for (int b = 0; b < NB; ++b) acc[b] = accm[b] = splati(0);
    if (A.mpack) {
      const int32_t* mp = A.mpack + s * A.KW * A.NP;
      for (int64_t t = 0; t < A.KW; ++t) {
        const vi a = splati(xw[t]);
        for (int b = 0; b < NB; ++b) {
          acc[b] = dot4(acc[b], a, vloadi(wp + t * A.NP + b * L));
          accm[b] = dot4(accm[b], a, vloadi(mp + t * A.NP + b * L));
        }
      }
    } else {
      for (int64_t t = 0; t < A.KW; ++t) {
        const vi a = splati(xw[t]);
        for (int b = 0; b < NB; ++b) acc[b] = dot4(acc[b], a, vloadi(wp + t * A.NP + b * L));
      }
    }
    const vf al = splat(A.alpha[s]), be = splat(A.beta[s]);
    const vf bm = splat(hsum(tot) * A.beta[s]);   // trivial mask: acc_m = the codes' row sum
    const float* c0 = A.c0 + s * A.per;
    const float* dw = A.dc_w ? A.dc_w + s * A.per : nullptr;
    const float* rg = A.rm_g ? A.rm_g + s * A.per : nullptr;
    const vf csum = splat(hsum(tot));   // the codes' row sum (exact), the row mean's code-sum term
    float* out = yr + s * A.per;
    for (int b = 0; b < NB; ++b) {
      const int cnt = A.per - b * L < L ? int(A.per - b * L) : L;
      const vf am = A.mpack ? __builtin_convertvector(accm[b], vf) * be : bm;
      vf e = (__builtin_convertvector(acc[b], vf) * al + am) + load_n(c0 + b * L, cnt);
      if (dw) e = e + splat(dcx) * load_n(dw + b * L, cnt);
      if (rg) e = e + csum * load_n(rg + b * L, cnt);
      store_n(out + b * L, e, cnt);
    }
  }
}

typedef void (*LinFn)(const float*, float*, const LinArgs&);

LinFn linear_fn(int nb) {
  switch (nb) {
    case 1: return linear_row<1>;
    case 2: return linear_row<2>;
    case 3: return linear_row<3>;
    case 4: return linear_row<4>;
    case 6: return linear_row<6>;
    case 8: return linear_row<8>;
    default: return nb <= 16 ? linear_row<0> : nullptr;
  }
}

}  // namespace

extern "C" {

// Interface version, checked by the Python loader.
int compsrt_cpu_abi_version() { return 6; }

// x (M, C) fp32 -> int8 codes of S quantizers at once (rotation done once per row).
//   x: (M, C) fp32, row stride ldx (elements), columns contiguous.
//   M, C: rows and columns; 1 <= C, n = next_pow2(C) (rotate) or C (no rotation) <= 4096.
//   qp: (S, 4) fp32 contiguous, one [l, u, s, z] per quantizer (the splits of a packed linear).
//   S: number of quantizers (>= 1).
//   bits: 1..7 (the runtime uses 2, 3, 4).
//   keep_dc: 1 = coefficient 0 (rotated or not) is written to dc and its code is 0.
//   rotate: 1 = zero-pad to n and rotate by H_n / sqrt(n) (natural order); 0 = codes of x itself.
//   codes: (S, M, k_store) int8 contiguous output; k_store a multiple of 16 >= n; columns >= n are 0.
//   dc: (M,) fp32 output, or NULL (only allowed when !keep_dc).
//   rowsum: (S, M) int32 output, the sum of each code row (the trivial-mask acc_m), or NULL.
//   nthreads: OpenMP threads (>= 1).
int compsrt_rotate_quantize(const float* x, int64_t M, int64_t C, int64_t ldx, const float* qp, int64_t S,
                            int bits, int keep_dc, int rotate, int8_t* codes, int64_t k_store, float* dc,
                            int32_t* rowsum, int nthreads) {
  if (M < 0 || C < 1 || S < 1 || bits < 1 || bits > 7 || nthreads < 1) return 1;
  const int n = rotate ? next_pow2(int(C)) : int(C);
  if (n > NMAX || k_store < n || k_store % L || (keep_dc && !dc)) return 1;
  const int nv = (n + L - 1) / L;        // vectors per row (the last one zero-padded)
  const vf inv = splat(float(1.0 / std::sqrt(double(n))));
  const vf keep_lo = lanes_below(n - (nv - 1) * L);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    alignas(64) vf buf[NMAX / L];
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * ldx;
      for (int i = 0; i < nv; ++i) {
        const int64_t left = C - int64_t(i) * L;
        buf[i] = load_n(xr + i * L, left <= 0 ? 0 : (left < L ? int(left) : L));
      }
      if (rotate) {
        fwht_rows(buf, n);
        for (int i = 0; i < nv; ++i) buf[i] = buf[i] * inv;
      }
      if (keep_dc) dc[m] = buf[0][0];
      for (int64_t s = 0; s < S; ++s) {
        const Quant qz(qp + 4 * s, bits);
        int8_t* out = codes + (s * M + m) * k_store;
        vf tot = splat(0.f);
        for (int i = 0; i < nv; ++i) {
          vf c = qz(buf[i]);
          if (i == nv - 1) c = c * keep_lo;    // lanes >= n: code 0, not the code of 0
          if (i == 0 && keep_dc) c[0] = 0.f;
          tot += c;
          vb b = to_bytes(c);
          std::memcpy(out + i * L, &b, L);
        }
        if (nv * L < k_store) std::memset(out + nv * L, 0, k_store - nv * L);
        if (rowsum) rowsum[s * M + m] = int32_t(hsum(tot));
      }
    }
  }
  return 0;
}

// fp32 y = acc_w * alpha + acc_m * beta + c0[n] (+ dc_x[m] * dc_w[n]), each operation rounded in
// linear_epilogue_ref's order, written straight into y (which may be a column slice of a wider
// output).
//   acc: (M, *) int32, row stride ldacc; acc_w = columns [0, N); acc_m = columns [N, 2N) when rowsum
//        is NULL (a pruned layer's mask product).
//   M, N: rows and output columns.
//   rowsum: (M,) int32, acc_m of a trivial mask (the activation codes' row sums), or NULL.
//   alpha, beta: fp32 scalars.
//   c0: (N,) fp32.
//   dc_x: (M,) fp32 or NULL; dc_w: (N,) fp32 or NULL (both or neither).
//   y: (M, N) fp32 output, row stride ldy, columns contiguous.
//   nthreads: OpenMP threads.
int compsrt_linear_epilogue(const int32_t* acc, int64_t M, int64_t N, int64_t ldacc, const int32_t* rowsum,
                            float alpha, float beta, const float* c0, const float* dc_x, const float* dc_w,
                            float* y, int64_t ldy, int nthreads) {
  if (M < 0 || N < 1 || nthreads < 1 || (!dc_x) != (!dc_w)) return 1;
  if (!rowsum && ldacc < 2 * N) return 1;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const int32_t* aw = acc + m * ldacc;
    float* yr = y + m * ldy;
    if (rowsum) {
      const float bm = float(rowsum[m]) * beta;
      if (dc_x) {
        const float dx = dc_x[m];
        for (int64_t n = 0; n < N; ++n) yr[n] = ((float(aw[n]) * alpha + bm) + c0[n]) + dx * dc_w[n];
      } else {
        for (int64_t n = 0; n < N; ++n) yr[n] = (float(aw[n]) * alpha + bm) + c0[n];
      }
    } else {
      const int32_t* am = aw + N;
      if (dc_x) {
        const float dx = dc_x[m];
        for (int64_t n = 0; n < N; ++n)
          yr[n] = ((float(aw[n]) * alpha + float(am[n]) * beta) + c0[n]) + dx * dc_w[n];
      } else {
        for (int64_t n = 0; n < N; ++n) yr[n] = (float(aw[n]) * alpha + float(am[n]) * beta) + c0[n];
      }
    }
  }
  return 0;
}

// The whole packed linear (matches rotate_quantize + packed_matmul_ref + linear_epilogue_ref):
// y[m, s*per + n] = alpha[s] acc_w + beta[s] acc_m + c0 (+ dc_x dc_w), per split s of the output.
//   x: (M, C) fp32, row stride ldx, columns contiguous.
//   rotate, keep_dc: as compsrt_rotate_quantize (n = next_pow2(C) or C; 4 * KW >= n).
//   qp: (S, 4) fp32, the input quantizer of each split. bits: 1..7.
//   wpack: (S, KW, NP) int32, word [s, t, j] = the masked weight codes 4t..4t+3 of output j of
//          split s (byte r = code 4t + r); NP a multiple of 16 >= per, columns >= per zero.
//   mpack: the keep-mask in the same layout, or NULL for a trivial mask (acc_m = code row sums).
//   per: outputs per split (NP <= 256).
//   alpha, beta: (S,) fp32. c0: (S * per,) fp32. dc_w: (S * per,) fp32 or NULL (given iff keep_dc or
//          row_mean).
//   row_mean: 1 = each row's mean stays fp32 (the DC operand) and the centred rest is quantized; the
//             epilogue adds mean * dc_w + (code row sum) * rm_g (packed_linear.py; needs rotate = 0,
//             keep_dc = 0). rm_g: (S * per,) fp32 with row_mean, else NULL.
//   y: (M, S * per) fp32 output, row stride ldy, columns contiguous.
//   nthreads: OpenMP threads.
int compsrt_packed_linear(const float* x, int64_t M, int64_t C, int64_t ldx, int rotate, int keep_dc,
                          const float* qp, int64_t S, int bits, const int32_t* wpack, const int32_t* mpack,
                          int64_t KW, int64_t NP, int64_t per, const float* alpha, const float* beta,
                          const float* c0, const float* dc_w, int row_mean, const float* rm_g, float* y,
                          int64_t ldy, int nthreads) {
  if (M < 0 || C < 1 || S < 1 || bits < 1 || bits > 7 || nthreads < 1 || per < 1 || NP % L || NP < per) return 1;
  const int n = rotate ? next_pow2(int(C)) : int(C);
  if (n > NMAX || 4 * KW < n || (keep_dc && !dc_w)) return 1;
  if (row_mean && (rotate || keep_dc || !dc_w || !rm_g)) return 1;
  const LinFn fn = linear_fn(int((per + L - 1) / L));
  if (!fn) return 1;
  std::vector<Quant> qz;
  for (int64_t s = 0; s < S; ++s) qz.emplace_back(qp + 4 * s, bits);
  LinArgs A;
  A.C = C; A.ldx = ldx; A.S = S; A.KW = KW; A.NP = NP; A.per = per; A.ldy = ldy;
  A.n = n; A.nv = (n + L - 1) / L; A.nb = int((per + L - 1) / L); A.rotate = rotate; A.keep_dc = keep_dc;
  A.row_mean = row_mean;
  A.inv = splat(float(1.0 / std::sqrt(double(n))));
  A.keep_lo = lanes_below(n - (A.nv - 1) * L);
  A.qz = qz.data(); A.wpack = wpack; A.mpack = mpack;
  A.alpha = alpha; A.beta = beta; A.c0 = c0;
  A.dc_w = keep_dc || row_mean ? dc_w : nullptr; A.rm_g = row_mean ? rm_g : nullptr;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t m = 0; m < M; ++m) fn(x + m * ldx, y + m * ldy, A);
  return 0;
}

// The whole of window_attention_int_ref, one (batch, window, head) per task:
//   codes of q*scale and k (rotated along d), logits = integer q k^T + epilogue + dc + bias,
//   softmax, the probabilities rotated along the keys and quantized, v rotated along the tokens
//   and quantized, integer attn v + epilogue + dc.
//   q, k, v: fp32 (B, W, H, N, d) with element strides sq_/sk_/sv_[5] (the last must be 1); q unscaled.
//   bias: fp32 (B, W, H, N, N) with any strides sb[5] (0 where broadcast; read with gathers, so
//         the head-innermost layout of SwinIR's relative-position bias needs no copy).
//   mask: fp32 (W, N, N) additive shift mask, window stride smw, row stride smr, columns contiguous,
//         added to the bias (bias + mask, in that order) before the logits; or NULL. Passing it apart
//         spares the caller a (W, H, N, N) sum per call.
//   B, W, H: batch, windows, heads; N: tokens (16, 32, 64, 128 or 256); d: head dim (1..32).
//   scale: q's multiplier (used as fp32, as q * scale in torch).
//   qp: (4, 4) fp32, rows q, k, attn, v, each [l, u, s, z].
//   bits: 1..7. keep_dc: exact DC (ignored without rotate, as the ref). rotate: 0 = 2DQuant.
//   row_mean: 1 = each operand row's mean along the contraction axis stays fp32 and the centred
//             rest is quantized (QuantConfig.row_mean; needs rotate = 0).
//   out: fp32 (B, W, H, N, d) with strides so[5] (the last must be 1).
//   nthreads: OpenMP threads.
int compsrt_window_attention_int(const float* q, const int64_t* sq_, const float* k, const int64_t* sk_,
                                 const float* v, const int64_t* sv_, const float* bias, const int64_t* sb,
                                 const float* mask, int64_t smw, int64_t smr,
                                 int64_t B, int64_t W, int64_t H, int N, int d, float scale, const float* qp,
                                 int bits, int keep_dc, int rotate, int row_mean, float* out,
                                 const int64_t* so, int nthreads) {
  if (N < L || N > TOK_MAX || N % L || (N & (N - 1)) || d < 1 || d > DMAX || nthreads < 1) return 1;
  if (bits < 1 || bits > 7 || sq_[4] != 1 || sk_[4] != 1 || sv_[4] != 1 || so[4] != 1) return 1;
  if (row_mean && rotate) return 1;
  const AttnFn fn = attn_fn(N);
  if (!fn) return 1;
  if (!rotate) keep_dc = 0;
  const Quant quq(qp, bits), quk(qp + 4, bits), qua(qp + 8, bits), quv(qp + 12, bits);
  AttnArgs A;
  A.N = N; A.d = d; A.nd = rotate ? next_pow2(d) : d; A.nw = (A.nd + 3) / 4; A.keep_dc = keep_dc; A.rotate = rotate;
  A.row_mean = row_mean;
  A.scale = scale;
  A.inv_d = float(1.0 / std::sqrt(double(A.nd)));
  A.inv_n = float(1.0 / std::sqrt(double(N)));
  // attention_epilogue_ref's constants, rounded as the reference rounds them (0-d fp32 tensors).
  const float *Q0 = qp, *Q1 = qp + 4, *Q2 = qp + 8, *Q3 = qp + 12;   // q, k, attn, v
  A.a1 = Q0[2] * Q1[2]; A.a2 = Q0[2] * Q1[3]; A.a3 = Q0[3] * Q1[2];
  A.a4 = (Q0[3] * Q1[3]) * float(A.nd - keep_dc);
  A.b1 = Q2[2] * Q3[2]; A.b2 = Q2[2] * Q3[3]; A.b3 = Q2[3] * Q3[2];
  A.b4 = (Q2[3] * Q3[3]) * float(N - keep_dc);
  A.q_s = Q0[2]; A.q_zn = Q0[3] * float(d); A.k_s = Q1[2]; A.k_zn = Q1[3] * float(d);
  A.p_s = Q2[2]; A.p_zn = Q2[3] * float(N); A.v_s = Q3[2]; A.v_zn = Q3[3] * float(N);
  A.quq = &quq; A.quk = &quk; A.qua = &qua; A.quv = &quv;
  const int64_t tasks = B * W * H;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    AttnScratch S;
    std::memset(&S, 0, sizeof S);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / (W * H), w = (t / H) % W, h = t % H;
      if (t + H < tasks) {
        // Prefetch this head's rows of the next window: the rows are strided (SwinIR's q, k, v are
        // views of one qkv tensor, the bias is heads-innermost), which the hardware prefetchers
        // and the gathers' few outstanding misses do not cover.
        const int64_t tn = t + H, bn = tn / (W * H), wn = (tn / H) % W;
        const float* qn = q + bn * sq_[0] + wn * sq_[1] + h * sq_[2];
        const float* kn = k + bn * sk_[0] + wn * sk_[1] + h * sk_[2];
        const float* vn = v + bn * sv_[0] + wn * sv_[1] + h * sv_[2];
        const float* bn_ = bias + bn * sb[0] + wn * sb[1] + h * sb[2];
        const float* on = out + bn * so[0] + wn * so[1] + h * so[2];
        for (int j = 0; j < N; ++j) {
          prefetch_span(qn + j * sq_[3], d);
          prefetch_span(kn + j * sk_[3], d);
          prefetch_span(vn + j * sv_[3], d);
          prefetch_span(on + j * so[3], d);
          prefetch_strided(bn_ + j * sb[3], N, sb[4]);
          if (mask && h == 0) prefetch_span(mask + wn * smw + j * smr, N);
        }
      }
      fn(q + b * sq_[0] + w * sq_[1] + h * sq_[2], sq_[3], k + b * sk_[0] + w * sk_[1] + h * sk_[2], sk_[3],
         v + b * sv_[0] + w * sv_[1] + h * sv_[2], sv_[3], bias + b * sb[0] + w * sb[1] + h * sb[2], sb[3], sb[4],
         mask ? mask + w * smw : nullptr, smr,
         out + b * so[0] + w * so[1] + h * so[2], so[3], A, S);
    }
  }
  return 0;
}

}  // extern "C"
