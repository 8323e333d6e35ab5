// pybind11 boundary of the CUDA backend, compiled twice by setup.py: into fastconv._C_cuda with the
// nvcc-built launchers, and into fastconv._C_emu with the same launchers built by g++ against the SIMT
// emulator (FC_SIMT_EMULATOR defined; the emulator's controls are bound too).
//
// Tensors arrive as (data_ptr, sizes, strides) tuples, a dtype code and the stream handle; Python
// (fastconv/backends/cuda.py) has validated everything with torch's rules. This layer re-checks what
// memory safety relies on (sizes agree with the shape descriptor), then releases the GIL and launches.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>

#include "api.h"

#ifndef FC_MODULE_NAME
#error "FC_MODULE_NAME must be _C_cuda or _C_emu"
#endif
#ifndef FC_CUDA_ARCHS
#define FC_CUDA_ARCHS ""
#endif

namespace py = pybind11;
using fc::ConvShape;
using fc::DType;
using fc::HostTensor4;
using fc::PoolShape;

namespace {

#define FC_STR2(x) #x
#define FC_STR(x) FC_STR2(x)
const char* kModule = "fastconv." FC_STR(FC_MODULE_NAME);

using PyTensor = std::tuple<std::uintptr_t, std::array<std::int64_t, 4>, std::array<std::int64_t, 4>>;

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument(std::string(kModule) + ": " + what); }

HostTensor4 as_tensor(const PyTensor& t, const char* name, const std::array<std::int64_t, 4>& expected) {
  HostTensor4 out;
  out.data = reinterpret_cast<void*>(std::get<0>(t));
  for (int i = 0; i < 4; ++i) {
    out.size[i] = std::get<1>(t)[i];
    out.stride[i] = std::get<2>(t)[i];
  }
  std::int64_t numel = 1;
  for (int i = 0; i < 4; ++i) {
    if (out.size[i] != expected[i]) {
      std::ostringstream msg;
      msg << name << " has size (" << out.size[0] << ", " << out.size[1] << ", " << out.size[2] << ", "
          << out.size[3] << "), expected (" << expected[0] << ", " << expected[1] << ", " << expected[2] << ", "
          << expected[3] << ")";
      bad(msg.str());
    }
    if (out.stride[i] < 0) bad(std::string(name) + " has a negative stride");
    numel *= out.size[i];
  }
  if (numel > 0 && out.data == nullptr) bad(std::string(name) + " has a null data pointer");
  return out;
}

DType as_dtype(int code) {
  if (code < fc::kFloat32 || code > fc::kBFloat16)
    bad("dtype code must be 0 (float32), 1 (float64), 2 (float16) or 3 (bfloat16), got " + std::to_string(code));
  return static_cast<DType>(code);
}

ConvShape conv_shape(const py::tuple& t) {
  if (t.size() != 16 && t.size() != 18)
    bad("conv shape must have 16 fields (N C H W K R S P Q stride pad dilation groups), or 18 with "
        "(allow_tf32, tensor_cores)");
  ConvShape s;
  s.N = t[0].cast<std::int64_t>(); s.C = t[1].cast<std::int64_t>(); s.H = t[2].cast<std::int64_t>();
  s.W = t[3].cast<std::int64_t>(); s.K = t[4].cast<std::int64_t>(); s.R = t[5].cast<std::int64_t>();
  s.S = t[6].cast<std::int64_t>(); s.P = t[7].cast<std::int64_t>(); s.Q = t[8].cast<std::int64_t>();
  s.stride_h = t[9].cast<int>(); s.stride_w = t[10].cast<int>(); s.pad_h = t[11].cast<int>();
  s.pad_w = t[12].cast<int>(); s.dil_h = t[13].cast<int>(); s.dil_w = t[14].cast<int>(); s.groups = t[15].cast<int>();
  if (t.size() == 18) {
    s.allow_tf32 = t[16].cast<bool>();
    s.tensor_cores = t[17].cast<bool>();
  }
  if (s.N < 0 || s.C <= 0 || s.H <= 0 || s.W <= 0 || s.K <= 0 || s.R <= 0 || s.S <= 0 || s.P <= 0 || s.Q <= 0 ||
      s.stride_h <= 0 || s.stride_w <= 0 || s.pad_h < 0 || s.pad_w < 0 || s.dil_h <= 0 || s.dil_w <= 0 ||
      s.groups <= 0 || s.C % s.groups != 0 || s.K % s.groups != 0)
    bad("inconsistent conv shape");
  if ((s.P - 1) * s.stride_h + (s.R - 1) * s.dil_h + 1 > s.H + 2 * s.pad_h ||
      (s.Q - 1) * s.stride_w + (s.S - 1) * s.dil_w + 1 > s.W + 2 * s.pad_w)
    bad("conv output size does not fit the padded input");
  return s;
}

PoolShape pool_shape(const py::tuple& t) {
  if (t.size() != 14) bad("pool shape must have 14 fields (N C H W P Q kernel stride pad dilation)");
  PoolShape s;
  s.N = t[0].cast<std::int64_t>(); s.C = t[1].cast<std::int64_t>(); s.H = t[2].cast<std::int64_t>();
  s.W = t[3].cast<std::int64_t>(); s.P = t[4].cast<std::int64_t>(); s.Q = t[5].cast<std::int64_t>();
  s.kernel_h = t[6].cast<int>(); s.kernel_w = t[7].cast<int>(); s.stride_h = t[8].cast<int>();
  s.stride_w = t[9].cast<int>(); s.pad_h = t[10].cast<int>(); s.pad_w = t[11].cast<int>();
  s.dil_h = t[12].cast<int>(); s.dil_w = t[13].cast<int>();
  if (s.N < 0 || s.C <= 0 || s.H <= 0 || s.W <= 0 || s.P <= 0 || s.Q <= 0 || s.kernel_h <= 0 || s.kernel_w <= 0 ||
      s.stride_h <= 0 || s.stride_w <= 0 || s.pad_h < 0 || s.pad_w < 0 || s.dil_h <= 0 || s.dil_w <= 0 ||
      s.pad_h > s.kernel_h / 2 || s.pad_w > s.kernel_w / 2)
    bad("inconsistent pool shape");
  return s;
}

std::array<std::int64_t, 4> x_size(const ConvShape& s) { return {s.N, s.C, s.H, s.W}; }
std::array<std::int64_t, 4> w_size(const ConvShape& s) { return {s.K, s.C / s.groups, s.R, s.S}; }
std::array<std::int64_t, 4> y_size(const ConvShape& s) { return {s.N, s.K, s.P, s.Q}; }
std::array<std::int64_t, 4> px_size(const PoolShape& s) { return {s.N, s.C, s.H, s.W}; }
std::array<std::int64_t, 4> py_size(const PoolShape& s) { return {s.N, s.C, s.P, s.Q}; }

void* as_ptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

}  // namespace

#ifdef FC_SIMT_EMULATOR
void bind_emulator(py::module_& m);   // csrc/emu/bind_emulator.cpp
#endif

PYBIND11_MODULE(FC_MODULE_NAME, m) {
  m.doc() = "fastconv CUDA backend launchers (see csrc/cuda/api.h)";

  m.def("conv2d_fwd", [](const py::tuple& shape, int dtype, const PyTensor& x, const PyTensor& w,
                         std::uintptr_t bias, const PyTensor& y, bool relu, std::uintptr_t stream) {
    const ConvShape s = conv_shape(shape);
    const DType dt = as_dtype(dtype);
    const HostTensor4 tx = as_tensor(x, "input", x_size(s)), tw = as_tensor(w, "weight", w_size(s)),
                      ty = as_tensor(y, "output", y_size(s));
    py::gil_scoped_release release;
    fc::conv2d_fwd(s, dt, tx, tw, as_ptr(bias), ty, relu, stream);
  }, py::arg("shape"), py::arg("dtype"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"),
     py::arg("relu"), py::arg("stream"));

  m.def("conv2d_dgrad", [](const py::tuple& shape, int dtype, const PyTensor& dy, const PyTensor& w,
                           std::optional<PyTensor> relu_y, const PyTensor& dx, std::uintptr_t stream) {
    const ConvShape s = conv_shape(shape);
    const DType dt = as_dtype(dtype);
    const HostTensor4 tdy = as_tensor(dy, "grad_output", y_size(s)), tw = as_tensor(w, "weight", w_size(s)),
                      tdx = as_tensor(dx, "grad_input", x_size(s));
    HostTensor4 tr;
    if (relu_y) tr = as_tensor(*relu_y, "relu_output", y_size(s));
    py::gil_scoped_release release;
    fc::conv2d_dgrad(s, dt, tdy, tw, relu_y ? &tr : nullptr, tdx, stream);
  }, py::arg("shape"), py::arg("dtype"), py::arg("grad_output"), py::arg("weight"), py::arg("relu_output"),
     py::arg("grad_input"), py::arg("stream"));

  m.def("conv2d_wgrad_workspace_bytes", [](const py::tuple& shape, int dtype) {
    return fc::conv2d_wgrad_workspace_bytes(conv_shape(shape), as_dtype(dtype));
  }, py::arg("shape"), py::arg("dtype"));

  m.def("conv2d_wgrad", [](const py::tuple& shape, int dtype, const PyTensor& dy, const PyTensor& x,
                           std::optional<PyTensor> relu_y, std::optional<PyTensor> dw, std::uintptr_t db,
                           std::uintptr_t workspace, std::size_t workspace_bytes, std::uintptr_t stream) {
    const ConvShape s = conv_shape(shape);
    const DType dt = as_dtype(dtype);
    const HostTensor4 tdy = as_tensor(dy, "grad_output", y_size(s)), tx = as_tensor(x, "input", x_size(s));
    HostTensor4 tr, tdw;
    if (relu_y) tr = as_tensor(*relu_y, "relu_output", y_size(s));
    if (dw) tdw = as_tensor(*dw, "grad_weight", w_size(s));
    if (workspace_bytes < fc::conv2d_wgrad_workspace_bytes(s, dt)) bad("conv2d_wgrad: workspace too small");
    py::gil_scoped_release release;
    fc::conv2d_wgrad(s, dt, tdy, tx, relu_y ? &tr : nullptr, dw ? &tdw : nullptr, as_ptr(db), as_ptr(workspace),
                     workspace_bytes, stream);
  }, py::arg("shape"), py::arg("dtype"), py::arg("grad_output"), py::arg("input"), py::arg("relu_output"),
     py::arg("grad_weight"), py::arg("grad_bias"), py::arg("workspace"), py::arg("workspace_bytes"),
     py::arg("stream"));

  m.def("max_pool2d_fwd", [](const py::tuple& shape, int dtype, const PyTensor& x, const PyTensor& y,
                             std::optional<PyTensor> indices, std::uintptr_t stream) {
    const PoolShape s = pool_shape(shape);
    const DType dt = as_dtype(dtype);
    const HostTensor4 tx = as_tensor(x, "input", px_size(s)), ty = as_tensor(y, "output", py_size(s));
    HostTensor4 ti;
    if (indices) ti = as_tensor(*indices, "indices", py_size(s));
    py::gil_scoped_release release;
    fc::max_pool2d_fwd(s, dt, tx, ty, indices ? &ti : nullptr, stream);
  }, py::arg("shape"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("indices"), py::arg("stream"));

  m.def("max_pool2d_bwd", [](const py::tuple& shape, int dtype, const PyTensor& dy, const PyTensor& indices,
                             const PyTensor& dx, std::uintptr_t stream) {
    const PoolShape s = pool_shape(shape);
    const DType dt = as_dtype(dtype);
    const HostTensor4 tdy = as_tensor(dy, "grad_output", py_size(s)), ti = as_tensor(indices, "indices", py_size(s)),
                      tdx = as_tensor(dx, "grad_input", px_size(s));
    py::gil_scoped_release release;
    fc::max_pool2d_bwd(s, dt, tdy, ti, tdx, stream);
  }, py::arg("shape"), py::arg("dtype"), py::arg("grad_output"), py::arg("indices"), py::arg("grad_input"),
     py::arg("stream"));

  m.def("avg_pool2d_fwd", [](const py::tuple& shape, int dtype, const PyTensor& x, const PyTensor& y,
                             bool count_include_pad, std::int64_t divisor_override, std::uintptr_t stream) {
    const PoolShape s = pool_shape(shape);
    const DType dt = as_dtype(dtype);
    const HostTensor4 tx = as_tensor(x, "input", px_size(s)), ty = as_tensor(y, "output", py_size(s));
    py::gil_scoped_release release;
    fc::avg_pool2d_fwd(s, dt, tx, ty, count_include_pad, divisor_override, stream);
  }, py::arg("shape"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("count_include_pad"),
     py::arg("divisor_override"), py::arg("stream"));

  m.def("avg_pool2d_bwd", [](const py::tuple& shape, int dtype, const PyTensor& dy, const PyTensor& dx,
                             bool count_include_pad, std::int64_t divisor_override, std::uintptr_t stream) {
    const PoolShape s = pool_shape(shape);
    const DType dt = as_dtype(dtype);
    const HostTensor4 tdy = as_tensor(dy, "grad_output", py_size(s)), tdx = as_tensor(dx, "grad_input", px_size(s));
    py::gil_scoped_release release;
    fc::avg_pool2d_bwd(s, dt, tdy, tdx, count_include_pad, divisor_override, stream);
  }, py::arg("shape"), py::arg("dtype"), py::arg("grad_output"), py::arg("grad_input"), py::arg("count_include_pad"),
     py::arg("divisor_override"), py::arg("stream"));

  // Adaptive pooling: shape as the other pools' (kernel 1, stride 1, padding 0, dilation 1: unused).
  m.def("adaptive_pool2d_fwd", [](const py::tuple& shape, int dtype, const PyTensor& x, const PyTensor& y,
                                  std::optional<PyTensor> indices, std::uintptr_t stream) {
    const PoolShape s = pool_shape(shape);
    const DType dt = as_dtype(dtype);
    const HostTensor4 tx = as_tensor(x, "input", px_size(s)), ty = as_tensor(y, "output", py_size(s));
    HostTensor4 ti;
    if (indices) ti = as_tensor(*indices, "indices", py_size(s));
    py::gil_scoped_release release;
    fc::adaptive_pool2d_fwd(s, dt, tx, ty, indices ? &ti : nullptr, stream);
  }, py::arg("shape"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("indices"), py::arg("stream"));

  m.def("adaptive_pool2d_bwd", [](const py::tuple& shape, int dtype, const PyTensor& dy,
                                  std::optional<PyTensor> indices, const PyTensor& dx, std::uintptr_t stream) {
    const PoolShape s = pool_shape(shape);
    const DType dt = as_dtype(dtype);
    const HostTensor4 tdy = as_tensor(dy, "grad_output", py_size(s)), tdx = as_tensor(dx, "grad_input", px_size(s));
    HostTensor4 ti;
    if (indices) ti = as_tensor(*indices, "indices", py_size(s));
    py::gil_scoped_release release;
    fc::adaptive_pool2d_bwd(s, dt, tdy, indices ? &ti : nullptr, tdx, stream);
  }, py::arg("shape"), py::arg("dtype"), py::arg("grad_output"), py::arg("indices"), py::arg("grad_input"),
     py::arg("stream"));

  py::dict info;
#ifdef FC_SIMT_EMULATOR
  info["build"] = "SIMT emulator (g++)";
  bind_emulator(m);
#else
  info["build"] = "nvcc";
#endif
  info["archs"] = FC_CUDA_ARCHS;
  m.attr("build_info") = info;
}
