// bf16 inference's BatchNorm + ReLU rows (bf16_rows.h): the entry point, its checks, and the
// emulated build (plain C++ any x86-64 CPU runs; the rounding written out in integers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
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
