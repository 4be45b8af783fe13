// llmos::int8_dot: int8_matmul_packed's product (drivers/quant.py) by llmos's own integer kernel,
// with the activation quantization and the dequantization in the same call:
//   y[r, n] = (float(Σ_k (xu[r, k] - 128) · w[n, k]) · scale[n]) · sx[r]  (+ bias[n])
// where xu, sx are quant_row.h's. The sum is exact in int32 (AVX-512 VNNI's u8·s8 dot products,
// four k at a time), and the float steps are oneDNN's, in its order, so the bits are those of
// llmos::int8_linear; a row's bits never depend on its batch.
//
// Why: on the 2-core AMD EPYC (Zen 5) this was written on, oneDNN's u8·s8 product took 6.7 ms
// for the default model's 120 decoder products at one row, streaming their 106 MB of weights at a
// quarter of the machine's read bandwidth, and 8.5 ms at 16 rows; this kernel 3.0 and 4.4 ms
// (on a Zen 4 EPYC, oneDNN's took 13 and 20 ms in a decode step). The kernel is linear_dot.cpp's
// shape: the weights packed once into tiles of kCols outputs that stream in order, and a register
// tile of kRows rows by kVecs vectors of int32 sums sharing each load. drivers/choice.py times
// it against oneDNN and _int_mm on each machine and serves whichever is fastest.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define LLMOS_VNNI 1
#else
#define LLMOS_VNNI 0
#endif

#include "quant_row.h"

namespace {

constexpr int64_t kLanes = 16;  // int32 sums per vector; without VNNI, plain integer code (slow: int8_dot_fast())
constexpr int kVecs = 3, kRows = 8;
constexpr int64_t kCols = kVecs * kLanes;  // outputs per packed tile
constexpr int64_t kRowBlock = 64;  // rows of x per task: its weights stay in L2 over them
constexpr int64_t kMaxIn = 66000;  // 255 · 127 · 66000 < 2^31: the int32 sums cannot overflow

// The int8 weights [N, K] packed as [tiles, K/4, kCols · 4]: for each tile of kCols outputs,
// four k of each output together (a VNNI lane's operand), k by k, zero-padded to whole tiles
// and to a multiple of 4 in k (so x may be up to 3 columns wider than w, the product then being
// that of w padded with zeros). Returned with comp[n] = 128 · Σ_k w[n, k], the zero point's share.
std::tuple<at::Tensor, at::Tensor> dot8_pack(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.device().is_cpu(),
              "dot8_pack: weight must be an int8 CPU [out, in] matrix");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(k <= kMaxIn, "dot8_pack: at most ", kMaxIn, " inputs (int32 sums), got ", k);
  const int64_t tiles = (n + kCols - 1) / kCols, k4 = (k + 3) / 4;
  at::Tensor padded = at::zeros({tiles * kCols, k4 * 4}, weight.options());
  padded.narrow(0, 0, n).narrow(1, 0, k).copy_(weight);
  at::Tensor comp = padded.sum(1, false, at::kInt).mul_(128);
  return {padded.view({tiles, kCols, k4, 4}).permute({0, 2, 1, 3}).reshape({tiles, k4, kCols * 4}), comp};
}

struct Epilogue {
  const int32_t* comp;
  const float* scale;
  const float* bias;  // nullptr: none
};

// (float(acc - comp) · scale) · sx (+ bias) for one output, as oneDNN and torch round it.
inline float finish(int32_t acc, int64_t c, float sx, const Epilogue& e) {
  float y = static_cast<float>(acc - e.comp[c]) * e.scale[c];
  y = y * sx;
  return e.bias ? y + e.bias[c] : y;
}

#if LLMOS_VNNI
template <int R>
inline void tile(const uint8_t* x, int64_t ldx, int64_t k4, const int8_t* w, const float* sx, float* y,
                 int64_t ldy, int64_t c0, int64_t cols, const Epilogue& e, const int8_t* next) {
  __m512i acc[R][kVecs];
#pragma GCC unroll 32
  for (int i = 0; i < R * kVecs; ++i) acc[i / kVecs][i % kVecs] = _mm512_setzero_si512();
  for (int64_t t = 0; t < k4; ++t, w += kCols * 4) {
    __m512i wv[kVecs];
#pragma GCC unroll 8
    for (int c = 0; c < kVecs; ++c) wv[c] = _mm512_loadu_si512(w + c * kLanes * 4);
#pragma GCC unroll 8
    for (int c = 0; c < kVecs; ++c) _mm_prefetch(reinterpret_cast<const char*>(next + t * kCols * 4 + c * 64), _MM_HINT_T0);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      int32_t four;
      std::memcpy(&four, x + r * ldx + 4 * t, 4);
      const __m512i xv = _mm512_set1_epi32(four);
#pragma GCC unroll 8
      for (int c = 0; c < kVecs; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xv, wv[c]);
    }
  }
  alignas(64) int32_t sums[R][kCols];  // every index constant (unrolled), or GCC keeps acc on the stack
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < kVecs; ++c) _mm512_store_si512(sums[r] + c * kLanes, acc[r][c]);
  for (int r = 0; r < R; ++r) {
    float* out = y + r * ldy + c0;
    if (cols == kCols) {
      const __m512 s = _mm512_set1_ps(sx[r]);
#pragma GCC unroll 8
      for (int c = 0; c < kVecs; ++c) {
        const int64_t o = c0 + c * kLanes;
        __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(sums[r] + c * kLanes),
                                                       _mm512_loadu_si512(e.comp + o)));
        v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_loadu_ps(e.scale + o)), s);
        if (e.bias) v = _mm512_add_ps(v, _mm512_loadu_ps(e.bias + o));
        _mm512_storeu_ps(out + c * kLanes, v);
      }
    } else {
      for (int64_t c = 0; c < cols; ++c) out[c] = finish(sums[r][c], c0 + c, sx[r], e);
    }
  }
}
#else
template <int R>
inline void tile(const uint8_t* x, int64_t ldx, int64_t k4, const int8_t* w, const float* sx, float* y,
                 int64_t ldy, int64_t c0, int64_t cols, const Epilogue& e, const int8_t*) {
  for (int r = 0; r < R; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      int32_t acc = 0;
      for (int64_t t = 0; t < k4; ++t)
        for (int b = 0; b < 4; ++b) acc += int32_t(x[r * ldx + 4 * t + b]) * w[(t * kCols + c) * 4 + b];
      y[r * ldy + c0 + c] = finish(acc, c0 + c, sx[r], e);
    }
  }
}
#endif

}  // namespace

namespace llmos_ops {  // called by decode_stack.cpp too (ops.h)

at::Tensor int8_dot(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& comp, const at::Tensor& scale,
                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& smooth, double eps,
                    double qmax) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "int8_dot: x must be a float32 CPU tensor");
  const int64_t k = x.size(-1), n = scale.numel(), k4 = (k + 3) / 4;
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kChar && packed.is_contiguous() &&
                  packed.size(1) == k4 && packed.size(2) == kCols * 4 && n > (packed.size(0) - 1) * kCols &&
                  n <= packed.size(0) * kCols,
              "int8_dot: the weights must be dot8_pack's of x's width and ", n, " outputs");
  TORCH_CHECK(comp.scalar_type() == at::kInt && comp.is_contiguous() && comp.numel() == packed.size(0) * kCols &&
                  scale.scalar_type() == at::kFloat && scale.is_contiguous(),
              "int8_dot: comp must be dot8_pack's and scale a float32 vector");
  Epilogue e{comp.data_ptr<int32_t>(), scale.data_ptr<float>(), nullptr};
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n,
                "int8_dot: bias must be a float32 vector of ", n, " outputs");
    e.bias = bias->data_ptr<float>();
  }
  const float* s = nullptr;
  if (smooth.has_value() && smooth->defined()) {
    TORCH_CHECK(smooth->scalar_type() == at::kFloat && smooth->is_contiguous() && smooth->numel() == k,
                "int8_dot: smooth must be a float32 vector of the row width");
    s = smooth->data_ptr<float>();
  }
  const at::Tensor rows = x.reshape({-1, k}).contiguous();
  const int64_t m = rows.size(0), ldx = k4 * 4;
  at::Tensor xu = at::empty({m, ldx}, x.options().dtype(at::kByte));
  at::Tensor sx = at::empty({m}, x.options());
  at::Tensor y = at::empty({m, n}, x.options());
  const float* src = rows.data_ptr<float>();
  uint8_t* xq = xu.data_ptr<uint8_t>();
  float* scales = sx.data_ptr<float>();
  const float feps = static_cast<float>(eps), fqmax = static_cast<float>(qmax);
  at::parallel_for(0, m, m >= 8 ? 1 : m, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      uint8_t* out = xq + r * ldx;
      scales[r] = llmos_quant::quantize_row(src + r * k, s, k, feps, fqmax, out);
      std::memset(out + k, 128, ldx - k);  // against zero weights: any value adds nothing
    }
  });
  const int8_t* w = packed.data_ptr<int8_t>();
  float* dst = y.data_ptr<float>();
  const int64_t tiles = packed.size(0), row_blocks = (m + kRowBlock - 1) / kRowBlock;
  if (m > 0 && n > 0) {
    at::parallel_for(0, tiles * row_blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t j = b % tiles, i0 = (b / tiles) * kRowBlock, i1 = std::min(m, i0 + kRowBlock);
        const int8_t* wt = w + j * k4 * kCols * 4;
        const int64_t c0 = j * kCols, cols = std::min(kCols, n - c0);
        // The last pass over this tile fetches the next one's weights into the cache as it goes.
        const int8_t* next = b + 1 < b1 && j + 1 < tiles ? wt + k4 * kCols * 4 : wt;
        auto pass = [&](int64_t i, int64_t r) { return i + r == i1 ? next : wt; };
        int64_t i = i0;
        for (; i + kRows <= i1; i += kRows)
          tile<kRows>(xq + i * ldx, ldx, k4, wt, scales + i, dst + i * n, n, c0, cols, e, pass(i, kRows));
        for (; i + 2 <= i1; i += 2) tile<2>(xq + i * ldx, ldx, k4, wt, scales + i, dst + i * n, n, c0, cols, e, pass(i, 2));
        for (; i < i1; ++i) tile<1>(xq + i * ldx, ldx, k4, wt, scales + i, dst + i * n, n, c0, cols, e, pass(i, 1));
      }
    });
  }
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = n;
  return y.view(sizes);
}

bool int8_dot_fast() { return LLMOS_VNNI == 1; }

}  // namespace llmos_ops

TORCH_LIBRARY_FRAGMENT(llmos, m) {
  m.def("dot8_pack(Tensor weight) -> (Tensor, Tensor)");
  m.def("int8_dot(Tensor x, Tensor packed, Tensor comp, Tensor scale, Tensor? bias, Tensor? smooth, float eps, "
        "float qmax) -> Tensor");
  m.def("int8_dot_fast() -> bool", &llmos_ops::int8_dot_fast);
}

TORCH_LIBRARY_IMPL(llmos, CPU, m) {
  m.impl("dot8_pack", &dot8_pack);
  m.impl("int8_dot", &llmos_ops::int8_dot);
}
