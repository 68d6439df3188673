// The channels-last paths' tables of entry points, and the choice among them (isa.h).
#include "isa.h"

#include <c10/util/Exception.h>

#include "fiber_cl.h"
#include "pointwise_cl.h"

namespace kernels {
namespace {

const Isa AVX2{"avx2", 8,
               fiber::forward_avx2, fiber::wgrad_avx2, fiber::wgrad_narrow_avx2,
               pointwise::run_avx2, pointwise::multiplex_avx2, pointwise::outer_avx2,
               pointwise::backward_sums_avx2, pointwise::backward_apply_avx2};

const Isa AVX512{"avx512", 16,
                 fiber::forward_avx512, fiber::wgrad_avx512, fiber::wgrad_narrow_avx512,
                 pointwise::run_avx512, pointwise::multiplex_avx512, pointwise::outer_avx512,
                 pointwise::backward_sums_avx512, pointwise::backward_apply_avx512};

// the AVX-512 build's blocking on pairs of AVX2 registers: how its logic is tested on CPUs
// without AVX-512 (fiber_cl_emulated.cpp)
const Isa AVX512_EMULATED{"avx512-emulated", 16,
                          fiber::forward_avx512_on_avx2, fiber::wgrad_avx512_on_avx2,
                          fiber::wgrad_narrow_avx512_on_avx2,
                          pointwise::run_avx512_on_avx2, pointwise::multiplex_avx512_on_avx2,
                          pointwise::outer_avx512_on_avx2, pointwise::backward_sums_avx512_on_avx2,
                          pointwise::backward_apply_avx512_on_avx2};

}  // namespace

bool cpu_has(const std::string& isa) {
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx2") return avx2;
  return isa == "avx512" && avx2 && __builtin_cpu_supports("avx512f");
}

std::string best_path(const std::string& want) {
  if (want == "scalar" || !cpu_has("avx2")) return "scalar";
  if (want == "avx2" || want == "avx512-emulated") return want;
  return cpu_has("avx512") ? "avx512" : "avx2";
}

const Isa& isa_named(const std::string& name) {
  TORCH_CHECK(cpu_has("avx2"), "kernels: the channels-last kernels need AVX2 and FMA");
  if (name == "avx2") return AVX2;
  if (name == "avx512-emulated") return AVX512_EMULATED;
  TORCH_CHECK(name == "avx512", "kernels: no channels-last path ", name);
  TORCH_CHECK(cpu_has("avx512"), "kernels: no channels-last path avx512 on this CPU");
  return AVX512;
}

}  // namespace kernels
