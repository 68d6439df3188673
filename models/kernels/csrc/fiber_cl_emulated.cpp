// The AVX-512 path's forward, weight gradient and pointwise convs (fiber_cl_avx512.cpp) on pairs
// of AVX2 registers, for CPUs without AVX-512: the same register blocks from fiber_cl_kernels.h, instantiated with the same
// lanes and accumulator counts, so tests here run the logic the AVX-512 build runs.
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
#pragma GCC target("avx2,fma")
#include "fiber_cl_kernels.h"
#include "pointwise_kernels.h"

namespace fiber {
namespace {

// The AVX-512 path's blocking (16 floats a vector, 32 registers' worth of accumulators) on
// pairs of AVX2 registers: the same code as fiber_cl_avx512.cpp instantiates, run where the CPU
// has no AVX-512 so that tests check its logic (lanes, tails, packing) here. Slow (its blocks
// spill); MFNET_FIBER_KERNEL=avx512-emulated. Its own file, so that its compile (the
// slowest of the kernels') runs beside the others'.
struct Avx512OnAvx2 {
  static constexpr int L = 16, ACC = 24, PMAX = 8;
  struct V { __m256 lo, hi; };
  static V zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static V load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static V bcast(const float* p) { const __m256 b = _mm256_broadcast_ss(p); return {b, b}; }
  static V fma(V a, V b, V c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
  static V add(V a, V b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v.lo); _mm256_storeu_ps(p + 8, v.hi); }
  static void store_first(float* p, V v, int n) {
    store8_first(p, v.lo, std::min(n, 8));
    if (n > 8) store8_first(p + 8, v.hi, n - 8);
  }
  static __m256 eighth(V v, int i) { return i == 0 ? v.lo : v.hi; }
  static V load_first(const float* p, int n) {
    return {_mm256_maskload_ps(p, mask8(std::min(n, 8))), n > 8 ? _mm256_maskload_ps(p + 8, mask8(n - 8)) : _mm256_setzero_ps()};
  }
  static V eighths(const float* p, const float* q, int n) {
    auto half = [n](const float* h) { return h ? _mm256_maskload_ps(h, mask8(n)) : _mm256_setzero_ps(); };
    return {half(p), half(q)};
  }
};

}  // namespace

void forward_avx512_on_avx2(const ClRun& run) { run_forward<Avx512OnAvx2>(run); }
void wgrad_avx512_on_avx2(const Band& src, const float* gband, float* dwg, const ClGeo& g, int to, int ho0, int ho1) {
  wgrad_group<Avx512OnAvx2>(src, gband, dwg, g, to, ho0, ho1);
}
void wgrad_narrow_avx512_on_avx2(const float* x, const float* gy, float* dw, const ClGeo& g, int groups, int n,
                                 int to, int ho0, int ho1) {
  run_wgrad_narrow<Avx512OnAvx2>(x, gy, dw, g, groups, n, to, ho0, ho1);
}

}  // namespace fiber
POINTWISE_ENTRY_POINTS(avx512_on_avx2, fiber::Avx512OnAvx2)

#pragma GCC pop_options
