// One row of the int8 activation quantization (drivers/quant.py's int8_matmul_packed), shared by
// llmos::quantize_rows_u8 / int8_linear (quant_rows.cpp) and llmos::int8_dot (int8_dot.cpp).
//
// With v = row * smooth (when given): scale = max(max_k |v_k|, eps) / qmax and
// out[k] = uint8(nearbyint(v_k / scale) + 128). Every step is the same IEEE float32 operation, in
// the same order, as the torch ops it stands for (a max is exact in any order), so the bits are
// the same; tests/test_fused_ops.py checks it.
#pragma once

#include <cmath>
#include <cstdint>

namespace llmos_quant {

inline float quantize_row(const float* row, const float* s, int64_t k, float eps, float qmax, uint8_t* out) {
  // The row's largest |v|, in 16 independent lanes (so that the compiler vectorizes it without
  // reassociating anything: a max is exact in any order).
  float lane[16] = {0.0f};
  bool nan = false;
  int64_t j = 0;
  for (; j + 16 <= k; j += 16) {
    for (int l = 0; l < 16; ++l) {
      const float a = std::fabs(s ? row[j + l] * s[j + l] : row[j + l]);
      nan |= a != a;
      lane[l] = a > lane[l] ? a : lane[l];
    }
  }
  float top = 0.0f;
  for (; j < k; ++j) {
    const float a = std::fabs(s ? row[j] * s[j] : row[j]);
    nan |= a != a;
    top = a > top ? a : top;
  }
  for (int l = 0; l < 16; ++l) top = lane[l] > top ? lane[l] : top;
  if (nan) top = std::nanf("");  // NaN propagates, as amax does
  const float scale = (std::isnan(top) || top > eps ? top : eps) / qmax;
  if (s) {
    for (int64_t i = 0; i < k; ++i) out[i] = static_cast<uint8_t>(std::nearbyint(row[i] * s[i] / scale) + 128.0f);
  } else {
    for (int64_t i = 0; i < k; ++i) out[i] = static_cast<uint8_t>(std::nearbyint(row[i] / scale) + 128.0f);
  }
  return scale;
}

}  // namespace llmos_quant
