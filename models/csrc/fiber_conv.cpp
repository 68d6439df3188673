// Direct grouped 3D convolution for MF-Net's fiber convs (models/fiber_kernel.py), in two
// layouts: NCDHW at stride 1 (this first part) and channels last at any stride (the
// "channels last" part below, MF-Net's default layout). Built with OpenMP: at::parallel_for
// runs on one thread in an extension compiled without it.
//
// NCDHW: y = conv3d(x, w, padding=(KT / 2, 1, 1), stride 1, groups), KT in {1, 3}.
// - forward: vectorised along W of one output row (8 floats, AVX2 + FMA), 6 output channels x
//   2 vectors per register block, so each input load feeds 6 FMAs and each weight 2. Borders
//   are handled with masked loads: the input is never copied into a padded buffer.
// - grad of the input: the same kernel on grad y with the weights flipped and transposed
//   per group (done in Python; stride 1 makes the two convolutions the same shape).
// - grad of the weight: per (output channel, input channel, kt), nine vector accumulators
//   over every output position, summed across lanes at the end.
// A scalar template serves CPUs without AVX2 + FMA and fp64 (gradcheck).
#include <torch/extension.h>
#include <immintrin.h>
#include <sys/mman.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

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

bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

void check(const torch::Tensor& x, const torch::Tensor& weight, int64_t groups) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous() && x.device().is_cpu(), "fiber_conv: x must be a contiguous NCDHW CPU tensor");
  TORCH_CHECK(weight.dim() == 5 && weight.is_contiguous() && weight.size(3) == 3 && weight.size(4) == 3 &&
              (weight.size(2) == 1 || weight.size(2) == 3), "fiber_conv: weight must be (CO, C/groups, 1 or 3, 3, 3)");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "fiber_conv: x and weight dtypes differ");
  TORCH_CHECK(groups > 0 && x.size(1) == weight.size(1) * groups && weight.size(0) % groups == 0,
              "fiber_conv: channels do not match groups");
}

// "avx2" or "scalar": the path this CPU takes for fp32 (force_scalar: the switch, for tests)
std::string path(bool force_scalar) { return !force_scalar && has_avx2() ? "avx2" : "scalar"; }

torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& weight, int64_t groups,
                      bool force_scalar) {
  check(x, weight, groups);
  if (x.scalar_type() != torch::kFloat || path(force_scalar) == "scalar") {
    auto y = torch::empty({x.size(0), weight.size(0), x.size(2), x.size(3), x.size(4)}, x.options());
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
  auto y = torch::empty({N, CO, T, H, W}, x.options());
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
torch::Tensor grad_weight(const torch::Tensor& x, const torch::Tensor& gy, int64_t groups,
                          int64_t KT, bool force_scalar) {
  TORCH_CHECK(x.is_contiguous() && gy.is_contiguous() && x.scalar_type() == gy.scalar_type() &&
              gy.size(0) == x.size(0) && gy.size(2) == x.size(2) && gy.size(3) == x.size(3) &&
              gy.size(4) == x.size(4), "fiber_conv: grad_weight needs contiguous x and grad of one shape");
  const int N = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int CO = gy.size(1), cin_g = C / groups, cout_g = CO / groups;
  auto dw = torch::empty({CO, cin_g, KT, 3, 3}, x.options());
  if (x.scalar_type() != torch::kFloat || path(force_scalar) == "scalar") {
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

// ---- channels last (NDHWC): MF-Net's default layout ----
//
// y[n, to, ho, wo, g * cout_g + co] = sum over kt, kh, kw, ci of
//     w[g, kt, kh, kw, ci, co] * x[n, to * st + kt - KT / 2, ho * sh + kh - 1, wo * sw + kw - 1, g * cin_g + ci]
// Vectorised along a group's output channels (V vectors of 8), P output pixels of one row per
// register block (P x V = 12 accumulators): per input channel and tap, V weight loads and P
// broadcasts feed P x V FMAs. The weights are packed once, (g, kt, kh, kw, ci, co) with co
// padded to a multiple of 8, so every weight load is whole. A tap left or right of the row is
// skipped at compile time (the first and last pixel of a row have their own variants); rows and
// frames outside the input are skipped whole, so nothing is padded. Each task packs its group's
// channels of the rows it reads into a compact buffer first (``Band``), once for a band of
// output rows and every output channel of the group.

// One task's input: the group's channels of the frames and rows a band of output rows reads,
// copied compactly, (KT, rows_in, W, cin_g). In the network's layout a pixel's cin_g channels
// sit C floats apart from the next pixel's, so every broadcast would touch its own cache line;
// packed, a row of the group fits a few lines and stays in L1 across the band's output rows.
struct Band {
  const float* buf;
  int hi_first, rows_in;  // the input row buf's row 0 holds, and how many rows it holds
};

struct ClGeo {
  int T, H, W, C;         // input
  int To, Ho, Wo, CO;     // output
  int KT, st, sh, sw;     // kernel depth, strides
  int cin_g, cout_g, cop;  // channels per group in and out; cop: cout_g padded to 8
};

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace {

// the first n lanes of v to p (n in 1..8), with whole stores where they fit
inline void store_first(float* p, __m256 v, int n) {
  if (n == 8) { _mm256_storeu_ps(p, v); return; }
  __m128 lo = _mm256_castps256_ps128(v);
  if (n >= 4) { _mm_storeu_ps(p, lo); lo = _mm256_extractf128_ps(v, 1); p += 4; n -= 4; }
  if (n >= 2) { _mm_storel_pi(reinterpret_cast<__m64*>(p), lo); lo = _mm_movehl_ps(lo, lo); p += 2; n -= 2; }
  if (n == 1) _mm_store_ss(p, lo);
}

// r[i][j] -> r[j][i]: eight vectors of eight floats transposed in registers (unpack, shuffle,
// swap of 128-bit halves)
inline void transpose8(__m256 (&r)[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);      // rows 2i, 2i+1: elements 0 1, 4 5
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);  // elements 2 3, 6 7
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {  // rows 4i .. 4i + 3
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));      // columns 0, 4
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));  // 1, 5
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));  // 2, 6
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));  // 3, 7
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

// One kernel column kw of one input row, for P output pixels: every input channel of the group
// feeds P x V FMAs. SKIP_FIRST / SKIP_LAST: the first / last pixel's tap falls outside the row.
template <int V, int P, bool SKIP_FIRST, bool SKIP_LAST>
inline void cl_taps(__m256 (&acc)[P][V], const float* base, int64_t pix_stride, const float* wk,
                    int cin_g, int cop) {
  for (int ci = 0; ci < cin_g; ++ci) {
    __m256 wv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) wv[v] = _mm256_loadu_ps(wk + (int64_t)ci * cop + v * 8);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      if ((SKIP_FIRST && p == 0) || (SKIP_LAST && p == P - 1)) continue;
      const __m256 b = _mm256_broadcast_ss(base + p * pix_stride + ci);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc[p][v] = _mm256_fmadd_ps(wv[v], b, acc[p][v]);
    }
  }
}

// P output pixels (wo0 .. wo0 + P - 1) of one row, output channels c0 .. c0 + 8V of one group.
// Only the row's first pixel (kw = 0) and last pixel (kw = 2) can have a tap outside the row.
template <int V, int P>
void cl_block(const Band& src, const float* wg, float* yrow, const ClGeo& g_, int to,
              int ho, int wo0, int c0, int co_n) {
  __m256 acc[P][V];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[p][v] = _mm256_setzero_ps();
  const int64_t pix_stride = (int64_t)g_.sw * g_.cin_g;
  const int pt = g_.KT / 2;
  const int last_col = (wo0 + P - 1) * g_.sw + 1;  // the last pixel's kw = 2 column
  const bool first_out = wo0 == 0, last_out = last_col >= g_.W;
  for (int kt = 0; kt < g_.KT; ++kt) {
    const int ti = to * g_.st + kt - pt;
    if (ti < 0 || ti >= g_.T) continue;
    for (int kh = 0; kh < 3; ++kh) {
      const int hi = ho * g_.sh + kh - 1;
      if (hi < 0 || hi >= g_.H) continue;
      const float* row = src.buf + ((int64_t)(ti % g_.KT) * src.rows_in + hi - src.hi_first) * g_.W * g_.cin_g;
      for (int kw = 0; kw < 3; ++kw) {
        const float* wk = wg + ((kt * 3 + kh) * 3 + kw) * (int64_t)g_.cin_g * g_.cop + c0;
        const float* base = row + (int64_t)(wo0 * g_.sw + kw - 1) * g_.cin_g;
        if (kw == 0 && first_out)
          cl_taps<V, P, true, false>(acc, base, pix_stride, wk, g_.cin_g, g_.cop);
        else if (kw == 2 && last_out)
          cl_taps<V, P, false, true>(acc, base, pix_stride, wk, g_.cin_g, g_.cop);
        else
          cl_taps<V, P, false, false>(acc, base, pix_stride, wk, g_.cin_g, g_.cop);
      }
    }
  }
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    float* out = yrow + (int64_t)(wo0 + p) * g_.CO + c0;
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const int lanes = std::min(8, co_n - v * 8);
      if (lanes > 0) store_first(out + v * 8, acc[p][v], lanes);
    }
  }
}

// the last block of a row, count < P pixels
template <int V, int P>
void cl_tail(const Band& src, const float* wg, float* yrow, const ClGeo& g, int to, int ho,
             int wo0, int count, int c0, int co_n) {
  if constexpr (P > 1) {
    if (count == P - 1) return cl_block<V, P - 1>(src, wg, yrow, g, to, ho, wo0, c0, co_n);
    return cl_tail<V, P - 1>(src, wg, yrow, g, to, ho, wo0, count, c0, co_n);
  }
}

// one output row, output channels c0 .. c0 + 8V of one group: blocks of P = 12 / V pixels
template <int V>
void cl_row(const Band& src, const float* wg, float* yrow, const ClGeo& g, int to, int ho,
            int c0, int co_n) {
  constexpr int P = 12 / V;
  int wo = 0;
  for (; wo + P <= g.Wo; wo += P) cl_block<V, P>(src, wg, yrow, g, to, ho, wo, c0, co_n);
  if (wo < g.Wo) cl_tail<V, P>(src, wg, yrow, g, to, ho, wo, g.Wo - wo, c0, co_n);
}

// The planar variant, for groups of at most 6 or of 12 output channels at column stride 1
// (MF-Net's conv2 and conv3): the broadcast block above uses 6 of its 8 lanes (12 of 16) there.
// Here each group's rows are packed (KT, rows_in, cin_g, planar_width(W)) with zero columns
// either side, vectorised along the row with the weights broadcast: per input channel and tap,
// NV loads and CO broadcasts feed NV x CO FMAs, NV = 4 vectors (32 pixels) for CO <= 3 and 2
// for CO <= 6; 12 run as two halves of 6 (planar_row_halves). (CO = 1 is the input gradient of
// MF-Net's 1 -> 6 first conv.) The block goes into the channels-last output by 8x8 transposes
// in registers.
inline int planar_width(int W) { return (W + 31) / 32 * 32 + 2; }  // whole blocks of up to 32 pixels

// Copy the channels of groups grp0 .. grp0 + ng of the rows [hi_first, hi_first + rows_in) of
// input frames [ti0, ti1) (inside the input) into buf, group j's at buf + j * group_stride and
// frame ti at slot ti % KT, so the KT consecutive frames an output frame reads have a slot
// each, and the next output frame finds those it shares already there (``Tasks::unpack``).
// Rows outside the input are left as they are (the kernel skips them).
// - PLANAR = false: (KT, rows_in, W, cin_g). Reads run along each pixel's channels; a pixel's
//   last vector is loaded masked and stored whole (the next pixel's store overwrites the
//   excess), the row's last pixel's masked, so no other row or frame is touched.
// - PLANAR = true: (KT, rows_in, cin_g, planar_width(W)), column c at c + 1; the columns either
//   side are never written, so they stay zero in a zeroed buffer.
// Inference's BatchNorm + ReLU before the conv, folded into the packing: x -> max(x * scale +
// shift, 0) per input channel (scale, shift: C floats each), applied to every pixel inside the
// input. The taps the kernel skips are the zero padding of the activated input, as in the
// network, so nothing else changes.
struct Affine {
  const float* scale = nullptr;  // nullptr: a plain copy
  const float* shift = nullptr;
};

// One input row of ng groups' channels (`from`: the row's first pixel at the first group's first
// channel, ch0 that channel's index) into the planar layout: channel k of the ng * cin goes to
// group k / cin's row k % cin, column w at w + 1. Blocks of 8 pixels x 8 channels are transposed
// in registers; the rest goes a value at a time.
template <bool AFFINE>
void pack_planar_row(const float* from, float* row, const ClGeo& g, int ng, int64_t group_stride,
                     const Affine& affine, int64_t ch0) {
  const int cin = g.cin_g, K = ng * cin;
  const int64_t wp = planar_width(g.W);
  auto at = [&](int k) { return row + (int64_t)(k / cin) * group_stride + (int64_t)(k % cin) * wp + 1; };
  auto one = [&](int w, int k) {
    float v = from[(int64_t)w * g.C + k];
    if constexpr (AFFINE) v = std::max(v * affine.scale[ch0 + k] + affine.shift[ch0 + k], 0.f);
    at(k)[w] = v;
  };
  const __m256 zero = _mm256_setzero_ps();
  int w = 0;
  for (; w + 8 <= g.W; w += 8) {
    int k = 0;
    for (; k + 8 <= K; k += 8) {
      __m256 v[8];
#pragma GCC unroll 8
      for (int p = 0; p < 8; ++p) {
        v[p] = _mm256_loadu_ps(from + (int64_t)(w + p) * g.C + k);
        if constexpr (AFFINE)
          v[p] = _mm256_max_ps(_mm256_fmadd_ps(v[p], _mm256_loadu_ps(affine.scale + ch0 + k),
                                               _mm256_loadu_ps(affine.shift + ch0 + k)), zero);
      }
      transpose8(v);  // v[i]: channel k + i at pixels w .. w + 7
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(at(k + i) + w, v[i]);
    }
    for (; k < K; ++k)
      for (int p = 0; p < 8; ++p) one(w + p, k);
  }
  for (; w < g.W; ++w)
    for (int k = 0; k < K; ++k) one(w, k);
}

template <bool PLANAR, bool AFFINE>
void pack_band(const float* xp, float* buf, const ClGeo& g, int n, int ti0, int ti1, int grp0,
               int ng, int hi_first, int rows_in, int64_t group_stride, const Affine& affine) {
  const int cin = g.cin_g;
  const int64_t row_floats = (int64_t)cin * (PLANAR ? planar_width(g.W) : g.W);
  const __m256i tail = Avx2::mask(0, cin % 8 == 0 ? 8 : cin % 8);
  const __m256 zero = _mm256_setzero_ps();
  for (int ti = ti0; ti < ti1; ++ti) {
    for (int r = 0; r < rows_in; ++r) {
      const int hi = hi_first + r;
      if (hi < 0 || hi >= g.H) continue;
      const float* from = xp + (((int64_t)n * g.T + ti) * g.H + hi) * g.W * g.C + (int64_t)grp0 * cin;
      float* row = buf + ((int64_t)(ti % g.KT) * rows_in + r) * row_floats;
      if constexpr (PLANAR) {
        pack_planar_row<AFFINE>(from, row, g, ng, group_stride, affine, (int64_t)grp0 * cin);
      } else {
        for (int w = 0; w < g.W; ++w, from += g.C) {
          for (int j = 0; j < ng; ++j) {
            const float* src = from + j * cin;
            const int64_t ch = (int64_t)(grp0 + j) * cin;  // the group's first channel
            float* dst = row + j * group_stride + (int64_t)w * cin;
            int c = 0;
            for (; c + 8 < cin; c += 8) {
              __m256 v = _mm256_loadu_ps(src + c);
              if constexpr (AFFINE)
                v = _mm256_max_ps(_mm256_fmadd_ps(v, _mm256_loadu_ps(affine.scale + ch + c),
                                                  _mm256_loadu_ps(affine.shift + ch + c)), zero);
              _mm256_storeu_ps(dst + c, v);
            }
            __m256 last = _mm256_maskload_ps(src + c, tail);
            if constexpr (AFFINE)  // masked lanes: 0 * 0 + 0
              last = _mm256_max_ps(_mm256_fmadd_ps(last, _mm256_maskload_ps(affine.scale + ch + c, tail),
                                                   _mm256_maskload_ps(affine.shift + ch + c, tail)), zero);
            if (w + 1 < g.W) _mm256_storeu_ps(dst + c, last);
            else _mm256_maskstore_ps(dst + c, tail, last);
          }
        }
      }
    }
  }
}

template <int CO>
constexpr int planar_vectors() {  // CO x NV accumulators: 8 to 12, enough FMAs in flight
  static_assert(CO <= 6, "12 channels run as two halves of 6");
  return CO <= 3 ? 4 : 2;
}

template <int CO>
void planar_block(const Band& src, const float* wg, float* yrow, const ClGeo& g_, int to, int ho,
                  int wo0) {
  constexpr int NV = planar_vectors<CO>();
  const int wp = planar_width(g_.W);
  __m256 acc[CO][NV];
#pragma GCC unroll 16
  for (int c = 0; c < CO; ++c)
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) acc[c][j] = _mm256_setzero_ps();
  const int pt = g_.KT / 2;
  for (int kt = 0; kt < g_.KT; ++kt) {
    const int ti = to * g_.st + kt - pt;
    if (ti < 0 || ti >= g_.T) continue;
    for (int kh = 0; kh < 3; ++kh) {
      const int hi = ho * g_.sh + kh - 1;
      if (hi < 0 || hi >= g_.H) continue;
      const float* rows = src.buf + ((int64_t)(ti % g_.KT) * src.rows_in + hi - src.hi_first) * g_.cin_g * wp + wo0;
      const float* wt = wg + (kt * 3 + kh) * 3 * (int64_t)g_.cin_g * g_.cop;
      for (int ci = 0; ci < g_.cin_g; ++ci) {
        const float* xr = rows + (int64_t)ci * wp;
#pragma GCC unroll 3
        for (int kw = 0; kw < 3; ++kw) {
          __m256 in[NV];
#pragma GCC unroll 16
          for (int j = 0; j < NV; ++j) in[j] = _mm256_loadu_ps(xr + kw + 8 * j);
          const float* wk = wt + ((int64_t)kw * g_.cin_g + ci) * g_.cop;
#pragma GCC unroll 16
          for (int c = 0; c < CO; ++c) {
            const __m256 wv = _mm256_broadcast_ss(wk + c);
#pragma GCC unroll 16
            for (int j = 0; j < NV; ++j) acc[c][j] = _mm256_fmadd_ps(wv, in[j], acc[c][j]);
          }
        }
      }
    }
  }
  // into the channels-last output: per 8 pixels and 8 channels, a transpose in registers, then
  // each pixel's channels stored at once
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const int pixels = std::min(8, g_.Wo - wo0 - 8 * j);
    if (pixels <= 0) break;
#pragma GCC unroll 2
    for (int c0 = 0; c0 < CO; c0 += 8) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) r[c] = c0 + c < CO ? acc[c0 + c][j] : _mm256_setzero_ps();
      transpose8(r);
      float* out = yrow + (int64_t)(wo0 + 8 * j) * g_.CO + c0;
      for (int p = 0; p < pixels; ++p) store_first(out + (int64_t)p * g_.CO, r[p], std::min(8, CO - c0));
    }
  }
}

template <int CO>
void planar_row(const Band& src, const float* wg, float* yrow, const ClGeo& g, int to, int ho) {
  for (int wo = 0; wo < g.Wo; wo += 8 * planar_vectors<CO>()) planar_block<CO>(src, wg, yrow, g, to, ho, wo);
}

using PlanarRow = void (*)(const Band&, const float*, float*, const ClGeo&, int, int);

// 12 output channels as two halves of 6: each input vector then feeds 6 x 2 FMAs for 8 loads,
// where one block of 12 channels x 1 vector takes 13 loads for 12
void planar_row_halves(const Band& src, const float* wg, float* yrow, const ClGeo& g, int to, int ho) {
  planar_row<6>(src, wg, yrow, g, to, ho);
  planar_row<6>(src, wg + 6, yrow + 6, g, to, ho);
}

PlanarRow planar_row_for(int cout_g) {
  switch (cout_g) {
    case 1: return planar_row<1>;
    case 2: return planar_row<2>;
    case 3: return planar_row<3>;
    case 4: return planar_row<4>;
    case 5: return planar_row<5>;
    case 6: return planar_row<6>;
    default: return planar_row_halves;
  }
}

}  // namespace
#pragma GCC pop_options

// (CO, cin_g, KT, 3, 3) -> (groups, KT, 3, 3, cin_g, cop), cop = cout_g rounded up to 8, zeros padded
torch::Tensor pack_cl(const torch::Tensor& weight, int64_t groups) {
  TORCH_CHECK(weight.dim() == 5 && weight.size(3) == 3 && weight.size(4) == 3 && weight.size(0) % groups == 0,
              "fiber_conv: weight must be (CO, C/groups, KT, 3, 3)");
  const int64_t cout_g = weight.size(0) / groups, cop = (cout_g + 7) / 8 * 8;
  auto w = weight.reshape({groups, cout_g, weight.size(1), weight.size(2), 3, 3}).permute({0, 3, 4, 5, 2, 1});
  auto packed = torch::zeros({groups, weight.size(2), 3, 3, weight.size(1), cop}, weight.options());
  packed.narrow(5, 0, cout_g).copy_(w);
  return packed;
}

// The geometry of a channels-last conv of x (N, C, T, H, W) with KT x 3 x 3 kernels, checked.
ClGeo cl_geometry(const torch::Tensor& x, int groups, int KT, int cin_g, int cout_g,
                  const std::vector<int64_t>& stride) {
  TORCH_CHECK(x.dim() == 5 && x.device().is_cpu() && x.scalar_type() == torch::kFloat &&
              x.is_contiguous(at::MemoryFormat::ChannelsLast3d), "fiber_conv: x must be a channels-last-3d fp32 CPU tensor");
  TORCH_CHECK(has_avx2(), "fiber_conv: the channels-last kernel needs AVX2 and FMA");
  TORCH_CHECK(stride.size() == 3 && stride[0] > 0 && stride[1] > 0 && stride[2] > 0,
              "fiber_conv: strides must be three positive numbers");
  ClGeo g;
  g.KT = KT; g.cin_g = cin_g; g.cout_g = cout_g; g.cop = (cout_g + 7) / 8 * 8;
  g.C = x.size(1); g.T = x.size(2); g.H = x.size(3); g.W = x.size(4);
  TORCH_CHECK(groups > 0 && g.C == g.cin_g * groups, "fiber_conv: channels do not match groups");
  g.st = stride[0]; g.sh = stride[1]; g.sw = stride[2];
  g.CO = groups * cout_g;
  g.To = (g.T + 2 * (g.KT / 2) - g.KT) / g.st + 1;
  g.Ho = (g.H + 2 - 3) / g.sh + 1;
  g.Wo = (g.W + 2 - 3) / g.sw + 1;
  return g;
}

// What one thread's buffer holds: input frames [ti0, ti1) of the (n, group block, band) `key`.
struct Held {
  int64_t key = -1;
  int ti0 = 0, ti1 = 0;
};

// How a channels-last conv is cut into tasks: (n, block of groups, band of output rows, output
// frame), the frame innermost where the kernel spans frames (KT > 1). A band's packed input
// (Band) stays within about 128 KB per group, in L2. A task packs a block of groups at once,
// reading each pixel's channels in order; the blocks are as large as leaves about four tasks
// per thread. at::parallel_for hands each thread a run of consecutive tasks, so a thread moves
// along the frames of one block and band: of the KT input frames an output frame reads, it
// packs only those the previous one did not.
struct Tasks {
  int band, bands, max_rows_in, gblock, gblocks;
  int64_t group_stride, count;
  bool planar;  // the planar variant (see planar_block)
  Tasks(const ClGeo& g, int N, int groups, bool allow_planar) {
    planar = allow_planar && (g.cout_g <= 6 || g.cout_g == 12) && g.sw == 1;
    const int64_t row_bytes = (int64_t)g.KT * g.W * g.cin_g * sizeof(float);
    const int fit_rows = std::max<int64_t>(3, (128 << 10) / std::max<int64_t>(1, row_bytes));
    band = std::max(1, std::min(g.Ho, (fit_rows - 3) / g.sh + 1));
    bands = (g.Ho + band - 1) / band;
    max_rows_in = (band - 1) * g.sh + 3;
    const int64_t outer = (int64_t)N * g.To * bands;
    const int64_t want = 4 * (int64_t)at::get_num_threads();
    const int split = (int)std::min<int64_t>(groups, std::max<int64_t>(1, (want + outer - 1) / outer));
    gblock = (groups + split - 1) / split;
    gblocks = (groups + gblock - 1) / gblock;
    group_stride = (int64_t)g.KT * max_rows_in * g.cin_g * (planar ? planar_width(g.W) : g.W) + 8;
    count = outer * gblocks;
  }
  size_t buffer_floats() const { return (size_t)gblock * group_stride; }
  // task -> (n, to, first group, groups in the block, band); packs what buf (holding `held`)
  // lacks of the block's input and returns group grp0's Band (group j's: buf + j * group_stride)
  Band unpack(int64_t task, const float* xp, float* buf, const ClGeo& g, int groups, Held& held,
              int& n, int& to, int& grp0, int& ng, int& ho0, int& ho1, const Affine& affine = {}) const {
    int64_t key;  // (n, group block, band)
    if (g.KT > 1) {
      to = task % g.To;
      key = task / g.To;
    } else {  // no frame to share: neighbouring tasks read neighbouring rows of one frame
      key = task % ((int64_t)gblocks * bands);
      task /= (int64_t)gblocks * bands;
      to = task % g.To;
      key += task / g.To * gblocks * bands;
    }
    const int b = key % bands;
    const int gb = (key / bands) % gblocks;
    n = key / bands / gblocks;
    grp0 = gb * gblock;
    ng = std::min(gblock, groups - grp0);
    ho0 = b * band;
    ho1 = std::min(g.Ho, ho0 + band);
    const Band src{buf, ho0 * g.sh - 1, (ho1 - 1 - ho0) * g.sh + 3};
    const int first = to * g.st - g.KT / 2;
    const int ti0 = std::max(0, first), ti1 = std::min(g.T, first + g.KT);
    // frames [ti0, held.ti1) are still there when the window moved forward within the same key
    const bool keep = held.key == key && held.ti0 <= ti0 && ti0 <= held.ti1;
    const int from = keep ? std::max(ti0, held.ti1) : ti0;
    const bool fold = affine.scale != nullptr;
    if (planar && fold)
      pack_band<true, true>(xp, buf, g, n, from, ti1, grp0, ng, src.hi_first, src.rows_in, group_stride, affine);
    else if (planar)
      pack_band<true, false>(xp, buf, g, n, from, ti1, grp0, ng, src.hi_first, src.rows_in, group_stride, affine);
    else if (fold)
      pack_band<false, true>(xp, buf, g, n, from, ti1, grp0, ng, src.hi_first, src.rows_in, group_stride, affine);
    else
      pack_band<false, false>(xp, buf, g, n, from, ti1, grp0, ng, src.hi_first, src.rows_in, group_stride, affine);
    held = Held{key, ti0, ti1};
    return src;
  }
};

// A large output is written once, page by page. glibc serves a block above its mmap threshold
// (32 MiB at most) with fresh pages, each faulted in and zeroed on first touch: 4 KiB at a time,
// unless the range asks for transparent huge pages (2 MiB), which Linux's default "madvise"
// mode grants only where asked. Harmless where the block is reused heap memory.
void prefer_huge_pages(const torch::Tensor& y) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t huge = 2 << 20;
  const uintptr_t begin = ((uintptr_t)y.data_ptr() + huge - 1) & ~(huge - 1);
  const uintptr_t end = ((uintptr_t)y.data_ptr() + y.nbytes()) & ~(huge - 1);
  if (end > begin) madvise((void*)begin, end - begin, MADV_HUGEPAGE);
#endif
}

// y = conv3d(x, w, stride, padding=(KT/2, 1, 1), groups) with x channels-last-3d (fp32, AVX2 CPU)
// and w packed by pack_cl; y is channels-last-3d.
torch::Tensor forward_cl(const torch::Tensor& x, const torch::Tensor& packed, int64_t cout_g,
                         std::vector<int64_t> stride, const std::optional<torch::Tensor>& scale,
                         const std::optional<torch::Tensor>& shift) {
  TORCH_CHECK(packed.dim() == 6 && packed.is_contiguous() && packed.scalar_type() == torch::kFloat &&
              packed.size(5) == (cout_g + 7) / 8 * 8, "fiber_conv: packed weight malformed");
  const int groups = packed.size(0);
  const ClGeo g = cl_geometry(x, groups, packed.size(1), packed.size(4), cout_g, stride);
  Affine affine;
  TORCH_CHECK(scale.has_value() == shift.has_value(), "fiber_conv: scale and shift go together");
  if (scale.has_value()) {
    for (const auto* t : {&*scale, &*shift})
      TORCH_CHECK(t->dim() == 1 && t->size(0) == g.C && t->is_contiguous() && t->device().is_cpu() &&
                  t->scalar_type() == torch::kFloat, "fiber_conv: scale and shift must be C contiguous fp32 CPU floats");
    affine = Affine{scale->data_ptr<float>(), shift->data_ptr<float>()};
  }
  const int N = x.size(0);
  auto y = torch::empty({N, g.CO, g.To, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  prefer_huge_pages(y);
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // chunks of at most 3 vectors (24 output channels) per register block
  const int vecs = g.cop / 8, chunks = (vecs + 2) / 3;
  const Tasks tasks(g, N, groups, /*allow_planar=*/true);
  const PlanarRow planar_row = planar_row_for(g.cout_g);
  const int64_t group_w = (int64_t)g.KT * 9 * g.cin_g * g.cop;
  at::parallel_for(0, tasks.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(tasks.buffer_floats());  // zeros: the planar pad columns stay so
    Held held;
    for (int64_t task = begin; task < end; ++task) {
      int n, to, grp0, ng, ho0, ho1;
      const Band first = tasks.unpack(task, xp, buf.data(), g, groups, held, n, to, grp0, ng, ho0, ho1, affine);
      for (int j = 0; j < ng; ++j) {
        const int grp = grp0 + j;
        const Band src{first.buf + j * tasks.group_stride, first.hi_first, first.rows_in};
        const float* wg = wp + grp * group_w;
        if (tasks.planar) {
          for (int ho = ho0; ho < ho1; ++ho)
            planar_row(src, wg, yp + (((int64_t)n * g.To + to) * g.Ho + ho) * g.Wo * g.CO +
                                    (int64_t)grp * g.cout_g, g, to, ho);
          continue;
        }
        for (int chunk = 0; chunk < chunks; ++chunk) {
          const int c0 = chunk * 24, v = std::min(3, vecs - chunk * 3);
          const int co_n = std::min(24, g.cout_g - c0);
          for (int ho = ho0; ho < ho1; ++ho) {
            float* yrow = yp + (((int64_t)n * g.To + to) * g.Ho + ho) * g.Wo * g.CO + (int64_t)grp * g.cout_g;
            if (v == 1) cl_row<1>(src, wg, yrow, g, to, ho, c0, co_n);
            else if (v == 2) cl_row<2>(src, wg, yrow, g, to, ho, c0, co_n);
            else cl_row<3>(src, wg, yrow, g, to, ho, c0, co_n);
          }
        }
      }
    }
  });
  return y;
}

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace {

// The weight gradient for one tap (kt, kh, kw), input channels ci0 .. ci0 + B and output
// channels c0 .. c0 + 8V of one group, over a band's output pixels: B x V accumulators (read
// from and written back to dw, the group's (KT, 3, 3, cin_g, cop) slice at this tap and ci0)
// gain x[tap pixel, ci] * gy[pixel, co] for every pixel whose tap is inside the input. The tap's
// input frame is in the band's `slot` (see pack_band).
template <int V, int B>
void wgrad_tap(const Band& src, const float* gyg, float* dw, const ClGeo& g, int n, int to,
               int ho0, int ho1, int slot, int kh, int kw, int ci0, int co_n) {
  // U pixels at a time into U sets of accumulators, so that 8 to 12 FMA chains are in flight
  // where a group has few channels (1 input channel x 1 vector: one chain, one FMA per latency)
  constexpr int U = std::max(1, std::min((8 + B * V - 1) / (B * V), 12 / (B * V)));
  __m256 acc[U][B][V];
#pragma GCC unroll 16
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v)
        acc[u][b][v] = u == 0 ? _mm256_loadu_ps(dw + (int64_t)b * g.cop + v * 8) : _mm256_setzero_ps();
  const __m256i last = Avx2::mask(0, co_n - 8 * (V - 1));  // the last vector's lanes in the group
  const int lo = kw == 0 ? 1 : 0;  // the first wo whose column wo * sw + kw - 1 is >= 0
  const int hi = g.W - kw < 0 ? 0 : std::min(g.Wo, (g.W - kw) / g.sw + 1);  // ... is <= W - 1
  const int64_t pix = (int64_t)g.sw * g.cin_g;
  auto one = [&](__m256 (&into)[B][V], const float* xp, const float* gp) {
    __m256 gv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v)
      gv[v] = v < V - 1 ? _mm256_loadu_ps(gp + v * 8) : _mm256_maskload_ps(gp + v * 8, last);
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) {
      const __m256 xb = _mm256_broadcast_ss(xp + b);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) into[b][v] = _mm256_fmadd_ps(xb, gv[v], into[b][v]);
    }
  };
  for (int ho = ho0; ho < ho1; ++ho) {
    const int hi_ = ho * g.sh + kh - 1;
    if (hi_ < 0 || hi_ >= g.H) continue;
    const float* xrow = src.buf + ((int64_t)slot * src.rows_in + hi_ - src.hi_first) * g.W * g.cin_g
                        + (int64_t)(kw - 1) * g.cin_g + ci0;
    const float* grow = gyg + (((int64_t)n * g.To + to) * g.Ho + ho) * g.Wo * g.CO;
    int wo = lo;
    for (; wo + U <= hi; wo += U)
#pragma GCC unroll 16
      for (int u = 0; u < U; ++u) one(acc[u], xrow + (wo + u) * pix, grow + (int64_t)(wo + u) * g.CO);
    for (; wo < hi; ++wo) one(acc[0], xrow + wo * pix, grow + (int64_t)wo * g.CO);
  }
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      __m256 sum = acc[0][b][v];
#pragma GCC unroll 16
      for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[u][b][v]);
      _mm256_storeu_ps(dw + (int64_t)b * g.cop + v * 8, sum);
    }
}

// the last input channels of a tap, count < B of them
template <int V, int B>
void wgrad_tail(const Band& src, const float* gyg, float* dw, const ClGeo& g, int n, int to,
                int ho0, int ho1, int slot, int kh, int kw, int ci0, int co_n, int count) {
  if constexpr (B > 1) {
    if (count == B - 1)
      return wgrad_tap<V, B - 1>(src, gyg, dw, g, n, to, ho0, ho1, slot, kh, kw, ci0, co_n);
    return wgrad_tail<V, B - 1>(src, gyg, dw, g, n, to, ho0, ho1, slot, kh, kw, ci0, co_n, count);
  }
}

// every tap and input channel of one group, output channels c0 .. c0 + 8V (gyg and dwg offset to c0)
template <int V>
void wgrad_band(const Band& src, const float* gyg, float* dwg, const ClGeo& g, int n, int to,
                int ho0, int ho1, int co_n) {
  constexpr int B = 12 / V;
  for (int kt = 0; kt < g.KT; ++kt) {
    const int ti = to * g.st + kt - g.KT / 2;
    if (ti < 0 || ti >= g.T) continue;
    for (int kh = 0; kh < 3; ++kh)
      for (int kw = 0; kw < 3; ++kw) {
        float* dw = dwg + ((kt * 3 + kh) * 3 + kw) * (int64_t)g.cin_g * g.cop;
        int ci = 0;
        for (; ci + B <= g.cin_g; ci += B)
          wgrad_tap<V, B>(src, gyg, dw + (int64_t)ci * g.cop, g, n, to, ho0, ho1, ti % g.KT, kh, kw, ci, co_n);
        if (ci < g.cin_g)
          wgrad_tail<V, B>(src, gyg, dw + (int64_t)ci * g.cop, g, n, to, ho0, ho1, ti % g.KT, kh, kw, ci,
                           co_n, g.cin_g - ci);
      }
  }
}

// The weight gradient of one group with at most 8 output channels at spatial stride 1, all three
// kw taps at once. Input column c meets output pixel c + 1 - kw through tap kw, so one broadcast
// of x[c, ci] feeds three FMAs, with grad y at pixels c + 1, c and c - 1. Grad y's rows are first
// copied into `gpad`, one vector per pixel (its co_n channels, zeros after) and a zero vector at
// either end, so the border pixels need no branch. The wgrad_tap form spends one broadcast per
// FMA here, with a quarter of each vector idle at 6 channels.
template <int CB>
void wgrad_kw(const Band& src, const float* gpad, float* dw, const ClGeo& g, int ho0, int ho1,
              int slot, int kh, int ci0) {
  const int64_t kw_stride = (int64_t)g.cin_g * g.cop;  // dw's step from one kw to the next
  __m256 acc[CB][3];
#pragma GCC unroll 16
  for (int b = 0; b < CB; ++b)
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) acc[b][kw] = _mm256_loadu_ps(dw + kw * kw_stride + (int64_t)b * g.cop);
  for (int ho = ho0; ho < ho1; ++ho) {
    const int hi = ho + kh - 1;
    if (hi < 0 || hi >= g.H) continue;
    const float* xrow = src.buf + ((int64_t)slot * src.rows_in + hi - src.hi_first) * g.W * g.cin_g + ci0;
    const float* grow = gpad + (int64_t)(ho - ho0) * (g.W + 2) * 8;
    for (int c = 0; c < g.W; ++c) {
      const __m256 right = _mm256_loadu_ps(grow + 8 * (c + 2));  // pixel c + 1: tap kw = 0
      const __m256 here = _mm256_loadu_ps(grow + 8 * (c + 1));   // pixel c: kw = 1
      const __m256 left = _mm256_loadu_ps(grow + 8 * c);         // pixel c - 1: kw = 2
#pragma GCC unroll 16
      for (int b = 0; b < CB; ++b) {
        const __m256 xb = _mm256_broadcast_ss(xrow + (int64_t)c * g.cin_g + b);
        acc[b][0] = _mm256_fmadd_ps(xb, right, acc[b][0]);
        acc[b][1] = _mm256_fmadd_ps(xb, here, acc[b][1]);
        acc[b][2] = _mm256_fmadd_ps(xb, left, acc[b][2]);
      }
    }
  }
#pragma GCC unroll 16
  for (int b = 0; b < CB; ++b)
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) _mm256_storeu_ps(dw + kw * kw_stride + (int64_t)b * g.cop, acc[b][kw]);
}

// every tap and input channel of one group of at most 8 output channels (gyg, dwg at the group)
void wgrad_band_kw(const Band& src, const float* gyg, float* dwg, const ClGeo& g, int n, int to,
                   int ho0, int ho1, int co_n, std::vector<float>& gpad) {
  const int64_t row = (int64_t)(g.W + 2) * 8;
  gpad.assign((ho1 - ho0) * row, 0.f);
  const __m256i lanes = Avx2::mask(0, co_n);
  for (int ho = ho0; ho < ho1; ++ho) {
    const float* grow = gyg + (((int64_t)n * g.To + to) * g.Ho + ho) * g.Wo * g.CO;
    float* dst = gpad.data() + (ho - ho0) * row + 8;
    for (int p = 0; p < g.Wo; ++p)
      _mm256_storeu_ps(dst + 8 * p, _mm256_maskload_ps(grow + (int64_t)p * g.CO, lanes));
  }
  constexpr int CB = 3;  // 3 input channels x 3 taps: 9 chains
  for (int kt = 0; kt < g.KT; ++kt) {
    const int ti = to * g.st + kt - g.KT / 2;
    if (ti < 0 || ti >= g.T) continue;
    for (int kh = 0; kh < 3; ++kh) {
      float* dw = dwg + (kt * 3 + kh) * 3 * (int64_t)g.cin_g * g.cop;
      int ci = 0;
      for (; ci + CB <= g.cin_g; ci += CB)
        wgrad_kw<CB>(src, gpad.data(), dw + (int64_t)ci * g.cop, g, ho0, ho1, ti % g.KT, kh, ci);
      if (g.cin_g - ci == 2)
        wgrad_kw<2>(src, gpad.data(), dw + (int64_t)ci * g.cop, g, ho0, ho1, ti % g.KT, kh, ci);
      else if (g.cin_g - ci == 1)
        wgrad_kw<1>(src, gpad.data(), dw + (int64_t)ci * g.cop, g, ho0, ho1, ti % g.KT, kh, ci);
    }
  }
}

}  // namespace
#pragma GCC pop_options

// grad of the weight of y = conv3d(x, w, stride, padding=(KT/2, 1, 1), groups), x and gy
// channels-last-3d fp32: (CO, cin_g, KT, 3, 3). Each thread sums its tasks into a buffer of its
// own, in the packed layout; the buffers are added at the end.
torch::Tensor grad_weight_cl(const torch::Tensor& x, const torch::Tensor& gy, int64_t groups,
                             int64_t KT, std::vector<int64_t> stride) {
  TORCH_CHECK(gy.dim() == 5 && gy.scalar_type() == torch::kFloat && gy.size(1) % groups == 0 &&
              gy.is_contiguous(at::MemoryFormat::ChannelsLast3d), "fiber_conv: grad must be channels-last-3d fp32");
  const int cout_g = gy.size(1) / groups;
  const ClGeo g = cl_geometry(x, groups, KT, x.size(1) / groups, cout_g, stride);
  TORCH_CHECK(gy.size(0) == x.size(0) && gy.size(2) == g.To && gy.size(3) == g.Ho && gy.size(4) == g.Wo,
              "fiber_conv: grad's shape does not match the conv's output");
  const int N = x.size(0);
  const float* xp = x.data_ptr<float>();
  const float* gp = gy.data_ptr<float>();
  const int vecs = g.cop / 8, chunks = (vecs + 2) / 3;
  const Tasks tasks(g, N, groups, /*allow_planar=*/false);
  const int64_t group_w = (int64_t)g.KT * 9 * g.cin_g * g.cop;
  std::vector<std::vector<float>> partial(at::get_num_threads());
  at::parallel_for(0, tasks.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<float>& mine = partial.at(at::get_thread_num());
    if (mine.empty()) mine.assign(groups * group_w, 0.f);
    std::vector<float> buf(tasks.buffer_floats());
    std::vector<float> gpad;
    Held held;
    for (int64_t task = begin; task < end; ++task) {
      int n, to, grp0, ng, ho0, ho1;
      const Band first = tasks.unpack(task, xp, buf.data(), g, groups, held, n, to, grp0, ng, ho0, ho1);
      for (int j = 0; j < ng; ++j) {
        const int grp = grp0 + j;
        const Band src{first.buf + j * tasks.group_stride, first.hi_first, first.rows_in};
        if (g.cout_g <= 8 && g.sh == 1 && g.sw == 1) {
          wgrad_band_kw(src, gp + (int64_t)grp * g.cout_g, mine.data() + grp * group_w, g, n, to, ho0,
                        ho1, g.cout_g, gpad);
          continue;
        }
        for (int chunk = 0; chunk < chunks; ++chunk) {
          const int c0 = chunk * 24, v = std::min(3, vecs - chunk * 3);
          const int co_n = std::min(24, g.cout_g - c0);
          const float* gyg = gp + (int64_t)grp * g.cout_g + c0;
          float* dwg = mine.data() + grp * group_w + c0;
          if (v == 1) wgrad_band<1>(src, gyg, dwg, g, n, to, ho0, ho1, co_n);
          else if (v == 2) wgrad_band<2>(src, gyg, dwg, g, n, to, ho0, ho1, co_n);
          else wgrad_band<3>(src, gyg, dwg, g, n, to, ho0, ho1, co_n);
        }
      }
    }
  });
  auto packed = torch::zeros({groups, KT, 3, 3, g.cin_g, g.cop}, x.options());
  float* out = packed.data_ptr<float>();
  for (const auto& mine : partial)
    if (!mine.empty())
      at::parallel_for(0, (int64_t)mine.size(), 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] += mine[i];
      });
  // (groups, KT, 3, 3, cin_g, cop) -> (CO, cin_g, KT, 3, 3)
  return packed.narrow(5, 0, cout_g).permute({0, 5, 4, 1, 2, 3}).reshape({g.CO, g.cin_g, KT, 3, 3}).contiguous();
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

// BatchNorm + ReLU, channels last (bn_relu.cpp)
std::vector<torch::Tensor> bn_stats(torch::Tensor x);
torch::Tensor affine_relu(torch::Tensor x, torch::Tensor scale, torch::Tensor shift);
std::vector<torch::Tensor> backward_sums(torch::Tensor gy, torch::Tensor x, torch::Tensor scale,
                                         torch::Tensor shift, torch::Tensor mean);
torch::Tensor backward_apply(torch::Tensor gy, torch::Tensor x, torch::Tensor scale,
                             torch::Tensor shift, torch::Tensor a, torch::Tensor b, torch::Tensor c);

// Large CPU blocks kept for reuse (pool.cpp)
bool pool_install(int64_t cap_bytes);
int64_t pool_kept();
int64_t pool_empty();

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("grad_weight", &grad_weight);
  m.def("path", &path);
  m.def("pack_cl", &pack_cl);
  m.def("forward_cl", &forward_cl, py::arg("x"), py::arg("packed"), py::arg("cout_g"), py::arg("stride"),
        py::arg("scale") = py::none(), py::arg("shift") = py::none());
  m.def("threads_used", &threads_used);
  m.def("grad_weight_cl", &grad_weight_cl);
  m.def("bn_stats", &bn_stats);
  m.def("affine_relu", &affine_relu);
  m.def("bn_relu_backward_sums", &backward_sums);
  m.def("bn_relu_backward_apply", &backward_apply);
  m.def("pool_install", &pool_install);
  m.def("pool_kept", &pool_kept);
  m.def("pool_empty", &pool_empty);
}
