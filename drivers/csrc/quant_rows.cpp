// llmos::quantize_rows_u8: the activation quantization of drivers/quant.py's int8_matmul_packed
// as one op instead of eight (smooth, abs, amax, clamp, two divisions, round, shift, cast).
//
// The row arithmetic is quant_row.h's.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <cmath>
#include <tuple>
#include <vector>

#include "quant_row.h"

namespace {

std::tuple<at::Tensor, at::Tensor> quantize_rows_u8(const at::Tensor& x, const c10::optional<at::Tensor>& smooth,
                                                    double eps, double qmax) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "quantize_rows_u8: x must be a contiguous float32 CPU matrix");
  const int64_t m = x.size(0), k = x.size(1);
  const float* s = nullptr;
  if (smooth.has_value() && smooth->defined()) {
    TORCH_CHECK(smooth->scalar_type() == at::kFloat && smooth->is_contiguous() && smooth->numel() == k,
                "quantize_rows_u8: smooth must be a contiguous float32 vector of the row width");
    s = smooth->data_ptr<float>();
  }
  auto xu = at::empty({m, k}, x.options().dtype(at::kByte));
  auto sx = at::empty({m, 1}, x.options());
  const float* src = x.data_ptr<float>();
  uint8_t* dst = xu.data_ptr<uint8_t>();
  float* scales = sx.data_ptr<float>();
  const float feps = static_cast<float>(eps), fqmax = static_cast<float>(qmax);
  at::parallel_for(0, m, m >= 8 ? 1 : m, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      scales[r] = llmos_quant::quantize_row(src + r * k, s, k, feps, fqmax, dst + r * k);
  });
  return {xu, sx};
}

// llmos::int8_linear: int8_matmul_packed whole, for x [..., K] float32: quantize the rows as above,
// oneDNN's u8·s8 product (onednn::qlinear_pointwise, the same call the Python path makes), then
// y · sx (+ bias) in place. The same ops in the same order, so the same bits; one op call instead
// of four and their Python, and an op torch.compile calls whole (drivers/compiled.py).
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, const at::Tensor& zeros,
                       const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& smooth, double eps,
                       double qmax) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "int8_linear: x must be a float32 CPU tensor");
  const at::Tensor rows = x.reshape({-1, x.size(-1)}).contiguous();
  auto [xu, sx] = quantize_rows_u8(rows, smooth, eps, qmax);
  static auto qlinear = c10::Dispatcher::singleton()
      .findSchemaOrThrow("onednn::qlinear_pointwise", "")
      .typed<at::Tensor(at::Tensor, double, int64_t, at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>,
                        double, int64_t, std::optional<at::ScalarType>, c10::string_view,
                        c10::List<std::optional<at::Scalar>>, c10::string_view)>();  // as registered, by value
  at::Tensor y = qlinear.call(xu, 1.0, 128, packed, scale, zeros, std::nullopt, 1.0, 0, at::kFloat, "none",
                              c10::List<std::optional<at::Scalar>>(), "");
  y.mul_(sx);
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = y.size(1);
  return y.view(sizes);
}

}  // namespace

TORCH_LIBRARY(llmos, m) {
  m.def("quantize_rows_u8(Tensor x, Tensor? smooth, float eps, float qmax) -> (Tensor, Tensor)");
  m.def("int8_linear(Tensor x, Tensor packed, Tensor scale, Tensor zeros, Tensor? bias, Tensor? smooth, float eps, "
        "float qmax) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmos, CPU, m) {
  m.impl("quantize_rows_u8", &quantize_rows_u8);
  m.impl("int8_linear", &int8_linear);
}

TORCH_LIBRARY_IMPL(llmos, MkldnnCPU, m) {  // oneDNN's packed weights dispatch to this key
  m.impl("int8_linear", &int8_linear);
}
