// RMSNorm in one op, with the bits of ATen's (and transformers'): x · 1/sqrt(Σx²/n + eps) · w.
// ATen computes it as six ops (pow, sum, div, add, rsqrt, mul, mul), each a TensorIterator pass
// of a few microseconds, 61 times a decode step of the default model. Here the sum of squares is
// still ATen's own at::sum, so that its summation order (the one part whose bits depend on how
// it is done) is ATen's; the rest is elementwise IEEE arithmetic in ATen's order, which
// -ffp-contract=off keeps as written. The driver checks the bits against the module at load
// (drivers/lean_ops.py) and keeps the module where they differ.
//
// As an op torch.compile does not know, it also stays whole inside a compiled step
// (drivers/compiled.py): inductor's own norm sums in another order, an ulp away.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

#include <cmath>

namespace llmos_ops {  // called by decode_stack.cpp too (ops.h)

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t n = weight.size(0);
  if (x.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat || !x.is_contiguous() ||
      !weight.is_contiguous() || x.dim() == 0 || x.size(-1) != n || x.device().type() != at::kCPU) {
    return at::rms_norm(x, {n}, weight, eps);
  }
  const int64_t rows = n ? x.numel() / n : 0;
  const float* xp = x.data_ptr<float>();
  at::Tensor sq = at::empty_like(x);
  float* sp = sq.data_ptr<float>();
  for (int64_t i = 0; i < rows * n; ++i) sp[i] = xp[i] * xp[i];
  const at::Tensor sums = at::sum(sq, {-1}, /*keepdim=*/true);
  const float* sm = sums.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  at::Tensor out = at::empty_like(x);
  float* op = out.data_ptr<float>();
  const float count = static_cast<float>(n), feps = static_cast<float>(eps);
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = 1.0f / std::sqrt(sm[r] / count + feps);
    const float* xr = xp + r * n;
    float* yr = op + r * n;
    for (int64_t j = 0; j < n; ++j) yr[j] = (xr[j] * inv) * w[j];
  }
  return out;
}

// oneDNN's product on weights in its packed layout (drivers/packed.py), the same call. Inductor
// lowers mkldnn::_linear_pointwise itself only with the weights frozen into the graph; as this op
// it is called as it is.
at::Tensor linear_packed(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias) {
  static auto linear = c10::Dispatcher::singleton()
      .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                        c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>)>();  // as registered
  return linear.call(x.contiguous(), packed, bias, "none", c10::List<std::optional<at::Scalar>>(), "");
}

}  // namespace llmos_ops

TORCH_LIBRARY_FRAGMENT(llmos, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("linear_packed(Tensor x, Tensor packed, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmos, CPU, m) {
  m.impl("rms_norm", &llmos_ops::rms_norm);
}

TORCH_LIBRARY_IMPL(llmos, MkldnnCPU, m) {  // oneDNN's packed weights dispatch to this key
  m.impl("linear_packed", &llmos_ops::linear_packed);
}
