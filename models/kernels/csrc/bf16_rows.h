// bf16 rows for inference: y_k = relu(x * scale_k + shift_k) per channel over a channels-last
// bf16 tensor seen as (pixels, C), K = 1 or 2 affines of one input in one pass (a unit's
// pre-activations that read the same x), computed in fp32 and rounded to bf16 once. Two builds
// of one contract (bf16.cpp): the native one (AVX512-BF16's vcvtneps2bf16, bf16_avx512.cpp) and
// the emulated one (the same rounding in integer arithmetic, any x86-64 CPU), which tests run
// everywhere and the native one is checked against at load. No ATen headers (see fiber_cl.h).
#pragma once

#include <cstdint>

namespace bf16 {

struct Rows {
  const uint16_t* x;     // (pixels, C) bf16 bits
  int64_t C;
  int k;                 // affines: 1 or 2
  const float* scale[2];
  const float* shift[2];
  uint16_t* y[2];        // (pixels, C) each
};

// pixels p0 .. p1 - 1 of r; returns whether every x it read was finite (a NaN or infinity in a
// unit's input must reach the outputs PyTorch's ops send it to, which the caller then runs)
using RowsFn = bool (*)(const Rows& r, int64_t p0, int64_t p1);
bool affine_relu_avx512bf16(const Rows& r, int64_t p0, int64_t p1);
bool affine_relu_emulated(const Rows& r, int64_t p0, int64_t p1);

// y[i] = bf16(y[i] + r[i]) for i in i0 .. i1 - 1: a residual added to a conv's bf16 output in
// place (where oneDNN's fused add falls back to an add of its own, which is slower in bf16)
using AddFn = void (*)(uint16_t* y, const uint16_t* r, int64_t i0, int64_t i1);
void add_avx512bf16(uint16_t* y, const uint16_t* r, int64_t i0, int64_t i1);
void add_emulated(uint16_t* y, const uint16_t* r, int64_t i0, int64_t i1);

// fp32 -> bf16 as vcvtneps2bf16 converts: rounded to nearest even, NaN kept NaN (quiet, sign
// kept), and an fp32 denormal flushed to a zero of its sign (the instruction treats denormal
// inputs as zero; PyTorch's own conversion rounds them, a difference below 1.2e-38)
inline uint16_t round_bits(float v) {
  uint32_t u;
  __builtin_memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float widen(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float v;
  __builtin_memcpy(&v, &u, 4);
  return v;
}

}  // namespace bf16
