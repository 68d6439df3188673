// MF-Net's pre-activation pointwise convs, channels last, shared by their files:
// - pointwise_cl.cpp: packing, the entry points, the AVX2 build;
// - fiber_cl_avx512.cpp: the AVX-512 build; fiber_cl_emulated.cpp: its blocking on pairs of
//   AVX2 registers (for tests on CPUs without AVX-512);
// - pointwise_kernels.h: the register blocks, written once for any vector width.
// No ATen headers here (see fiber_cl.h).
#pragma once

#include <cstdint>

namespace pointwise {

// One call of y = W relu(x * scale + shift) (+ residual). x (N, T, H, W, K) in memory
// (channels-last-3d), y (N, To, Ho, Wo, CO). The GEMM is (pixels x K) by (K x CO); a task is a
// block of consecutive pixels, whose K channels are one contiguous run in memory.
struct Run {
  const float* x;
  const float* w;  // packed: (chunks, K, 3 lanes of the path), zero past CO
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

// MF-Net's multiplexer: y = x + W2 relu(bn2(W1 relu(bn1(x)))), x and y with K channels, the
// middle with M
struct Mux {
  const float *x, *w1, *s1, *b1;
  int M;
  const float *w2, *s2, *b2;
  float* y;
  int64_t pixels;
  int K;
};

// The weight's gradient of a 1x1x1 conv as a sum of outer products over pixels: c (M x N, rows
// ldc floats apart, ldc a whole number of vectors) += sum over p of a[p]^T b[p], where a[p] and
// b[p] point at a pixel's M and N channels (of grad y and of x, whichever is the wider is b,
// along the vectors). The caller zeroes c.
struct Outer {
  const float* const* a;
  const float* const* b;
  int pixels, M, N;
  float* c;
  int64_t ldc;
};

// Training's backward of y = W relu(x * scale + shift), a 1x1x1 conv at stride 1 with the
// BatchNorm + ReLU before it folded in (bn_pointwise_backward in pointwise_cl.cpp), in two
// passes over the pixels, a block of them a call (pass 1 the output's pixels, pass 2 the
// input's). x (input pixels, K), gy (output pixels, CO), wt the packed transposed weight
// (CO -> K); the conv's input gradient g = gy W^T goes to grad_a (output pixels, K) between the
// passes.
struct Backward {
  const float* x;
  const float* gy;
  const float* wt;
  const float *scale, *shift, *mean;  // per input channel
  int K, CO;
  float* grad_a;  // one row per output pixel
  // a strided conv (MF-Net's shortcut projections): the input pixels it skips get g = 0 (zeros,
  // K floats); the grid as in Run
  int T, H, W, To, Ho, Wo, st, sh, sw;
  const float* zeros;
  bool strided() const { return st != 1 || sh != 1 || sw != 1; }
};

// The input pixel that output pixel q of a 1x1x1 conv at stride (st, sh, sw) reads
inline int64_t input_pixel(int64_t q, int T, int H, int W, int To, int Ho, int Wo, int st, int sh, int sw) {
  const int64_t wo = q % Wo, ho = q / Wo % Ho, to = q / Wo / Ho % To, n = q / Wo / Ho / To;
  return ((n * T + to * st) * H + ho * sh) * W + wo * sw;
}

// The output pixel that reads input pixel q, or -1 where the stride skips it
inline int64_t output_pixel(int64_t q, int T, int H, int W, int To, int Ho, int Wo, int st, int sh, int sw) {
  const int64_t w = q % W, h = q / W % H, t = q / W / H % T, n = q / W / H / T;
  if (t % st || h % sh || w % sw) return -1;
  return ((n * To + t / st) * Ho + h / sh) * Wo + w / sw;
}

// Each path's compute (pointwise_cl.cpp, fiber_cl_avx512.cpp, fiber_cl_emulated.cpp)
void run_avx2(const Run& r);
void run_avx512(const Run& r);
void run_avx512_on_avx2(const Run& r);
void multiplex_avx2(const Mux& m);
void multiplex_avx512(const Mux& m);
void multiplex_avx512_on_avx2(const Mux& m);
void outer_avx2(const Outer& o);
void outer_avx512(const Outer& o);
void outer_avx512_on_avx2(const Outer& o);
// pass 1 over pixels p0 .. p0 + count (at most 48): where c, c += the weight's gradient
// (Outer's layout, gy's channels as a[] where k_wide); g's rows into grad_a; sg, sgx (K floats
// each) += the sums of g and of g * (x - mean) where x * scale + shift > 0. act: 48 x K floats of
// the caller's
void backward_sums_avx2(const Backward& b, int64_t p0, int count, float* c, int64_t ldc, bool k_wide, float* sg,
                        float* sgx, float* act);
void backward_sums_avx512(const Backward& b, int64_t p0, int count, float* c, int64_t ldc, bool k_wide, float* sg,
                          float* sgx, float* act);
void backward_sums_avx512_on_avx2(const Backward& b, int64_t p0, int count, float* c, int64_t ldc, bool k_wide,
                                  float* sg, float* sgx, float* act);
// pass 2: gx's rows = ca * g + cb * x + cc (g masked as above) + each of the `plus` tensors' rows
void backward_apply_avx2(const Backward& b, int64_t p0, int count, const float* ca, const float* cb, const float* cc,
                         const float* const* plus, int nplus, float* gx);
void backward_apply_avx512(const Backward& b, int64_t p0, int count, const float* ca, const float* cb,
                           const float* cc, const float* const* plus, int nplus, float* gx);
void backward_apply_avx512_on_avx2(const Backward& b, int64_t p0, int count, const float* ca, const float* cb,
                                   const float* cc, const float* const* plus, int nplus, float* gx);
// relu(x * scale + shift) of one pixel's K channels into out (AVX2 code, memory-bound)
void activate_avx2(const float* x, float* out, int K, const float* scale, const float* shift);

}  // namespace pointwise
