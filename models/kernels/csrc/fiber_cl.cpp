// The channels-last fiber conv (NDHWC, MF-Net's default layout) at any stride: packing, task
// layout, the forward on AVX2, the weight gradient; the entry points bindings.cpp binds. The
// forward's register blocks are in fiber_cl_kernels.h; its AVX-512 build is in
// fiber_cl_avx512.cpp, and that build's code on pairs of AVX2 registers (for tests on CPUs
// without AVX-512) in fiber_cl_emulated.cpp.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <immintrin.h>
#include <sys/mman.h>

#include <optional>

#include "fiber_cl.h"
#include "isa.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "fiber_cl_kernels.h"

namespace fiber {
namespace {

// Copy the channels of groups grp0 .. grp0 + ng of the rows [hi_first, hi_first + rows_in) of
// input frames [ti0, ti1) (inside the input) into buf, group j's at buf + j * group_stride and
// frame ti at slot ti % KT, so the KT consecutive frames an output frame reads have a slot
// each, and the next output frame finds those it shares already there (``Tasks::unpack``).
// Rows outside the input are left as they are (the kernel skips them).
// - PLANAR = false: (KT, rows_in, W, cin_g). Reads run along each pixel's channels; a pixel's
//   last vector is loaded masked and stored whole where the store ends inside the row (later
//   pixels' stores overwrite the excess), masked where it would not, so no other row or frame
//   is touched. (A group of 1 to 3 channels spills past more than the next pixel: stored whole
//   at the row's last pixels, it overwrote the next frame's kept rows.)
// - PLANAR = true: (KT, rows_in, cin_g, planar_row_floats), column c at c + 1, or at column
//   stride 2 the even columns then the odd ones (see planar_tap); the columns either side are
//   never written, so they stay zero in a zeroed buffer.
// With an Affine, inference's BatchNorm + ReLU is applied on the way: max(0, v), in that order, so
// a NaN passes as ReLU passes it (maxps returns its second operand where either is NaN).

// One input row of ng groups' channels (`from`: the row's first pixel at the first group's first
// channel, ch0 that channel's index) into the planar layout: channel k of the ng * cin goes to
// group k / cin's row k % cin, column w at w + 1. Blocks of 8 pixels x 8 channels are transposed
// in registers; the rest goes a value at a time.
template <bool AFFINE, bool SPLIT>
void pack_planar_row(const float* from, float* row, const ClGeo& g, int ng, const int64_t* offset,
                     const Affine& affine, int64_t ch0) {
  const int K = ng * g.cin_g;
  const int64_t odd = planar_tap(g, 2) - 1;  // SPLIT: column 2j + 1 at odd + j + 1
  auto one = [&](int w, int k) {
    float v = from[(int64_t)w * g.C + k];
    if constexpr (AFFINE) v = std::max(v * affine.scale[ch0 + k] + affine.shift[ch0 + k], 0.f);
    if constexpr (SPLIT) row[offset[k] + (w % 2 ? odd + w / 2 + 1 : w / 2)] = v;
    else row[offset[k] + w] = v;
  };
  // SPLIT: a transposed vector's even pixels to its low half, odd to its high half
  const __m256i evens_odds = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256 zero = _mm256_setzero_ps();
  int w = 0;
  const int64_t block_lines = ((int64_t)8 * g.C * sizeof(float) + 63) / 64;
  for (; w + 8 <= g.W; w += 8) {  // pixel by pixel, so the reads run along memory
    // the next 8 pixels' lines, fetched while these are packed (the reads wait on memory)
    const char* next = reinterpret_cast<const char*>(from + (int64_t)(w + 8) * g.C);
    for (int64_t line = 0; line < block_lines; ++line) _mm_prefetch(next + 64 * line, _MM_HINT_T0);
    int k = 0;
    for (; k + 8 <= K; k += 8) {
      __m256 v[8];
#pragma GCC unroll 8
      for (int p = 0; p < 8; ++p) {
        v[p] = _mm256_loadu_ps(from + (int64_t)(w + p) * g.C + k);
        if constexpr (AFFINE)
          v[p] = _mm256_max_ps(zero, _mm256_fmadd_ps(v[p], _mm256_loadu_ps(affine.scale + ch0 + k),
                                                     _mm256_loadu_ps(affine.shift + ch0 + k)));
      }
      transpose8(v);  // v[i]: channel k + i at pixels w .. w + 7
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        if constexpr (SPLIT) {
          const __m256 split = _mm256_permutevar8x32_ps(v[i], evens_odds);
          _mm_storeu_ps(row + offset[k + i] + w / 2, _mm256_castps256_ps128(split));
          _mm_storeu_ps(row + offset[k + i] + odd + w / 2 + 1, _mm256_extractf128_ps(split, 1));
        } else {
          _mm256_storeu_ps(row + offset[k + i] + w, v[i]);
        }
      }
    }
    for (; k < K; ++k)
      for (int p = 0; p < 8; ++p) one(w + p, k);
  }
  for (; w < g.W; ++w)
    for (int k = 0; k < K; ++k) one(w, k);
}

template <bool PLANAR, bool AFFINE>
void pack_band(const float* xp, float* buf, const ClGeo& g, int n, int ti0, int ti1, int grp0,
               int ng, int hi_first, int rows_in, int64_t group_stride, const Affine& affine) {
  const int cin = g.cin_g;
  const int64_t row_floats = (int64_t)cin * (PLANAR ? planar_row_floats(g) : g.W);
  const __m256i tail = mask8(cin % 8 == 0 ? 8 : cin % 8);
  const __m256 zero = _mm256_setzero_ps();
  // planar: where channel k of the block goes in a row's slot, group k / cin's row k % cin
  // (column 0 at + 1 at column stride 1); found once per call, not per store
  std::vector<int64_t> offset;
  if constexpr (PLANAR)
    for (int k = 0; k < ng * cin; ++k)
      offset.push_back((int64_t)(k / cin) * group_stride + (int64_t)(k % cin) * planar_row_floats(g) + (g.sw == 1));
  for (int ti = ti0; ti < ti1; ++ti) {
    for (int r = 0; r < rows_in; ++r) {
      const int hi = hi_first + r;
      if (hi < 0 || hi >= g.H) continue;
      const float* from = xp + (((int64_t)n * g.T + ti) * g.H + hi) * g.W * g.C + (int64_t)grp0 * cin;
      float* row = buf + ((int64_t)(ti % g.KT) * rows_in + r) * row_floats;
      if constexpr (PLANAR) {
        if (g.sw == 1) pack_planar_row<AFFINE, false>(from, row, g, ng, offset.data(), affine, (int64_t)grp0 * cin);
        else pack_planar_row<AFFINE, true>(from, row, g, ng, offset.data(), affine, (int64_t)grp0 * cin);
      } else {
        for (int w = 0; w < g.W; ++w, from += g.C) {
          for (int j = 0; j < ng; ++j) {
            const float* src = from + j * cin;
            const int64_t ch = (int64_t)(grp0 + j) * cin;  // the group's first channel
            float* dst = row + j * group_stride + (int64_t)w * cin;
            int c = 0;
            for (; c + 8 < cin; c += 8) {
              __m256 v = _mm256_loadu_ps(src + c);
              if constexpr (AFFINE)
                v = _mm256_max_ps(zero, _mm256_fmadd_ps(v, _mm256_loadu_ps(affine.scale + ch + c),
                                                        _mm256_loadu_ps(affine.shift + ch + c)));
              _mm256_storeu_ps(dst + c, v);
            }
            __m256 last = _mm256_maskload_ps(src + c, tail);
            if constexpr (AFFINE)  // masked lanes: 0 * 0 + 0
              last = _mm256_max_ps(zero, _mm256_fmadd_ps(last, _mm256_maskload_ps(affine.scale + ch + c, tail),
                                                         _mm256_maskload_ps(affine.shift + ch + c, tail)));
            if ((int64_t)(w + 1) * cin + 8 - (cin - c) <= (int64_t)g.W * cin) _mm256_storeu_ps(dst + c, last);
            else _mm256_maskstore_ps(dst + c, tail, last);
          }
        }
      }
    }
  }
}

}  // namespace

Band Tasks::unpack(int64_t task, const float* xp, float* buf, const ClGeo& g, int groups, Held& held,
                 int& n, int& to, int& grp0, int& ng, int& ho0, int& ho1, const Affine& affine) const {
  int64_t key;  // (n, group block, band)
  if (g.KT > 1) {
    to = task % g.To;
    key = task / g.To;
  } else {  // no frame to share: neighbouring tasks read neighbouring rows of one frame
    key = task % ((int64_t)gblocks * bands);
    task /= (int64_t)gblocks * bands;
    to = task % g.To;
    key += task / g.To * gblocks * bands;
  }
  const int b = key % bands;
  const int gb = (key / bands) % gblocks;
  n = key / bands / gblocks;
  grp0 = gb * gblock;
  ng = std::min(gblock, groups - grp0);
  ho0 = b * band;
  ho1 = std::min(g.Ho, ho0 + band);
  const Band src{buf, ho0 * g.sh - 1, (ho1 - 1 - ho0) * g.sh + 3};
  const int first = to * g.st - g.KT / 2;
  const int ti0 = std::max(0, first), ti1 = std::min(g.T, first + g.KT);
  // frames [ti0, held.ti1) are still there when the window moved forward within the same key
  const bool keep = held.key == key && held.ti0 <= ti0 && ti0 <= held.ti1;
  const int from = keep ? std::max(ti0, held.ti1) : ti0;
  const bool fold = affine.scale != nullptr;
  if (planar && fold)
    pack_band<true, true>(xp, buf, g, n, from, ti1, grp0, ng, src.hi_first, src.rows_in, group_stride, affine);
  else if (planar)
    pack_band<true, false>(xp, buf, g, n, from, ti1, grp0, ng, src.hi_first, src.rows_in, group_stride, affine);
  else if (fold)
    pack_band<false, true>(xp, buf, g, n, from, ti1, grp0, ng, src.hi_first, src.rows_in, group_stride, affine);
  else
    pack_band<false, false>(xp, buf, g, n, from, ti1, grp0, ng, src.hi_first, src.rows_in, group_stride, affine);
  held = Held{key, ti0, ti1};
  return src;
}

void forward_avx2(const ClRun& run) { run_forward<Avx2>(run); }
void wgrad_avx2(const Band& src, const float* gband, float* dwg, const ClGeo& g, int to, int ho0, int ho1) {
  wgrad_group<Avx2>(src, gband, dwg, g, to, ho0, ho1);
}
void wgrad_narrow_avx2(const float* x, const float* gy, float* dw, const ClGeo& g, int groups, int n, int to,
                       int ho0, int ho1) {
  run_wgrad_narrow<Avx2>(x, gy, dw, g, groups, n, to, ho0, ho1);
}

}  // namespace fiber
#pragma GCC pop_options

namespace fiber {

Tasks::Tasks(const ClGeo& g, int N, int groups, bool allow_planar) {
  planar = allow_planar && (g.cout_g <= 6 || g.cout_g == 12) && (g.sw == 1 || g.sw == 2);
  const int64_t row_bytes = (int64_t)g.KT * g.W * g.cin_g * sizeof(float);
  const int fit_rows = std::max<int64_t>(3, (128 << 10) / std::max<int64_t>(1, row_bytes));
  band = std::max(1, std::min(g.Ho, (fit_rows - 3) / g.sh + 1));
  bands = (g.Ho + band - 1) / band;
  // bands of equal rows: at batch 1 each thread may get one band, so 30 + 26 rows (conv2's
  // 56) left one thread idle for 4 rows' time; 28 + 28 ran conv2's 3x3x3 in 0.94x the time
  band = (g.Ho + bands - 1) / bands;
  max_rows_in = (band - 1) * g.sh + 3;
  const int64_t outer = (int64_t)N * g.To * bands;
  const int64_t want = 4 * (int64_t)at::get_num_threads();
  const int split = (int)std::min<int64_t>(groups, std::max<int64_t>(1, (want + outer - 1) / outer));
  gblock = (groups + split - 1) / split;
  gblocks = (groups + gblock - 1) / gblock;
  group_stride = (int64_t)g.KT * max_rows_in * g.cin_g * (planar ? planar_row_floats(g) : g.W) + 8;
  count = outer * gblocks;
}


// The geometry of a channels-last conv of x (N, C, T, H, W) with KT x 3 x 3 kernels, checked.
ClGeo cl_geometry(const at::Tensor& x, int groups, int KT, int cin_g, int cout_g,
                  const std::vector<int64_t>& stride, int lanes) {
  TORCH_CHECK(x.dim() == 5 && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
              x.is_contiguous(at::MemoryFormat::ChannelsLast3d), "fiber_conv: x must be a channels-last-3d fp32 CPU tensor");
  TORCH_CHECK(stride.size() == 3 && stride[0] > 0 && stride[1] > 0 && stride[2] > 0,
              "fiber_conv: strides must be three positive numbers");
  ClGeo g;
  g.KT = KT; g.cin_g = cin_g; g.cout_g = cout_g; g.lanes = lanes; g.cop = (cout_g + lanes - 1) / lanes * lanes;
  g.C = x.size(1); g.T = x.size(2); g.H = x.size(3); g.W = x.size(4);
  TORCH_CHECK(groups > 0 && g.C == g.cin_g * groups, "fiber_conv: channels do not match groups");
  g.st = stride[0]; g.sh = stride[1]; g.sw = stride[2];
  g.CO = groups * cout_g;
  g.To = (g.T + 2 * (g.KT / 2) - g.KT) / g.st + 1;
  g.Ho = (g.H + 2 - 3) / g.sh + 1;
  g.Wo = (g.W + 2 - 3) / g.sw + 1;
  return g;
}

}  // namespace fiber

using fiber::Band;
using fiber::ClGeo;
using fiber::Held;
using fiber::Tasks;

// A large output is written once, page by page. glibc serves a block above its mmap threshold
// (32 MiB at most) with fresh pages, each faulted in and zeroed on first touch: 4 KiB at a time,
// unless the range asks for transparent huge pages (2 MiB), which Linux's default "madvise"
// mode grants only where asked. Harmless where the block is reused heap memory.
void prefer_huge_pages(const at::Tensor& y) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t huge = 2 << 20;
  const uintptr_t begin = ((uintptr_t)y.data_ptr() + huge - 1) & ~(huge - 1);
  const uintptr_t end = ((uintptr_t)y.data_ptr() + y.nbytes()) & ~(huge - 1);
  if (end > begin) madvise((void*)begin, end - begin, MADV_HUGEPAGE);
#endif
}

// inference's or training's BatchNorm + ReLU before the conv, as scale and shift per input channel
fiber::Affine affine_of(const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, int64_t C) {
  TORCH_CHECK(scale.has_value() == shift.has_value(), "fiber_conv: scale and shift go together");
  if (!scale.has_value()) return {};
  for (const auto* t : {&*scale, &*shift})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == C && t->is_contiguous() && t->device().is_cpu() &&
                t->scalar_type() == at::kFloat, "fiber_conv: scale and shift must be C contiguous fp32 CPU floats");
  return fiber::Affine{scale->data_ptr<float>(), shift->data_ptr<float>()};
}

// (CO, cin_g, KT, 3, 3) -> (groups, KT, 3, 3, cin_g, cop): cop = cout_g rounded up to the
// path's lanes, zeros padded. turned: the packing of the conv that maps grad y to grad x (per
// group, input and output channels swapped and the kernel turned by 180 degrees, as
// fiber_kernel.flipped), (groups, KT, 3, 3, cout_g, cin_g rounded up), written from the weight
// as it is. One pass, every float written once: packing through a flipped copy and a permuted
// view took three (at conv5, 4 MB a weight, a training step packs 14 such weights).
at::Tensor pack_cl(const at::Tensor& weight, int64_t groups, const kernels::Isa& isa, bool turned) {
  TORCH_CHECK(weight.dim() == 5 && weight.size(3) == 3 && weight.size(4) == 3 && groups > 0 &&
              weight.size(0) % groups == 0 && weight.scalar_type() == at::kFloat && weight.device().is_cpu(),
              "fiber_conv: weight must be (CO, C/groups, KT, 3, 3) fp32 on the CPU");
  const int64_t lanes = isa.lanes;
  const int64_t KT = weight.size(2), cout_g = weight.size(0) / groups, cin_g = weight.size(1);
  const int64_t ins = turned ? cout_g : cin_g, outs = turned ? cin_g : cout_g;
  const int64_t outp = (outs + lanes - 1) / lanes * lanes;
  const auto w = weight.contiguous();
  auto packed = at::empty({groups, KT, 3, 3, ins, outp}, weight.options());
  const float* src = w.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  const int64_t taps = KT * 9;
  // one thread below 16K floats: waking the pool cost more than MF-Net's smaller packings
  at::parallel_for(0, groups * taps, std::max<int64_t>(1, 16384 / (ins * outp)), [&](int64_t begin, int64_t end) {
    for (int64_t gt = begin; gt < end; ++gt) {
      const int64_t grp = gt / taps, tap = gt % taps;
      const int64_t from = turned ? taps - 1 - tap : tap;  // (kt, kh, kw) turned by 180 degrees
      float* row = dst + gt * ins * outp;
      for (int64_t i = 0; i < ins; ++i, row += outp) {
        for (int64_t o = 0; o < outs; ++o) {
          const int64_t co = turned ? i : o, ci = turned ? o : i;  // within the group
          row[o] = src[((grp * cout_g + co) * cin_g + ci) * taps + from];
        }
        std::fill(row + outs, row + outp, 0.f);
      }
    }
  });
  return packed;
}

// y = conv3d(x, w, stride, padding=(KT/2, 1, 1), groups) (+ residual) with x channels-last-3d
// (fp32) and w packed by pack_cl for the same path (isa); y is
// channels-last-3d. scale and shift: inference's BatchNorm + ReLU before the conv (Affine).
at::Tensor forward_cl(const at::Tensor& x, const at::Tensor& packed, int64_t cout_g,
                      std::vector<int64_t> stride, const kernels::Isa& isa,
                      const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                      const std::optional<at::Tensor>& residual) {
  const int lanes = isa.lanes;
  TORCH_CHECK(packed.dim() == 6 && packed.is_contiguous() && packed.scalar_type() == at::kFloat &&
              cout_g > 0 && packed.size(5) == (cout_g + lanes - 1) / lanes * lanes,
              "fiber_conv: packed weight malformed (packed for another path?)");
  const int groups = packed.size(0);
  const ClGeo g = fiber::cl_geometry(x, groups, packed.size(1), packed.size(4), cout_g, stride, lanes);
  const fiber::Affine affine = affine_of(scale, shift, g.C);
  const int N = x.size(0);
  auto y = at::empty({N, g.CO, g.To, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  prefer_huge_pages(y);
  const fiber::Tasks tasks(g, N, groups, /*allow_planar=*/true);
  const float* res = nullptr;
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == y.sizes() && residual->scalar_type() == at::kFloat &&
                residual->device().is_cpu() && residual->is_contiguous(at::MemoryFormat::ChannelsLast3d),
                "fiber_conv: residual must be a channels-last-3d fp32 CPU tensor of the output's shape");
    res = residual->data_ptr<float>();
  }
  const fiber::ClRun run{g, tasks, x.data_ptr<float>(), packed.data_ptr<float>(), y.data_ptr<float>(), N, groups,
                         affine, res};
  isa.fiber_forward(run);
  return y;
}

// Whether the weight gradient reads x and grad y in place (the narrow form: groups of at most 8
// output channels, 16 on AVX-512, at spatial stride 1) rather than from each task's packed band
bool wgrad_in_place(int64_t cout_g, const std::vector<int64_t>& stride, const kernels::Isa& isa) {
  TORCH_CHECK(stride.size() == 3, "fiber_conv: stride must be three integers");
  return (cout_g <= 8 || (isa.lanes == 16 && cout_g <= 16)) && stride[1] == 1 && stride[2] == 1;
}

// grad of the weight of y = conv3d(x', w, stride, padding=(KT/2, 1, 1), groups), x and gy
// channels-last-3d fp32: (CO, cin_g, KT, 3, 3); x' = relu(x * scale + shift) where scale and shift
// are given (training's BatchNorm + ReLU folded in, made in each task's packed band: the narrow
// form, which reads x in place, is not taken then), else x. Each thread sums its tasks into a
// buffer of its own, in the packed layout; the buffers are added at the end.
at::Tensor grad_weight_cl(const at::Tensor& x, const at::Tensor& gy, int64_t groups,
                             int64_t KT, std::vector<int64_t> stride, const kernels::Isa& isa,
                             const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  TORCH_CHECK(gy.dim() == 5 && gy.scalar_type() == at::kFloat && gy.size(1) % groups == 0 &&
              gy.is_contiguous(at::MemoryFormat::ChannelsLast3d), "fiber_conv: grad must be channels-last-3d fp32");
  const int cout_g = gy.size(1) / groups;
  const ClGeo g = fiber::cl_geometry(x, groups, KT, x.size(1) / groups, cout_g, stride, isa.lanes);
  const auto wgrad = isa.fiber_wgrad;
  TORCH_CHECK(gy.size(0) == x.size(0) && gy.size(2) == g.To && gy.size(3) == g.Ho && gy.size(4) == g.Wo,
              "fiber_conv: grad's shape does not match the conv's output");
  const int N = x.size(0);
  const float* xp = x.data_ptr<float>();
  const float* gp = gy.data_ptr<float>();
  const int64_t group_w = (int64_t)g.KT * 9 * g.cin_g * g.cop;
  std::vector<std::vector<float>> partial(at::get_num_threads());
  auto mine = [&]() -> float* {
    std::vector<float>& buffer = partial.at(at::get_thread_num());
    if (buffer.empty()) buffer.assign(groups * group_w, 0.f);
    return buffer.data();
  };
  const fiber::Affine affine = affine_of(scale, shift, g.C);
  if (!affine.scale && wgrad_in_place(g.cout_g, stride, isa)) {
    // narrow groups: tasks of (n, to, a band of output rows), x and gy read in place. Bands of
    // 4 rows: MF-Net's 6 -> 6 1x3x3 at batch 4 took 6.9 ms, against 8.4 with 2 rows, 7.3 with 8
    // and 9.1 with the whole frame (AVX-512, median of 5 alternating rounds); 3x3x3 alike
    const auto narrow = isa.fiber_wgrad_narrow;
    constexpr int band = 4;
    const int bands = (g.Ho + band - 1) / band;
    at::parallel_for(0, (int64_t)N * g.To * bands, 1, [&](int64_t begin, int64_t end) {
      float* dw = mine();
      for (int64_t task = begin; task < end; ++task) {
        const int b = task % bands, to = task / bands % g.To, n = task / bands / g.To;
        narrow(xp, gp, dw, g, groups, n, to, b * band, std::min(g.Ho, (b + 1) * band));
      }
    });
  } else {
    const Tasks tasks(g, N, groups, /*allow_planar=*/false);
    at::parallel_for(0, tasks.count, 1, [&](int64_t begin, int64_t end) {
      float* dw = mine();
      std::vector<float> buf(tasks.buffer_floats());
      std::vector<float> gband;
      Held held;
      for (int64_t task = begin; task < end; ++task) {
        int n, to, grp0, ng, ho0, ho1;
        const Band first = tasks.unpack(task, xp, buf.data(), g, groups, held, n, to, grp0, ng, ho0, ho1, affine);
        for (int j = 0; j < ng; ++j) {
          const int grp = grp0 + j;
          const Band src{first.buf + j * tasks.group_stride, first.hi_first, first.rows_in};
          // the group's grad y over the band, copied to one run of cop floats per pixel (zeros
          // past cout_g): the taps read it 27 x cin_g / B times, and read in place its pixels lie
          // CO floats apart. 1.4-1.7x on MF-Net's 12- to 48-channel groups (docs/kernels-log.md)
          gband.assign((size_t)(ho1 - ho0) * g.Wo * g.cop, 0.f);
          for (int ho = ho0; ho < ho1; ++ho) {
            const float* grow = gp + (((int64_t)n * g.To + to) * g.Ho + ho) * g.Wo * g.CO + (int64_t)grp * g.cout_g;
            float* dst = gband.data() + (int64_t)(ho - ho0) * g.Wo * g.cop;
            for (int p = 0; p < g.Wo; ++p)
              std::copy(grow + (int64_t)p * g.CO, grow + (int64_t)p * g.CO + g.cout_g, dst + (int64_t)p * g.cop);
          }
          wgrad(src, gband.data(), dw + grp * group_w, g, to, ho0, ho1);
        }
      }
    });
  }
  // the threads' sums, (groups, KT, 3, 3, cin_g, cop) each, added straight into the weight's
  // layout (CO, cin_g, KT, 3, 3): a zeroed packed sum and a permuted copy of it took two more
  // passes over a weight of up to 4 MB, on one thread
  std::vector<const float*> sums;
  for (const auto& mine : partial)
    if (!mine.empty()) sums.push_back(mine.data());
  auto grad = at::empty({g.CO, g.cin_g, KT, 3, 3}, x.options());
  float* out = grad.data_ptr<float>();
  const int64_t taps = (int64_t)KT * 9;
  at::parallel_for(0, (int64_t)g.CO * g.cin_g, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t co = row / g.cin_g, ci = row % g.cin_g, grp = co / cout_g, o = co % cout_g;
      for (int64_t tap = 0; tap < taps; ++tap) {
        const int64_t at = ((grp * taps + tap) * g.cin_g + ci) * g.cop + o;
        float total = 0.f;
        for (const float* s : sums) total += s[at];
        out[row * taps + tap] = total;
      }
    }
  });
  return grad;
}
