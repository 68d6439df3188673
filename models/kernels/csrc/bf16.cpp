// bf16 inference's BatchNorm + ReLU rows (bf16_rows.h): the entry point, its checks, and the
// emulated build (plain C++ any x86-64 CPU runs; the rounding written out in integers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "bf16_rows.h"

namespace bf16 {

bool affine_relu_emulated(const Rows& r, int64_t p0, int64_t p1) {
  bool finite = true;
  for (int64_t p = p0; p < p1; ++p) {
    const uint16_t* xp = r.x + p * r.C;
    for (int64_t c = 0; c < r.C; ++c) finite &= (xp[c] & 0x7f80u) != 0x7f80u;
    for (int k = 0; k < r.k; ++k) {
      uint16_t* yp = r.y[k] + p * r.C;
      for (int64_t c = 0; c < r.C; ++c) {
        const float a = widen(xp[c]) * r.scale[k][c] + r.shift[k][c];
        yp[c] = round_bits(a < 0.f ? 0.f : a);  // NaN fails the test: kept, as torch.relu keeps it
      }
    }
  }
  return finite;
}

void add_emulated(uint16_t* y, const uint16_t* r, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) y[i] = round_bits(widen(y[i]) + widen(r[i]));
}

}  // namespace bf16

bool cpu_has_avx512_bf16() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

namespace {

void check_bf16(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.dim() == 5 &&
                  t.is_contiguous(at::MemoryFormat::ChannelsLast3d),
              what, " must be a channels-last-3d bf16 CPU tensor");
}

}  // namespace

// ([relu(x * scale_k + shift_k) for each k], whether x is finite): x a channels-last-3d bf16 CPU
// tensor, one or two (scale, shift) pairs of C fp32 floats; native: the AVX512-BF16 build (the
// CPU must have it)
std::tuple<std::vector<at::Tensor>, bool> affine_relu_bf16(const at::Tensor& x, std::vector<at::Tensor> scales,
                                         std::vector<at::Tensor> shifts, bool native) {
  check_bf16(x, "affine_relu_bf16: x");
  TORCH_CHECK(!scales.empty() && scales.size() <= 2 && scales.size() == shifts.size(),
              "affine_relu_bf16: one or two (scale, shift) pairs");
  TORCH_CHECK(!native || cpu_has_avx512_bf16(), "affine_relu_bf16: this CPU has no AVX512-BF16");
  const int64_t C = x.size(1), pixels = C ? x.numel() / C : 0;
  bf16::Rows r{reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), C, (int)scales.size(), {}, {}, {}};
  std::vector<at::Tensor> out;
  for (size_t k = 0; k < scales.size(); ++k) {
    for (const at::Tensor* t : {&scales[k], &shifts[k]})
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == C,
                  "affine_relu_bf16: scale and shift must be ", C, " contiguous fp32 CPU floats");
    r.scale[k] = scales[k].data_ptr<float>();
    r.shift[k] = shifts[k].data_ptr<float>();
    out.push_back(at::empty_like(x, at::MemoryFormat::ChannelsLast3d));
    r.y[k] = reinterpret_cast<uint16_t*>(out.back().data_ptr<at::BFloat16>());
  }
  const bf16::RowsFn fn = native ? bf16::affine_relu_avx512bf16 : bf16::affine_relu_emulated;
  // ~16 KB of output per task at least, so small tensors stay on one thread
  std::atomic<bool> finite{true};
  at::parallel_for(0, pixels, std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)), [&](int64_t p0, int64_t p1) {
    if (!fn(r, p0, p1)) finite.store(false, std::memory_order_relaxed);
  });
  return {out, finite.load()};
}

// y += r in place, both channels-last-3d bf16 CPU tensors of one shape; returns y
at::Tensor add_bf16_(at::Tensor y, const at::Tensor& r, bool native) {
  check_bf16(y, "add_bf16_: y");
  check_bf16(r, "add_bf16_: r");
  TORCH_CHECK(y.sizes() == r.sizes(), "add_bf16_: y is ", y.sizes(), " and r ", r.sizes());
  TORCH_CHECK(!native || cpu_has_avx512_bf16(), "add_bf16_: this CPU has no AVX512-BF16");
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  const auto* rp = reinterpret_cast<const uint16_t*>(r.data_ptr<at::BFloat16>());
  const bf16::AddFn fn = native ? bf16::add_avx512bf16 : bf16::add_emulated;
  at::parallel_for(0, y.numel(), 16384, [&](int64_t i0, int64_t i1) { fn(yp, rp, i0, i1); });
  return y;
}

namespace {

struct PoolGeometry {
  int64_t T, H, W, C, OT, OH, OW;
  int64_t kernel[3], stride[3], padding[3];
};

// output row r = (n, t, h) of a bf16 max pool, OW pixels of C channels; built for AVX-512,
// AVX2 and plain x86-64, the CPU's picked at load (GCC's target_clones)
__attribute__((target_clones("avx512f", "avx2", "default")))
void max_pool_row(const uint16_t* x, uint16_t* y, const PoolGeometry& g, int64_t r, float* best) {
  const int64_t n = r / (g.OT * g.OH), t = r / g.OH % g.OT, h = r % g.OH;
  const int64_t t0 = t * g.stride[0] - g.padding[0], h0 = h * g.stride[1] - g.padding[1];
  const int64_t C = g.C;
  for (int64_t w = 0; w < g.OW; ++w) {
    const int64_t w0 = w * g.stride[2] - g.padding[2];
    for (int64_t c = 0; c < C; ++c) best[c] = -std::numeric_limits<float>::infinity();
    for (int64_t it = std::max<int64_t>(t0, 0); it < std::min(t0 + g.kernel[0], g.T); ++it)
      for (int64_t ih = std::max<int64_t>(h0, 0); ih < std::min(h0 + g.kernel[1], g.H); ++ih)
        for (int64_t iw = std::max<int64_t>(w0, 0); iw < std::min(w0 + g.kernel[2], g.W); ++iw) {
          const uint16_t* in = x + (((n * g.T + it) * g.H + ih) * g.W + iw) * C;
          for (int64_t c = 0; c < C; ++c) {
            const float v = bf16::widen(in[c]);
            best[c] = (v > best[c] || v != v) ? v : best[c];  // a NaN, once taken, stays: nothing exceeds it
          }
        }
    uint16_t* out = y + (r * g.OW + w) * C;
    for (int64_t c = 0; c < C; ++c) {
      uint32_t u;
      __builtin_memcpy(&u, best + c, 4);
      out[c] = (uint16_t)(u >> 16);  // a widened bf16: its own bits
    }
  }
}

}  // namespace

// max_pool3d over a channels-last-3d bf16 CPU tensor, no indices (inference): kernel, stride and
// padding of three each, no dilation, floor sizes. A window's NaN is its maximum, as PyTorch's
// max pool has it; the maximum is one of the inputs, so it is written as those bits, unrounded.
// PyTorch's own bf16 max pool over channels last took 8-11 ms on MF-Net's stem output at batch
// 4 (4x16x16x112x112), and autocast runs it in fp32 with a cast each way (docs/kernels-log.md).
at::Tensor max_pool_bf16(const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                         std::vector<int64_t> padding) {
  check_bf16(x, "max_pool_bf16: x");
  TORCH_CHECK(kernel.size() == 3 && stride.size() == 3 && padding.size() == 3,
              "max_pool_bf16: kernel, stride and padding of three each");
  PoolGeometry g{x.size(2), x.size(3), x.size(4), x.size(1), 0, 0, 0, {}, {}, {}};
  int64_t* out_size[3] = {&g.OT, &g.OH, &g.OW};
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(kernel[d] > 0 && stride[d] > 0 && padding[d] >= 0 && 2 * padding[d] <= kernel[d],
                "max_pool_bf16: kernel and stride positive, padding at most half the kernel");
    g.kernel[d] = kernel[d], g.stride[d] = stride[d], g.padding[d] = padding[d];
    *out_size[d] = (x.size(2 + d) + 2 * padding[d] - kernel[d]) / stride[d] + 1;
    TORCH_CHECK(*out_size[d] > 0, "max_pool_bf16: the input is smaller than the kernel");
  }
  at::Tensor y = at::empty({x.size(0), g.C, g.OT, g.OH, g.OW},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  at::parallel_for(0, x.size(0) * g.OT * g.OH, std::max<int64_t>(1, 16384 / std::max<int64_t>(g.OW * g.C, 1)),
                   [&](int64_t r0, int64_t r1) {
    std::vector<float> best(g.C);
    for (int64_t r = r0; r < r1; ++r) max_pool_row(xp, yp, g, r, best.data());
  });
  return y;
}
