// Direct grouped 3D convolution for MF-Net's fiber convs, NCDHW at stride 1 (the channels-last
// layout, MF-Net's default, is fiber_cl.cpp's). Built with OpenMP: at::parallel_for runs on one
// thread in an extension compiled without it.
//
// y = conv3d(x, w, padding=(KT / 2, 1, 1), stride 1, groups), KT in {1, 3}.
// - forward: vectorised along W of one output row (8 floats, AVX2 + FMA), 6 output channels x
//   2 vectors per register block, so each input load feeds 6 FMAs and each weight 2. Borders
//   are handled with masked loads: the input is never copied into a padded buffer.
// - grad of the input: the same kernel on grad y with the weights flipped and transposed
//   per group (done in Python; stride 1 makes the two convolutions the same shape).
// - grad of the weight: per (output channel, input channel, kt), nine vector accumulators
//   over every output position, summed across lanes at the end.
// A scalar template serves CPUs without AVX2 + FMA and fp64 (gradcheck).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "isa.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace {

struct Avx2 {
  static constexpr int L = 8;
  using V = __m256;
  using M = __m256i;
  static inline M mask(int lo, int hi) {  // lanes in [lo, hi) on
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i a = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(lo - 1));
    __m256i b = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), idx);
    return _mm256_and_si256(a, b);
  }
  static inline V zero() { return _mm256_setzero_ps(); }
  static inline V load(const float* p, M m) { return _mm256_maskload_ps(p, m); }
  static inline V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline void store(float* p, M m, V v) { _mm256_maskstore_ps(p, m, v); }
  static inline float sum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
  }
};

// One output row block: CO output channels x NV vectors along W, starting at column w0.
template <class A, int CO, int NV>
inline void row_block(
    const float* x, const float* w, float* y, int cin_g, int T, int H, int W, int KT,
    int t, int h, int w0, int co_stride_w, int64_t ci_stride_x, int64_t co_stride_y) {
  using V = typename A::V;
  using M = typename A::M;
  V acc[CO][NV];
  for (int c = 0; c < CO; ++c)
    for (int j = 0; j < NV; ++j) acc[c][j] = A::zero();
  M masks[3][NV];  // per kw: lanes whose output is in the row and whose input column is too
  for (int kw = 0; kw < 3; ++kw)
    for (int j = 0; j < NV; ++j) {
      int col = w0 + j * A::L, first = col + kw - 1;
      masks[kw][j] = A::mask(std::max(0, -first), std::min({A::L, W - first, W - col}));
    }
  const int pt = KT / 2;
  for (int ci = 0; ci < cin_g; ++ci) {
    const float* xc = x + ci * ci_stride_x;
    for (int kt = 0; kt < KT; ++kt) {
      int ti = t + kt - pt;
      if (ti < 0 || ti >= T) continue;
      for (int kh = 0; kh < 3; ++kh) {
        int hi_ = h + kh - 1;
        if (hi_ < 0 || hi_ >= H) continue;
        const float* row = xc + ((int64_t)ti * H + hi_) * W;
        const float* wk = w + ((ci * KT + kt) * 3 + kh) * 3;
        for (int kw = 0; kw < 3; ++kw) {
          V in[NV];
          for (int j = 0; j < NV; ++j) in[j] = A::load(row + w0 + j * A::L + kw - 1, masks[kw][j]);
          for (int c = 0; c < CO; ++c) {
            V wv = A::bcast(wk + c * co_stride_w + kw);
            for (int j = 0; j < NV; ++j) acc[c][j] = A::fma(wv, in[j], acc[c][j]);
          }
        }
      }
    }
  }
  for (int j = 0; j < NV; ++j) {
    int out_hi = std::min(A::L, W - (w0 + j * A::L));
    M m = A::mask(0, out_hi);
    for (int c = 0; c < CO; ++c) A::store(y + c * co_stride_y + w0 + j * A::L, m, acc[c][j]);
  }
}

template <class A, int CO>
void rows_for(const float* x, const float* w, float* y, int cin_g, int T, int H, int W, int KT,
              int t, int h, int co_stride_w, int64_t ci_stride_x, int64_t co_stride_y) {
  int w0 = 0;
  for (; w0 + 2 * A::L <= W; w0 += 2 * A::L)
    row_block<A, CO, 2>(x, w, y, cin_g, T, H, W, KT, t, h, w0, co_stride_w, ci_stride_x, co_stride_y);
  for (; w0 < W; w0 += A::L)
    row_block<A, CO, 1>(x, w, y, cin_g, T, H, W, KT, t, h, w0, co_stride_w, ci_stride_x, co_stride_y);
}

using RowsFn = void (*)(const float*, const float*, float*, int, int, int, int, int, int, int, int,
                        int64_t, int64_t);

template <class A>
RowsFn rows_fn(int co) {
  switch (co) {
    case 1: return rows_for<A, 1>;
    case 2: return rows_for<A, 2>;
    case 3: return rows_for<A, 3>;
    case 4: return rows_for<A, 4>;
    case 5: return rows_for<A, 5>;
    default: return rows_for<A, 6>;
  }
}

}  // namespace
#pragma GCC pop_options

constexpr int CO_BLOCK = 6;

// y = conv3d(x, weight, padding=(KT/2, 1, 1), groups=groups); x (N, C, T, H, W) contiguous.
// ---- scalar reference: any CPU, any floating type ----

template <typename S>
void forward_scalar(const S* x, const S* w, S* y, int N, int C, int CO, int T, int H, int W,
                    int KT, int groups) {
  const int cin_g = C / groups, cout_g = CO / groups, pt = KT / 2;
  const int64_t plane = (int64_t)T * H * W;
  at::parallel_for(0, (int64_t)N * CO, 1, [&](int64_t begin, int64_t end) {
  for (int64_t task = begin; task < end; ++task) {
    {
      const int n = task / CO, co = task % CO;
      const int g = co / cout_g;
      S* yc = y + ((int64_t)n * CO + co) * plane;
      for (int64_t i = 0; i < plane; ++i) yc[i] = 0;
      for (int ci = 0; ci < cin_g; ++ci) {
        const S* xc = x + ((int64_t)n * C + g * cin_g + ci) * plane;
        const S* wk = w + ((int64_t)co * cin_g + ci) * KT * 9;
        for (int t = 0; t < T; ++t)
          for (int h = 0; h < H; ++h)
            for (int v = 0; v < W; ++v) {
              S acc = 0;
              for (int kt = 0; kt < KT; ++kt) {
                const int ti = t + kt - pt;
                if (ti < 0 || ti >= T) continue;
                for (int kh = 0; kh < 3; ++kh) {
                  const int hi = h + kh - 1;
                  if (hi < 0 || hi >= H) continue;
                  for (int kw = 0; kw < 3; ++kw) {
                    const int wi = v + kw - 1;
                    if (wi < 0 || wi >= W) continue;
                    acc += wk[(kt * 3 + kh) * 3 + kw] * xc[((int64_t)ti * H + hi) * W + wi];
                  }
                }
              }
              yc[((int64_t)t * H + h) * W + v] += acc;
            }
      }
    }
  }
  });
}

template <typename S>
void grad_weight_scalar(const S* x, const S* gy, S* dw, int N, int C, int CO, int T, int H, int W,
                        int KT, int groups) {
  const int cin_g = C / groups, cout_g = CO / groups, pt = KT / 2;
  const int64_t plane = (int64_t)T * H * W;
  at::parallel_for(0, (int64_t)CO * cin_g, 1, [&](int64_t begin, int64_t end) {
  for (int64_t task = begin; task < end; ++task) {
    {
      const int co = task / cin_g, ci = task % cin_g;
      const int g = co / cout_g;
      for (int k = 0; k < KT * 9; ++k) {
        const int kt = k / 9, kh = (k / 3) % 3, kw = k % 3;
        S acc = 0;
        for (int n = 0; n < N; ++n) {
          const S* xc = x + ((int64_t)n * C + g * cin_g + ci) * plane;
          const S* gc = gy + ((int64_t)n * CO + co) * plane;
          for (int t = 0; t < T; ++t) {
            const int ti = t + kt - pt;
            if (ti < 0 || ti >= T) continue;
            for (int h = 0; h < H; ++h) {
              const int hi = h + kh - 1;
              if (hi < 0 || hi >= H) continue;
              for (int v = 0; v < W; ++v) {
                const int wi = v + kw - 1;
                if (wi < 0 || wi >= W) continue;
                acc += gc[((int64_t)t * H + h) * W + v] * xc[((int64_t)ti * H + hi) * W + wi];
              }
            }
          }
        }
        dw[((int64_t)co * cin_g + ci) * KT * 9 + k] = acc;
      }
    }
  }
  });
}

namespace {
bool has_avx2() { return kernels::cpu_has("avx2"); }
}  // namespace

void check(const at::Tensor& x, const at::Tensor& weight, int64_t groups) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous() && x.device().is_cpu(), "fiber_conv: x must be a contiguous NCDHW CPU tensor");
  TORCH_CHECK(weight.dim() == 5 && weight.is_contiguous() && weight.size(3) == 3 && weight.size(4) == 3 &&
              (weight.size(2) == 1 || weight.size(2) == 3), "fiber_conv: weight must be (CO, C/groups, 1 or 3, 3, 3)");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "fiber_conv: x and weight dtypes differ");
  TORCH_CHECK(groups > 0 && x.size(1) == weight.size(1) * groups && weight.size(0) % groups == 0,
              "fiber_conv: channels do not match groups");
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, int64_t groups,
                      bool force_scalar) {
  check(x, weight, groups);
  if (x.scalar_type() != at::kFloat || force_scalar || !has_avx2()) {
    auto y = at::empty({x.size(0), weight.size(0), x.size(2), x.size(3), x.size(4)}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fiber_conv_forward", [&] {
      forward_scalar<scalar_t>(x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                               x.size(0), x.size(1), weight.size(0), x.size(2), x.size(3), x.size(4),
                               weight.size(2), groups);
    });
    return y;
  }
  const int N = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int CO = weight.size(0), cin_g = weight.size(1), KT = weight.size(2);
  const int cout_g = CO / groups;
  TORCH_CHECK(cin_g * groups == C && cout_g * groups == CO, "channels and groups");
  auto y = at::empty({N, CO, T, H, W}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t plane = (int64_t)T * H * W;
  const int co_blocks = (cout_g + CO_BLOCK - 1) / CO_BLOCK;
  const int co_stride_w = cin_g * KT * 9;
  const int64_t tasks = (int64_t)N * groups * co_blocks * T * H;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
  for (int64_t task = begin; task < end; ++task) {
    int64_t r = task;
    const int h = r % H; r /= H;
    const int t = r % T; r /= T;
    const int cb = r % co_blocks; r /= co_blocks;
    const int g = r % groups; r /= groups;
    const int n = r;
    const int co0 = cb * CO_BLOCK, co_n = std::min(CO_BLOCK, cout_g - co0);
    const float* xg = xp + ((int64_t)n * C + (int64_t)g * cin_g) * plane;
    const float* wg = wp + (int64_t)(g * cout_g + co0) * co_stride_w;
    float* yg = yp + ((int64_t)n * CO + g * cout_g + co0) * plane + ((int64_t)t * H + h) * W;
    rows_fn<Avx2>(co_n)(xg, wg, yg, cin_g, T, H, W, KT, t, h, co_stride_w, plane, plane);
  }
  });
  return y;
}

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace {

// dW[co][ci][kt][., .] for one (group, co, ci, kt): nine vector accumulators over every output
// position, summed across lanes at the end.
template <class A>
void weight_taps(
    const float* x, const float* gy, float* dw, int N, int64_t n_stride_x, int64_t n_stride_y,
    int T, int H, int W, int KT, int kt) {
  using V = typename A::V;
  using M = typename A::M;
  V acc[9];
  for (int k = 0; k < 9; ++k) acc[k] = A::zero();
  const int pt = KT / 2;
  const int nvec = (W + A::L - 1) / A::L;
  for (int n = 0; n < N; ++n) {
    const float* xn = x + n * n_stride_x;
    const float* gn = gy + n * n_stride_y;
    for (int t = 0; t < T; ++t) {
      const int ti = t + kt - pt;
      if (ti < 0 || ti >= T) continue;
      for (int h = 0; h < H; ++h) {
        const float* grow = gn + ((int64_t)t * H + h) * W;
        for (int j = 0; j < nvec; ++j) {
          const int col = j * A::L;
          const V g = A::load(grow + col, A::mask(0, std::min(A::L, W - col)));
          for (int kh = 0; kh < 3; ++kh) {
            const int hi_ = h + kh - 1;
            if (hi_ < 0 || hi_ >= H) continue;
            const float* xrow = xn + ((int64_t)ti * H + hi_) * W;
            for (int kw = 0; kw < 3; ++kw) {
              const int first = col + kw - 1;
              const M m = A::mask(std::max(0, -first), std::min({A::L, W - first, W - col}));
              acc[kh * 3 + kw] = A::fma(g, A::load(xrow + first, m), acc[kh * 3 + kw]);
            }
          }
        }
      }
    }
  }
  for (int k = 0; k < 9; ++k) dw[k] = A::sum(acc[k]);
}

}  // namespace
#pragma GCC pop_options

// grad of weight for y = conv3d(x, w, padding=(KT/2, 1, 1), groups); x, gy NCDHW contiguous.
at::Tensor grad_weight(const at::Tensor& x, const at::Tensor& gy, int64_t groups,
                          int64_t KT, bool force_scalar) {
  TORCH_CHECK(x.is_contiguous() && gy.is_contiguous() && x.scalar_type() == gy.scalar_type() &&
              gy.size(0) == x.size(0) && gy.size(2) == x.size(2) && gy.size(3) == x.size(3) &&
              gy.size(4) == x.size(4), "fiber_conv: grad_weight needs contiguous x and grad of one shape");
  const int N = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int CO = gy.size(1), cin_g = C / groups, cout_g = CO / groups;
  auto dw = at::empty({CO, cin_g, KT, 3, 3}, x.options());
  if (x.scalar_type() != at::kFloat || force_scalar || !has_avx2()) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fiber_conv_grad_weight", [&] {
      grad_weight_scalar<scalar_t>(x.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(),
                                   N, C, CO, T, H, W, KT, groups);
    });
    return dw;
  }
  const float* xp = x.data_ptr<float>();
  const float* gp = gy.data_ptr<float>();
  float* dp = dw.data_ptr<float>();
  const int64_t plane = (int64_t)T * H * W;
  const int64_t tasks = (int64_t)CO * cin_g * KT;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
  for (int64_t task = begin; task < end; ++task) {
    int64_t r = task;
    const int kt = r % KT; r /= KT;
    const int ci = r % cin_g; r /= cin_g;
    const int co = r;  // global output channel
    const int g = co / cout_g;
    weight_taps<Avx2>(xp + (int64_t)(g * cin_g + ci) * plane, gp + (int64_t)co * plane,
                      dp + ((int64_t)(co * cin_g + ci) * KT + kt) * 9, N, (int64_t)C * plane,
                      (int64_t)CO * plane, T, H, W, KT, kt);
  }
  });
  return dw;
}

// How many threads this extension's at::parallel_for really runs on (torch.get_num_threads()
// asks for; an extension built without OpenMP runs one).
int64_t threads_used() {
  std::vector<char> seen(256, 0);
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) {
    const int id = at::get_thread_num();
    if (id >= 0 && id < 256) seen[id] = 1;
    volatile double spin = 0;  // long enough that every thread gets a share
    for (int i = 0; i < 200000; ++i) spin = spin + i;
  });
  return std::count(seen.begin(), seen.end(), 1);
}

