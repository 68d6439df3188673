// The instruction sets the channels-last kernels are built for, each a table of entry points.
// The choice is made once per process, by name, in isa.cpp (the Python loader asks for it and
// holds the table it gets back); every op then calls through the table it is given. No ATen
// headers here (see fiber_cl.h).
#pragma once

#include <cstdint>
#include <string>

namespace fiber {
struct ClRun;
struct ClGeo;
struct Band;
}  // namespace fiber

namespace pointwise {
struct Run;
struct Mux;
struct Outer;
struct Backward;
}  // namespace pointwise

namespace kernels {

struct Isa {
  const char* name;  // "avx2", "avx512" or "avx512-emulated"
  int lanes;         // floats per vector: 8 (AVX2) or 16 (AVX-512, and its emulation)

  // the fiber conv, channels last (fiber_cl.h): the forward, the weight gradient of one group
  // over a band, and the weight gradient of narrow groups read in place
  void (*fiber_forward)(const fiber::ClRun& run);
  void (*fiber_wgrad)(const fiber::Band& src, const float* gband, float* dwg, const fiber::ClGeo& g, int to,
                      int ho0, int ho1);
  void (*fiber_wgrad_narrow)(const float* x, const float* gy, float* dw, const fiber::ClGeo& g, int groups,
                             int n, int to, int ho0, int ho1);

  // the pointwise convs (pointwise_cl.h)
  void (*pointwise_run)(const pointwise::Run& r);
  void (*pointwise_multiplex)(const pointwise::Mux& m);
  void (*pointwise_outer)(const pointwise::Outer& o);
  void (*pointwise_backward_sums)(const pointwise::Backward& b, int64_t p0, int count, float* c, int64_t ldc,
                                  bool k_wide, float* sg, float* sgx, float* act);
  void (*pointwise_backward_apply)(const pointwise::Backward& b, int64_t p0, int count, const float* ca,
                                   const float* cb, const float* cc, const float* const* plus, int nplus,
                                   float* gx);

  // output channels per chunk of a packed pointwise weight: 3 vectors
  int64_t pointwise_chunk() const { return 3 * lanes; }
};

// Whether this CPU runs an instruction set: "avx2" (with FMA) or "avx512" (AVX-512F, AVX2, FMA)
bool cpu_has(const std::string& isa);

// The path fp32 convs take on this CPU for a wish (the Python switch): "" the fastest it has
// ("avx512", else "avx2", else "scalar"); "avx2" what a CPU without AVX-512 gets;
// "avx512-emulated" the AVX-512 path's blocking on pairs of AVX2 registers (tests); "scalar"
// what a CPU without AVX2 gets. A wish the CPU cannot grant gets the best path below it.
std::string best_path(const std::string& want);

// The table of a channels-last path this CPU can run; a name that means nothing, or "avx512"
// on a CPU without it, stops with one line. The one place a path's name is read.
const Isa& isa_named(const std::string& name);

}  // namespace kernels
