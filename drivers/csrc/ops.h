// The llmos ops that other ops call in C++ (decode_stack.cpp), each defined in its own file.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace llmos_ops {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);  // opaque.cpp
at::Tensor linear_dot(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                      const c10::optional<at::Tensor>& bias);  // linear_dot.cpp
at::Tensor block_dot(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t n, int64_t bits,
                     const c10::optional<at::Tensor>& bias);  // block_dot.cpp
at::Tensor int8_dot(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& comp, const at::Tensor& scale,
                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& smooth, double eps,
                    double qmax);  // int8_dot.cpp
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                        const at::Tensor& pages, const at::Tensor& lens, double scale,
                        int64_t window);  // paged_attention.cpp

// y [..., n] = run(x's rows [m, K] as one contiguous float32 matrix, m, y's [m, n]) (+ bias): the
// frame of a product op on float32 x [..., K] (linear_dot.cpp, block_dot.cpp).
template <class Run>
at::Tensor over_rows(const at::Tensor& x, int64_t n, const c10::optional<at::Tensor>& bias, Run&& run) {
  const int64_t k = x.size(-1);
  const at::Tensor rows = x.reshape({-1, k}).contiguous();
  const int64_t m = rows.size(0);
  at::Tensor y = at::empty({m, n}, x.options());
  if (m > 0 && n > 0) run(rows.data_ptr<float>(), m, y.data_ptr<float>());
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = n;
  return y.view(sizes);
}

}  // namespace llmos_ops
