// Packed low-bit linear layer: int8 activation codes x bit-plane weight codes -> fp32, fused epilogue.
//
// Plain CUDA C++ (no torch headers): the launchers below take raw device pointers, sizes and the
// stream as an integer, and return a cudaError_t as int (0 = success). They are built by nvcc into
// a small shared library (compsrt/kernels/packed_linear_cuda.py) and called through ctypes.
//
// Layout (compsrt/kernels/bitpack.py): codes (R, K), K a multiple of 32, are stored as int32
// bit-planes (R, bits, K/32), where bit j of word [r, p, w] is bit p of code[r, 32 w + j].
//
// packed_linear_launch computes, exactly in int32,
//     acc_w = qx codes^T                         (M, N)
//     acc_m = qx mask^T   (M, N), or rowsum(qx)  (M, 1) when the mask is trivial (m_planes NULL)
// and the fp32 epilogue  y = ((acc_w * alpha + acc_m * beta) + c0[n]) (+ dc_x[m] * dc_w[n]),
// every operation rounded on its own (no FMA contraction), in the order of linear_epilogue_ref.
//
// Two implementations share the tiling and one kernel (a block owns BN = 64 output columns,
// decodes their weight and mask bit-planes once into shared memory, then loops over BM = 64-row
// tiles of qx):
//   impl 1 (MMA, sm_80+): int8 tensor cores, mma.sync.m16n8k32.s32.s8.s8.s32 via inline PTX; each
//          of the 4 warps owns 16 rows x 64 columns; the trivial mask's row sums come from one
//          more MMA against an all-ones B fragment.
//   impl 2 (dp4a, sm_61+): __dp4a on the same shared-memory tiles; each thread owns 8 x 4 outputs.
//   impl 0: MMA when the device is sm_80 or newer, else dp4a.
#include <cstdint>
#include <cuda_runtime.h>

namespace {

constexpr int BM = 64;        // qx rows per tile
constexpr int BN = 64;        // output columns per block
constexpr int THREADS = 128;  // 4 warps
constexpr int KMAX = 256;     // largest supported K (a multiple of 32)

struct Params {
  const int8_t* qx;         // (M, K) int8 activation codes, 16-byte aligned, row-major
  const int32_t* w_planes;  // (N, bits, K/32) bit-planes of the (masked) weight codes
  const int32_t* m_planes;  // (N, 1, K/32) keep-mask bit-planes, or NULL for a trivial mask
  int M, N, K, bits;
  float alpha, beta;        // epilogue scalars
  const float* c0;          // (N,) epilogue offset; read only when y is not NULL
  const float* dc_x;        // (M,) exact-DC activation term, or NULL
  const float* dc_w;        // (N,) exact-DC weight term, or NULL (NULL exactly when dc_x is)
  float* y;                 // (M, N) fp32 output, or NULL (accumulators only)
  int32_t* acc_w;           // (M, N) int32 copy of acc_w, or NULL
  int32_t* acc_m;           // (M, N) int32 copy of acc_m, (M, 1) without a mask, or NULL
};

// Row stride in shared memory: K + 16 bytes keeps the 8 rows a fragment load touches on distinct
// banks for K = 32, 64, 128 and 256, and keeps every row 16-byte aligned.
__host__ __device__ inline int smem_ld(int K) { return K + 16; }

__host__ inline size_t smem_bytes(int K, bool has_mask) {
  return (size_t)(BM + BN + (has_mask ? BN : 0)) * smem_ld(K) + 2 * BN * sizeof(float);
}

// Bits 0..3 of x -> bit 0 of bytes 0..3.
__device__ __forceinline__ uint32_t spread4(uint32_t x) {
  return (x & 1u) | ((x & 2u) << 7) | ((x & 4u) << 14) | ((x & 8u) << 21);
}

// Four consecutive codes (32 w + j0 .. + 3) of row r, one per byte, from its bit-planes.
__device__ __forceinline__ uint32_t decode4(const int32_t* __restrict__ planes, size_t r, int bits,
                                            int W, int w, int j0) {
  const int32_t* p = planes + r * bits * W + w;
  uint32_t out = 0;
  for (int b = 0; b < bits; ++b) out |= spread4((uint32_t)__ldg(p + (size_t)b * W) >> j0) << b;
  return out;
}

// Rows n0 .. n0 + BN - 1 of a (R, bits, W) bit-plane matrix as uint8 codes in shared memory
// (row stride ld); rows past R are zero.
__device__ void decode_tile(const int32_t* __restrict__ planes, int R, int bits, int W, int n0,
                            uint8_t* s, int ld) {
  const int groups = W * 8;  // 4-code groups per row
  for (int i = threadIdx.x; i < BN * groups; i += blockDim.x) {
    const int r = i / groups, q = i % groups;
    const int n = n0 + r;
    const uint32_t v = n < R ? decode4(planes, (size_t)n, bits, W, q >> 3, (q & 7) * 4) : 0u;
    *reinterpret_cast<uint32_t*>(s + r * ld + q * 4) = v;
  }
}

// qx rows m0 .. m0 + BM - 1 into shared memory (row stride ld); rows past M are zero. Between two
// barriers: the first waits until the block is done reading the previous tile (first pass: until
// the weight decode is done), the second until the whole tile is loaded.
__device__ void load_a_tile(const int8_t* __restrict__ qx, int M, int K, int m0, uint8_t* s, int ld) {
  __syncthreads();
  const int vecs = K / 16;  // 16-byte vectors per row
  for (int i = threadIdx.x; i < BM * vecs; i += blockDim.x) {
    const int r = i / vecs, v = i % vecs;
    const int m = m0 + r;
    int4 val = make_int4(0, 0, 0, 0);
    if (m < M) val = __ldg(reinterpret_cast<const int4*>(qx + (size_t)m * K) + v);
    *reinterpret_cast<int4*>(s + r * ld + v * 16) = val;
  }
  __syncthreads();
}

// The block's epilogue columns (c0, dc_w) in shared memory; zero past N or when absent.
__device__ void load_columns(const Params& p, int n0, float* s_c0, float* s_dcw) {
  for (int i = threadIdx.x; i < BN; i += blockDim.x) {
    const int n = n0 + i;
    s_c0[i] = (p.y != nullptr && n < p.N) ? p.c0[n] : 0.f;
    s_dcw[i] = (p.dc_w != nullptr && n < p.N) ? p.dc_w[n] : 0.f;
  }
}

__device__ __forceinline__ uint32_t lds32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// One output element: the accumulators, and y in linear_epilogue_ref's order (no FMA: each
// operation is rounded on its own, as PyTorch's separate kernels do).
__device__ __forceinline__ void store_out(const Params& p, size_t row, int n, int32_t aw, int32_t am,
                                          float dcx, float c0, float dcw, bool write_am) {
  const size_t idx = row * (size_t)p.N + n;
  if (p.y != nullptr) {
    float v = __fadd_rn(__fmul_rn(__int2float_rn(aw), p.alpha), __fmul_rn(__int2float_rn(am), p.beta));
    v = __fadd_rn(v, c0);
    if (p.dc_x != nullptr) v = __fadd_rn(v, __fmul_rn(dcx, dcw));
    p.y[idx] = v;
  }
  if (p.acc_w != nullptr) p.acc_w[idx] = aw;
  if (write_am && p.acc_m != nullptr) p.acc_m[idx] = am;
}

// D (16x8 s32) += A (16x32 s8, row-major) B (32x8 s8, column-major), one warp. Fragments
// (g = lane / 4, t = lane % 4): a = rows {g, g+8} x cols {4t..4t+3, 16+4t..16+4t+3} as
// a[0] (g, 4t), a[1] (g+8, 4t), a[2] (g, 16+4t), a[3] (g+8, 16+4t); b = col g x rows
// b0 (4t..4t+3), b1 (16+4t..); d[0], d[1] = (g, 2t), (g, 2t+1); d[2], d[3] = (g+8, 2t), (g+8, 2t+1).
__device__ __forceinline__ void mma_s8(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // the launcher never selects the MMA kernel below sm_80
#endif
}

// v[i] = the 4 codes kw .. kw + 3 of row r0 + STEP i of a shared-memory tile (row stride ld), i < N.
template <int N, int STEP>
__device__ __forceinline__ void lds_rows(int (&v)[N], const uint8_t* s, int r0, int ld, int kw) {
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = (int)lds32(s + (r0 + STEP * i) * ld + kw);
}

// acc[i][j] += a[i] . b[j] over their 4 bytes: the dp4a kernel's 8 x 4 outer product.
__device__ __forceinline__ void dp4a_outer(int (&acc)[8][4], const int (&a)[8], const int (&b)[4]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
}

// The packed linear kernel, IMPL 1 (MMA) or 2 (dp4a). A block owns BN output columns: it lays out
// shared memory, decodes their weight (and mask) bit-planes and epilogue columns once, then runs
// the implementation's loop over qx tiles. The two loops are branches of this one kernel, not
// device functions: as functions (or with the layout in a struct) nvcc unrolls the MMA k-loop
// differently and the machine code changes.
template <bool HAS_MASK, int IMPL>
__global__ void __launch_bounds__(THREADS) packed_linear_kernel(Params p) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int ld = smem_ld(p.K);
  uint8_t* s_a = smem;                              // (BM, K) activation codes
  uint8_t* s_w = s_a + BM * ld;                     // (BN, K) weight codes
  uint8_t* s_m = s_w + BN * ld;                     // (BN, K) mask, HAS_MASK only
  float* s_c0 = reinterpret_cast<float*>(s_m + (HAS_MASK ? BN * ld : 0));
  float* s_dcw = s_c0 + BN;

  const int n0 = blockIdx.x * BN;
  const int W = p.K / 32;
  decode_tile(p.w_planes, p.N, p.bits, W, n0, s_w, ld);
  if constexpr (HAS_MASK) decode_tile(p.m_planes, p.N, 1, W, n0, s_m, ld);
  load_columns(p, n0, s_c0, s_dcw);

  if constexpr (IMPL == 1) {  // each of the 4 warps owns 16 rows x 64 columns of a tile
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int m_tiles = (p.M + BM - 1) / BM;
    const uint8_t* a_lo = s_a + (warp * 16 + g) * ld + 4 * t;
    const uint8_t* a_hi = a_lo + 8 * ld;

    for (int tile = blockIdx.y; tile < m_tiles; tile += gridDim.y) {
      const int m0 = tile * BM;
      load_a_tile(p.qx, p.M, p.K, m0, s_a, ld);

      int32_t acc_w[8][4] = {};
      int32_t acc_m[HAS_MASK ? 8 : 1][4] = {};
      for (int kk = 0; kk < p.K; kk += 32) {
        const uint32_t a[4] = {lds32(a_lo + kk), lds32(a_hi + kk), lds32(a_lo + kk + 16), lds32(a_hi + kk + 16)};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const uint8_t* bw = s_w + (j * 8 + g) * ld + kk + 4 * t;
          mma_s8(acc_w[j], a, lds32(bw), lds32(bw + 16));
          if constexpr (HAS_MASK) {
            const uint8_t* bm = s_m + (j * 8 + g) * ld + kk + 4 * t;
            mma_s8(acc_m[j], a, lds32(bm), lds32(bm + 16));
          }
        }
        if constexpr (!HAS_MASK) mma_s8(acc_m[0], a, 0x01010101u, 0x01010101u);  // row sums
      }

#pragma unroll
      for (int h = 0; h < 2; ++h) {  // h = 0: row g of the warp's 16; h = 1: row g + 8
        const int row = m0 + warp * 16 + g + 8 * h;
        if (row >= p.M) continue;
        const float dcx = p.dc_x != nullptr ? p.dc_x[row] : 0.f;
        const int32_t row_sum = acc_m[0][2 * h];  // trivial mask: every column holds the row sum
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = j * 8 + 2 * t + e;
            if (n0 + col >= p.N) continue;
            const int32_t am = HAS_MASK ? acc_m[HAS_MASK ? j : 0][2 * h + e] : row_sum;
            store_out(p, row, n0 + col, acc_w[j][2 * h + e], am, dcx, s_c0[col], s_dcw[col], HAS_MASK);
          }
        }
        if (!HAS_MASK && p.acc_m != nullptr && blockIdx.x == 0 && t == 0) p.acc_m[row] = row_sum;
      }
    }
  } else {  // each thread owns 8 x 4 outputs of a tile: rows ty + 8 i (i < 8), cols tx + 16 j (j < 4)
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int m_tiles = (p.M + BM - 1) / BM;

    for (int tile = blockIdx.y; tile < m_tiles; tile += gridDim.y) {
      const int m0 = tile * BM;
      load_a_tile(p.qx, p.M, p.K, m0, s_a, ld);

      int acc_w[8][4] = {};
      int acc_m[8][HAS_MASK ? 4 : 1] = {};
      for (int kw = 0; kw < p.K; kw += 4) {
        int a[8], b[4];
        lds_rows<8, 8>(a, s_a, ty, ld, kw);
        lds_rows<4, 16>(b, s_w, tx, ld, kw);
        dp4a_outer(acc_w, a, b);
        if constexpr (HAS_MASK) {
          int bm[4];
          lds_rows<4, 16>(bm, s_m, tx, ld, kw);
          dp4a_outer(acc_m, a, bm);
        } else {
#pragma unroll
          for (int i = 0; i < 8; ++i) acc_m[i][0] = __dp4a(a[i], 0x01010101, acc_m[i][0]);
        }
      }

#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int row = m0 + ty + 8 * i;
        if (row >= p.M) continue;
        const float dcx = p.dc_x != nullptr ? p.dc_x[row] : 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int col = tx + 16 * j;
          if (n0 + col >= p.N) continue;
          const int32_t am = acc_m[i][HAS_MASK ? j : 0];
          store_out(p, row, n0 + col, acc_w[i][j], am, dcx, s_c0[col], s_dcw[col], HAS_MASK);
        }
        if (!HAS_MASK && p.acc_m != nullptr && blockIdx.x == 0 && tx == 0) p.acc_m[row] = acc_m[i][0];
      }
    }
  }
}

// One thread per 4 output codes: out word i of row r = codes 4 (i % (8 W)) .. + 3.
__global__ void unpack_bits_kernel(const int32_t* __restrict__ planes,  // (R, bits, W) bit-planes
                                   uint32_t* __restrict__ out,          // (R, 32 W) uint8 codes, as words
                                   int R, int bits, int W) {
  const size_t groups = (size_t)W * 8;
  const size_t total = (size_t)R * groups;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / groups;
    const int q = (int)(i % groups);
    out[i] = decode4(planes, r, bits, W, q >> 3, (q & 7) * 4);
  }
}

template <typename Kernel>
int launch_tiled(Kernel kernel, const Params& p, size_t smem, cudaStream_t stream) {
  int dev = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess && smem > 48 * 1024)
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, THREADS, smem);
  if (err != cudaSuccess) return (int)err;
  // One wave of resident blocks: each decodes its weight columns once and loops over qx tiles;
  // blocks sharing a qx tile (blockIdx.x varies fastest) run together, so qx is read from L2.
  const int n_tiles = (p.N + BN - 1) / BN;
  const int m_tiles = (p.M + BM - 1) / BM;
  long long resident = (long long)(per_sm > 0 ? per_sm : 1) * (sms > 0 ? sms : 1);
  long long grid_m = resident / n_tiles;
  if (grid_m < 1) grid_m = 1;
  if (grid_m > m_tiles) grid_m = m_tiles;
  if (grid_m > 65535) grid_m = 65535;
  kernel<<<dim3(n_tiles, (unsigned)grid_m), THREADS, smem, stream>>>(p);
  return (int)cudaGetLastError();
}

}  // namespace

extern "C" {

// The message of a cudaError_t returned by the launchers.
const char* compsrt_cuda_error_string(int err) { return cudaGetErrorString((cudaError_t)err); }

// planes (R, bits, W) int32 -> out (R, 32 W) uint8 codes (out 4-byte aligned). Returns a cudaError_t.
int unpack_bits_launch(const int32_t* planes, uint8_t* out, int R, int bits, int W, uintptr_t stream) {
  if (R < 0 || W < 0 || bits < 1 || bits > 8 || (reinterpret_cast<uintptr_t>(out) & 3u)) return (int)cudaErrorInvalidValue;
  const size_t total = (size_t)R * W * 8;
  if (total == 0) return (int)cudaSuccess;
  if (planes == nullptr || out == nullptr) return (int)cudaErrorInvalidValue;
  const int threads = 256;
  const size_t blocks_needed = (total + threads - 1) / threads;
  const unsigned blocks = (unsigned)(blocks_needed < 65535 ? blocks_needed : 65535);
  unpack_bits_kernel<<<blocks, threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      planes, reinterpret_cast<uint32_t*>(out), R, bits, W);
  return (int)cudaGetLastError();
}

// The packed linear (see the file header). qx (M, K) int8, 16-byte aligned; w_planes (N, bits, K/32);
// m_planes (N, 1, K/32) or NULL; c0 (N,) (needed when y is given); dc_x (M,) and dc_w (N,) both or
// neither; outputs y (M, N) fp32, acc_w (M, N) int32, acc_m (M, N) or (M, 1) int32, each optional.
// impl: 0 auto, 1 MMA (sm_80+), 2 dp4a. Returns a cudaError_t (cudaErrorInvalidValue for bad
// arguments, cudaErrorNotSupported for MMA below sm_80).
int packed_linear_launch(const int8_t* qx, const int32_t* w_planes, const int32_t* m_planes,
                         int M, int N, int K, int bits, float alpha, float beta,
                         const float* c0, const float* dc_x, const float* dc_w,
                         float* y, int32_t* acc_w, int32_t* acc_m, int impl, uintptr_t stream) {
  if (M < 0 || N < 0 || K < 32 || K > KMAX || K % 32 != 0 || bits < 1 || bits > 8 || impl < 0 || impl > 2)
    return (int)cudaErrorInvalidValue;
  if ((dc_x == nullptr) != (dc_w == nullptr)) return (int)cudaErrorInvalidValue;
  if (M == 0 || N == 0) return (int)cudaSuccess;
  if (qx == nullptr || w_planes == nullptr || (reinterpret_cast<uintptr_t>(qx) & 15u)) return (int)cudaErrorInvalidValue;
  if (y != nullptr && c0 == nullptr) return (int)cudaErrorInvalidValue;

  int dev = 0, major = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err != cudaSuccess) return (int)err;
  if (impl == 0) impl = major >= 8 ? 1 : 2;
  if (impl == 1 && major < 8) return (int)cudaErrorNotSupported;

  Params p{qx, w_planes, m_planes, M, N, K, bits, alpha, beta, c0, dc_x, dc_w, y, acc_w, acc_m};
  const bool has_mask = m_planes != nullptr;
  const size_t smem = smem_bytes(K, has_mask);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (impl == 1)
    return has_mask ? launch_tiled(packed_linear_kernel<true, 1>, p, smem, s)
                    : launch_tiled(packed_linear_kernel<false, 1>, p, smem, s);
  return has_mask ? launch_tiled(packed_linear_kernel<true, 2>, p, smem, s)
                  : launch_tiled(packed_linear_kernel<false, 2>, p, smem, s);
}

}  // extern "C"
