// BatchNorm + ReLU in one pass over a channels-last tensor, seen as (rows, C) with C the
// channels (models/kernels/bn_relu.py). PyTorch runs them as two ops, and in training its
// channels-last BatchNorm reads its input twice for the statistics: forward and backward
// together read or write the activation about 14 times; here 8.
// - stats: per channel, the sum and the sum of squares of (x - x[0]) (shifted, so the
//   variance does not cancel), in fp32 over blocks of 64 rows and in fp64 across blocks.
// - affine_relu: y = max(x * scale + shift, 0), NaN kept as ReLU keeps it.
// - backward: with g = gy where x * scale + shift > 0 (the ReLU's mask, recomputed rather than
//   saved), per channel the sums of g and of g * (x - mean), then grad x = a * g + b * x + c
//   per channel.
// Plain loops over the channels, which GCC vectorises for AVX2 + FMA (the target below).
// bf16 training (autocast) runs the same: stats and backward take bf16 x (and grads), each row
// widened to fp32 in a buffer, the sums and terms in fp32/fp64, grad x rounded to bf16 once;
// the forward's affine is bf16.cpp's rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include "bf16_rows.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "bn_relu_rows.h"
void prefer_huge_pages(const at::Tensor& y);  // fiber_cl.cpp

namespace {

constexpr int64_t kBlock = 64;  // rows summed in fp32 before the fp64 total

void check(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) &&
                  t.dim() == 5 && t.is_contiguous(at::MemoryFormat::ChannelsLast3d),
              "bn_relu: ", what, " must be a channels-last-3d fp32 or bf16 CPU tensor");
}

// bf16 <-> fp32 along a row, 8 at a time: widened by a shift; rounded to nearest even as
// bf16::round_bits rounds (NaN kept quiet, denormals flushed), the tail by it
void widen_row(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16)));
  }
  for (; i < n; ++i) dst[i] = bf16::widen(src[i]);
}

void round_row(const float* src, uint16_t* dst, int64_t n) {
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  const __m256i quiet = _mm256_set1_epi32(0x40), sign = _mm256_set1_epi32(0x8000);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(src + i));
    const __m256i high = _mm256_srli_epi32(u, 16);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, bias), _mm256_and_si256(high, one)), 16);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
    const __m256i tiny = _mm256_cmpeq_epi32(_mm256_and_si256(u, inf), _mm256_setzero_si256());
    r = _mm256_blendv_epi8(r, _mm256_or_si256(high, quiet), nan);
    r = _mm256_blendv_epi8(r, _mm256_and_si256(high, sign), tiny);
    // 32 -> 16 bits: packus works per 128-bit lane, so the halves are put back in order after
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_castsi256_si128(packed));
  }
  for (; i < n; ++i) dst[i] = bf16::round_bits(src[i]);
}

// A channels-last tensor's rows as fp32: in place for fp32, widened row by row into a buffer of
// its own for bf16 (one per thread's block of rows)
class RowsOf {
 public:
  RowsOf(const at::Tensor& t, int64_t C) : C_(C), bf16_(t.scalar_type() == at::kBFloat16) {
    if (bf16_) {
      bits_ = reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
      buf_.resize(C);
    } else {
      fp32_ = t.data_ptr<float>();
    }
  }
  const float* row(int64_t r) {
    if (!bf16_) return fp32_ + r * C_;
    widen_row(bits_ + r * C_, buf_.data(), C_);
    return buf_.data();
  }

 private:
  int64_t C_;
  bool bf16_;
  const float* fp32_ = nullptr;
  const uint16_t* bits_ = nullptr;
  std::vector<float> buf_;
};

const float* per_channel(const at::Tensor& t, int64_t C, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.numel() == C,
              "bn_relu: ", what, " must be ", C, " contiguous fp32 CPU floats");
  return t.data_ptr<float>();
}

// Per thread: an fp64 total per channel for each of K sums, over blocks of rows.
template <int K, class F>
std::vector<double> sum_rows(int64_t rows, int64_t C, F&& block_sums) {
  const int threads = at::get_num_threads();
  std::vector<double> partial((size_t)threads * K * C, 0.0);
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    double* mine = partial.data() + (size_t)at::get_thread_num() * K * C;
    std::vector<float> acc((size_t)K * C);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(acc.begin(), acc.end(), 0.f);
      block_sums(b * kBlock, std::min(rows, (b + 1) * kBlock), acc.data());
      for (int64_t i = 0; i < K * C; ++i) mine[i] += acc[i];
    }
  });
  std::vector<double> total((size_t)K * C, 0.0);
  for (int t = 0; t < threads; ++t)
    for (int64_t i = 0; i < K * C; ++i) total[i] += partial[(size_t)t * K * C + i];
  return total;
}

struct Rows {
  int64_t C, rows;  // x seen as (rows, C)
};

Rows rows_of(const at::Tensor& x) {
  check(x, "x");
  const int64_t C = x.size(1);
  return {C, x.numel() / std::max<int64_t>(C, 1)};
}

Rows rows_of(const at::Tensor& gy, const at::Tensor& x, const char* what = "grad") {
  check(gy, what);
  TORCH_CHECK(gy.sizes() == x.sizes(), "bn_relu: ", what, " and x differ in shape");
  return rows_of(x);
}

at::Tensor like(const at::Tensor& x) {
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast3d);
  prefer_huge_pages(y);  // fiber_cl.cpp: a large block is faulted in 2 MiB at a time
  return y;
}

at::Tensor channel_floats(const at::Tensor& x, int64_t C) {
  return at::empty({C}, x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace

// (mean, biased variance) per channel
std::vector<at::Tensor> bn_stats(at::Tensor x) {
  const auto [C, rows] = rows_of(x);
  TORCH_CHECK(rows > 0, "bn_relu: no values to normalise");
  RowsOf head(x, C);  // its buffer holds row 0 while the shift is copied from it
  const float* first = head.row(0);
  std::vector<float> shift(first, first + C);
  const float* k = shift.data();
  const auto total = sum_rows<2>(rows, C, [&](int64_t r0, int64_t r1, float* acc) {
    float* __restrict s1 = acc;
    float* __restrict s2 = acc + C;
    RowsOf xs(x, C);
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict row = xs.row(r);
      for (int64_t c = 0; c < C; ++c) {
        const float d = row[c] - k[c];
        s1[c] += d;
        s2[c] += d * d;
      }
    }
  });
  auto mean = channel_floats(x, C), var = channel_floats(x, C);
  float *mp = mean.data_ptr<float>(), *vp = var.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double m = total[c] / rows;
    mp[c] = (float)(k[c] + m);
    const double v = total[C + c] / rows - m * m;
    vp[c] = (float)(v < 0.0 ? 0.0 : v);  // rounding can leave it below 0; a NaN (an Inf in x) stays
  }
  return {mean, var};
}

at::Tensor affine_relu(at::Tensor x, at::Tensor scale, at::Tensor shift) {
  const auto [C, rows] = rows_of(x);
  TORCH_CHECK(x.scalar_type() == at::kFloat, "bn_relu: affine_relu takes fp32 (bf16: affine_relu_bf16)");
  const float* s = per_channel(scale, C, "scale");
  const float* b = per_channel(shift, C, "shift");
  auto y = like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict row = xp + r * C;
      float* __restrict out = yp + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const float v = std::fma(row[c], s[c], b[c]);  // as relu_grad recomputes it
        out[c] = v < 0.f ? 0.f : v;
      }
    }
  });
  return y;
}

// BatchNorm + ReLU's backward with the batch's statistics, given the forward's scale =
// weight * invstd and shift = bias - mean * scale: (grad x, grad weight, grad bias). Two passes:
// per channel the sums of g and of g * (x - mean), g = gy where x * scale + shift > 0; then
// grad x = weight * invstd * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * invstd,
// as a * g + b * x + c. The per-channel terms are worked out here, in fp64 from the fp64 sums,
// where a dozen tensor ops on C floats cost more than the passes at MF-Net's last stage.
//
// plus: gradients of x from its other uses (a unit's residual adds, models/mfnet.py), added to
// grad x as each row is written, where autograd would add each in a pass of its own.
std::vector<at::Tensor> backward(at::Tensor gy, at::Tensor x, at::Tensor mean, at::Tensor invstd,
                                 at::Tensor scale, at::Tensor shift, std::vector<at::Tensor> plus) {
  const auto [C, rows] = rows_of(gy, x);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(gy.scalar_type() == dtype, "bn_relu: grad and x differ in dtype");
  for (const auto& t : plus) {
    rows_of(t, x, "a gradient to add");
    TORCH_CHECK(t.scalar_type() == dtype, "bn_relu: a gradient to add and x differ in dtype");
  }
  TORCH_CHECK(rows > 0, "bn_relu: no values to normalise");
  const float* s = per_channel(scale, C, "scale");
  const float* sh = per_channel(shift, C, "shift");
  const float* m = per_channel(mean, C, "mean");
  const float* is = per_channel(invstd, C, "invstd");
  const auto total = sum_rows<2>(rows, C, [&](int64_t r0, int64_t r1, float* acc) {
    RowsOf xs(x, C), gs(gy, C);
    for (int64_t r = r0; r < r1; ++r) bn_rows::masked_sums(xs.row(r), gs.row(r), s, sh, m, acc, acc + C, C);
  });
  auto grad_weight = channel_floats(x, C), grad_bias = channel_floats(x, C);
  float* gw = grad_weight.data_ptr<float>();
  float* gb = grad_bias.data_ptr<float>();
  std::vector<float> a(s, s + C), b(C), c(C);
  for (int64_t k = 0; k < C; ++k) {
    const double sum_g = total[k], sum_gx = total[C + k], inv = is[k];
    const double bk = -(double)s[k] * inv * inv * sum_gx / rows;
    b[k] = (float)bk;
    c[k] = (float)(-(double)s[k] * sum_g / rows - bk * m[k]);
    gw[k] = (float)(sum_gx * inv);
    gb[k] = (float)sum_g;
  }
  auto gx = like(x);
  const bool bf16 = dtype == at::kBFloat16;
  float* op = bf16 ? nullptr : gx.data_ptr<float>();
  uint16_t* bp = bf16 ? reinterpret_cast<uint16_t*>(gx.data_ptr<at::BFloat16>()) : nullptr;
  at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    RowsOf xs(x, C), gs(gy, C);
    std::vector<RowsOf> more;
    for (const auto& t : plus) more.emplace_back(t, C);
    std::vector<float> buf(bf16 ? C : 0);
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict out = bf16 ? buf.data() : op + r * C;
      bn_rows::masked_affine(xs.row(r), gs.row(r), s, sh, a.data(), b.data(), c.data(), out, C);
      for (auto& m : more) {  // the row just written, still in L1
        const float* __restrict add = m.row(r);
        for (int64_t k = 0; k < C; ++k) out[k] += add[k];
      }
      if (bf16) round_row(out, bp + r * C, C);
    }
  });
  return {gx, grad_weight, grad_bias};
}
#pragma GCC pop_options
