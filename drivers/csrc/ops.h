// The llmos ops that other ops call in C++ (decode_stack.cpp), each defined in its own file.
#pragma once

#include <ATen/ATen.h>

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

}  // namespace llmos_ops
