// MF-Net's pre-activation pointwise conv in inference, channels last, in one pass:
//   y = W relu(x * scale + shift) (+ residual)
// with the BatchNorm + ReLU before the conv applied as each block of pixels is read, and the
// residual added as each output pixel is written. Run as PyTorch runs them, that is three passes
// over memory (BatchNorm + ReLU, the conv, the add), and at MF-Net's first two stages these
// convs move more bytes than they do multiply-adds: a pixel of conv2's 96 -> 24 conv is 96
// floats read for 2304 multiply-adds, about as long at this machine's memory rate as at its FMA
// rate. docs/fiber-kernel.md has the measured effect.
//
// Layout: x (N, T, H, W, K) in memory (channels-last-3d), y (N, T, H, W, CO). The GEMM is
// (pixels x K) by (K x CO); a task is a block of consecutive pixels, whose K channels are one
// contiguous run in memory.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <immintrin.h>

#include <optional>
#include <vector>

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "fiber_cl_kernels.h"  // store8_first

namespace pointwise {
namespace {

constexpr int CHUNK = 24;  // output channels per register block: 3 vectors of 8
constexpr int BLOCK = 48;  // pixels per task: a whole number of 4-, 6- and 12-pixel blocks

struct Run {
  const float* x;
  const float* w;  // packed: (chunks, K, CHUNK), zero past CO
  float* y;
  const float* residual;  // y's layout, or nullptr
  const float* scale;     // per input channel, or nullptr: x as it is
  const float* shift;
  int64_t pixels;  // of the output
  int K, CO;
  // strides: output pixel (n, to, ho, wo) reads input pixel (n, to * st, ho * sh, wo * sw)
  int T, H, W, To, Ho, Wo, st, sh, sw;
  bool strided() const { return st != 1 || sh != 1 || sw != 1; }
};

// P pixels (rows of `in`, ldx floats apart) x V vectors of one chunk's output channels: every
// input channel feeds P x V FMAs from V weight loads and P broadcasts; then the chunk's co_n
// channels of each pixel are written (plus the residual's)
template <int V, int P>
void block(const float* in, int64_t ldx, const float* wc, int K, float* out, const float* res,
           int CO, int co_n) {
  __m256 acc[P][V];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[p][v] = _mm256_setzero_ps();
  for (int k = 0; k < K; ++k) {
    __m256 wv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) wv[v] = _mm256_loadu_ps(wc + (int64_t)k * CHUNK + 8 * v);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const __m256 b = _mm256_broadcast_ss(in + p * ldx + k);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[p][v] = _mm256_fmadd_ps(wv[v], b, acc[p][v]);
    }
  }
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    float* o = out + (int64_t)p * CO;
    const float* r = res ? res + (int64_t)p * CO : nullptr;
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const int lanes = std::min(8, co_n - 8 * v);
      if (lanes == 8) {
        __m256 val = acc[p][v];
        if (r) val = _mm256_add_ps(val, _mm256_loadu_ps(r + 8 * v));
        _mm256_storeu_ps(o + 8 * v, val);
      } else if (lanes > 0) {
        fiber::store8_first(o + 8 * v, acc[p][v], lanes);
        if (r)
          for (int c = 8 * v; c < 8 * v + lanes; ++c) o[c] += r[c];
      }
    }
  }
}

// P pixels (rows of `in`), every chunk of output channels: a pixel's whole output row is
// written at once, while its lines are in cache; the input rows stay in L1 across the chunks.
// V: the first chunk's vectors (3 where CO >= 24), so P x V accumulators fill 12 of 16 registers.
template <int V, int P>
void all_chunks(const float* in, int64_t ldx, const float* w, int K, float* out, const float* res,
                int CO) {
  for (int c0 = 0; c0 < CO; c0 += CHUNK) {
    const float* wc = w + (int64_t)c0 * K;  // chunk c0 / CHUNK: K x CHUNK floats
    const int co_n = std::min(CHUNK, CO - c0);
    const float* r = res ? res + c0 : nullptr;
    if (co_n > 16) block<3, P>(in, ldx, wc, K, out + c0, r, CO, co_n);
    else if (co_n > 8) block<std::min(V, 2), P>(in, ldx, wc, K, out + c0, r, CO, co_n);
    else block<1, P>(in, ldx, wc, K, out + c0, r, CO, co_n);
  }
}

// `count` pixels (count < P) at the end of a task's block
template <int V, int P>
void tail(const float* in, int64_t ldx, const float* w, int K, float* out, const float* res, int CO,
          int count) {
  if constexpr (P > 1) {
    if (count == P - 1) return all_chunks<V, P - 1>(in, ldx, w, K, out, res, CO);
    return tail<V, P - 1>(in, ldx, w, K, out, res, CO, count);
  }
}

template <int V>
void pixels(const float* in, int64_t ldx, const float* w, int K, float* out, const float* res, int CO,
            int count) {
  constexpr int P = 12 / V;
  int p = 0;
  for (; p + P <= count; p += P)
    all_chunks<V, P>(in + p * ldx, ldx, w, K, out + (int64_t)p * CO, res ? res + (int64_t)p * CO : nullptr, CO);
  if (p < count)
    tail<V, P>(in + p * ldx, ldx, w, K, out + (int64_t)p * CO, res ? res + (int64_t)p * CO : nullptr, CO,
               count - p);
}

// relu(x * scale + shift) of one pixel's K channels into buf, or (no scale) a copy
void activate(const float* x, float* buf, int K, const float* scale, const float* shift) {
  if (!scale) {
    std::copy(x, x + K, buf);
    return;
  }
  const __m256 zero = _mm256_setzero_ps();
  int k = 0;
  for (; k + 8 <= K; k += 8)
    _mm256_storeu_ps(buf + k, _mm256_max_ps(_mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(scale + k),
                                                            _mm256_loadu_ps(shift + k)), zero));
  for (; k < K; ++k) buf[k] = std::max(x[k] * scale[k] + shift[k], 0.f);
}

// the input pixel output pixel q reads
int64_t source(const Run& r, int64_t q) {
  const int wo = q % r.Wo;
  q /= r.Wo;
  const int ho = q % r.Ho;
  q /= r.Ho;
  const int to = q % r.To;
  const int64_t n = q / r.To;
  return ((n * r.T + (int64_t)to * r.st) * r.H + (int64_t)ho * r.sh) * r.W + (int64_t)wo * r.sw;
}

// out (count x CO, rows CO floats apart) = in (count x K, rows ldx apart) x w (+ res, out's layout)
void gemm(const float* in, int64_t ldx, const float* w, int K, float* out, const float* res, int CO, int count) {
  if (CO > 16) pixels<3>(in, ldx, w, K, out, res, CO, count);
  else if (CO > 8) pixels<2>(in, ldx, w, K, out, res, CO, count);
  else pixels<1>(in, ldx, w, K, out, res, CO, count);
}

void run(const Run& r) {
  const int64_t blocks = (r.pixels + BLOCK - 1) / BLOCK;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // the block's input, activated or gathered; a stride-1 conv without scale reads x itself
    std::vector<float> buf(r.scale || r.strided() ? (size_t)BLOCK * r.K : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * BLOCK;
      const int count = (int)std::min<int64_t>(BLOCK, r.pixels - p0);
      const float* in = r.x + p0 * r.K;
      if (!buf.empty()) {
        for (int p = 0; p < count; ++p) {
          const int64_t from = r.strided() ? source(r, p0 + p) : p0 + p;
          activate(r.x + from * r.K, buf.data() + (int64_t)p * r.K, r.K, r.scale, r.shift);
        }
        in = buf.data();
      }
      float* out = r.y + p0 * r.CO;
      const float* res = r.residual ? r.residual + p0 * r.CO : nullptr;
      gemm(in, r.K, r.w, r.K, out, res, r.CO, count);
    }
  });
}

// MF-Net's multiplexer: y = x + W2 relu(bn2(W1 relu(bn1(x)))), block by block: the middle
// (M channels a pixel) stays in the task's buffer, and x's block, read for the first conv, is
// read again from cache as the residual
void multiplex(const float* x, const float* w1, const float* s1, const float* b1, int M, const float* w2,
               const float* s2, const float* b2, float* y, int64_t pixels, int K) {
  const int64_t blocks = (pixels + BLOCK - 1) / BLOCK;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf((size_t)BLOCK * K), mid((size_t)BLOCK * M);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * BLOCK;
      const int count = (int)std::min<int64_t>(BLOCK, pixels - p0);
      const float* in = x + p0 * K;
      for (int p = 0; p < count; ++p) activate(in + (int64_t)p * K, buf.data() + (int64_t)p * K, K, s1, b1);
      gemm(buf.data(), K, w1, K, mid.data(), nullptr, M, count);
      for (int p = 0; p < count; ++p) activate(mid.data() + (int64_t)p * M, mid.data() + (int64_t)p * M, M, s2, b2);
      gemm(mid.data(), M, w2, M, y + p0 * K, in, K, count);
    }
  });
}

}  // namespace
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

// A 1x1x1 conv's weight (CO, K, 1, 1, 1) in the kernel's layout: (chunks, K, 24), chunk c's
// column j output channel 24 c + j, zero past CO
at::Tensor pack_pointwise(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 5 && weight.size(2) == 1 && weight.size(3) == 1 && weight.size(4) == 1 &&
              weight.scalar_type() == at::kFloat && weight.device().is_cpu(),
              "pointwise: the weight must be a CPU fp32 (CO, K, 1, 1, 1) tensor");
  const int64_t CO = weight.size(0), K = weight.size(1);
  const int64_t chunks = (CO + pointwise::CHUNK - 1) / pointwise::CHUNK;
  auto padded = at::zeros({chunks * pointwise::CHUNK, K}, weight.options());
  padded.narrow(0, 0, CO).copy_(weight.reshape({CO, K}));
  // (chunks, 24, K) -> (chunks, K, 24)
  return padded.reshape({chunks, pointwise::CHUNK, K}).transpose(1, 2).contiguous();
}

// y = conv1x1x1(relu(x * scale + shift), stride) + residual, every tensor channels-last-3d fp32
// on the CPU; scale/shift (per input channel) and residual (y's shape) optional
at::Tensor pointwise_cl(const at::Tensor& x, const at::Tensor& packed, int64_t cout, std::vector<int64_t> stride,
                        const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                        const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(cl_float(x), "pointwise: x must be a channels-last-3d fp32 CPU tensor");
  const int64_t K = x.size(1);
  TORCH_CHECK(K > 0, "pointwise: x has no channels");
  const int64_t chunks = (cout + pointwise::CHUNK - 1) / pointwise::CHUNK;
  TORCH_CHECK(cout > 0 && packed.is_contiguous() && packed.scalar_type() == at::kFloat && packed.dim() == 3 &&
              packed.size(0) == chunks && packed.size(1) == K && packed.size(2) == pointwise::CHUNK,
              "pointwise: the packed weight does not match x's channels and cout");
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
  if (r.pixels > 0) pointwise::run(r);
  return y;
}

// MF-Net's multiplexer in inference (y = x + conv_i2(conv_i1(x)), each a BatchNorm + ReLU + 1x1x1
// conv at stride 1): x channels-last-3d fp32 with K channels, packed1 (pack_pointwise) K -> M,
// packed2 M -> K, each BatchNorm as scale and shift per input channel
at::Tensor multiplexer_cl(const at::Tensor& x, const at::Tensor& packed1, int64_t mid, const at::Tensor& scale1,
                          const at::Tensor& shift1, const at::Tensor& packed2, const at::Tensor& scale2,
                          const at::Tensor& shift2) {
  TORCH_CHECK(cl_float(x), "multiplexer: x must be a channels-last-3d fp32 CPU tensor");
  const int64_t K = x.size(1), C = pointwise::CHUNK;
  TORCH_CHECK(K > 0 && mid > 0, "multiplexer: no channels");
  for (const auto& [p, k, co] : {std::tuple{&packed1, K, mid}, std::tuple{&packed2, mid, K}})
    TORCH_CHECK(p->is_contiguous() && p->scalar_type() == at::kFloat && p->dim() == 3 &&
                p->size(0) == (co + C - 1) / C && p->size(1) == k && p->size(2) == C,
                "multiplexer: a packed weight does not match x's channels and mid");
  TORCH_CHECK(affine(scale1, K) && affine(shift1, K) && affine(scale2, mid) && affine(shift2, mid),
              "multiplexer: scale and shift must be fp32 with one value per input channel");
  auto y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  const int64_t pixels = x.numel() / K;
  if (pixels > 0)
    pointwise::multiplex(x.data_ptr<float>(), packed1.data_ptr<float>(), scale1.data_ptr<float>(),
                         shift1.data_ptr<float>(), (int)mid, packed2.data_ptr<float>(), scale2.data_ptr<float>(),
                         shift2.data_ptr<float>(), y.data_ptr<float>(), pixels, (int)K);
  return y;
}
