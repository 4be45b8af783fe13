// llmos::paged_decode: attention of decode rows (one new token each) over their KV pages, read in
// place through the page tables. The torch path (drivers/attention.py) first gathers every row's
// pages into one padded [B, Hkv, P·S, D] copy of the keys and of the values, then runs SDPA with a
// mask over the padding: each step writes and reads the whole context of every process twice
// more than attention needs. Here each (row, KV head) reads its keys and values once, where they
// lie, and no padding is computed, so a row's result cannot depend on the other rows of its step.
//
// For row b, KV head g and each of its query heads h (heads h share KV head h / (H / Hkv)):
//   s_t = (q_h · k_t) · scale for the row's positions t in [lo, len)
//   out_h = Σ_t e^(s_t - max s) v_t / Σ_t e^(s_t - max s)
// with lo = len - window where a sliding window applies, else 0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"

#include <algorithm>
#include <vector>

#include "vec.h"

namespace {

using namespace llmos_vec;

// Where one row of q or k (d floats) is DV whole vectors, it is held in registers (DV > 0);
// DV = 0 is any width. Both sum in the same order: lanes by fused multiply-adds along d, the
// lanes' sum, then the tail.
template <int DV>
inline float dot(const float* a, const float* b, int64_t d) {
  vec acc = vzero();
  int64_t i = 0;
  if constexpr (DV > 0) {
#pragma GCC unroll 16
    for (int j = 0; j < DV; ++j) acc = vfma(vload(a + j * kLanes), vload(b + j * kLanes), acc);
    return vsum(acc);
  }
  for (; i + kLanes <= d; i += kLanes) acc = vfma(vload(a + i), vload(b + i), acc);
  float s = vsum(acc);
  for (; i < d; ++i) s = std::fma(a[i], b[i], s);
  return s;
}

#if defined(__AVX512F__)
// The lanes' sums of 16 vectors, as one vector (lane j: the sum of v[j]'s lanes), by a fixed tree
// of 45 shuffles and adds rather than 16 separate reductions of 8 each.
inline __m512 sums16(const __m512* v) {
  __m512 a[8], b[4], c[2];
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j)  // per 128-bit block: [v0 0+2, v1 0+2, v0 1+3, v1 1+3]
    a[j] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * j], v[2 * j + 1]), _mm512_unpackhi_ps(v[2 * j], v[2 * j + 1]));
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j)  // per block: the block's sum of v[4j .. 4j+3]
    b[j] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * j], a[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(a[2 * j], a[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
#pragma GCC unroll 2
  for (int j = 0; j < 2; ++j)  // blocks 0+1 and 2+3 of b[2j], then of b[2j+1]
    c[j] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// s[i] = (q · k_i) · scale for 16 positions, q held in DV vectors: each dot by fused
// multiply-adds along d, then the 16 lanes' sums together (sums16).
template <int DV>
inline void dots16(const vec* q, const float* const* keys, int64_t off, float scale, float* s) {
  vec acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    acc[i] = vzero();
#pragma GCC unroll 16
    for (int j = 0; j < DV; ++j) acc[i] = vfma(q[j], vload(keys[i] + off + j * kLanes), acc[i]);
  }
  _mm512_storeu_ps(s, _mm512_mul_ps(sums16(acc), _mm512_set1_ps(scale)));
}
#endif

// Σ x[i] in a fixed order: kLanes running sums (i mod kLanes), their lanes' sum, then the tail.
inline float sum(const float* x, int64_t n) {
  vec acc = vzero();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = vadd(acc, vload(x + i));
  float s = vsum(acc);
  for (; i < n; ++i) s += x[i];
  return s;
}

// One (row, KV head): its query heads' scores over the positions whose key and value rows are
// keys[i] and values[i], their softmax, and the weighted sums of the values into out.
template <int DV>
void attend(const float* qh, int64_t group, const float* const* keys, const float* const* values, int64_t off,
            int64_t n, int64_t d, float scale, float* scores, float* out) {
  for (int64_t h = 0; h < group; ++h) {
    float* s = scores + h * n;
    int64_t i0 = 0;
#if defined(__AVX512F__)
    if constexpr (DV > 0) {  // 16 positions at a time; the rest one by one
      vec q[DV];
#pragma GCC unroll 16
      for (int j = 0; j < DV; ++j) q[j] = vload(qh + h * d + j * kLanes);
      for (; i0 + 16 <= n; i0 += 16) dots16<DV>(q, keys + i0, off, scale, s + i0);
    }
#endif
    for (int64_t i = i0; i < n; ++i) s[i] = dot<DV>(qh + h * d, keys[i] + off, d) * scale;
    float top = s[0];
#pragma omp simd reduction(max : top)
    for (int64_t i = 0; i < n; ++i) top = s[i] > top ? s[i] : top;  // a max is exact in any order
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) s[i] = exp_neg(s[i] - top);
    const float inv = 1.0f / sum(s, n);
    float* o = out + h * d;
    if constexpr (DV > 0) {  // Σ p_i v_i in registers, in the order of i
      vec acc[DV];
#pragma GCC unroll 16
      for (int j = 0; j < DV; ++j) acc[j] = vzero();
      for (int64_t i = 0; i < n; ++i) {
        const vec p = vbroadcast(s + i);
#pragma GCC unroll 16
        for (int j = 0; j < DV; ++j) acc[j] = vfma(p, vload(values[i] + off + j * kLanes), acc[j]);
      }
#pragma GCC unroll 16
      for (int j = 0; j < DV; ++j) vstore(o + j * kLanes, acc[j]);
    } else {  // the same sums through memory (out is zeros on entry)
      for (int64_t i = 0; i < n; ++i) {
        const vec p = vbroadcast(s + i);
        int64_t e = 0;
        for (; e + kLanes <= d; e += kLanes) vstore(o + e, vfma(p, vload(values[i] + off + e), vload(o + e)));
        for (; e < d; ++e) o[e] = std::fma(s[i], values[i][off + e], o[e]);
      }
    }
    for (int64_t e = 0; e < d; ++e) o[e] *= inv;
  }
}

}  // namespace

namespace llmos_ops {  // called by decode_stack.cpp too (ops.h)

at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                        const at::Tensor& pages, const at::Tensor& lens, double scale, int64_t window) {
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 4 && v_pool.sizes() == k_pool.sizes(),
              "paged_decode: q [B, H, D] and pools [pages, page size, KV heads, D] expected");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_pool.scalar_type() == at::kFloat && v_pool.scalar_type() == at::kFloat &&
                  q.device().is_cpu() && k_pool.is_contiguous() && v_pool.is_contiguous(),
              "paged_decode: float32 CPU tensors, contiguous pools");
  const int64_t b_rows = q.size(0), heads = q.size(1), d = q.size(2);
  const int64_t num_pages = k_pool.size(0), page_size = k_pool.size(1), kv_heads = k_pool.size(2);
  TORCH_CHECK(k_pool.size(3) == d && kv_heads > 0 && heads % kv_heads == 0, "paged_decode: head shapes do not match");
  TORCH_CHECK(pages.dim() == 2 && pages.size(0) == b_rows && pages.scalar_type() == at::kLong && lens.dim() == 1 &&
                  lens.size(0) == b_rows && lens.scalar_type() == at::kLong,
              "paged_decode: pages [B, P] and lens [B] of int64 expected");
  const at::Tensor qc = q.contiguous(), pc = pages.contiguous(), lc = lens.contiguous();
  const int64_t width = pc.size(1), group = heads / kv_heads;
  const int64_t* pg = pc.data_ptr<int64_t>();
  const int64_t* ln = lc.data_ptr<int64_t>();
  for (int64_t b = 0; b < b_rows; ++b) {
    TORCH_CHECK(ln[b] >= 0 && ln[b] <= width * page_size, "paged_decode: a row's length exceeds its page table");
    for (int64_t p = 0; p < (ln[b] + page_size - 1) / page_size; ++p)
      TORCH_CHECK(pg[b * width + p] >= 0 && pg[b * width + p] < num_pages, "paged_decode: a page id is out of the pool");
  }
  at::Tensor out = at::zeros({b_rows, heads, d}, q.options());
  const float* qp = qc.data_ptr<float>();
  const float* kp = k_pool.data_ptr<float>();
  const float* vp = v_pool.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, b_rows, 1, [&](int64_t b0, int64_t b1) {  // a row's heads together: its pages are read in order
    std::vector<float> scores;
    std::vector<const float*> keys, values;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t len = ln[b], lo = window > 0 ? std::max<int64_t>(0, len - window) : 0, n = len - lo;
      if (n <= 0) continue;
      scores.resize(group * n);
      keys.resize(n);
      values.resize(n);
      const int64_t* table = pg + b * width;
      for (int64_t t = lo, page = lo / page_size, at = lo % page_size; t < len; ++t) {  // the rows, page by page
        const int64_t row = (table[page] * page_size + at) * kv_heads * d;
        keys[t - lo] = kp + row;
        values[t - lo] = vp + row;
        if (++at == page_size) at = 0, ++page;
      }
      for (int64_t g = 0; g < kv_heads; ++g) {
        const float* qh = qp + (b * heads + g * group) * d;
        float* o = op + (b * heads + g * group) * d;
        if (d == 4 * kLanes) {
          attend<4>(qh, group, keys.data(), values.data(), g * d, n, d, fscale, scores.data(), o);
        } else if (d == 8 * kLanes) {
          attend<8>(qh, group, keys.data(), values.data(), g * d, n, d, fscale, scores.data(), o);
        } else {
          attend<0>(qh, group, keys.data(), values.data(), g * d, n, d, fscale, scores.data(), o);
        }
      }
    }
  });
  return out;
}

}  // namespace llmos_ops

TORCH_LIBRARY_FRAGMENT(llmos, m) {
  m.def("paged_decode(Tensor q, Tensor k_pool, Tensor v_pool, Tensor pages, Tensor lens, float scale, int window) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmos, CPU, m) {
  m.impl("paged_decode", &llmos_ops::paged_decode);
}
