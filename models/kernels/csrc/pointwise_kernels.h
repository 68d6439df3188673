// The pointwise convs' register blocks and task loops, written once for any vector width. Each
// path's file includes this after `#pragma GCC target(...)` (and after fiber_cl_kernels.h, whose
// vector traits A it uses, with add and store), so every function here is compiled for that
// path's instruction set in that file's own unnamed namespace, and every one is a template on A,
// so its name says which build it belongs to.
#pragma once

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "bn_relu_rows.h"
#include "pointwise_cl.h"

namespace pointwise {
namespace {

constexpr int BLOCK = 48;  // pixels per task: a whole number of 4-, 6-, 8- and 12-pixel blocks
constexpr int PMAX = 12;   // pixels per register block at most

// output channels per register block: 3 vectors (24 floats on AVX2, 48 on AVX-512)
template <class A>
constexpr int chunk() { return 3 * A::L; }

// P pixels (rows of `in`, ldx floats apart) x V vectors of one chunk's output channels: every
// input channel feeds P x V FMAs from V weight loads and P broadcasts; then the chunk's co_n
// channels of each pixel are written (plus the residual's)
template <class A, int V, int P>
void block(const float* in, int64_t ldx, const float* wc, int K, float* out, const float* res,
           int CO, int co_n) {
  typename A::V acc[P][V];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[p][v] = A::zero();
  for (int k = 0; k < K; ++k) {
    typename A::V wv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) wv[v] = A::load(wc + (int64_t)k * chunk<A>() + A::L * v);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const typename A::V b = A::bcast(in + p * ldx + k);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[p][v] = A::fma(wv[v], b, acc[p][v]);
    }
  }
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    float* o = out + (int64_t)p * CO;
    const float* r = res ? res + (int64_t)p * CO : nullptr;
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const int lanes = std::min(A::L, co_n - A::L * v);
      if (lanes == A::L) {
        typename A::V val = acc[p][v];
        if (r) val = A::add(val, A::load(r + A::L * v));
        A::store(o + A::L * v, val);
      } else if (lanes > 0) {
        A::store_first(o + A::L * v, acc[p][v], lanes);
        if (r)
          for (int c = A::L * v; c < A::L * v + lanes; ++c) o[c] += r[c];
      }
    }
  }
}

// P pixels (rows of `in`), every chunk of output channels: a pixel's whole output row is
// written at once, while its lines are in cache; the input rows stay in L1 across the chunks.
// V: the first chunk's vectors (3 where CO fills them), P x V accumulators at most A::ACC.
template <class A, int V, int P>
void all_chunks(const float* in, int64_t ldx, const float* w, int K, float* out, const float* res,
                int CO) {
  for (int c0 = 0; c0 < CO; c0 += chunk<A>()) {
    const float* wc = w + (int64_t)c0 * K;  // chunk c0 / chunk: K x chunk floats
    const int co_n = std::min(chunk<A>(), CO - c0);
    const float* r = res ? res + c0 : nullptr;
    if (co_n > 2 * A::L) block<A, 3, P>(in, ldx, wc, K, out + c0, r, CO, co_n);
    else if (co_n > A::L) block<A, std::min(V, 2), P>(in, ldx, wc, K, out + c0, r, CO, co_n);
    else block<A, 1, P>(in, ldx, wc, K, out + c0, r, CO, co_n);
  }
}

// `count` pixels (count < P) at the end of a task's block
template <class A, int V, int P>
void tail(const float* in, int64_t ldx, const float* w, int K, float* out, const float* res, int CO,
          int count) {
  if constexpr (P > 1) {
    if (count == P - 1) return all_chunks<A, V, P - 1>(in, ldx, w, K, out, res, CO);
    return tail<A, V, P - 1>(in, ldx, w, K, out, res, CO, count);
  }
}

template <class A, int V>
void pixels(const float* in, int64_t ldx, const float* w, int K, float* out, const float* res, int CO,
            int count) {
  constexpr int P = std::min(PMAX, A::ACC / V);
  int p = 0;
  for (; p + P <= count; p += P)
    all_chunks<A, V, P>(in + p * ldx, ldx, w, K, out + (int64_t)p * CO, res ? res + (int64_t)p * CO : nullptr, CO);
  if (p < count)
    tail<A, V, P>(in + p * ldx, ldx, w, K, out + (int64_t)p * CO, res ? res + (int64_t)p * CO : nullptr, CO,
                  count - p);
}

// out (count x CO, rows CO floats apart) = in (count x K, rows ldx apart) x w (+ res, out's layout)
template <class A>
void gemm(const float* in, int64_t ldx, const float* w, int K, float* out, const float* res, int CO, int count) {
  if (CO > 2 * A::L) pixels<A, 3>(in, ldx, w, K, out, res, CO, count);
  else if (CO > A::L) pixels<A, 2>(in, ldx, w, K, out, res, CO, count);
  else pixels<A, 1>(in, ldx, w, K, out, res, CO, count);
}

// relu(x * scale + shift) of one pixel's K channels into buf, or (no scale) a copy (AVX2
// code: memory-bound, so wider vectors would not pay; a template so each build keeps its own)
template <class A>
void activate(const float* x, float* buf, int K, const float* scale, const float* shift) {
  if (!scale) {
    std::copy(x, x + K, buf);
    return;
  }
  const __m256 zero = _mm256_setzero_ps();
  int k = 0;
  for (; k + 8 <= K; k += 8)
    // max(0, v), in that order: maxps returns its second operand where either is NaN, so a NaN
    // passes as ReLU passes it
    _mm256_storeu_ps(buf + k, _mm256_max_ps(zero, _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(scale + k),
                                                                  _mm256_loadu_ps(shift + k))));
  for (; k < K; ++k) buf[k] = std::max(x[k] * scale[k] + shift[k], 0.f);
}

// the input pixel output pixel q reads
template <class A>
int64_t source(const Run& r, int64_t q) {
  return input_pixel(q, r.T, r.H, r.W, r.To, r.Ho, r.Wo, r.st, r.sh, r.sw);
}

template <class A>
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
          const int64_t from = r.strided() ? source<A>(r, p0 + p) : p0 + p;
          activate<A>(r.x + from * r.K, buf.data() + (int64_t)p * r.K, r.K, r.scale, r.shift);
        }
        in = buf.data();
      }
      float* out = r.y + p0 * r.CO;
      const float* res = r.residual ? r.residual + p0 * r.CO : nullptr;
      gemm<A>(in, r.K, r.w, r.K, out, res, r.CO, count);
    }
  });
}

// The multiplexer block by block: the middle (M channels a pixel) stays in the task's buffer,
// and x's block, read for the first conv, is read again from cache as the residual
template <class A>
void multiplex(const Mux& m) {
  const int64_t blocks = (m.pixels + BLOCK - 1) / BLOCK;
  const int K = m.K, M = m.M;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf((size_t)BLOCK * K), mid((size_t)BLOCK * M);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * BLOCK;
      const int count = (int)std::min<int64_t>(BLOCK, m.pixels - p0);
      const float* in = m.x + p0 * K;
      for (int p = 0; p < count; ++p) activate<A>(in + (int64_t)p * K, buf.data() + (int64_t)p * K, K, m.s1, m.b1);
      gemm<A>(buf.data(), K, m.w1, K, mid.data(), nullptr, M, count);
      for (int p = 0; p < count; ++p) activate<A>(mid.data() + (int64_t)p * M, mid.data() + (int64_t)p * M, M, m.s2, m.b2);
      gemm<A>(mid.data(), M, m.w2, M, m.y + p0 * K, in, K, count);
    }
  });
}


// The weight gradient's register block: R rows of c (R broadcasts of a[p]) by V vectors of its
// columns (V loads of b[p]) per pixel, R x V FMAs; the block's c is read before and written
// after the pixels. MASKED: the last vector holds the row's last `tail` columns only, so no
// load reads past a pixel's channels (or the tensor).
template <class A, int R, int V, bool MASKED>
void outer_block(const Outer& o, int m0, int n0, int tail) {
  typename A::V acc[R][V];
  float* c = o.c + (int64_t)m0 * o.ldc + n0;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = A::load(c + r * o.ldc + A::L * v);
  for (int p = 0; p < o.pixels; ++p) {
    const float* ap = o.a[p] + m0;
    const float* bp = o.b[p] + n0;
    typename A::V bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      bv[v] = MASKED && v == V - 1 ? A::load_first(bp + A::L * v, tail) : A::load(bp + A::L * v);
    fiber::broadcast_fma<A>(acc, ap, bv);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) A::store(c + r * o.ldc + A::L * v, acc[r][v]);
}

// rows m0 .. M of c, R at a time (the last block fewer), for one block of V vectors of columns
template <class A, int R, int V, bool MASKED>
void outer_rows(const Outer& o, int m0, int n0, int tail) {
  for (; m0 + R <= o.M; m0 += R) outer_block<A, R, V, MASKED>(o, m0, n0, tail);
  if constexpr (R > 1)
    if (m0 < o.M) outer_rows<A, R - 1, V, MASKED>(o, m0, n0, tail);
}

// a block of `vectors` (1 .. V) vectors of columns from n0, the last one masked where `tail`
// < A::L
template <class A, int R, int V>
void outer_columns(const Outer& o, int n0, int vectors, int tail) {
  if constexpr (V > 1)
    if (vectors < V) return outer_columns<A, R, V - 1>(o, n0, vectors, tail);
  if (tail < A::L) outer_rows<A, R, V, true>(o, 0, n0, tail);
  else outer_rows<A, R, V, false>(o, 0, n0, tail);
}

// c += sum over the pixels of a[p]^T b[p]: blocks of 4 vectors of columns (a block's columns of
// every pixel, 48 pixels x 4 vectors = 12 KB on AVX-512, stay in L1 across its rows), rows
// ACC / 4 at a time
template <class A>
void outer(const Outer& o) {
  constexpr int V = 4, R = A::ACC / V;
  const int vectors = (o.N + A::L - 1) / A::L;
  for (int v0 = 0; v0 < vectors; v0 += V) {
    const int n = std::min(V, vectors - v0);
    const int tail = v0 + n == vectors ? o.N - A::L * (vectors - 1) : A::L;
    outer_columns<A, R, V>(o, A::L * v0, n, tail);
  }
}


// The training backward's two passes (Backward in pointwise_cl.h), a block of pixels a call
template <class A>
void backward_sums(const Backward& bw, int64_t p0, int count, float* c, int64_t ldc, bool k_wide, float* sg,
                   float* sgx, float* act) {
  const int K = bw.K, CO = bw.CO;
  const float* gy = bw.gy + p0 * CO;
  const float* xr[BLOCK];  // the input pixels the block's output pixels read
  for (int p = 0; p < count; ++p)
    xr[p] = bw.x + (bw.strided() ? input_pixel(p0 + p, bw.T, bw.H, bw.W, bw.To, bw.Ho, bw.Wo, bw.st, bw.sh, bw.sw)
                                 : p0 + p) * K;
  if (c) {  // the weight's gradient, from the activated input made here
    const float* xs[BLOCK];
    const float* gs[BLOCK];
    for (int p = 0; p < count; ++p) {
      activate<A>(xr[p], act + (int64_t)p * K, K, bw.scale, bw.shift);
      xs[p] = act + (int64_t)p * K;
      gs[p] = gy + (int64_t)p * CO;
    }
    outer<A>({k_wide ? gs : xs, k_wide ? xs : gs, count, k_wide ? CO : K, k_wide ? K : CO, c, ldc});
  }
  float* g = bw.grad_a + p0 * K;
  gemm<A>(gy, CO, bw.wt, CO, g, nullptr, K, count);  // the conv's input gradient
  for (int p = 0; p < count; ++p)  // BatchNorm + ReLU's sums (the skipped pixels' g is 0)
    bn_rows::masked_sums(xr[p], g + (int64_t)p * K, bw.scale, bw.shift, bw.mean, sg, sgx, K);
}

template <class A>
void backward_apply(const Backward& bw, int64_t p0, int count, const float* ca, const float* cb, const float* cc,
                    const float* const* plus, int nplus, float* gx) {
  const int K = bw.K;
  for (int p = 0; p < count; ++p) {
    const int64_t row = (p0 + p) * K;
    const int64_t from = bw.strided() ? output_pixel(p0 + p, bw.T, bw.H, bw.W, bw.To, bw.Ho, bw.Wo, bw.st, bw.sh,
                                                     bw.sw)
                                      : p0 + p;
    const float* g = from < 0 ? bw.zeros : bw.grad_a + from * K;
    float* __restrict out = gx + row;
    bn_rows::masked_affine(bw.x + row, g, bw.scale, bw.shift, ca, cb, cc, out, K);
    for (int j = 0; j < nplus; ++j) {  // the row just written, still in L1
      const float* __restrict add = plus[j] + row;
      for (int k = 0; k < K; ++k) out[k] += add[k];
    }
  }
}

}  // namespace
}  // namespace pointwise

// The path's entry points (pointwise_cl.h), one line in each path's file: `traits` its vector
// traits, `suffix` the name the dispatch picks (avx2, avx512, avx512_on_avx2)
#define POINTWISE_ENTRY_POINTS(suffix, traits)                                                             \
  namespace pointwise {                                                                                   \
  void run_##suffix(const Run& r) { run<traits>(r); }                                                     \
  void multiplex_##suffix(const Mux& m) { multiplex<traits>(m); }                                         \
  void outer_##suffix(const Outer& o) { outer<traits>(o); }                                               \
  void backward_sums_##suffix(const Backward& b, int64_t p0, int count, float* c, int64_t ldc, bool k_wide, \
                              float* sg, float* sgx, float* act) {                                        \
    backward_sums<traits>(b, p0, count, c, ldc, k_wide, sg, sgx, act);                                    \
  }                                                                                                       \
  void backward_apply_##suffix(const Backward& b, int64_t p0, int count, const float* ca, const float* cb,  \
                               const float* cc, const float* const* plus, int nplus, float* gx) {         \
    backward_apply<traits>(b, p0, count, ca, cb, cc, plus, nplus, gx);                                    \
  }                                                                                                       \
  }  // namespace pointwise
