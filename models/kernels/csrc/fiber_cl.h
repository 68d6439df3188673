// The channels-last fiber conv (MF-Net's default layout), shared by its files:
// - fiber_cl.cpp: packing, task layout, the weight gradient, the AVX2 forward, the entry points
//   (bound in bindings.cpp);
// - fiber_cl_avx512.cpp: the AVX-512 forward;
// - fiber_cl_emulated.cpp: the AVX-512 forward's code on pairs of AVX2 registers (for tests on
//   CPUs without AVX-512);
// - fiber_cl_kernels.h: the forward's register blocks, written once for any vector width.
// No ATen headers here: the AVX-512 file needs only ATen/Parallel.h (1 s to compile, where
// ATen/ATen.h takes 14 s and torch/extension.h 32 s, in every file that includes them).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fiber {

// One task's input: the group's channels of the frames and rows a band of output rows reads,
// copied compactly, (KT, rows_in, W, cin_g) or planar (KT, rows_in, cin_g, planar_row_floats). In the
// network's layout a pixel's cin_g channels sit C floats apart from the next pixel's, so every
// broadcast would touch its own cache line; packed, a row of the group fits a few lines and
// stays in L1 across the band's output rows.
struct Band {
  const float* buf;
  int hi_first, rows_in;  // the input row buf's row 0 holds, and how many rows it holds
};

struct ClGeo {
  int T, H, W, C;          // input
  int To, Ho, Wo, CO;      // output
  int KT, st, sh, sw;      // kernel depth, strides
  int cin_g, cout_g, cop;  // channels per group in and out; cop: cout_g padded to the lanes
  int lanes;               // floats per vector of the path that runs (8: AVX2, 16: AVX-512)
};

// Inference's BatchNorm + ReLU before the conv, folded into the packing: x -> max(x * scale +
// shift, 0) per input channel, applied to every pixel inside the input. The taps the kernel
// skips are the zero padding of the activated input, as in the network.
struct Affine {
  const float* scale = nullptr;  // nullptr: a plain copy
  const float* shift = nullptr;
};

// What one thread's buffer holds: input frames [ti0, ti1) of the (n, group block, band) `key`.
struct Held {
  int64_t key = -1;
  int ti0 = 0, ti1 = 0;
};

// The planar layout's row: whole blocks of up to 4 vectors of pixels, and a zero column either
// side (column c at c + 1)
inline int planar_width(int W, int lanes) { return (W + 4 * lanes - 1) / (4 * lanes) * (4 * lanes) + 2; }

// Floats per input channel's row in the planar layout. At column stride 1, one plane, input
// column c at c + 1, so output pixel wo's tap kw is at wo + kw. At column stride 2, the even
// columns then the odd ones, each a plane as wide as the output row needs: column 2j at j,
// column 2j + 1 at plane + j + 1, so tap kw = 1 (column 2wo) is at wo, kw = 0 (2wo - 1) at
// plane + wo and kw = 2 (2wo + 1) at plane + wo + 1: every tap a run of consecutive floats.
inline int planar_row_floats(const ClGeo& g) {
  return g.sw == 1 ? planar_width(g.W, g.lanes) : 2 * planar_width(g.Wo, g.lanes);
}

// Where output pixel wo's tap kw sits in a planar row, less wo
inline int planar_tap(const ClGeo& g, int kw) {
  if (g.sw == 1) return kw;
  const int plane = planar_width(g.Wo, g.lanes);
  return kw == 1 ? 0 : plane + kw / 2;
}

// How a channels-last conv is cut into tasks: (n, block of groups, band of output rows, output
// frame), the frame innermost where the kernel spans frames (KT > 1). A band's packed input
// (Band) stays within about 128 KB per group, in L2. A task packs a block of groups at once,
// reading each pixel's channels in order; the blocks are as large as leaves about four tasks
// per thread. at::parallel_for hands each thread a run of consecutive tasks, so a thread moves
// along the frames of one block and band: of the KT input frames an output frame reads, it
// packs only those the previous one did not.
struct Tasks {
  int band, bands, max_rows_in, gblock, gblocks;
  int64_t group_stride, count;
  bool planar;  // the planar variant (see planar_block in fiber_cl_kernels.h)
  Tasks(const ClGeo& g, int N, int groups, bool allow_planar);
  size_t buffer_floats() const { return (size_t)gblock * group_stride; }
  // task -> (n, to, first group, groups in the block, band); packs what buf (holding `held`)
  // lacks of the block's input and returns group grp0's Band (group j's: buf + j * group_stride)
  Band unpack(int64_t task, const float* xp, float* buf, const ClGeo& g, int groups, Held& held,
              int& n, int& to, int& grp0, int& ng, int& ho0, int& ho1, const Affine& affine = {}) const;
};

// One forward call, as the per-path compute functions take it
struct ClRun {
  const ClGeo& g;
  const Tasks& tasks;
  const float* x;
  const float* w;  // packed by pack_cl for g.lanes
  float* y;
  int N, groups;
  Affine affine;
  const float* residual = nullptr;  // y's layout: added to y as it is written (nullptr: none)
};

// The forward's compute on each path (fiber_cl.cpp, fiber_cl_avx512.cpp, fiber_cl_emulated.cpp),
// reached through each path's table (isa.h)
void forward_avx2(const ClRun& run);
void forward_avx512_on_avx2(const ClRun& run);
void forward_avx512(const ClRun& run);
// The weight gradient of one group over a band, each path's register blocks (wgrad_group in
// fiber_cl_kernels.h): gband the group's grad y, g.cop floats per pixel; dwg its packed slice
void wgrad_avx2(const Band& src, const float* gband, float* dwg, const ClGeo& g, int to, int ho0, int ho1);
void wgrad_avx512_on_avx2(const Band& src, const float* gband, float* dwg, const ClGeo& g, int to, int ho0, int ho1);
void wgrad_avx512(const Band& src, const float* gband, float* dwg, const ClGeo& g, int to, int ho0, int ho1);
// The weight gradient of narrow groups (at most 8 output channels; 16 on the 16-lane paths) at
// spatial stride 1, every group's over output rows ho0 .. ho1 of (n, to), x and gy read in place
// (run_wgrad_narrow in fiber_cl_kernels.h); dw the packed (groups, KT, 3, 3, cin_g, cop)
// gradient, added to
void wgrad_narrow_avx2(const float* x, const float* gy, float* dw, const ClGeo& g, int groups, int n, int to,
                       int ho0, int ho1);
void wgrad_narrow_avx512_on_avx2(const float* x, const float* gy, float* dw, const ClGeo& g, int groups, int n,
                                 int to, int ho0, int ho1);
void wgrad_narrow_avx512(const float* x, const float* gy, float* dw, const ClGeo& g, int groups, int n, int to,
                         int ho0, int ho1);

}  // namespace fiber
