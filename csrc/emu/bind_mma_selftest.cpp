// fastconv._C_emu.mma_selftest: the PTX-wrapper self-test kernels (csrc/emu/mma_selftest.h) and the
// tensor-core conv launchers (csrc/cuda/conv2d_tc.cu: forward, dgrad, wgrad) on the SIMT emulator, for
// tests/test_emu_mma_wrappers.py and tests/test_emu_mma_conv2d.py. Pointers are host addresses of torch
// CPU tensors; tensors cross as (data_ptr, sizes, strides) like csrc/cuda/bind.cpp's.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <optional>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

#include "../cuda/launch.h"
#include "../cuda/conv2d_tc.h"
#include "mma_selftest.h"

namespace py = pybind11;

namespace {

template <class T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

void check(const char* name) { FC_CHECK_LAUNCH(name); }

using PyTensor = std::tuple<std::uintptr_t, std::array<std::int64_t, 4>, std::array<std::int64_t, 4>>;

fc::HostTensor4 as_tensor(const PyTensor& t) {
  fc::HostTensor4 out;
  out.data = reinterpret_cast<void*>(std::get<0>(t));
  for (int i = 0; i < 4; ++i) {
    out.size[i] = std::get<1>(t)[i];
    out.stride[i] = std::get<2>(t)[i];
  }
  return out;
}

fc::ConvShape conv_shape(const py::tuple& t) {
  if (t.size() != 16) throw std::invalid_argument("conv shape must have 16 fields (N C H W K R S P Q stride pad dilation groups)");
  fc::ConvShape s;
  s.N = t[0].cast<std::int64_t>(); s.C = t[1].cast<std::int64_t>(); s.H = t[2].cast<std::int64_t>();
  s.W = t[3].cast<std::int64_t>(); s.K = t[4].cast<std::int64_t>(); s.R = t[5].cast<std::int64_t>();
  s.S = t[6].cast<std::int64_t>(); s.P = t[7].cast<std::int64_t>(); s.Q = t[8].cast<std::int64_t>();
  s.stride_h = t[9].cast<int>(); s.stride_w = t[10].cast<int>(); s.pad_h = t[11].cast<int>();
  s.pad_w = t[12].cast<int>(); s.dil_h = t[13].cast<int>(); s.dil_w = t[14].cast<int>(); s.groups = t[15].cast<int>();
  return s;
}

fc::DType as_dtype(int code) {
  if (code < fc::kFloat32 || code > fc::kBFloat16) throw std::invalid_argument("bad dtype code " + std::to_string(code));
  return static_cast<fc::DType>(code);
}

template <int X, bool TRANS>
void launch_ldmatrix(std::uintptr_t rows, int nrows, std::uintptr_t row_of_lane, std::uintptr_t out) {
  auto k = fc_mma_selftest::ldmatrix_tile<X, TRANS>;
  FC_LAUNCH(k, dim3(1), dim3(32), 0, nullptr, ptr<const unsigned short>(rows), nrows, ptr<const int>(row_of_lane),
            ptr<unsigned>(out));
  check("ldmatrix_tile");
}

}  // namespace

void bind_mma_selftest(py::module_& m) {
  py::module_ t = m.def_submodule("mma_selftest", "PTX wrapper self-tests and the tensor-core conv launcher");

  t.def("mma", [](int kind, std::uintptr_t A, std::uintptr_t B, std::uintptr_t C, std::uintptr_t D, int warps,
                  int repeat) {
    if (kind < 0 || kind > 2) throw std::invalid_argument("mma kind: 0 tf32, 1 f16, 2 bf16");
    if (warps < 1 || warps > 32) throw std::invalid_argument("warps must be in 1..32");
    auto k = kind == 0 ? fc_mma_selftest::mma_tile<0> : kind == 1 ? fc_mma_selftest::mma_tile<1> : fc_mma_selftest::mma_tile<2>;
    FC_LAUNCH(k, dim3(1), dim3(32 * warps), 0, nullptr, ptr<const float>(A), ptr<const float>(B), ptr<const float>(C),
              ptr<float>(D), repeat);
    check("mma_tile");
  }, py::arg("kind"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("warps") = 1,
     py::arg("repeat") = 1, "D = repeat * A @ B + C through the mma wrapper (one 16x8 tile per warp)");

  t.def("ldmatrix", [](int x, bool trans, std::uintptr_t rows, int nrows, std::uintptr_t row_of_lane, std::uintptr_t out) {
    if (nrows < 1 || nrows > 64) throw std::invalid_argument("nrows must be in 1..64");
    if (x == 1) trans ? launch_ldmatrix<1, true>(rows, nrows, row_of_lane, out) : launch_ldmatrix<1, false>(rows, nrows, row_of_lane, out);
    else if (x == 2) trans ? launch_ldmatrix<2, true>(rows, nrows, row_of_lane, out) : launch_ldmatrix<2, false>(rows, nrows, row_of_lane, out);
    else if (x == 4) trans ? launch_ldmatrix<4, true>(rows, nrows, row_of_lane, out) : launch_ldmatrix<4, false>(rows, nrows, row_of_lane, out);
    else throw std::invalid_argument("ldmatrix x must be 1, 2 or 4");
  }, py::arg("x"), py::arg("trans"), py::arg("rows"), py::arg("nrows"), py::arg("row_of_lane"), py::arg("out"));

  t.def("cp_async_groups", [](std::uintptr_t src, std::uintptr_t out, int threads, int mode) {
    if (threads < 2 || threads > 64 || threads % 2) throw std::invalid_argument("threads must be even, 2..64");
    auto k = fc_mma_selftest::cp_async_groups;
    FC_LAUNCH(k, dim3(1), dim3(threads), 0, nullptr, ptr<const float>(src), ptr<float>(out), mode);
    check("cp_async_groups");
  }, py::arg("src"), py::arg("out"), py::arg("threads"), py::arg("mode"));

  t.def("cp_async_zfill", [](std::uintptr_t src, std::uintptr_t spec, std::uintptr_t out, int threads) {
    if (threads < 1 || threads > 64) throw std::invalid_argument("threads must be in 1..64");
    auto k = fc_mma_selftest::cp_async_zfill;
    FC_LAUNCH(k, dim3(1), dim3(threads), 0, nullptr, ptr<const unsigned char>(src), ptr<const int>(spec),
              ptr<unsigned char>(out));
    check("cp_async_zfill");
  }, py::arg("src"), py::arg("spec"), py::arg("out"), py::arg("threads"));

  t.def("tf32_round", [](std::uintptr_t in, std::uintptr_t out, int n) {
    if (n <= 0) return;
    auto k = fc_mma_selftest::tf32_round;
    FC_LAUNCH(k, dim3((n + 127) / 128), dim3(128), 0, nullptr, ptr<const float>(in), ptr<unsigned>(out), n);
    check("tf32_round");
  }, py::arg("input"), py::arg("output"), py::arg("n"));

  // ---- the tensor-core conv launcher ---------------------------------------------------------------
  t.def("conv2d_fwd_tc", [](const py::tuple& shape, int dtype, const PyTensor& x, const PyTensor& w,
                            std::uintptr_t bias, const PyTensor& y, bool relu, bool allow_tf32, int config) {
    const fc::ConvShape s = conv_shape(shape);
    const fc::DType dt = as_dtype(dtype);
    const fc::HostTensor4 tx = as_tensor(x), tw = as_tensor(w), ty = as_tensor(y);
    py::gil_scoped_release release;
    return fc::conv2d_fwd_tensor_core(s, dt, tx, tw, reinterpret_cast<const void*>(bias), ty, relu, allow_tf32, 0,
                                      config);
  }, py::arg("shape"), py::arg("dtype"), py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"),
     py::arg("relu"), py::arg("allow_tf32"), py::arg("config") = int(fc::kTcAuto),
     "Runs fc::conv2d_fwd_tensor_core; False (nothing launched) when the problem is not eligible.");

  t.def("conv2d_fwd_tc_ineligible", [](const py::tuple& shape, int dtype, const PyTensor& x, const PyTensor& w,
                                       const PyTensor& y, bool allow_tf32) {
    return fc::conv2d_fwd_tc_ineligible(conv_shape(shape), as_dtype(dtype), as_tensor(x), as_tensor(w), as_tensor(y),
                                        allow_tf32);
  }, py::arg("shape"), py::arg("dtype"), py::arg("input"), py::arg("weight"), py::arg("output"), py::arg("allow_tf32"));

  t.def("conv2d_dgrad_tc", [](const py::tuple& shape, int dtype, const PyTensor& dy, const PyTensor& w,
                              std::optional<PyTensor> relu_y, const PyTensor& dx, bool allow_tf32, int config) {
    const fc::ConvShape s = conv_shape(shape);
    const fc::DType dt = as_dtype(dtype);
    const fc::HostTensor4 tdy = as_tensor(dy), tw = as_tensor(w), tdx = as_tensor(dx);
    fc::HostTensor4 tr;
    if (relu_y) tr = as_tensor(*relu_y);
    py::gil_scoped_release release;
    return fc::conv2d_dgrad_tensor_core(s, dt, tdy, tw, relu_y ? &tr : nullptr, tdx, allow_tf32, 0, config);
  }, py::arg("shape"), py::arg("dtype"), py::arg("grad_output"), py::arg("weight"), py::arg("relu_output"),
     py::arg("grad_input"), py::arg("allow_tf32"), py::arg("config") = int(fc::kTcAuto));

  t.def("conv2d_wgrad_tc_workspace_bytes", [](const py::tuple& shape, int dtype, int config, int splits) {
    return fc::conv2d_wgrad_tc_workspace_bytes(conv_shape(shape), as_dtype(dtype), config, splits);
  }, py::arg("shape"), py::arg("dtype"), py::arg("config") = int(fc::kTcAuto), py::arg("splits") = 0);

  t.def("conv2d_wgrad_tc", [](const py::tuple& shape, int dtype, const PyTensor& dy, const PyTensor& x,
                              std::optional<PyTensor> relu_y, const PyTensor& dw, std::uintptr_t workspace,
                              std::size_t workspace_bytes, bool allow_tf32, int config, int splits) {
    const fc::ConvShape s = conv_shape(shape);
    const fc::DType dt = as_dtype(dtype);
    const fc::HostTensor4 tdy = as_tensor(dy), tx = as_tensor(x), tdw = as_tensor(dw);
    fc::HostTensor4 tr;
    if (relu_y) tr = as_tensor(*relu_y);
    py::gil_scoped_release release;
    return fc::conv2d_wgrad_tensor_core(s, dt, tdy, tx, relu_y ? &tr : nullptr, tdw, reinterpret_cast<void*>(workspace),
                                        workspace_bytes, allow_tf32, 0, config, splits);
  }, py::arg("shape"), py::arg("dtype"), py::arg("grad_output"), py::arg("input"), py::arg("relu_output"),
     py::arg("grad_weight"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("allow_tf32"),
     py::arg("config") = int(fc::kTcAuto), py::arg("splits") = 0);

  t.def("conv2d_fwd_tc_choose", [](const py::tuple& shape, int dtype, int sms) {
    return std::string(fc::tc_config_name(fc::conv2d_fwd_tc_choose(conv_shape(shape), as_dtype(dtype), sms)));
  }, py::arg("shape"), py::arg("dtype"), py::arg("sms") = 0);

  py::list names;
  for (int c = 0; c < fc::kTcConfigs; ++c) names.append(fc::tc_config_name(c));
  t.attr("configs") = names;
}
