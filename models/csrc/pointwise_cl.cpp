// MF-Net's pre-activation pointwise conv in inference, channels last, in one pass:
//   y = W relu(x * scale + shift) (+ residual)
// with the BatchNorm + ReLU before the conv applied as each block of pixels is read, and the
// residual added as each output pixel is written. Run as PyTorch runs them, that is three passes
// over memory (BatchNorm + ReLU, the conv, the add), and at MF-Net's first two stages these
// convs move more bytes than they do multiply-adds: a pixel of conv2's 96 -> 24 conv is 96
// floats read for 2304 multiply-adds, about as long at this machine's memory rate as at its FMA
// rate. docs/fiber-kernel.md has the measured effect.
//
// This file holds the entry points, the packing and the AVX2 build; the register blocks are in
// pointwise_kernels.h, the layout in pointwise_cl.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <immintrin.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "fiber_cl.h"
#include "pointwise_cl.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "fiber_cl_kernels.h"
#include "pointwise_kernels.h"

namespace pointwise {
void run_avx2(const Run& r) { run<fiber::Avx2>(r); }
void multiplex_avx2(const Mux& m) { multiplex<fiber::Avx2>(m); }
}  // namespace pointwise
#pragma GCC pop_options

namespace {

bool cl_float(const at::Tensor& t) {
  return t.dim() == 5 && t.scalar_type() == at::kFloat && t.device().is_cpu() &&
         t.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

// a per-channel scale or shift: n contiguous fp32 values on the CPU
bool affine(const std::optional<at::Tensor>& t, int64_t n) {
  return t && t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == n;
}

}  // namespace

// Output channels per chunk of a path's packed weights: 3 vectors ("avx2" 24, "avx512" and
// "avx512-emulated" 48)
int64_t chunk_of(const std::string& path) { return 3 * fiber::lanes_to_run(path); }

// A 1x1x1 conv's weight (CO, K, 1, 1, 1) in a path's layout: (chunks, K, C), C = chunk_of(path),
// chunk c's column j output channel C c + j, zero past CO
at::Tensor pack_pointwise(const at::Tensor& weight, const std::string& path) {
  TORCH_CHECK(weight.dim() == 5 && weight.size(2) == 1 && weight.size(3) == 1 && weight.size(4) == 1 &&
              weight.scalar_type() == at::kFloat && weight.device().is_cpu(),
              "pointwise: the weight must be a CPU fp32 (CO, K, 1, 1, 1) tensor");
  const int64_t CO = weight.size(0), K = weight.size(1), C = chunk_of(path);
  const int64_t chunks = (CO + C - 1) / C;
  auto padded = at::zeros({chunks * C, K}, weight.options());
  padded.narrow(0, 0, CO).copy_(weight.reshape({CO, K}));
  // (chunks, C, K) -> (chunks, K, C)
  return padded.reshape({chunks, C, K}).transpose(1, 2).contiguous();
}

// whether `packed` is a path's packing of a K -> cout conv
bool packed_for(const at::Tensor& packed, int64_t K, int64_t cout, int64_t C) {
  return packed.is_contiguous() && packed.scalar_type() == at::kFloat && packed.dim() == 3 &&
         packed.size(0) == (cout + C - 1) / C && packed.size(1) == K && packed.size(2) == C;
}

// y = conv1x1x1(relu(x * scale + shift), stride) + residual, every tensor channels-last-3d fp32
// on the CPU; scale/shift (per input channel) and residual (y's shape) optional; packed by
// pack_pointwise for `path`
at::Tensor pointwise_cl(const at::Tensor& x, const at::Tensor& packed, int64_t cout, std::vector<int64_t> stride,
                        const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                        const std::optional<at::Tensor>& residual, const std::string& path) {
  TORCH_CHECK(cl_float(x), "pointwise: x must be a channels-last-3d fp32 CPU tensor");
  const int64_t K = x.size(1), C = chunk_of(path);
  TORCH_CHECK(K > 0, "pointwise: x has no channels");
  TORCH_CHECK(cout > 0 && packed_for(packed, K, cout, C),
              "pointwise: the packed weight does not match x's channels, cout and the path");
  TORCH_CHECK(scale.has_value() == shift.has_value(), "pointwise: scale and shift go together");
  if (scale)
    TORCH_CHECK(affine(scale, K) && affine(shift, K),
                "pointwise: scale and shift must be fp32 with one value per input channel");
  TORCH_CHECK(stride.size() == 3 && stride[0] >= 1 && stride[1] >= 1 && stride[2] >= 1,
              "pointwise: stride must be three positive integers");
  const int64_t T = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t To = T ? (T - 1) / stride[0] + 1 : 0, Ho = H ? (H - 1) / stride[1] + 1 : 0,
                Wo = W ? (W - 1) / stride[2] + 1 : 0;
  auto y = at::empty({x.size(0), cout, To, Ho, Wo},
                     x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  if (residual)
    TORCH_CHECK(cl_float(*residual) && residual->sizes() == y.sizes(),
                "pointwise: the residual must be channels-last-3d fp32 in the output's shape");
  const pointwise::Run r{x.data_ptr<float>(), packed.data_ptr<float>(), y.data_ptr<float>(),
                         residual ? residual->data_ptr<float>() : nullptr,
                         scale ? scale->data_ptr<float>() : nullptr, shift ? shift->data_ptr<float>() : nullptr,
                         y.numel() / cout, (int)K, (int)cout, (int)T, (int)H, (int)W, (int)To, (int)Ho, (int)Wo,
                         (int)stride[0], (int)stride[1], (int)stride[2]};
  if (r.pixels == 0) return y;
  if (path == "avx2") pointwise::run_avx2(r);
  else if (path == "avx512") pointwise::run_avx512(r);
  else pointwise::run_avx512_on_avx2(r);
  return y;
}

// MF-Net's multiplexer in inference (y = x + conv_i2(conv_i1(x)), each a BatchNorm + ReLU + 1x1x1
// conv at stride 1): x channels-last-3d fp32 with K channels, packed1 (pack_pointwise for
// `path`) K -> M, packed2 M -> K, each BatchNorm as scale and shift per input channel
at::Tensor multiplexer_cl(const at::Tensor& x, const at::Tensor& packed1, int64_t mid, const at::Tensor& scale1,
                          const at::Tensor& shift1, const at::Tensor& packed2, const at::Tensor& scale2,
                          const at::Tensor& shift2, const std::string& path) {
  TORCH_CHECK(cl_float(x), "multiplexer: x must be a channels-last-3d fp32 CPU tensor");
  const int64_t K = x.size(1), C = chunk_of(path);
  TORCH_CHECK(K > 0 && mid > 0, "multiplexer: no channels");
  TORCH_CHECK(packed_for(packed1, K, mid, C) && packed_for(packed2, mid, K, C),
              "multiplexer: a packed weight does not match x's channels, mid and the path");
  TORCH_CHECK(affine(scale1, K) && affine(shift1, K) && affine(scale2, mid) && affine(shift2, mid),
              "multiplexer: scale and shift must be fp32 with one value per input channel");
  auto y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  const pointwise::Mux m{x.data_ptr<float>(), packed1.data_ptr<float>(), scale1.data_ptr<float>(),
                         shift1.data_ptr<float>(), (int)mid, packed2.data_ptr<float>(), scale2.data_ptr<float>(),
                         shift2.data_ptr<float>(), y.data_ptr<float>(), x.numel() / K, (int)K};
  if (m.pixels == 0) return y;
  if (path == "avx2") pointwise::multiplex_avx2(m);
  else if (path == "avx512") pointwise::multiplex_avx512(m);
  else pointwise::multiplex_avx512_on_avx2(m);
  return y;
}
