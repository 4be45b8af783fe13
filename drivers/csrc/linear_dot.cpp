// llmos::linear_dot: y = x · Wᵀ (+ b) for float32 x [..., K] and W [N, K], on the weights packed
// once by llmos::dot_pack. Every output is one chain of fused multiply-adds in the order of k,
// whatever rows share the call and whichever register tile a row falls in, so a row's bits never
// depend on its batch (drivers/measure.py checks it at load like any form's).
//
// Why: at one row a decode step is a matrix-vector product of every weight, bounded by how fast
// memory streams them. On the 2-core AMD EPYC this was written on, oneDNN's prepacked fp32
// product read the default model's weights at about half the machine's bandwidth at one row, and
// MKL's at a quarter. Here the packed weights are one sequential stream, kVecs vectors of
// outputs wide, and up to kRows rows of x share each load of them (a register tile of
// kRows × kVecs accumulators), which also keeps wide products near the machine's FMA peak.
// drivers/choice.py times it against the others on each machine and serves whichever is fastest.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "vec.h"

namespace {

using namespace llmos_vec;

#if defined(__AVX512F__)
constexpr int kVecs = 3, kRows = 8;  // a register tile: kRows rows of x by kVecs vectors of outputs
#else
constexpr int kVecs = 3, kRows = 4;
#endif
constexpr int64_t kCols = kVecs * kLanes;  // outputs per packed tile
constexpr int64_t kRowBlock = 64;  // rows of x per task: its weights stay in L2 over them

// The weights [N, K] packed as [tiles, K, kCols]: for each tile of kCols outputs, its weights
// k by k, so that a pass over them is one sequential stream. The last tile is padded with zero
// rows, whose outputs are dropped.
at::Tensor dot_pack(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.device().is_cpu(),
              "dot_pack: weight must be a float32 CPU [out, in] matrix");
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t tiles = (n + kCols - 1) / kCols;
  at::Tensor padded = at::zeros({tiles * kCols, k}, weight.options());
  padded.narrow(0, 0, n).copy_(weight);
  return padded.view({tiles, kCols, k}).transpose(1, 2).contiguous();
}

// y[r][c] = Σ_k x[r][k] · w[k][c] for R rows of x and one packed tile, by fused multiply-adds in
// the order of k: each output's sum is the same whatever R is.
template <int R>
inline void tile(const float* x, int64_t k, const float* w, float* y, int64_t ldy, int64_t cols) {
  vec acc[R][kVecs];
#pragma GCC unroll 32
  for (int i = 0; i < R * kVecs; ++i) acc[i / kVecs][i % kVecs] = vzero();
  for (int64_t t = 0; t < k; ++t, w += kCols) {
    vec wv[kVecs];
#pragma GCC unroll 8
    for (int c = 0; c < kVecs; ++c) wv[c] = vload(w + c * kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vec xv = vbroadcast(x + r * k + t);
#pragma GCC unroll 8
      for (int c = 0; c < kVecs; ++c) acc[r][c] = vfma(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* out = y + r * ldy;
    if (cols == kCols) {
#pragma GCC unroll 8
      for (int c = 0; c < kVecs; ++c) vstore(out + c * kLanes, acc[r][c]);
    } else {
      alignas(64) float full[kCols];
      for (int c = 0; c < kVecs; ++c) vstore(full + c * kLanes, acc[r][c]);
      for (int64_t c = 0; c < cols; ++c) out[c] = full[c];
    }
  }
}

void product(const float* x, int64_t m, const float* w, int64_t n, int64_t k, float* y) {
  const int64_t tiles = (n + kCols - 1) / kCols, row_blocks = (m + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, tiles * row_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j = b % tiles, i0 = (b / tiles) * kRowBlock, i1 = std::min(m, i0 + kRowBlock);
      const float* wt = w + j * kCols * k;
      const int64_t c0 = j * kCols, cols = std::min(kCols, n - c0);
      int64_t i = i0;
      for (; i + kRows <= i1; i += kRows) tile<kRows>(x + i * k, k, wt, y + i * n + c0, n, cols);
      for (; i + 2 <= i1; i += 2) tile<2>(x + i * k, k, wt, y + i * n + c0, n, cols);
      for (; i < i1; ++i) tile<1>(x + i * k, k, wt, y + i * n + c0, n, cols);
    }
  });
}

}  // namespace

namespace llmos_ops {  // called by decode_stack.cpp too (ops.h)

at::Tensor linear_dot(const at::Tensor& x, const at::Tensor& packed, int64_t n, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "linear_dot: x must be a float32 CPU tensor");
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kFloat && packed.is_contiguous() &&
                  packed.size(2) == kCols && packed.size(1) == x.size(-1) &&
                  n > (packed.size(0) - 1) * kCols && n <= packed.size(0) * kCols,
              "linear_dot: the weights must be dot_pack's of x's width and ", n, " outputs");
  const int64_t k = x.size(-1);
  return over_rows(x, n, bias, [&](const float* rows, int64_t m, float* y) {
    product(rows, m, packed.data_ptr<float>(), n, k, y);
  });
}

}  // namespace llmos_ops

TORCH_LIBRARY_FRAGMENT(llmos, m) {
  m.def("dot_pack(Tensor weight) -> Tensor");
  m.def("linear_dot(Tensor x, Tensor packed, int n, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmos, CPU, m) {
  m.impl("dot_pack", &dot_pack);
  m.impl("linear_dot", &llmos_ops::linear_dot);
}
