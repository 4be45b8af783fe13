// llmos.DecodeStack: every decoder layer of a Llama-shaped model over one step of decode rows,
// in one call. drivers/lean.py runs the same layers op by op from Python, and drivers/compiled.py
// through inductor's generated code; either way a decode step of the default model makes some
// 400 calls across Python and the dispatcher for 30 layers whose vectors have 576 floats. Those
// calls took more of a step at one row than its products did (bench/step_profile.py).
//
// Here each layer is the same sequence of the same ops, called in C++ on the same tensors:
//   x = rms_norm(h); qkv = x·Wqkv; q, k = rope(q, k); k, v -> the pool at the rows' slots;
//   a = paged_decode(q); h = h + a·Wo; x = rms_norm(h); g, u = x·Wgu; h = h + (silu(g)·u)·Wd
// with llmos's own products (linear_dot.cpp, block_dot.cpp, int8_dot.cpp), its RMSNorm (opaque.cpp), its decode
// attention (paged_attention.cpp) and ATen's silu, and RoPE as drivers/lean_ops.py's
// x·cos + roll(x)·sin', each product rounded as the op rounds it (-ffp-contract=off). So the
// bits are the direct path's (tests/test_decode_stack.py); drivers/stack.py decides where it
// serves. The products and attention keep their op names in torch.profiler's record.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/record_function.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "ops.h"

namespace {

constexpr int64_t kSlots = 5;  // tensors per product: packed, comp (block_dot: scales), scale, bias, smooth (empty: none)
constexpr int64_t kProducts = 4;  // q/k/v, o, gate/up, down
constexpr int64_t kTensorsPerLayer = 2 + kProducts * kSlots;  // and the two norms' weights
constexpr int64_t kIntsPerLayer = 1 + 2 * kProducts;  // window, then each product's kind and width
constexpr int64_t kFloatsPerLayer = 3;  // the norms' eps, attention's scale
constexpr int64_t kHeader = 5;  // ints before the layers'
constexpr int64_t kSplitRows = 4;  // rows from which SiLU·mul is shared among the threads
// linear_dot's packed fp32, int8_dot's tiles, block_dot's 4- and 8-bit blocks of fp32 weights (linear_dot's bits)
enum Kind : int64_t { kFloatDot = 0, kInt8Dot = 1, kBlocks4 = 2, kBlocks8 = 3 };

c10::optional<at::Tensor> given(const at::Tensor& t) {
  return t.numel() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

struct Product {
  int64_t kind = kFloatDot, n = 0;
  at::Tensor packed, comp, scale;
  c10::optional<at::Tensor> bias, smooth;
};

// Python's GIL, held through a call (torch releases it for a method of a custom class). Released,
// the daemon's other Python threads (its event loop, streaming tokens to clients) run beside the
// kernel's OpenMP team on the same cores for the whole step, and every product's barrier waits on
// a worker they preempted: 16 fp32 processes through the daemon ran at 0.80x the in-process
// kernel so, and at 0.92-0.95x with the GIL held, as it is through most of a step op by op.
struct HoldGil {
  PyGILState_STATE state;
  HoldGil() : state(PyGILState_Ensure()) {}
  ~HoldGil() { PyGILState_Release(state); }
  HoldGil(const HoldGil&) = delete;
  HoldGil& operator=(const HoldGil&) = delete;
};

struct Layer {
  at::Tensor norm1, norm2, k_pool, v_pool;
  double eps1 = 0, eps2 = 0, scaling = 0;
  int64_t window = 0;
  Product qkv, o, gate_up, down;
};

}  // namespace

class DecodeStack : public torch::CustomClassHolder {
 public:
  // weights: per layer its two norms' weights, then kSlots tensors per product; kv: per layer its
  // key and value pools; ints: hidden, heads, KV heads, head dim, intermediate, then per layer
  // kIntsPerLayer; floats: int8 eps, qmax, then per layer kFloatsPerLayer.
  DecodeStack(std::vector<at::Tensor> weights, std::vector<at::Tensor> kv, std::vector<int64_t> ints,
              std::vector<double> floats) {
    const int64_t layers = static_cast<int64_t>(kv.size()) / 2;
    TORCH_CHECK(layers > 0 && static_cast<int64_t>(kv.size()) == 2 * layers &&
                    static_cast<int64_t>(weights.size()) == layers * kTensorsPerLayer &&
                    static_cast<int64_t>(ints.size()) == kHeader + layers * kIntsPerLayer &&
                    static_cast<int64_t>(floats.size()) == 2 + layers * kFloatsPerLayer,
                "DecodeStack: ", weights.size(), " weights, ", kv.size(), " pools, ", ints.size(), " ints and ",
                floats.size(), " floats do not describe whole layers");
    hidden_ = ints[0], heads_ = ints[1], kv_heads_ = ints[2], d_ = ints[3], inter_ = ints[4];
    TORCH_CHECK(hidden_ > 0 && kv_heads_ > 0 && heads_ % kv_heads_ == 0 && d_ > 0 && d_ % 2 == 0 && inter_ > 0,
                "DecodeStack: bad head shapes");
    eps8_ = floats[0], qmax_ = floats[1];
    const int64_t widths[kProducts] = {(heads_ + 2 * kv_heads_) * d_, hidden_, 2 * inter_, hidden_};
    for (int64_t l = 0; l < layers; ++l) {
      Layer y;
      const at::Tensor* w = weights.data() + l * kTensorsPerLayer;
      const int64_t* c = ints.data() + kHeader + l * kIntsPerLayer;
      const double* f = floats.data() + 2 + l * kFloatsPerLayer;
      y.norm1 = w[0], y.norm2 = w[1], y.k_pool = kv[2 * l], y.v_pool = kv[2 * l + 1];
      y.eps1 = f[0], y.eps2 = f[1], y.scaling = f[2], y.window = c[0];
      TORCH_CHECK(y.k_pool.dim() == 4 && y.k_pool.scalar_type() == at::kFloat && y.k_pool.is_contiguous() &&
                      y.v_pool.sizes() == y.k_pool.sizes() && y.v_pool.is_contiguous() &&
                      y.k_pool.size(2) == kv_heads_ && y.k_pool.size(3) == d_,
                  "DecodeStack: layer ", l, "'s pools are not float32 [pages, page size, ", kv_heads_, ", ", d_, "]");
      Product* ps[kProducts] = {&y.qkv, &y.o, &y.gate_up, &y.down};
      for (int64_t i = 0; i < kProducts; ++i) {
        Product& p = *ps[i];
        const at::Tensor* t = w + 2 + i * kSlots;
        p.kind = c[1 + 2 * i], p.n = c[2 + 2 * i];
        p.packed = t[0], p.comp = t[1], p.scale = t[2], p.bias = given(t[3]), p.smooth = given(t[4]);
        TORCH_CHECK(p.n == widths[i] && (p.kind == kFloatDot || p.kind == kInt8Dot || p.kind == kBlocks4 ||
                                         p.kind == kBlocks8),
                    "DecodeStack: layer ", l, "'s product ", i, " is not a known kind of ", widths[i], " outputs");
      }
      layers_.push_back(std::move(y));
    }
    slots_ = layers_[0].k_pool.size(0) * layers_[0].k_pool.size(1);
  }

  // h [1, T, hidden] after the layers, for T decode rows with RoPE's cos and signed sin [T, 1, D]
  // (drivers/lean_ops.py's Turn), each row's KV slot, page table [T, P] and length [T].
  at::Tensor run(at::Tensor h_in, at::Tensor cos, at::Tensor sin, at::Tensor slots, at::Tensor pages,
                 at::Tensor lens) {
    TORCH_CHECK(h_in.dim() == 3 && h_in.size(0) == 1 && h_in.size(2) == hidden_ && h_in.scalar_type() == at::kFloat &&
                    h_in.device().is_cpu(),
                "DecodeStack.run: h must be float32 [1, T, ", hidden_, "]");
    const int64_t t = h_in.size(1), qk = heads_ + kv_heads_, row = (qk + kv_heads_) * d_, kvw = kv_heads_ * d_;
    TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.numel() == t * d_ &&
                    sin.numel() == t * d_,
                "DecodeStack.run: cos and sin must be float32 [T, 1, ", d_, "]");
    TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 1 && slots.size(0) == t,
                "DecodeStack.run: slots must be int64 [T]");
    const at::Tensor sl = slots.contiguous(), cc = cos.contiguous(), sc = sin.contiguous();
    const int64_t* sp = sl.data_ptr<int64_t>();
    for (int64_t r = 0; r < t; ++r)
      TORCH_CHECK(sp[r] >= 0 && sp[r] < slots_, "DecodeStack.run: a slot is outside the pool of ", slots_);
    const float* cp = cc.data_ptr<float>();
    const float* snp = sc.data_ptr<float>();
    const HoldGil gil;
    at::Tensor h = h_in.clone(at::MemoryFormat::Contiguous);
    for (const Layer& y : layers_) {
      const at::Tensor qkv = product(y.qkv, llmos_ops::rms_norm(h, y.norm1, y.eps1)).contiguous();
      at::Tensor rot = at::empty({t, qk, d_}, h.options());  // q and k heads, turned
      const float* src = qkv.data_ptr<float>();
      float* dst = rot.data_ptr<float>();
      float* kp = y.k_pool.data_ptr<float>();
      float* vp = y.v_pool.data_ptr<float>();
      const int64_t half = d_ / 2;
      for (int64_t r = 0; r < t; ++r) {
        const float* c = cp + r * d_;
        const float* s = snp + r * d_;
        for (int64_t hd = 0; hd < qk; ++hd) {
          const float* x = src + r * row + hd * d_;
          float* o = dst + (r * qk + hd) * d_;
          for (int64_t j = 0; j < d_; ++j) {
            const float a = x[j] * c[j];
            const float b = x[j < half ? j + half : j - half] * s[j];
            o[j] = a + b;
          }
        }
        std::memcpy(kp + sp[r] * kvw, dst + (r * qk + heads_) * d_, kvw * sizeof(float));
        std::memcpy(vp + sp[r] * kvw, src + r * row + qk * d_, kvw * sizeof(float));
      }
      at::Tensor att;
      {
        RECORD_FUNCTION("llmos::paged_decode", std::vector<c10::IValue>());
        att = llmos_ops::paged_decode(rot.narrow(1, 0, heads_), y.k_pool, y.v_pool, pages, lens, y.scaling, y.window);
      }
      h.add_(product(y.o, att.view({1, t, heads_ * d_})));
      const at::Tensor gu = product(y.gate_up, llmos_ops::rms_norm(h, y.norm2, y.eps2));
      const at::Tensor act = silu_mul(gu, t);
      h.add_(product(y.down, act));
    }
    return h;
  }

 private:
  // silu(g) · u of gu = [g | u] [1, T, 2 · inter], as ATen computes it. ATen runs an op of fewer
  // than 32,768 elements on one thread (16 rows of the default model's 1,536 are 24,576), so
  // from kSplitRows rows on the rows are shared among the threads, each running the same two
  // ops on its own rows: element by element, the same bits.
  at::Tensor silu_mul(const at::Tensor& gu, int64_t t) const {
    if (t < kSplitRows || at::get_num_threads() < 2)
      return at::silu(gu.narrow(-1, 0, inter_)).mul_(gu.narrow(-1, inter_, inter_));
    at::Tensor act = at::empty({1, t, inter_}, gu.options());
    const at::ThreadLocalState caller;  // inference mode and the rest, for the ops on the other threads
    at::parallel_for(0, t, (t + at::get_num_threads() - 1) / at::get_num_threads(), [&](int64_t r0, int64_t r1) {
      const at::ThreadLocalStateGuard same(caller);
      const at::Tensor rows = gu.narrow(1, r0, r1 - r0);
      at::Tensor out = act.narrow(1, r0, r1 - r0);
      at::silu_out(out, rows.narrow(-1, 0, inter_));
      out.mul_(rows.narrow(-1, inter_, inter_));
    });
    return act;
  }

  at::Tensor product(const Product& p, const at::Tensor& x) const {
    if (p.kind == kFloatDot) {
      RECORD_FUNCTION("llmos::linear_dot", std::vector<c10::IValue>());
      return llmos_ops::linear_dot(x, p.packed, p.n, p.bias);
    }
    if (p.kind == kBlocks4 || p.kind == kBlocks8) {
      RECORD_FUNCTION("llmos::block_dot", std::vector<c10::IValue>());
      return llmos_ops::block_dot(x, p.packed, p.comp, p.n, p.kind == kBlocks4 ? 4 : 8, p.bias);
    }
    RECORD_FUNCTION("llmos::int8_dot", std::vector<c10::IValue>());
    return llmos_ops::int8_dot(x, p.packed, p.comp, p.scale, p.bias, p.smooth, eps8_, qmax_);
  }

  std::vector<Layer> layers_;
  int64_t hidden_ = 0, heads_ = 0, kv_heads_ = 0, d_ = 0, inter_ = 0, slots_ = 0;
  double eps8_ = 0, qmax_ = 0;
};

TORCH_LIBRARY_FRAGMENT(llmos, m) {
  m.class_<DecodeStack>("DecodeStack")
      .def(torch::init<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<int64_t>, std::vector<double>>())
      .def("run", &DecodeStack::run);
}
