// llmos::block_dot: y = x · Wᵀ (+ b) for float32 x [..., K] and weights W [N, K] stored as small
// integers per block of 32 k of an output, with fp16 scales, and turned back into floats in
// registers as they stream:
//   bits 4: w = (float(q) · float(d)) + float(m), q in 0..15     (GGUF Q4_1's weights)
//   bits 8: w =  float(q) · float(d),             q in -128..127 (GGUF Q8_0's)
// Every output is then linear_dot.cpp's chain of fused multiply-adds in the order of k from +0,
// so where these w are the float32 weights bit for bit (the caller checks it), the bits are
// llmos::linear_dot's on W, and a row's bits never depend on its batch. q · d is exact in float32
// (at most 4 or 8 significant bits times fp16's 11), so the 4-bit weight is computed as
// fma(q, d, m), whose one rounding is the separate add's.
//
// Why: the default model's float32 weights are dequantized GGUF blocks, so they fit in 5 (or
// 8.5) bits a weight with nothing lost. At one row a decode step streams every weight from
// memory, and this kernel reads 6.4x (or 3.8x) fewer bytes than linear_dot does for the same bits:
// on the 2-core AMD EPYC (Zen 5) this was written on, the default model's 120 decoder products at
// one row took 2.4-2.9 ms (66 MB), linear_dot's 10.8-11.2 (425 MB) and int8_dot's 3.4-4.1. The
// kernel is linear_dot's shape: the weights packed once into tiles of kCols outputs that stream in
// order (prefetched kAhead on), and a register tile of R rows of x by V vectors of outputs, each
// weight vector dequantized once per k and shared by the tile's rows. At one row the
// dequantization is most of the work: a nibble becomes a float by one lookup on its 4 bits (no
// mask, no conversion), and 6 vectors of sums keep the multiply-adds' latency covered.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ops.h"
#include "vec.h"

namespace {

using namespace llmos_vec;

constexpr int64_t kCols = 96;   // outputs per packed tile, whatever the vector width
constexpr int64_t kGroup = 32;  // k per block of one scale (and offset)
constexpr int64_t kAhead = 4096;  // bytes the software prefetch runs ahead in the weights' stream
#if defined(__AVX512F__)
constexpr int kRows = 8, kVecs = 3;  // a register tile: kRows rows of x by kVecs vectors of outputs,
constexpr int kFewVecs = 6;          // or 1 or 2 rows by kFewVecs vectors (more sums in flight)
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kRows = 2, kVecs = 6, kFewVecs = 6;
#else
constexpr int kRows = 4, kVecs = 48, kFewVecs = 48;
#endif
constexpr int64_t kRowBlock = 64;  // rows of x per task: its weights stay in L2 over them

// float(q) for kLanes outputs: nibble j of the little-endian 32-bit words at p (one per output),
// or the signed bytes at p. fp16 scales to float (exact). Integer to float is exact for these.
#if defined(__AVX512F__)
inline vec vnibble(const uint8_t* p, int j) {
  const __m512i q = _mm512_loadu_si512(p);
  const __m512 values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return _mm512_permutexvar_ps(j ? _mm512_srli_epi32(q, 4 * j) : q, values);  // by bits 3..0
}
inline vec vbytes(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline vec vhalf(const at::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
#elif defined(__AVX2__) && defined(__FMA__)
inline vec vnibble(const uint8_t* p, int j) {
  const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(q, 4 * j), _mm256_set1_epi32(15)));
}
inline vec vbytes(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
#else
inline vec vnibble(const uint8_t* p, int j) { return static_cast<float>((p[j / 2] >> (4 * (j % 2))) & 15); }
inline vec vbytes(const uint8_t* p) { return static_cast<float>(static_cast<int8_t>(*p)); }
inline vec vmul(vec a, vec b) { return a * b; }
#endif
#if !defined(__AVX512F__)
inline vec vhalf(const at::Half* p) {
  alignas(32) float f[kLanes];
  for (int64_t i = 0; i < kLanes; ++i) f[i] = static_cast<float>(p[i]);
  return vload(f);
}
#endif

// k per packed row of a tile, its bytes, and scales per block (d, m or d).
template <int Bits> constexpr int kStep = Bits == 4 ? 8 : 1;
template <int Bits> constexpr int64_t kRowBytes = kCols * kStep<Bits> * Bits / 8;
template <int Bits> constexpr int kScales = Bits == 4 ? 2 : 1;

// The weights packed as [tiles, K/8, kCols · 4] bytes for bits 4 (word c of row t: q[8t + j][c]
// in bits 4j..4j+3) or [tiles, K, kCols] for bits 8, and their scales as fp16
// [tiles, K/32, 2 or 1, kCols] (d, then m): for each tile of kCols outputs, k by k, so that a
// thread's pass over its tiles is two sequential streams. The last tile is padded with
// q = d = m = 0, whose outputs are dropped.
std::tuple<at::Tensor, at::Tensor> block_pack(const at::Tensor& q, const at::Tensor& d, const at::Tensor& m,
                                              int64_t bits) {
  TORCH_CHECK(bits == 4 || bits == 8, "block_pack: bits must be 4 or 8, got ", bits);
  TORCH_CHECK(q.dim() == 2 && q.device().is_cpu() && q.scalar_type() == (bits == 4 ? at::kByte : at::kChar),
              "block_pack: q must be a CPU [out, in] matrix of ", bits == 4 ? "uint8" : "int8", " for bits ", bits);
  const int64_t n = q.size(0), k = q.size(1), groups = k / kGroup, tiles = (n + kCols - 1) / kCols;
  TORCH_CHECK(k % kGroup == 0, "block_pack: the input width must be a multiple of ", kGroup, " (the block), got ", k);
  TORCH_CHECK(bits == 8 || q.numel() == 0 || q.max().item<uint8_t>() < 16, "block_pack: 4-bit q must be in 0..15");
  auto check_scales = [&](const at::Tensor& s, const char* name) {
    TORCH_CHECK(s.dim() == 2 && s.device().is_cpu() && s.scalar_type() == at::kHalf && s.size(0) == n &&
                    s.size(1) == groups,
                "block_pack: ", name, " must be a float16 CPU [", n, ", ", groups, "] matrix (one per 32 inputs)");
  };
  auto padded = [&](const at::Tensor& t) {  // [tiles · kCols, width], zero rows below
    at::Tensor out = at::zeros({tiles * kCols, t.size(1)}, t.options());
    out.narrow(0, 0, n).copy_(t);
    return out;
  };
  check_scales(d, "d");
  at::Tensor qp = padded(q), packed;
  if (bits == 4) {
    check_scales(m, "m");
    qp = qp.view({tiles, kCols, k / 8, 4, 2}).permute({0, 2, 1, 3, 4});  // byte b of a word: q[2b] | q[2b + 1] << 4
    packed = qp.select(4, 0).bitwise_or(qp.select(4, 1).bitwise_left_shift(4)).reshape({tiles, k / 8, kCols * 4});
  } else {
    packed = qp.view({tiles, kCols, k}).transpose(1, 2).contiguous().view(at::kByte);
  }
  auto by_tile = [&](const at::Tensor& s) { return padded(s).view({tiles, kCols, groups}).permute({0, 2, 1}); };
  at::Tensor scales = bits == 4 ? at::stack({by_tile(d), by_tile(m)}, 2) : by_tile(d).unsqueeze(2);
  return {packed, scales.contiguous()};
}

// Asks for the `bytes` kAhead on from p in a stream, so that they are in the cache when it gets there.
inline void prefetch_ahead(const void* p, int64_t bytes) {
#pragma GCC unroll 8
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(static_cast<const char*>(p) + kAhead + o);
}

// y[r][c] = Σ_k x[r][k] · w[k][c] for R rows of x and V vectors of outputs of a packed tile (w
// and s at their first), by fused multiply-adds in the order of k: each output's sum is the same
// whatever R and V are, and linear_dot's on these w.
template <int R, int V, int Bits>
inline void tile(const float* x, int64_t k, const uint8_t* w, const at::Half* s, float* y, int64_t ldy,
                 int64_t cols) {
  vec acc[R][V];
#pragma GCC unroll 64
  for (int i = 0; i < R * V; ++i) acc[i / V][i % V] = vzero();
  for (int64_t g = 0; g < k; g += kGroup, s += kScales<Bits> * kCols) {
    prefetch_ahead(s, kScales<Bits> * kCols * static_cast<int64_t>(sizeof(at::Half)));
    vec d[V], m[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      d[v] = vhalf(s + v * kLanes);
      m[v] = Bits == 4 ? vhalf(s + kCols + v * kLanes) : vzero();
    }
    for (int64_t t = g; t < g + kGroup; t += kStep<Bits>, w += kRowBytes<Bits>) {
      prefetch_ahead(w, kRowBytes<Bits>);
#pragma GCC unroll 8
      for (int j = 0; j < kStep<Bits>; ++j) {
        vec wv[V];
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v)
          wv[v] = Bits == 4 ? vfma(vnibble(w + v * kLanes * 4, j), d[v], m[v]) : vmul(vbytes(w + v * kLanes), d[v]);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const vec xv = vbroadcast(x + r * k + t + j);
#pragma GCC unroll 16
          for (int v = 0; v < V; ++v) acc[r][v] = vfma(xv, wv[v], acc[r][v]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    float* out = y + r * ldy;
    if (cols >= V * kLanes) {
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) vstore(out + v * kLanes, acc[r][v]);
    } else {
      alignas(64) float full[V * kLanes];
      for (int v = 0; v < V; ++v) vstore(full + v * kLanes, acc[r][v]);
      for (int64_t c = 0; c < cols; ++c) out[c] = full[c];
    }
  }
}

// R rows of x by the first `cols` outputs of a packed tile, in register tiles of V vectors.
template <int R, int V, int Bits>
inline void whole_tile(const float* x, int64_t k, const uint8_t* w, const at::Half* s, float* y, int64_t ldy,
                       int64_t cols) {
  constexpr int64_t width = V * kLanes;
  for (int64_t c = 0; c < cols; c += width)
    tile<R, V, Bits>(x, k, w + c * kRowBytes<Bits> / kCols, s + c, y + c, ldy, cols - c);
}

template <int Bits>
void product(const float* x, int64_t m, const uint8_t* w, const at::Half* s, int64_t n, int64_t k, float* y) {
  const int64_t tiles = (n + kCols - 1) / kCols, row_blocks = (m + kRowBlock - 1) / kRowBlock;
  const int64_t tile_bytes = k / kStep<Bits> * kRowBytes<Bits>, tile_scales = k / kGroup * kScales<Bits> * kCols;
  at::parallel_for(0, tiles * row_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j = b % tiles, i0 = (b / tiles) * kRowBlock, i1 = std::min(m, i0 + kRowBlock);
      const uint8_t* wt = w + j * tile_bytes;
      const at::Half* st = s + j * tile_scales;
      const int64_t c0 = j * kCols, cols = std::min(kCols, n - c0);
      int64_t i = i0;
      for (; i + kRows <= i1; i += kRows) whole_tile<kRows, kVecs, Bits>(x + i * k, k, wt, st, y + i * n + c0, n, cols);
      for (; i + 2 <= i1; i += 2) whole_tile<2, kFewVecs, Bits>(x + i * k, k, wt, st, y + i * n + c0, n, cols);
      for (; i < i1; ++i) whole_tile<1, kFewVecs, Bits>(x + i * k, k, wt, st, y + i * n + c0, n, cols);
    }
  });
}

}  // namespace

namespace llmos_ops {

at::Tensor block_dot(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t n, int64_t bits,
                     const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(bits == 4 || bits == 8, "block_dot: bits must be 4 or 8, got ", bits);
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "block_dot: x must be a float32 CPU tensor");
  const int64_t k = x.size(-1), step = bits == 4 ? kStep<4> : kStep<8>;
  const int64_t row_bytes = bits == 4 ? kRowBytes<4> : kRowBytes<8>, per_block = bits == 4 ? kScales<4> : kScales<8>;
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.size(2) == row_bytes && packed.size(1) * step == k && k % kGroup == 0 &&
                  n > (packed.size(0) - 1) * kCols && n <= packed.size(0) * kCols,
              "block_dot: the weights must be block_pack's (bits ", bits, ") of x's width ", k, " and ", n, " outputs");
  TORCH_CHECK(scales.dim() == 4 && scales.scalar_type() == at::kHalf && scales.is_contiguous() &&
                  scales.size(0) == packed.size(0) && scales.size(1) == k / kGroup && scales.size(2) == per_block &&
                  scales.size(3) == kCols,
              "block_dot: the scales must be block_pack's (bits ", bits, ") of the same weights");
  auto run = bits == 4 ? &product<4> : &product<8>;
  return over_rows(x, n, bias, [&](const float* rows, int64_t m, float* y) {
    run(rows, m, packed.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(), n, k, y);
  });
}

}  // namespace llmos_ops

TORCH_LIBRARY_FRAGMENT(llmos, m) {
  m.def("block_pack(Tensor q, Tensor d, Tensor m, int bits) -> (Tensor, Tensor)");
  m.def("block_dot(Tensor x, Tensor packed, Tensor scales, int n, int bits, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmos, CPU, m) {
  m.impl("block_pack", &block_pack);
  m.impl("block_dot", &llmos_ops::block_dot);
}
