// The channels-last forward's register blocks, and the weight gradient's (wgrad_group), written
// once for any vector width. Each path's
// file includes this after `#pragma GCC target(...)`, so every function here is compiled for
// that path's instruction set, in that file's own unnamed namespace; then it defines the path's
// vector traits A and calls run_forward<A>. A provides:
//   L                       floats per vector
//   ACC                     accumulators a register block may hold (16 or 32 registers)
//   PMAX                    output pixels per block at most (the broadcast form)
//   V                       the vector type
//   zero(), load(p), bcast(p), fma(a, b, c) = a * b + c, add(a, b), store(p, v)
//   store_first(p, v, n)    lanes 0 .. n - 1 of v to p, 1 <= n <= L
//   eighth(v, i)            lanes 8i .. 8i + 7 of v, as an __m256
//   load_first(p, n)        lanes 0 .. n - 1 from p, the rest zero (n < L)
//   eighths(p, q, n)        (L = 16 only) lanes 0 .. n - 1 from p and 8 .. 8 + n - 1 from q (n <= 8);
//                           the other lanes, and those of a null pointer, zero
#pragma once

#include <ATen/Parallel.h>
#include <immintrin.h>

#include "fiber_cl.h"

namespace fiber {
namespace {

inline __m256i mask8(int n) {  // lanes 0 .. n - 1 on
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// out[p * stride + c] += residual[p * stride + c] for `pixels` pixels and c < n: a residual added
// to a row of output just written, while its lines are still in cache, instead of a pass of
// its own over the whole output (read twice, written once)
// (no masked stores: vmaskmovps stores are microcoded and slow on AMD's cores, so the last
// channels go 4, 2 and 1 at a time, as in store8_first)
inline void add_residual(float* out, const float* residual, int pixels, int64_t stride, int n) {
  for (int p = 0; p < pixels; ++p, out += stride, residual += stride) {
    int c = 0;
    for (; c + 8 <= n; c += 8)
      _mm256_storeu_ps(out + c, _mm256_add_ps(_mm256_loadu_ps(out + c), _mm256_loadu_ps(residual + c)));
    if (c + 4 <= n) {
      _mm_storeu_ps(out + c, _mm_add_ps(_mm_loadu_ps(out + c), _mm_loadu_ps(residual + c)));
      c += 4;
    }
    if (c + 2 <= n) {
      const __m128 a = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(out + c)));
      const __m128 b = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(residual + c)));
      _mm_store_sd(reinterpret_cast<double*>(out + c), _mm_castps_pd(_mm_add_ps(a, b)));
      c += 2;
    }
    if (c < n) out[c] += residual[c];
  }
}

// the first n lanes of v to p (n in 1..8), with whole stores where they fit
inline void store8_first(float* p, __m256 v, int n) {
  if (n == 8) { _mm256_storeu_ps(p, v); return; }
  __m128 lo = _mm256_castps256_ps128(v);
  if (n >= 4) { _mm_storeu_ps(p, lo); lo = _mm256_extractf128_ps(v, 1); p += 4; n -= 4; }
  if (n >= 2) { _mm_storel_pi(reinterpret_cast<__m64*>(p), lo); lo = _mm_movehl_ps(lo, lo); p += 2; n -= 2; }
  if (n == 1) _mm_store_ss(p, lo);
}

// AVX2's vector traits: 8 floats a vector, 16 registers (the AVX-512 build's are in
// fiber_cl_avx512.cpp)
struct Avx2 {
  static constexpr int L = 8, ACC = 12, PMAX = 12;
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_first(float* p, V v, int n) { store8_first(p, v, n); }
  static __m256 eighth(V v, int) { return v; }
  static V load_first(const float* p, int n) { return _mm256_maskload_ps(p, mask8(n)); }
};

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

// f(kt, kh, row) for each kernel frame and row whose input frame and row are inside the input,
// row: that input row in the band (rows of row_floats floats). Taps outside are skipped whole:
// they read the zero padding.
// acc[r][v] += s[r] * vec[v]: R broadcasts and R x V FMAs, the core of the register blocks that
// broadcast one operand (the planar form's weights, the pointwise weight gradient's grad y)
template <class A, int R, int V>
inline void broadcast_fma(typename A::V (&acc)[R][V], const float* s, const typename A::V (&vec)[V]) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const typename A::V b = A::bcast(s + r);
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[r][v] = A::fma(b, vec[v], acc[r][v]);
  }
}

template <class F>
inline void for_each_input_row(const Band& src, const ClGeo& g, int to, int ho, int64_t row_floats, F&& f) {
  for (int kt = 0; kt < g.KT; ++kt) {
    const int ti = to * g.st + kt - g.KT / 2;
    if (ti < 0 || ti >= g.T) continue;
    for (int kh = 0; kh < 3; ++kh) {
      const int hi = ho * g.sh + kh - 1;
      if (hi < 0 || hi >= g.H) continue;
      f(kt, kh, src.buf + ((int64_t)(ti % g.KT) * src.rows_in + hi - src.hi_first) * row_floats);
    }
  }
}

// ---- the broadcast form: vectorised along a group's output channels ----
//
// y[n, to, ho, wo, g * cout_g + co] = sum over kt, kh, kw, ci of
//     w[g, kt, kh, kw, ci, co] * x[n, to * st + kt - KT / 2, ho * sh + kh - 1, wo * sw + kw - 1, g * cin_g + ci]
// V vectors of output channels x P output pixels of one row per register block: per input
// channel and tap, V weight loads and P broadcasts feed P x V FMAs. The weights are packed once
// (pack_cl), (g, kt, kh, kw, ci, co) with co padded to whole vectors, so every weight load is
// whole. A tap left or right of the row is skipped at compile time (the first and last pixel of
// a row have their own variants); rows and frames outside the input are skipped whole, so
// nothing is padded.

template <class A, int V>
constexpr int block_pixels() { return std::min(A::PMAX, A::ACC / V); }

// One kernel column kw of one input row, for P output pixels: every input channel of the group
// feeds P x V FMAs. SKIP_FIRST / SKIP_LAST: the first / last pixel's tap falls outside the row.
template <class A, int V, int P, bool SKIP_FIRST, bool SKIP_LAST>
inline void cl_taps(typename A::V (&acc)[P][V], const float* base, int64_t pix_stride, const float* wk,
                    int cin_g, int cop) {
  for (int ci = 0; ci < cin_g; ++ci) {
    typename A::V wv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) wv[v] = A::load(wk + (int64_t)ci * cop + v * A::L);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      if ((SKIP_FIRST && p == 0) || (SKIP_LAST && p == P - 1)) continue;
      const typename A::V b = A::bcast(base + p * pix_stride + ci);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc[p][v] = A::fma(wv[v], b, acc[p][v]);
    }
  }
}

// P output pixels (wo0 .. wo0 + P - 1) of one row, output channels c0 .. c0 + V * L of one group.
// Only the row's first pixel (kw = 0) and last pixel (kw = 2) can have a tap outside the row.
template <class A, int V, int P>
void cl_block(const Band& src, const float* wg, float* yrow, const ClGeo& g_, int to,
              int ho, int wo0, int c0, int co_n) {
  typename A::V acc[P][V];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[p][v] = A::zero();
  const int64_t pix_stride = (int64_t)g_.sw * g_.cin_g;
  const int last_col = (wo0 + P - 1) * g_.sw + 1;  // the last pixel's kw = 2 column
  const bool first_out = wo0 == 0, last_out = last_col >= g_.W;
  for_each_input_row(src, g_, to, ho, (int64_t)g_.W * g_.cin_g, [&](int kt, int kh, const float* row) {
    for (int kw = 0; kw < 3; ++kw) {
      const float* wk = wg + ((kt * 3 + kh) * 3 + kw) * (int64_t)g_.cin_g * g_.cop + c0;
      const float* base = row + (int64_t)(wo0 * g_.sw + kw - 1) * g_.cin_g;
      if (kw == 0 && first_out)
        cl_taps<A, V, P, true, false>(acc, base, pix_stride, wk, g_.cin_g, g_.cop);
      else if (kw == 2 && last_out)
        cl_taps<A, V, P, false, true>(acc, base, pix_stride, wk, g_.cin_g, g_.cop);
      else
        cl_taps<A, V, P, false, false>(acc, base, pix_stride, wk, g_.cin_g, g_.cop);
    }
  });
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    float* out = yrow + (int64_t)(wo0 + p) * g_.CO + c0;
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      const int lanes = std::min(A::L, co_n - v * A::L);
      if (lanes > 0) A::store_first(out + v * A::L, acc[p][v], lanes);
    }
  }
}

// the last block of a row, count < P pixels
template <class A, int V, int P>
void cl_tail(const Band& src, const float* wg, float* yrow, const ClGeo& g, int to, int ho,
             int wo0, int count, int c0, int co_n) {
  if constexpr (P > 1) {
    if (count == P - 1) return cl_block<A, V, P - 1>(src, wg, yrow, g, to, ho, wo0, c0, co_n);
    return cl_tail<A, V, P - 1>(src, wg, yrow, g, to, ho, wo0, count, c0, co_n);
  }
}

// one output row, output channels c0 .. c0 + V * L of one group
template <class A, int V>
void cl_row(const Band& src, const float* wg, float* yrow, const ClGeo& g, int to, int ho,
            int c0, int co_n) {
  constexpr int P = block_pixels<A, V>();
  int wo = 0;
  for (; wo + P <= g.Wo; wo += P) cl_block<A, V, P>(src, wg, yrow, g, to, ho, wo, c0, co_n);
  if (wo < g.Wo) cl_tail<A, V, P>(src, wg, yrow, g, to, ho, wo, g.Wo - wo, c0, co_n);
}

// ---- the planar form: vectorised along the output row ----
//
// For groups of at most 6 or of 12 output channels at column stride 1 or 2 (MF-Net's conv2 and
// conv3, and conv3's strided first unit), where the broadcast form leaves lanes idle (6 of 8,
// 12 of 16 on AVX2). Each group's rows are packed (KT, rows_in, cin_g, planar_row_floats) with
// zero columns either side, at stride 2 as even and odd columns (planar_tap), the weights are
// broadcast: per input channel and tap, NV loads and CO broadcasts feed NV x CO FMAs, NV = 4
// vectors for CO <= 3 and 2 otherwise. With 16 registers, 12 channels run as two halves of 6
// (planar_row_halves); with 32, at once. (CO = 1 is the input gradient of MF-Net's 1 -> 6 first
// conv.) The block goes into the channels-last output by 8x8 transposes in registers.

template <int CO>
constexpr int planar_vectors() { return CO <= 3 ? 4 : 2; }

// CIN, COUT: the group's input and output channels where known at compile time (0: read from
// g_), so the input-channel loop has constant bounds and weight offsets
template <class A, int CO, int CIN = 0, int COUT = 0>
void planar_block(const Band& src, const float* wg, float* yrow, const ClGeo& g_, int to, int ho,
                  int wo0) {
  constexpr int NV = planar_vectors<CO>();
  const int cin_g = CIN > 0 ? CIN : g_.cin_g;
  const int cop = COUT > 0 ? (COUT + A::L - 1) / A::L * A::L : g_.cop;
  static_assert(CO * NV <= A::ACC, "more accumulators than registers");
  const int wp = planar_row_floats(g_);
  const int tap[3] = {planar_tap(g_, 0), planar_tap(g_, 1), planar_tap(g_, 2)};
  typename A::V acc[CO][NV];
#pragma GCC unroll 16
  for (int c = 0; c < CO; ++c)
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) acc[c][j] = A::zero();
  for_each_input_row(src, g_, to, ho, (int64_t)cin_g * wp, [&](int kt, int kh, const float* rows) {
    const float* wt = wg + (kt * 3 + kh) * 3 * (int64_t)cin_g * cop;
#pragma GCC unroll 2
    for (int ci = 0; ci < cin_g; ++ci) {
      const float* xr = rows + wo0 + (int64_t)ci * wp;
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) {
        typename A::V in[NV];
#pragma GCC unroll 16
        for (int j = 0; j < NV; ++j) in[j] = A::load(xr + tap[kw] + A::L * j);
        broadcast_fma<A>(acc, wt + ((int64_t)kw * cin_g + ci) * cop, in);
      }
    }
  });
  // into the channels-last output: per 8 pixels and 8 channels, a transpose in registers, then
  // each pixel's channels stored at once
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j)
#pragma GCC unroll 2
    for (int e = 0; e < A::L / 8; ++e) {
      const int first = wo0 + A::L * j + 8 * e, pixels = std::min(8, g_.Wo - first);
      if (pixels <= 0) return;
#pragma GCC unroll 2
      for (int c0 = 0; c0 < CO; c0 += 8) {
        __m256 r[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) r[c] = c0 + c < CO ? A::eighth(acc[c0 + c][j], e) : _mm256_setzero_ps();
        transpose8(r);
        float* out = yrow + (int64_t)first * g_.CO + c0;
        for (int p = 0; p < pixels; ++p) store8_first(out + (int64_t)p * g_.CO, r[p], std::min(8, CO - c0));
      }
    }
}

template <class A, int CO, int CIN = 0, int COUT = 0>
void planar_row(const Band& src, const float* wg, float* yrow, const ClGeo& g, int to, int ho) {
  for (int wo = 0; wo < g.Wo; wo += A::L * planar_vectors<CO>())
    planar_block<A, CO, CIN, COUT>(src, wg, yrow, g, to, ho, wo);
}

using PlanarRow = void (*)(const Band&, const float*, float*, const ClGeo&, int, int);

// 12 output channels as two halves of 6 where 24 accumulators do not fit: each input vector then
// feeds 6 x 2 FMAs for 8 loads, where one block of 12 channels x 1 vector takes 13 loads for 12
template <class A, int CIN = 0>
void planar_row_halves(const Band& src, const float* wg, float* yrow, const ClGeo& g, int to, int ho) {
  planar_row<A, 6, CIN, 12>(src, wg, yrow, g, to, ho);
  planar_row<A, 6, CIN, 12>(src, wg + 6, yrow + 6, g, to, ho);
}

// 6 or 12 output channels (12 as two halves of 6 where 24 accumulators do not fit) with the
// counts compiled in, and for MF-Net's planar convs (1, 6 or 12 channels in per group) the input
// count too: the input-channel loop's bounds and weight offsets are then constants. 0.89-0.95x
// the time of the same code with the counts read at run time, on each of MF-Net's six planar
// shapes at batch 4 (median of 15 alternating calls of the two builds, one process).
template <class A, int CIN>
PlanarRow planar_row_compiled(int cout_g) {
  if (cout_g == 6) return planar_row<A, 6, CIN, 6>;
  if constexpr (A::ACC >= 24) return planar_row<A, 12, CIN, 12>;
  else return planar_row_halves<A, CIN>;
}

template <class A>
PlanarRow planar_row_for(int cout_g, int cin_g) {
  if (cout_g < 6) {
    switch (cout_g) {
      case 1: return planar_row<A, 1>;
      case 2: return planar_row<A, 2>;
      case 3: return planar_row<A, 3>;
      case 4: return planar_row<A, 4>;
      default: return planar_row<A, 5>;
    }
  }
  // 6 or 12 out (the planar form takes no other): other input counts are read at run time
  return cin_g == 1 ? planar_row_compiled<A, 1>(cout_g)
         : cin_g == 6 ? planar_row_compiled<A, 6>(cout_g)
         : cin_g == 12 ? planar_row_compiled<A, 12>(cout_g) : planar_row_compiled<A, 0>(cout_g);
}

// How many sets of `per_set` accumulators a weight-gradient block runs side by side: enough for
// 8 FMA chains in flight (an FMA's latency at two a cycle), as many as A's registers hold
template <class A>
constexpr int accumulator_sets(int per_set) { return std::max(1, std::min((8 + per_set - 1) / per_set, A::ACC / per_set)); }

// every set's accumulators zeroed, and the sum over the sets of one accumulator
template <class A, int U, int I, int J>
inline void zero_sets(typename A::V (&acc)[U][I][J]) {
#pragma GCC unroll 16
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 16
    for (int i = 0; i < I; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < J; ++j) acc[u][i][j] = A::zero();
}

template <class A, int U, int I, int J>
inline typename A::V sum_sets(const typename A::V (&acc)[U][I][J], int i, int j) {
  typename A::V sum = acc[0][i][j];
#pragma GCC unroll 16
  for (int u = 1; u < U; ++u) sum = A::add(sum, acc[u][i][j]);
  return sum;
}

// The weight gradient for one tap (kt, kh, kw), input channels ci0 .. ci0 + B and output
// channels c0 .. c0 + L V of one group, over a band's output pixels: B x V accumulators (read
// from and written back to dw, the group's (KT, 3, 3, cin_g, cop) slice at this tap and ci0)
// gain x[tap pixel, ci] * gy[pixel, co] for every pixel whose tap is inside the input. The tap's
// input frame is in the band's `slot` (see pack_band); gyg is the group's grad y over the band
// from row ho0, ldg floats per pixel, zeros past the group's channels (see grad_weight_cl).
template <class A, int V, int B>
void wgrad_tap(const Band& src, const float* gyg, float* dw, const ClGeo& g, int ldg,
               int ho0, int ho1, int slot, int kh, int kw, int ci0) {
  // U pixels at a time into U sets of accumulators, so that 8 to 12 FMA chains are in flight
  // where a group has few channels (1 input channel x 1 vector: one chain, one FMA per latency)
  constexpr int U = accumulator_sets<A>(B * V);
  typename A::V acc[U][B][V];
  zero_sets<A>(acc);
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[0][b][v] = A::load(dw + (int64_t)b * g.cop + v * A::L);
  const int lo = kw == 0 ? 1 : 0;  // the first wo whose column wo * sw + kw - 1 is >= 0
  const int hi = g.W - kw < 0 ? 0 : std::min(g.Wo, (g.W - kw) / g.sw + 1);  // ... is <= W - 1
  const int64_t pix = (int64_t)g.sw * g.cin_g;
  auto one = [&](typename A::V (&into)[B][V], const float* xp, const float* gp) {
    typename A::V gv[V];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v)
      gv[v] = A::load(gp + v * A::L);
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) {
      const typename A::V xb = A::bcast(xp + b);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) into[b][v] = A::fma(xb, gv[v], into[b][v]);
    }
  };
  for (int ho = ho0; ho < ho1; ++ho) {
    const int hi_ = ho * g.sh + kh - 1;
    if (hi_ < 0 || hi_ >= g.H) continue;
    const float* xrow = src.buf + ((int64_t)slot * src.rows_in + hi_ - src.hi_first) * g.W * g.cin_g
                        + (int64_t)(kw - 1) * g.cin_g + ci0;
    const float* grow = gyg + (int64_t)(ho - ho0) * g.Wo * ldg;
    int wo = lo;
    for (; wo + U <= hi; wo += U)
#pragma GCC unroll 16
      for (int u = 0; u < U; ++u) one(acc[u], xrow + (wo + u) * pix, grow + (int64_t)(wo + u) * ldg);
    for (; wo < hi; ++wo) one(acc[0], xrow + wo * pix, grow + (int64_t)wo * ldg);
  }
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) A::store(dw + (int64_t)b * g.cop + v * A::L, sum_sets<A>(acc, b, v));
}

// the last input channels of a tap, count < B of them
template <class A, int V, int B>
void wgrad_tail(const Band& src, const float* gyg, float* dw, const ClGeo& g, int ldg,
                int ho0, int ho1, int slot, int kh, int kw, int ci0, int count) {
  if constexpr (B > 1) {
    if (count == B - 1)
      return wgrad_tap<A, V, B - 1>(src, gyg, dw, g, ldg, ho0, ho1, slot, kh, kw, ci0);
    return wgrad_tail<A, V, B - 1>(src, gyg, dw, g, ldg, ho0, ho1, slot, kh, kw, ci0, count);
  }
}

// every tap and input channel of one group, output channels c0 .. c0 + L V (gyg and dwg offset to c0)
template <class A, int V>
void wgrad_band(const Band& src, const float* gyg, float* dwg, const ClGeo& g, int ldg, int to,
                int ho0, int ho1) {
  constexpr int B = A::ACC / V;
  for (int kt = 0; kt < g.KT; ++kt) {
    const int ti = to * g.st + kt - g.KT / 2;
    if (ti < 0 || ti >= g.T) continue;
    for (int kh = 0; kh < 3; ++kh)
      for (int kw = 0; kw < 3; ++kw) {
        float* dw = dwg + ((kt * 3 + kh) * 3 + kw) * (int64_t)g.cin_g * g.cop;
        int ci = 0;
        for (; ci + B <= g.cin_g; ci += B)
          wgrad_tap<A, V, B>(src, gyg, dw + (int64_t)ci * g.cop, g, ldg, ho0, ho1, ti % g.KT, kh, kw, ci);
        if (ci < g.cin_g)
          wgrad_tail<A, V, B>(src, gyg, dw + (int64_t)ci * g.cop, g, ldg, ho0, ho1, ti % g.KT, kh, kw, ci,
                           g.cin_g - ci);
      }
  }
}

// The weight gradient of one group over a band, every chunk of 3 vectors of its output
// channels: gband the group's grad y over the band, cop floats per pixel (g.cop padded to A::L),
// dwg the group's (KT, 3, 3, cin_g, cop) slice
template <class A>
void wgrad_group(const Band& src, const float* gband, float* dwg, const ClGeo& g, int to, int ho0, int ho1) {
  const int vecs = g.cop / A::L, chunks = (vecs + 2) / 3;
  for (int chunk = 0; chunk < chunks; ++chunk) {
    const int c0 = chunk * 3 * A::L, v = std::min(3, vecs - chunk * 3);
    if (v == 1) wgrad_band<A, 1>(src, gband + c0, dwg + c0, g, g.cop, to, ho0, ho1);
    else if (v == 2) wgrad_band<A, 2>(src, gband + c0, dwg + c0, g, g.cop, to, ho0, ho1);
    else wgrad_band<A, 3>(src, gband + c0, dwg + c0, g, g.cop, to, ho0, ho1);
  }
}

// ---- the weight gradient of narrow groups: at most 8 output channels (16 on AVX-512), spatial
// stride 1 ----
//
// dw[g, kt, kh, kw, ci, co] = sum over output pixels of
//     x[n, to * st + kt - KT / 2, ho + kh - 1, wo + kw - 1, g * cin_g + ci] * gy[n, to, ho, wo, g * cout_g + co]
// read where x and grad y lie, with nothing copied. Input column c meets output pixel c + 1 - kw
// through tap kw, so one broadcast of x[c, ci] serves all three taps: grad y's S floats from the
// group's first channel at pixels c - 1, c and c + 1 (taps 2, 1, 0) lie in the slots 0, 1, 2 of
// K vectors, built once per column for every input channel. S = 8 (a group of at most 8): K = 3
// of 8 lanes, or 2 of 16 with the last slot zero. S = 16 (9 to 16 channels, AVX-512): K = 3, a
// pixel a vector. Lanes past cout_g hold the next group's channels: their sums land in dw's
// padding (cop >= S), which grad_weight_cl drops; the last group's loads are masked (MASKED), so
// nothing past the tensor is read. (Two columns a vector, with x[c] and x[c + 1] broadcast into
// the halves, took an insert per FMA and a half: AVX-512's shuffles, not its FMAs, set the pace,
// at 80-90 GMAC/s on 6 -> 6 3x3x3.) CHECKED: the column may be the row's first or last, so the
// pixels either side are checked and those outside read as zeros.
template <class A, int S>
constexpr int narrow_vectors() { return (3 * S + A::L - 1) / A::L; }

template <class A, int S, int CB, bool CHECKED, bool MASKED>
inline void wgrad_narrow_column(typename A::V (&acc)[CB][narrow_vectors<A, S>()], const float* xrow,
                                const float* grow, const ClGeo& g, int c) {
  constexpr int PX = A::L / S, K = narrow_vectors<A, S>();
  const float* gc = grow + (int64_t)c * g.CO;
  auto pixel = [&](int e) -> const float* {  // slot e: pixel c - 1 + e, or nullptr for zeros
    if (e >= 3 || (CHECKED && (c - 1 + e < 0 || c - 1 + e >= g.W))) return nullptr;
    const float* p = gc + (int64_t)(e - 1) * g.CO;
    if (!p) __builtin_unreachable();  // so the traits' null checks fold away
    return p;
  };
  const int n = MASKED ? g.cout_g : S;
  typename A::V gv[K];
#pragma GCC unroll 3
  for (int j = 0; j < K; ++j) {
    if constexpr (PX == 1) {
      const float* p = pixel(j);
      gv[j] = !p ? A::zero() : n == A::L ? A::load(p) : A::load_first(p, n);
    } else {
      gv[j] = A::eighths(pixel(j * PX), pixel(j * PX + 1), n);
    }
  }
  const float* xc = xrow + (int64_t)c * g.C;
#pragma GCC unroll 8
  for (int b = 0; b < CB; ++b) {
    const typename A::V xv = A::bcast(xc + b);
#pragma GCC unroll 3
    for (int j = 0; j < K; ++j) acc[b][j] = A::fma(xv, gv[j], acc[b][j]);
  }
}

// input channels ci0 .. ci0 + CB of one group at one tap row (kt, kh), over output rows ho0 .. ho1
// of frame `to`: xrow0 is input frame ti's row 0 at the group's channel ci0, grow0 output frame
// to's row 0 at the group's first channel, dw the group's slice at (kt, kh, kw = 0, ci0)
template <class A, int S, int CB, bool MASKED>
void wgrad_narrow_rows(const float* xrow0, const float* grow0, float* dw, const ClGeo& g, int kh,
                       int ho0, int ho1) {
  constexpr int PX = A::L / S, K = narrow_vectors<A, S>();
  // U columns at a time into U sets of accumulators, so that 8 or more FMA chains are in flight
  // where a group has few input channels (MF-Net's 1 -> 6 conv: 2 or 3 chains alone)
  constexpr int U = accumulator_sets<A>(K * CB);
  typename A::V acc[U][CB][K];
  zero_sets<A>(acc);
  for (int ho = ho0; ho < ho1; ++ho) {
    const int hi = ho + kh - 1;
    if (hi < 0 || hi >= g.H) continue;
    const float* xrow = xrow0 + (int64_t)hi * g.W * g.C;
    const float* grow = grow0 + (int64_t)ho * g.Wo * g.CO;
    wgrad_narrow_column<A, S, CB, true, MASKED>(acc[0], xrow, grow, g, 0);
    int c = 1;
    for (; c + U <= g.W - 1; c += U)  // both neighbours of every column inside the row
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) wgrad_narrow_column<A, S, CB, false, MASKED>(acc[u], xrow, grow, g, c + u);
    for (; c < g.W; ++c) wgrad_narrow_column<A, S, CB, true, MASKED>(acc[0], xrow, grow, g, c);
  }
  const int64_t kw_stride = (int64_t)g.cin_g * g.cop;
#pragma GCC unroll 8
  for (int b = 0; b < CB; ++b)
#pragma GCC unroll 3
    for (int j = 0; j < K; ++j) {
      const typename A::V sum = sum_sets<A>(acc, b, j);
      if constexpr (PX == 1) {  // vector j: tap 2 - j
        float* d = dw + (2 - j) * kw_stride + (int64_t)b * g.cop;
        A::store(d, A::add(A::load(d), sum));
      } else {
#pragma GCC unroll 2
        for (int e = 0; e < PX && j * PX + e < 3; ++e) {  // slot j * PX + e: tap 2 - (j * PX + e)
          float* d = dw + (2 - j * PX - e) * kw_stride + (int64_t)b * g.cop;
          _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), A::eighth(sum, e)));
        }
      }
    }
}

// the input channels ci0 .. ci0 + count of a group, in blocks of at most CB
template <class A, int S, int CB, bool MASKED>
void wgrad_narrow_channels(const float* xrow0, const float* grow0, float* dw, const ClGeo& g, int kh,
                           int ho0, int ho1, int count) {
  int ci = 0;
  for (; ci + CB <= count; ci += CB)
    wgrad_narrow_rows<A, S, CB, MASKED>(xrow0 + ci, grow0, dw + (int64_t)ci * g.cop, g, kh, ho0, ho1);
  if constexpr (CB > 1)
    if (ci < count)
      wgrad_narrow_channels<A, S, CB - 1, MASKED>(xrow0 + ci, grow0, dw + (int64_t)ci * g.cop, g, kh, ho0,
                                                  ho1, count - ci);
}

// Every group's weight gradient over output rows ho0 .. ho1 of (n, to), into dw (the packed
// (groups, KT, 3, 3, cin_g, cop) layout). Groups outer: a group's slices of the rows' pixels are
// read again for each tap row (kt, kh), from cache (a band of a few rows).
template <class A, int S>
void wgrad_narrow_groups(const float* x, const float* gy, float* dw, const ClGeo& g, int groups, int n, int to,
                         int ho0, int ho1) {
  // CB input channels x K vectors of accumulators: 9 of AVX2's 16 registers, 12 or 18 of AVX-512's 32
  constexpr int CB = A::L == 8 ? 3 : 6;
  const int64_t group_w = (int64_t)g.KT * 9 * g.cin_g * g.cop;
  const float* gy_frame = gy + ((int64_t)n * g.To + to) * g.Ho * g.Wo * g.CO;
  for (int grp = 0; grp < groups; ++grp) {
    const bool masked = (int64_t)grp * g.cout_g + S > g.CO;  // S floats would reach past a pixel
    const float* grow0 = gy_frame + (int64_t)grp * g.cout_g;
    for (int kt = 0; kt < g.KT; ++kt) {
      const int ti = to * g.st + kt - g.KT / 2;
      if (ti < 0 || ti >= g.T) continue;
      const float* xrow0 = x + ((int64_t)n * g.T + ti) * g.H * g.W * g.C + (int64_t)grp * g.cin_g;
      for (int kh = 0; kh < 3; ++kh) {
        float* d = dw + grp * group_w + (kt * 3 + kh) * 3 * (int64_t)g.cin_g * g.cop;
        if (masked) wgrad_narrow_channels<A, S, CB, true>(xrow0, grow0, d, g, kh, ho0, ho1, g.cin_g);
        else wgrad_narrow_channels<A, S, CB, false>(xrow0, grow0, d, g, kh, ho0, ho1, g.cin_g);
      }
    }
  }
}

// groups of at most 8 channels in slots of 8 floats; on 16 lanes, 9 to 16 in whole vectors
template <class A>
void run_wgrad_narrow(const float* x, const float* gy, float* dw, const ClGeo& g, int groups, int n, int to,
                      int ho0, int ho1) {
  if constexpr (A::L == 16)
    if (g.cout_g > 8) return wgrad_narrow_groups<A, 16>(x, gy, dw, g, groups, n, to, ho0, ho1);
  wgrad_narrow_groups<A, 8>(x, gy, dw, g, groups, n, to, ho0, ho1);
}

// The whole forward on path A: each thread packs its tasks' input (Tasks::unpack) and runs the
// register blocks over it, a band of output rows of each group at a time.
template <class A>
void run_forward(const ClRun& r) {
  const ClGeo& g = r.g;
  const Tasks& tasks = r.tasks;
  // chunks of at most 3 vectors of output channels per register block
  const int vecs = g.cop / A::L, chunks = (vecs + 2) / 3;
  const PlanarRow planar_row = planar_row_for<A>(g.cout_g, g.cin_g);
  const int64_t group_w = (int64_t)g.KT * 9 * g.cin_g * g.cop;
  at::parallel_for(0, tasks.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(tasks.buffer_floats());  // zeros: the planar pad columns stay so
    Held held;
    for (int64_t task = begin; task < end; ++task) {
      int n, to, grp0, ng, ho0, ho1;
      const Band first = tasks.unpack(task, r.x, buf.data(), g, r.groups, held, n, to, grp0, ng, ho0, ho1, r.affine);
      // the block's channels of output row ho, in y and in the residual
      const int64_t block_c0 = (int64_t)grp0 * g.cout_g, block_cn = (int64_t)ng * g.cout_g;
      auto at = [&](int ho) { return (((int64_t)n * g.To + to) * g.Ho + ho) * g.Wo * g.CO + block_c0; };
      // Lines of y (to be written) and of the residual (to be read): channels [c0, c0 + cn) of
      // row ho's pixels, asked for a row ahead, while the row before is computed.
      auto fetch = [&](int ho, int64_t c0, int64_t cn) {
        if (ho >= ho1) return;
        for (int p = 0; p < g.Wo; ++p) {
          const int64_t o = at(ho) + (int64_t)p * g.CO + c0;
          for (int64_t c = 0; c < cn + 15; c += 16) {
            const int64_t last = std::min(c, cn - 1);  // the run's last line too
            __builtin_prefetch(r.y + o + last, 1, 3);
            if (r.residual) __builtin_prefetch(r.residual + o + last, 0, 3);
          }
        }
      };
      if (tasks.planar && r.residual) {
        // Rows outer, groups inner, where a residual is added: a row's channels of the whole
        // block, and the residual's, are one run per pixel, written and read while in cache.
        // Group by group over the band, a group's 6 or 12 channels sat C floats apart and each
        // line of y and of the residual came from memory again for every group sharing it:
        // MF-Net's 6 -> 6 1x3x3 conv with its residual took 1.2-1.25x as long at batch 4 (and
        // 12 -> 12 1.08x). Without a residual, groups outer was 3-6% faster (each group's
        // packed rows and weights stay nearer), so that is kept there.
        fetch(ho0, 0, block_cn);
        for (int ho = ho0; ho < ho1; ++ho) {
          fetch(ho + 1, 0, block_cn);
          for (int j = 0; j < ng; ++j) {
            const Band src{first.buf + j * tasks.group_stride, first.hi_first, first.rows_in};
            planar_row(src, r.w + (grp0 + j) * group_w, r.y + at(ho) + (int64_t)j * g.cout_g, g, to, ho);
          }
          add_residual(r.y + at(ho), r.residual + at(ho), g.Wo, g.CO, block_cn);
        }
        continue;
      }
      // Groups outer: a group's weights (62 KB at 24 -> 24 3x3x3 in the broadcast form, 249 KB at
      // 48 -> 48) stay in cache across the band's rows; rows outer, 4-6% slower.
      for (int j = 0; j < ng; ++j) {
        const Band src{first.buf + j * tasks.group_stride, first.hi_first, first.rows_in};
        const float* wg = r.w + (grp0 + j) * group_w;
        const int64_t gc = (int64_t)j * g.cout_g;  // the group's first channel in the block
        if (tasks.planar) {
          fetch(ho0, gc, g.cout_g);
          for (int ho = ho0; ho < ho1; ++ho) {
            fetch(ho + 1, gc, g.cout_g);
            planar_row(src, wg, r.y + at(ho) + gc, g, to, ho);
          }
          continue;
        }
        for (int chunk = 0; chunk < chunks; ++chunk) {
          const int c0 = chunk * 3 * A::L, v = std::min(3, vecs - chunk * 3);
          const int co_n = std::min(3 * A::L, g.cout_g - c0);
          fetch(ho0, gc + c0, co_n);
          for (int ho = ho0; ho < ho1; ++ho) {
            fetch(ho + 1, gc + c0, co_n);
            float* yrow = r.y + at(ho) + gc;
            if (v == 1) cl_row<A, 1>(src, wg, yrow, g, to, ho, c0, co_n);
            else if (v == 2) cl_row<A, 2>(src, wg, yrow, g, to, ho, c0, co_n);
            else cl_row<A, 3>(src, wg, yrow, g, to, ho, c0, co_n);
            if (r.residual) add_residual(yrow + c0, r.residual + at(ho) + gc + c0, g.Wo, g.CO, co_n);
          }
        }
      }
    }
  });
}

}  // namespace
}  // namespace fiber
