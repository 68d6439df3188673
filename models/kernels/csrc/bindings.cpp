// The extension's Python face: every op the kernel library (models/kernels/) calls, bound in one
// place. Each channels-last op takes the path's table of entry points (isa.h) that the loader
// chose once per process; the NCDHW ops take a flag for the scalar path.
#include <torch/extension.h>

#include <optional>
#include <tuple>
#include <string>
#include <vector>

#include "isa.h"

using at::Tensor;
using std::optional;
using kernels::Isa;

// The fiber conv, NCDHW at stride 1 (fiber_ncdhw.cpp)
Tensor forward(const Tensor& x, const Tensor& weight, int64_t groups, bool force_scalar);
Tensor grad_weight(const Tensor& x, const Tensor& gy, int64_t groups, int64_t KT, bool force_scalar);
int64_t threads_used();

// The fiber conv, channels last (fiber_cl.cpp)
Tensor pack_cl(const Tensor& weight, int64_t groups, const Isa& isa, bool turned);
Tensor forward_cl(const Tensor& x, const Tensor& packed, int64_t cout_g, std::vector<int64_t> stride, const Isa& isa,
                  const optional<Tensor>& scale, const optional<Tensor>& shift, const optional<Tensor>& residual);
Tensor grad_weight_cl(const Tensor& x, const Tensor& gy, int64_t groups, int64_t KT, std::vector<int64_t> stride,
                      const Isa& isa, const optional<Tensor>& scale, const optional<Tensor>& shift);
bool wgrad_in_place(int64_t cout_g, const std::vector<int64_t>& stride, const Isa& isa);

// The pre-activation pointwise convs, channels last (pointwise_cl.cpp)
Tensor pack_pointwise(const Tensor& weight, const Isa& isa, bool transposed);
Tensor pointwise_cl(const Tensor& x, const Tensor& packed, int64_t cout, std::vector<int64_t> stride,
                    const optional<Tensor>& scale, const optional<Tensor>& shift, const optional<Tensor>& residual,
                    const Isa& isa);
Tensor grad_weight_pointwise(const Tensor& x, const Tensor& gy, std::vector<int64_t> stride, const Isa& isa,
                             const optional<Tensor>& scale, const optional<Tensor>& shift);
std::vector<Tensor> bn_pointwise_backward(const Tensor& gy, const Tensor& x, const Tensor& packed_t, const Tensor& mean,
                                          const Tensor& invstd, const Tensor& scale, const Tensor& shift,
                                          std::vector<Tensor> plus, std::vector<int64_t> stride, const Isa& isa,
                                          bool weight);
Tensor multiplexer_cl(const Tensor& x, const Tensor& packed1, int64_t mid, const Tensor& scale1, const Tensor& shift1,
                      const Tensor& packed2, const Tensor& scale2, const Tensor& shift2, const Isa& isa);

// BatchNorm + ReLU, channels last (bn_relu.cpp)
std::vector<Tensor> bn_stats(Tensor x);
Tensor affine_relu(Tensor x, Tensor scale, Tensor shift);
std::vector<Tensor> backward(Tensor gy, Tensor x, Tensor mean, Tensor invstd, Tensor scale, Tensor shift,
                             std::vector<Tensor> plus);

// bf16 inference's BatchNorm + ReLU, channels last (bf16.cpp)
bool cpu_has_avx512_bf16();
std::tuple<std::vector<Tensor>, bool> affine_relu_bf16(const Tensor& x, std::vector<Tensor> scales,
                                                       std::vector<Tensor> shifts, bool native);
Tensor add_bf16_(Tensor y, const Tensor& r, bool native);
Tensor max_pool_bf16(const Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                     std::vector<int64_t> padding);

// Large CPU blocks kept for reuse (pool.cpp)
bool pool_install(int64_t cap_bytes);
int64_t pool_kept();
int64_t pool_empty();

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<Isa>(m, "Isa", "A channels-last path's table of entry points (isa.h); made by isa(name)")
      .def_property_readonly("name", [](const Isa& isa) { return std::string(isa.name); })
      .def_property_readonly("lanes", [](const Isa& isa) { return isa.lanes; })
      .def("__repr__", [](const Isa& isa) { return "<Isa " + std::string(isa.name) + ">"; });
  m.def("isa", &kernels::isa_named, py::arg("name"), py::return_value_policy::reference);
  m.def("best_path", &kernels::best_path, py::arg("want"));
  m.def("cpu_has", &kernels::cpu_has, py::arg("isa"));
  m.def("threads_used", &threads_used);

  m.def("forward_ncdhw", &forward, py::arg("x"), py::arg("weight"), py::arg("groups"), py::arg("force_scalar"));
  m.def("grad_weight_ncdhw", &grad_weight, py::arg("x"), py::arg("gy"), py::arg("groups"), py::arg("KT"),
        py::arg("force_scalar"));

  m.def("pack_cl", &pack_cl, py::arg("weight"), py::arg("groups"), py::arg("isa"), py::arg("turned") = false);
  m.def("forward_cl", &forward_cl, py::arg("x"), py::arg("packed"), py::arg("cout_g"), py::arg("stride"),
        py::arg("isa"), py::arg("scale") = py::none(), py::arg("shift") = py::none(),
        py::arg("residual") = py::none());
  m.def("grad_weight_cl", &grad_weight_cl, py::arg("x"), py::arg("gy"), py::arg("groups"), py::arg("KT"),
        py::arg("stride"), py::arg("isa"), py::arg("scale") = py::none(), py::arg("shift") = py::none());
  m.def("wgrad_in_place", &wgrad_in_place, py::arg("cout_g"), py::arg("stride"), py::arg("isa"));

  m.def("pack_pointwise", &pack_pointwise, py::arg("weight"), py::arg("isa"), py::arg("transposed") = false);
  m.def("pointwise_cl", &pointwise_cl, py::arg("x"), py::arg("packed"), py::arg("cout"),
        py::arg("stride") = std::vector<int64_t>{1, 1, 1}, py::arg("scale") = py::none(), py::arg("shift") = py::none(),
        py::arg("residual") = py::none(), py::kw_only(), py::arg("isa"));
  m.def("multiplexer_cl", &multiplexer_cl, py::arg("x"), py::arg("packed1"), py::arg("mid"), py::arg("scale1"),
        py::arg("shift1"), py::arg("packed2"), py::arg("scale2"), py::arg("shift2"), py::arg("isa"));
  m.def("grad_weight_pointwise", &grad_weight_pointwise, py::arg("x"), py::arg("grad"), py::arg("stride"),
        py::arg("isa"), py::arg("scale") = py::none(), py::arg("shift") = py::none());
  m.def("bn_pointwise_backward", &bn_pointwise_backward, py::arg("grad"), py::arg("x"), py::arg("packed_t"),
        py::arg("mean"), py::arg("invstd"), py::arg("scale"), py::arg("shift"), py::arg("plus"), py::arg("stride"),
        py::arg("isa"), py::arg("weight"));

  m.def("bn_stats", &bn_stats);
  m.def("affine_relu", &affine_relu);
  m.def("bn_relu_backward", &backward, py::arg("grad"), py::arg("x"), py::arg("mean"), py::arg("invstd"),
        py::arg("scale"), py::arg("shift"), py::arg("plus") = std::vector<Tensor>{});

  m.def("cpu_has_avx512_bf16", &cpu_has_avx512_bf16);
  m.def("affine_relu_bf16", &affine_relu_bf16, py::arg("x"), py::arg("scales"), py::arg("shifts"),
        py::arg("native"));
  m.def("add_bf16_", &add_bf16_, py::arg("y"), py::arg("r"), py::arg("native"));
  m.def("max_pool_bf16", &max_pool_bf16, py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"));

  m.def("pool_install", &pool_install);
  m.def("pool_kept", &pool_kept);
  m.def("pool_empty", &pool_empty);
}
