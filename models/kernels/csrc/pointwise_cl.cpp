// MF-Net's pre-activation pointwise conv in inference, channels last, in one pass:
//   y = W relu(x * scale + shift) (+ residual)
// with the BatchNorm + ReLU before the conv applied as each block of pixels is read, and the
// residual added as each output pixel is written. Run as PyTorch runs them, that is three passes
// over memory (BatchNorm + ReLU, the conv, the add), and at MF-Net's first two stages these
// convs move more bytes than they do multiply-adds: a pixel of conv2's 96 -> 24 conv is 96
// floats read for 2304 multiply-adds, about as long at this machine's memory rate as at its FMA
// rate. docs/kernels-log.md has the measured effect.
//
// This file holds the entry points, the packing and the AVX2 build; the register blocks are in
// pointwise_kernels.h, the layout in pointwise_cl.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "fiber_cl.h"
#include "isa.h"
#include "pointwise_cl.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "fiber_cl_kernels.h"
#include "pointwise_kernels.h"

POINTWISE_ENTRY_POINTS(avx2, fiber::Avx2)
namespace pointwise {
void activate_avx2(const float* x, float* out, int K, const float* scale, const float* shift) {
  activate<fiber::Avx2>(x, out, K, scale, shift);
}
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

// A 1x1x1 conv's weight (CO, K, 1, 1, 1) in a path's layout: (chunks, K, C), C = isa.pointwise_chunk()
// (3 vectors: 24 on AVX2, 48 on AVX-512),
// chunk c's column j output channel C c + j, zero past CO. transposed: the packing of the
// weight's transpose (K, CO), the conv from grad y to the input's gradient. Written in one pass:
// through zeros, a copy and a transposed copy, a training step's 80 packings took 13 ms.
at::Tensor pack_pointwise(const at::Tensor& weight, const kernels::Isa& isa, bool transposed) {
  TORCH_CHECK(weight.dim() == 5 && weight.size(2) == 1 && weight.size(3) == 1 && weight.size(4) == 1 &&
              weight.scalar_type() == at::kFloat && weight.device().is_cpu(),
              "pointwise: the weight must be a CPU fp32 (CO, K, 1, 1, 1) tensor");
  const auto w = weight.contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);  // w[o][k]: output channel o, input k
  const int64_t CO = transposed ? cols : rows, K = transposed ? rows : cols, C = isa.pointwise_chunk();
  const int64_t chunks = (CO + C - 1) / C;
  auto packed = at::empty({chunks, K, C}, weight.options());
  const float* src = w.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  // one thread below 16K floats: waking the pool cost more than MF-Net's smaller packings
  at::parallel_for(0, chunks * K, std::max<int64_t>(1, 16384 / C), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t chunk = i / K, k = i % K;
      float* row = dst + i * C;
      for (int64_t j = 0; j < C; ++j) {
        const int64_t co = chunk * C + j;
        row[j] = co >= CO ? 0.f : transposed ? src[k * cols + co] : src[co * cols + k];
      }
    }
  });
  return packed;
}

// whether `packed` is a path's packing of a K -> cout conv
bool packed_for(const at::Tensor& packed, int64_t K, int64_t cout, int64_t C) {
  return packed.is_contiguous() && packed.scalar_type() == at::kFloat && packed.dim() == 3 &&
         packed.size(0) == (cout + C - 1) / C && packed.size(1) == K && packed.size(2) == C;
}

// y = conv1x1x1(relu(x * scale + shift), stride) + residual, every tensor channels-last-3d fp32
// on the CPU; scale/shift (per input channel) and residual (y's shape) optional; packed by
// pack_pointwise for the same path
at::Tensor pointwise_cl(const at::Tensor& x, const at::Tensor& packed, int64_t cout, std::vector<int64_t> stride,
                        const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                        const std::optional<at::Tensor>& residual, const kernels::Isa& isa) {
  TORCH_CHECK(cl_float(x), "pointwise: x must be a channels-last-3d fp32 CPU tensor");
  const int64_t K = x.size(1), C = isa.pointwise_chunk();
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
  isa.pointwise_run(r);
  return y;
}

// MF-Net's multiplexer in inference (y = x + conv_i2(conv_i1(x)), each a BatchNorm + ReLU + 1x1x1
// conv at stride 1): x channels-last-3d fp32 with K channels, packed1 (pack_pointwise for
// `path`) K -> M, packed2 M -> K, each BatchNorm as scale and shift per input channel
at::Tensor multiplexer_cl(const at::Tensor& x, const at::Tensor& packed1, int64_t mid, const at::Tensor& scale1,
                          const at::Tensor& shift1, const at::Tensor& packed2, const at::Tensor& scale2,
                          const at::Tensor& shift2, const kernels::Isa& isa) {
  TORCH_CHECK(cl_float(x), "multiplexer: x must be a channels-last-3d fp32 CPU tensor");
  const int64_t K = x.size(1), C = isa.pointwise_chunk();
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
  isa.pointwise_multiplex(m);
  return y;
}

// The threads' sums of outer products (M x ldc each, Outer's layout) added into a 1x1x1 conv's
// weight gradient (CO, K, 1, 1, 1): c's rows are grad y's channels where k_wide, else x's
static at::Tensor summed_outer(const std::vector<std::vector<float>>& partial, bool k_wide, int64_t CO, int64_t K,
                               int64_t ldc, const at::TensorOptions& options) {
  auto grad = at::empty({CO, K, 1, 1, 1}, options);
  float* out = grad.data_ptr<float>();
  std::vector<const float*> sums;
  for (const auto& c : partial)
    if (!c.empty()) sums.push_back(c.data());
  at::parallel_for(0, CO, 16, [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t at = k_wide ? co * ldc + k : k * ldc + co;
        float total = 0.f;
        for (const float* c : sums) total += c[at];
        out[co * K + k] = total;
      }
  });
  return grad;
}

// The weight's gradient of y = conv1x1x1(x, stride) from grad y: (CO, K, 1, 1, 1) = sum over the
// output pixels of gy[p]^T x[the input pixel p reads], x and gy channels-last-3d fp32 on the CPU.
// The wider of K and CO runs along the vectors. Tasks are blocks of pixels, each thread sums
// into a buffer of its own, and the buffers are added at the end. oneDNN's weight gradient of
// MF-Net's 1x1x1 convs ran at 60-150 GMAC/s on the AVX-512 CPU, and MKL's GEMM (torch.mm) at
// 50-95: on AMD CPUs it does not take its AVX-512 code (docs/kernels-log.md).
at::Tensor grad_weight_pointwise(const at::Tensor& x, const at::Tensor& gy, std::vector<int64_t> stride,
                                 const kernels::Isa& isa, const std::optional<at::Tensor>& scale,
                                 const std::optional<at::Tensor>& shift) {
  TORCH_CHECK(cl_float(x) && cl_float(gy), "pointwise: x and grad must be channels-last-3d fp32 CPU tensors");
  TORCH_CHECK(stride.size() == 3 && stride[0] >= 1 && stride[1] >= 1 && stride[2] >= 1,
              "pointwise: stride must be three positive integers");
  const int64_t K = x.size(1), CO = gy.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t To = gy.size(2), Ho = gy.size(3), Wo = gy.size(4);
  TORCH_CHECK(gy.size(0) == x.size(0) && To == (T ? (T - 1) / stride[0] + 1 : 0) &&
              Ho == (H ? (H - 1) / stride[1] + 1 : 0) && Wo == (W ? (W - 1) / stride[2] + 1 : 0),
              "pointwise: grad's shape does not match the conv's output");
  TORCH_CHECK(K > 0 && CO > 0, "pointwise: no channels");
  TORCH_CHECK(scale.has_value() == shift.has_value(), "pointwise: scale and shift go together");
  if (scale)
    TORCH_CHECK(affine(scale, K) && affine(shift, K),
                "pointwise: scale and shift must be fp32 with one value per input channel");
  const float* sp = scale ? scale->data_ptr<float>() : nullptr;
  const float* bp = shift ? shift->data_ptr<float>() : nullptr;
  const bool k_wide = K >= CO;  // c is (CO x K) where K runs along the vectors, else (K x CO)
  const int64_t M = k_wide ? CO : K, N = k_wide ? K : CO;
  const int64_t lanes = isa.lanes, ldc = (N + lanes - 1) / lanes * lanes;
  const int64_t pixels = gy.numel() / CO;
  constexpr int64_t BLOCK = 48;  // pixels per task
  const int64_t blocks = (pixels + BLOCK - 1) / BLOCK;
  const float* xp = x.data_ptr<float>();
  const float* gp = gy.data_ptr<float>();
  const auto outer = isa.pointwise_outer;
  std::vector<std::vector<float>> partial(at::get_num_threads());
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float>& c = partial.at(at::get_thread_num());
    if (c.empty()) c.assign(M * ldc, 0.f);
    std::vector<float> activated(sp ? BLOCK * K : 0);
    const float* xs[BLOCK];
    const float* gs[BLOCK];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * BLOCK;
      const int count = (int)std::min(BLOCK, pixels - p0);
      for (int i = 0; i < count; ++i) {
        int64_t q = p0 + i;
        const int64_t wo = q % Wo, ho = q / Wo % Ho, to = q / Wo / Ho % To, n = q / Wo / Ho / To;
        xs[i] = xp + (((n * T + to * stride[0]) * H + ho * stride[1]) * W + wo * stride[2]) * K;
        gs[i] = gp + q * CO;
        if (sp) {
          float* row = activated.data() + (int64_t)i * K;
          pointwise::activate_avx2(xs[i], row, (int)K, sp, bp);
          xs[i] = row;
        }
      }
      outer({k_wide ? gs : xs, k_wide ? xs : gs, count, (int)M, (int)N, c.data(), ldc});
    }
  });
  return summed_outer(partial, k_wide, CO, K, ldc, x.options());
}

// Training's backward of y = conv1x1x1(relu(x * scale + shift), stride), the BatchNorm (batch
// statistics mean, invstd; scale = weight * invstd, shift = bias - mean * scale) and ReLU folded
// into the conv: (grad x, grad BatchNorm weight, grad BatchNorm bias, grad conv weight or an
// undefined tensor where weight is false). Run as three ops (the conv's two gradients, then
// BatchNorm + ReLU's), grad y is read twice and the conv's input gradient g read twice after it
// is written; here pass 1 reads grad y and x once for the weight's gradient, g and BatchNorm's
// sums (each block of g summed while in cache), and pass 2 writes grad x (g = 0 at the input pixels
// a strided conv skips: no zeroed copy and scatter of g). (Making g again in pass
// 2 rather than keeping it, where it is wider than grad y, was slower: 1.29x at conv4's 384 -> 96.)
// plus: gradients of x from its other uses, added as grad x is written (bn_relu.cpp). packed_t:
// pack_pointwise(weight, isa, transposed=true).
std::vector<at::Tensor> bn_pointwise_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& packed_t,
                                              const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& scale,
                                              const at::Tensor& shift, std::vector<at::Tensor> plus,
                                              std::vector<int64_t> stride, const kernels::Isa& isa, bool weight) {
  TORCH_CHECK(cl_float(x) && cl_float(gy), "pointwise: x and grad must be channels-last-3d fp32 CPU tensors");
  TORCH_CHECK(stride.size() == 3 && stride[0] >= 1 && stride[1] >= 1 && stride[2] >= 1,
              "pointwise: stride must be three positive integers");
  const int64_t K = x.size(1), CO = gy.size(1), C = isa.pointwise_chunk();
  const int64_t T = x.size(2), H = x.size(3), W = x.size(4);
  TORCH_CHECK(K > 0 && CO > 0 && gy.size(0) == x.size(0) && gy.size(2) == (T ? (T - 1) / stride[0] + 1 : 0) &&
              gy.size(3) == (H ? (H - 1) / stride[1] + 1 : 0) && gy.size(4) == (W ? (W - 1) / stride[2] + 1 : 0),
              "pointwise: grad's shape does not match the conv's output");
  TORCH_CHECK(packed_for(packed_t, CO, K, C), "pointwise: the packed weight does not match the channels and the path");
  for (const auto* t : {&mean, &invstd, &scale, &shift})
    TORCH_CHECK(affine(*t, K), "pointwise: mean, invstd, scale and shift must be fp32 with one value per input channel");
  for (const auto& t : plus)
    TORCH_CHECK(cl_float(t) && t.sizes() == x.sizes(), "pointwise: a gradient to add must be channels-last-3d fp32 in x's shape");
  const int64_t pixels = x.numel() / K, out_pixels = gy.numel() / CO;
  TORCH_CHECK(pixels > 0, "pointwise: no values to normalise");
  const bool k_wide = K >= CO;
  auto grad_a = at::empty({out_pixels * K}, x.options());
  const std::vector<float> zeros(K, 0.f);
  const pointwise::Backward bw{x.data_ptr<float>(), gy.data_ptr<float>(), packed_t.data_ptr<float>(),
                               scale.data_ptr<float>(), shift.data_ptr<float>(), mean.data_ptr<float>(),
                               (int)K, (int)CO, grad_a.data_ptr<float>(),
                               (int)T, (int)H, (int)W, (int)gy.size(2), (int)gy.size(3), (int)gy.size(4),
                               (int)stride[0], (int)stride[1], (int)stride[2], zeros.data()};
  const auto sums = isa.pointwise_backward_sums;
  const auto apply = isa.pointwise_backward_apply;
  const int64_t M = k_wide ? CO : K, N = k_wide ? K : CO;
  const int64_t lanes = isa.lanes, ldc = (N + lanes - 1) / lanes * lanes;
  constexpr int64_t BLOCK = 48;  // pixels per task, as pointwise_kernels.h's
  const int64_t blocks = (out_pixels + BLOCK - 1) / BLOCK, in_blocks = (pixels + BLOCK - 1) / BLOCK;
  const int threads = at::get_num_threads();
  std::vector<std::vector<float>> partial(threads);
  std::vector<double> totals((size_t)threads * 2 * K, 0.0);  // per thread: sums of g, of g * (x - mean)
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const int id = at::get_thread_num();
    std::vector<float>& c = partial.at(id);
    if (weight && c.empty()) c.assign(M * ldc, 0.f);
    std::vector<float> act(weight ? BLOCK * K : 0), block(2 * K);
    double* mine = totals.data() + (size_t)id * 2 * K;
    for (int64_t b = begin; b < end; ++b) {
      std::fill(block.begin(), block.end(), 0.f);
      const int64_t p0 = b * BLOCK;
      sums(bw, p0, (int)std::min(BLOCK, out_pixels - p0), weight ? c.data() : nullptr, ldc, k_wide, block.data(),
           block.data() + K, act.data());
      for (int64_t k = 0; k < 2 * K; ++k) mine[k] += block[k];
    }
  });
  // BatchNorm's input gradient: weight * invstd * (g - mean(g) - xhat * mean(g * xhat)) as
  // a * g + b * x + c per channel, in fp64 from the fp64 sums (bn_relu.cpp's backward)
  auto grad_bn_weight = at::empty({K}, x.options()), grad_bn_bias = at::empty({K}, x.options());
  std::vector<float> ca(K), cb(K), cc(K);
  const float *sp = scale.data_ptr<float>(), *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  for (int64_t k = 0; k < K; ++k) {
    double sum_g = 0, sum_gx = 0;
    for (int t = 0; t < threads; ++t) {
      sum_g += totals[(size_t)t * 2 * K + k];
      sum_gx += totals[(size_t)t * 2 * K + K + k];
    }
    const double inv = ip[k], bk = -(double)sp[k] * inv * inv * sum_gx / pixels;
    ca[k] = sp[k];
    cb[k] = (float)bk;
    cc[k] = (float)(-(double)sp[k] * sum_g / pixels - bk * mp[k]);
    grad_bn_weight.data_ptr<float>()[k] = (float)(sum_gx * inv);
    grad_bn_bias.data_ptr<float>()[k] = (float)sum_g;
  }
  auto gx = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  std::vector<const float*> more;
  for (const auto& t : plus) more.push_back(t.data_ptr<float>());
  at::parallel_for(0, in_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * BLOCK;
      apply(bw, p0, (int)std::min(BLOCK, pixels - p0), ca.data(), cb.data(), cc.data(), more.data(),
            (int)more.size(), gx.data_ptr<float>());
    }
  });
  return {gx, grad_bn_weight, grad_bn_bias,
          weight ? summed_outer(partial, k_wide, CO, K, ldc, x.options()) : at::Tensor()};
}
