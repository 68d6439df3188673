// BatchNorm + ReLU's backward along one row of C channels, in AVX2 + FMA code (memory-bound):
// shared by bn_relu.cpp and the pointwise convs' training backward (pointwise_kernels.h). A file
// includes it inside its `#pragma GCC target` region; everything here has internal linkage, so
// each build keeps its own copy.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

namespace bn_rows {
namespace {

// g = gy where x * scale + shift > 0 (or is NaN, which ReLU passes on), else 0: the mask of
// ReLU's backward, lanes kept where not (v <= 0)
inline __m256 relu_grad(__m256 x, __m256 gy, const float* s, const float* b) {
  const __m256 v = _mm256_fmadd_ps(x, _mm256_loadu_ps(s), _mm256_loadu_ps(b));
  return _mm256_and_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NLE_UQ), gy);
}

inline float relu_grad(float x, float gy, float s, float b) {
  return std::fma(x, s, b) <= 0.f ? 0.f : gy;
}

// sg += g, sgx += g * (x - m) along one row of C channels
inline void masked_sums(const float* x, const float* gy, const float* s, const float* b,
                        const float* m, float* sg, float* sgx, int64_t C) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    const __m256 xv = _mm256_loadu_ps(x + c);
    const __m256 g = relu_grad(xv, _mm256_loadu_ps(gy + c), s + c, b + c);
    _mm256_storeu_ps(sg + c, _mm256_add_ps(_mm256_loadu_ps(sg + c), g));
    const __m256 d = _mm256_sub_ps(xv, _mm256_loadu_ps(m + c));
    _mm256_storeu_ps(sgx + c, _mm256_fmadd_ps(g, d, _mm256_loadu_ps(sgx + c)));
  }
  for (; c < C; ++c) {
    const float g = relu_grad(x[c], gy[c], s[c], b[c]);
    sg[c] += g;
    sgx[c] = std::fma(g, x[c] - m[c], sgx[c]);
  }
}

// out = a * g + (b * x + c) along one row of C channels
inline void masked_affine(const float* x, const float* gy, const float* s, const float* sh,
                          const float* a, const float* b, const float* c, float* out, int64_t C) {
  int64_t k = 0;
  for (; k + 8 <= C; k += 8) {
    const __m256 xv = _mm256_loadu_ps(x + k);
    const __m256 g = relu_grad(xv, _mm256_loadu_ps(gy + k), s + k, sh + k);
    const __m256 rest = _mm256_fmadd_ps(_mm256_loadu_ps(b + k), xv, _mm256_loadu_ps(c + k));
    _mm256_storeu_ps(out + k, _mm256_fmadd_ps(_mm256_loadu_ps(a + k), g, rest));
  }
  for (; k < C; ++k)
    out[k] = std::fma(a[k], relu_grad(x[k], gy[k], s[k], sh[k]), std::fma(b[k], x[k], c[k]));
}

}  // namespace
}  // namespace bn_rows
