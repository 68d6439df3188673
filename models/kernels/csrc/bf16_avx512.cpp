// The bf16 rows (bf16_rows.h) on AVX512-BF16: 16 channels a vector, widened by a shift, the
// affine and ReLU in fp32, rounded by vcvtneps2bf16 (round to nearest even, as PyTorch's
// bf16 conversion). Compiled for AVX512-BF16 in this file only and run only where the CPU has it
// (bf16.cpp checks); Python checks it against the emulated build once per process before use.
#include <immintrin.h>

#include <cstdint>

#include "bf16_rows.h"

// every header above the pragma (see fiber_cl_avx512.cpp)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")

namespace bf16 {
namespace {

inline __m512 load16(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

inline void store16(uint16_t* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

}  // namespace

bool affine_relu_avx512bf16(const Rows& r, int64_t p0, int64_t p1) {
  const __m512 zero = _mm512_setzero_ps();
  const __m256i exponent = _mm256_set1_epi16(0x7f80);
  __mmask16 nonfinite = 0;
  for (int64_t p = p0; p < p1; ++p) {
    const uint16_t* xp = r.x + p * r.C;
    for (int64_t c = 0; c < r.C; c += 16) {
      const __mmask16 m = r.C - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (r.C - c)) - 1);
      const __m256i bits = _mm256_maskz_loadu_epi16(m, xp + c);
      // all exponent bits set: NaN or an infinity
      nonfinite |= _mm256_mask_cmpeq_epi16_mask(m, _mm256_and_si256(bits, exponent), exponent);
      const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
      for (int k = 0; k < r.k; ++k) {
        const __m512 a = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, r.scale[k] + c), _mm512_maskz_loadu_ps(m, r.shift[k] + c));
        // max(0, a): the second operand where either is NaN, so NaN stays NaN as in torch.relu
        store16(r.y[k] + p * r.C + c, _mm512_max_ps(zero, a), m);
      }
    }
  }
  return nonfinite == 0;
}

void add_avx512bf16(uint16_t* y, const uint16_t* r, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 m = i1 - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (i1 - i)) - 1);
    store16(y + i, _mm512_add_ps(load16(y + i, m), load16(r + i, m)), m);
  }
}

}  // namespace bf16

#pragma GCC pop_options
