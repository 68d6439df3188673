// The channels-last forward, the weight gradient of groups of more than 8 channels and the
// pointwise convs on AVX-512: 16 floats a vector and 32 registers, so register blocks of up to 24
// accumulators (fiber_cl_kernels.h, pointwise_kernels.h). Compiled for AVX-512F in this file only and
// run only where the CPU has it (forward_cl checks). The same blocking runs on pairs of AVX2
// registers in fiber_cl_emulated.cpp (Avx512OnAvx2), which is how its logic is tested on CPUs without
// AVX-512; Python checks this build against the AVX2 path once per process before using it
// (models/fiber_kernel.py).
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
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
};

}  // namespace

void forward_avx512(const ClRun& run) { run_forward<Avx512>(run); }
void wgrad_avx512(const Band& src, const float* gband, float* dwg, const ClGeo& g, int to, int ho0, int ho1) {
  wgrad_group<Avx512>(src, gband, dwg, g, to, ho0, ho1);
}

}  // namespace fiber
namespace pointwise {
void run_avx512(const Run& r) { run<fiber::Avx512>(r); }
void multiplex_avx512(const Mux& m) { multiplex<fiber::Avx512>(m); }
}  // namespace pointwise
#pragma GCC pop_options
