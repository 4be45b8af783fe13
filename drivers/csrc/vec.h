// The vector arithmetic the llmos ops share: AVX-512 where the machine has it (the ops are built
// where they run, with -march=native), else AVX2 with FMA, else plain floats. Every function is
// one fixed sequence of IEEE operations, so an op's bits depend only on the machine's ISA.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace llmos_vec {

#if defined(__AVX512F__)
using vec = __m512;
constexpr int64_t kLanes = 16;
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
inline vec vbroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline void vstore(float* p, vec a) { _mm512_storeu_ps(p, a); }
inline float vsum(vec a) { return _mm512_reduce_add_ps(a); }
#elif defined(__AVX2__) && defined(__FMA__)
using vec = __m256;
constexpr int64_t kLanes = 8;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline void vstore(float* p, vec a) { _mm256_storeu_ps(p, a); }
inline float vsum(vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
#else
using vec = float;
constexpr int64_t kLanes = 1;
inline vec vzero() { return 0.0f; }
inline vec vload(const float* p) { return *p; }
inline vec vfma(vec a, vec b, vec c) { return std::fma(a, b, c); }
inline vec vadd(vec a, vec b) { return a + b; }
inline vec vbroadcast(const float* p) { return *p; }
inline void vstore(float* p, vec a) { *p = a; }
inline float vsum(vec a) { return a; }
#endif

// e^x for x <= 0 (softmax's shifted scores), Cephes' expf: x = n·ln2 + r, e^r by its degree-6
// polynomial, scaled by 2^n; within 2 ulp, and inputs below -87.3 give ~1e-38 rather than 0.
// Written as scalar code that vectorizes in a `#pragma omp simd` loop.
inline float exp_neg(float x) {
  x = x < -87.3365f ? -87.3365f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // rounded to an integer (1.5 · 2^23)
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  union { int32_t i; float f; } scale = {static_cast<int32_t>(n + 127.0f) << 23};  // 2^n, n in [-126, 0]
  return y * scale.f;
}

}  // namespace llmos_vec
