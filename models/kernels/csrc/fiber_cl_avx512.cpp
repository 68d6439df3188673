// The channels-last forward, the weight gradient (narrow groups read in place, wider ones from
// the packed band) and the pointwise convs on AVX-512: 16 floats a vector and 32 registers, so register blocks of up to 24
// accumulators (fiber_cl_kernels.h, pointwise_kernels.h). Compiled for AVX-512F in this file only and
// run only where the CPU has it (isa_named checks). The same blocking runs on pairs of AVX2
// registers in fiber_cl_emulated.cpp (Avx512OnAvx2), which is how its logic is tested on CPUs without
// AVX-512; Python checks this build against the AVX2 path once per process before using it
// (models/kernels/isa.py).
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fiber_cl.h"
#include "pointwise_cl.h"

// Every header is included above the target pragma: an inline function a header defines inside
// it would be compiled for this file's instruction set, and the linker keeps one copy of such a
// function for the whole library, so every path could end up calling this file's.

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#include "fiber_cl_kernels.h"
#include "pointwise_kernels.h"

namespace fiber {
namespace {

struct Avx512 {
  static constexpr int L = 16, ACC = 24, PMAX = 8;
  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_first(float* p, V v, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), v); }
  static __m256 eighth(V v, int i) {
    return i == 0 ? _mm512_castps512_ps256(v) : _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  }
  static V load_first(const float* p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
  static V eighths(const float* p, const float* q, int n) {
    if (n == 8) {  // a 256-bit load and an insert of one from memory
      const __m256d lo = p ? _mm256_castps_pd(_mm256_loadu_ps(p)) : _mm256_setzero_pd();
      return q ? _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(lo), _mm256_castps_pd(_mm256_loadu_ps(q)), 1))
               : _mm512_castpd_ps(_mm512_zextpd256_pd512(lo));
    }
    const __mmask16 m = (__mmask16)((1u << n) - 1);
    V v = p ? _mm512_maskz_loadu_ps(m, p) : zero();
    return q ? _mm512_mask_loadu_ps(v, (__mmask16)(m << 8), q - 8) : v;
  }
};

}  // namespace

void forward_avx512(const ClRun& run) { run_forward<Avx512>(run); }
void wgrad_avx512(const Band& src, const float* gband, float* dwg, const ClGeo& g, int to, int ho0, int ho1) {
  wgrad_group<Avx512>(src, gband, dwg, g, to, ho0, ho1);
}
void wgrad_narrow_avx512(const float* x, const float* gy, float* dw, const ClGeo& g, int groups, int n, int to,
                         int ho0, int ho1) {
  run_wgrad_narrow<Avx512>(x, gy, dw, g, groups, n, to, ho0, ho1);
}

}  // namespace fiber
POINTWISE_ENTRY_POINTS(avx512, fiber::Avx512)

#pragma GCC pop_options
