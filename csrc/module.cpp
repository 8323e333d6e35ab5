// pybind11 module fastconv._C: the CPU backend's boundary.
//
// Tensors arrive as (data_ptr, sizes, strides) tuples and a dtype code; nothing here links libtorch.
// Python (fastconv/backends/cpu.py) has already validated the arguments with torch's rules; this layer
// re-checks only what the kernels rely on for memory safety (shapes agree with the descriptor,
// pointers present), then releases the GIL and runs the kernel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/dispatch.h"
#include "cpu/kernels.h"

namespace py = pybind11;
using namespace fastconv::cpu;

namespace {

using PyTensor = std::tuple<uintptr_t, std::array<int64_t, 4>, std::array<int64_t, 4>>;

Tensor4 as_tensor(const PyTensor& t, const char* name, const std::array<int64_t, 4>& expected) {
  Tensor4 out;
  out.data = reinterpret_cast<void*>(std::get<0>(t));
  out.size = std::get<1>(t);
  out.stride = std::get<2>(t);
  int64_t numel = 1;
  for (int i = 0; i < 4; ++i) {
    if (out.size[i] != expected[i]) {
      std::ostringstream msg;
      msg << "fastconv._C: " << name << " has size (" << out.size[0] << ", " << out.size[1] << ", "
          << out.size[2] << ", " << out.size[3] << "), expected (" << expected[0] << ", "
          << expected[1] << ", " << expected[2] << ", " << expected[3] << ")";
      throw std::invalid_argument(msg.str());
    }
    if (out.stride[i] < 0) throw std::invalid_argument(std::string("fastconv._C: ") + name + " has a negative stride");
    numel *= out.size[i];
  }
  if (numel > 0 && out.data == nullptr)
    throw std::invalid_argument(std::string("fastconv._C: ") + name + " has a null data pointer");
  return out;
}

// A weight pack from Python: (data_ptr of a float32 buffer, its length in floats, ready). The
// kernel trusts a ready pack; an unready one must be large enough for it to fill.
using PyPack = std::tuple<uintptr_t, int64_t, bool>;

WeightPack as_pack(const std::optional<PyPack>& pack, int64_t needed_floats) {
  WeightPack wp;
  if (!pack) return wp;
  wp.data = reinterpret_cast<float*>(std::get<0>(*pack));
  wp.floats = std::get<1>(*pack);
  wp.ready = std::get<2>(*pack);
  if (needed_floats > 0 && (wp.data == nullptr || wp.floats < needed_floats)) {
    std::ostringstream msg;
    msg << "fastconv._C: pack holds " << wp.floats << " floats, the kernel needs " << needed_floats;
    throw std::invalid_argument(msg.str());
  }
  return wp;
}

// The weight sample at the end of every cached pack. Python keeps a pack while the weight's version
// counter and storage are unchanged (fastconv/backends/cpu.py), but writes through `.data` bypass the
// counter: torch.autograd.gradcheck perturbs one element at a time that way, and old-style update
// loops (`p.data -= lr * p.grad`) change every element. So a pack of a weight of numel elements is
// followed by a copy of min(numel, kPackSampleMax) of them (all of a small weight, evenly spaced ones
// of a large one), compared bit for bit before the kernel may trust the pack; on any difference the
// kernel refills it. The check reads at most 4096 elements (a few microseconds; the packs it guards
// cost 0.1-10 ms to rebuild). A weight that is not one dense block (a strided view) cannot be sampled
// this way, and its pack is rebuilt on every call.
constexpr int64_t kPackSampleMax = 4096;

int64_t elem_bytes(DType dt) { return dt == kFloat64 ? 8 : 4; }
int64_t weight_numel(const ConvDesc& d) { return d.K * (d.C / d.groups) * d.R * d.S; }
int64_t sample_count(const ConvDesc& d) { return std::min(weight_numel(d), kPackSampleMax); }
int64_t sample_floats(const ConvDesc& d, DType dt) { return sample_count(d) * elem_bytes(dt) / 4; }
// A pack buffer's floats: the kernel's pack (body) and the sample after it; 0 when there is no pack.
int64_t with_sample(int64_t body, const ConvDesc& d, DType dt) { return body > 0 ? body + sample_floats(d, dt) : 0; }

// True when t's elements fill one dense block starting at t.data (strides a permutation of a
// contiguous layout; size-1 dimensions ignored), so that element i of the block is at offset i.
bool dense_block(const Tensor4& t) {
  std::array<int, 4> order{0, 1, 2, 3};
  std::sort(order.begin(), order.end(), [&](int a, int b) { return t.stride[a] < t.stride[b]; });
  int64_t expect = 1;
  for (int i : order) {
    if (t.size[i] == 1) continue;
    if (t.stride[i] != expect) return false;
    expect *= t.size[i];
  }
  return true;
}

// Runs run() on pack wp (body_floats of kernel pack, then the sample) with the sample check around it:
// a ready pack whose sample differs from the weight is handed over as not ready (the kernel refills it),
// and a pack the kernel filled gets the weight's current sample.
template <typename F>
void with_checked_pack(WeightPack* wp, int64_t body_floats, const ConvDesc& d, DType dt, const Tensor4& w, F&& run) {
  if (wp == nullptr || body_floats == 0) return run();
  const int64_t numel = weight_numel(d), n = sample_count(d), eb = elem_bytes(dt);
  const bool sampled = dense_block(w);
  char* sample = reinterpret_cast<char*>(wp->data + body_floats);
  const char* wb = static_cast<const char*>(w.data);
  const auto element = [&](int64_t i) { return wb + (i * numel / n) * eb; };
  // All of a small weight is one block compare / copy; a spread sample compares element by element
  // with fixed-size loads (a memcmp call per element cost ~10 us for 4096 of them: more than the whole
  // kernel of an SE block's 1x1 conv on a 1x1 map).
  const bool whole = n == numel;
  auto same_element = [&](int64_t i) {
    if (eb == 8) {
      uint64_t a, b;
      std::memcpy(&a, sample + i * 8, 8);
      std::memcpy(&b, element(i), 8);
      return a == b;
    }
    uint32_t a, b;
    std::memcpy(&a, sample + i * 4, 4);
    std::memcpy(&b, element(i), 4);
    return a == b;
  };
  if (wp->ready) {
    bool same = sampled;
    if (same && whole) {
      same = std::memcmp(sample, wb, n * eb) == 0;
    } else {
      for (int64_t i = 0; same && i < n; ++i) same = same_element(i);
    }
    wp->ready = same;
  }
  const bool was_ready = wp->ready;
  run();
  if (!was_ready && wp->ready && sampled) {
    if (whole)
      std::memcpy(sample, wb, n * eb);
    else
      for (int64_t i = 0; i < n; ++i) std::memcpy(sample + i * eb, element(i), eb);
  }
}

DType as_dtype(int code) {
  if (code != kFloat32 && code != kFloat64)
    throw std::invalid_argument("fastconv._C: dtype code must be 0 (float32) or 1 (float64), got " +
                                std::to_string(code));
  return static_cast<DType>(code);
}

void check_conv(const ConvDesc& d) {
  if (d.N < 0 || d.C <= 0 || d.H <= 0 || d.W <= 0 || d.K <= 0 || d.R <= 0 || d.S <= 0 || d.P <= 0 ||
      d.Q <= 0 || d.stride_h <= 0 || d.stride_w <= 0 || d.pad_h < 0 || d.pad_w < 0 || d.dil_h <= 0 ||
      d.dil_w <= 0 || d.groups <= 0 || d.C % d.groups != 0 || d.K % d.groups != 0)
    throw std::invalid_argument("fastconv._C: inconsistent ConvDesc");
  if ((d.P - 1) * d.stride_h + (d.R - 1) * d.dil_h + 1 > d.H + 2 * d.pad_h ||
      (d.Q - 1) * d.stride_w + (d.S - 1) * d.dil_w + 1 > d.W + 2 * d.pad_w)
    throw std::invalid_argument("fastconv._C: ConvDesc output size does not fit the padded input");
}

void check_pool(const PoolDesc& d) {
  if (d.N < 0 || d.C <= 0 || d.H <= 0 || d.W <= 0 || d.P <= 0 || d.Q <= 0 || d.kernel_h <= 0 ||
      d.kernel_w <= 0 || d.stride_h <= 0 || d.stride_w <= 0 || d.pad_h < 0 || d.pad_w < 0 ||
      d.dil_h <= 0 || d.dil_w <= 0)
    throw std::invalid_argument("fastconv._C: inconsistent PoolDesc");
}

int threads(int nthreads) { return nthreads > 0 ? nthreads : 1; }

std::array<int64_t, 4> xshape(const ConvDesc& d) { return {d.N, d.C, d.H, d.W}; }
std::array<int64_t, 4> wshape(const ConvDesc& d) { return {d.K, d.C / d.groups, d.R, d.S}; }
std::array<int64_t, 4> yshape(const ConvDesc& d) { return {d.N, d.K, d.P, d.Q}; }
std::array<int64_t, 4> pool_in(const PoolDesc& d) { return {d.N, d.C, d.H, d.W}; }
std::array<int64_t, 4> pool_out(const PoolDesc& d) { return {d.N, d.C, d.P, d.Q}; }

std::string build_isas() { return "baseline,avx2,avx512"; }

// A forward convolution whose geometry (descriptor, dtype, every tensor's sizes and strides) was
// checked once: a layer called again with tensors of that geometry passes only its data pointers.
// Converting three (pointer, sizes, strides) tuples and the keyword arguments costs a few
// microseconds per call, more once a large kernel has evicted the interpreter's data.
struct ConvFwdCall {
  ConvDesc d;
  DType dt;
  Tensor4 x, w, y;
};

using Dims = std::array<int64_t, 4>;

ConvFwdCall make_fwd_call(const ConvDesc& d, int dtype, const Dims& x_size, const Dims& x_stride, const Dims& w_size,
                          const Dims& w_stride, const Dims& y_size, const Dims& y_stride) {
  check_conv(d);
  ConvFwdCall c{d, as_dtype(dtype), {}, {}, {}};
  // Checked with a non-null placeholder pointer: the pointers are checked per call (at(), below).
  const uintptr_t some = 1;
  c.x = as_tensor(PyTensor{some, x_size, x_stride}, "input", xshape(d));
  c.w = as_tensor(PyTensor{some, w_size, w_stride}, "weight", wshape(d));
  c.y = as_tensor(PyTensor{some, y_size, y_stride}, "output", yshape(d));
  return c;
}

// The epilogue from Python's arguments: activation code act (ConvEpilogue), and a residual tensor that must
// have y's sizes and strides (the kernels read it at each output's own offset), or none.
ConvEpilogue make_epilogue(int act, const std::optional<PyTensor>& residual, bool residual_after, const Tensor4& y) {
  if (act < 0 || act > 7)
    throw std::invalid_argument("fastconv._C: act must be an activation code 0..7, got " + std::to_string(act));
  ConvEpilogue e;
  e.act = act;
  e.residual_after = residual_after;
  if (residual) {
    const Tensor4 r = as_tensor(*residual, "residual", y.size);
    if (r.stride != y.stride) throw std::invalid_argument("fastconv._C: residual must have the output's strides");
    e.residual = r.data;
  }
  return e;
}

void run_conv_fwd(const ConvDesc& d, DType dt, const Tensor4& x, const Tensor4& w, uintptr_t bias, const Tensor4& y,
                  const ConvEpilogue& epilogue, int nthreads, const std::optional<PyPack>& pack) {
  const int64_t body = kernels().conv2d_fwd_pack_info(d, dt, x, y).floats;
  WeightPack wp = as_pack(pack, with_sample(body, d, dt));
  py::gil_scoped_release release;
  with_checked_pack(pack ? &wp : nullptr, body, d, dt, w, [&] {
    kernels().conv2d_fwd(d, dt, x, w, reinterpret_cast<const void*>(bias), y, epilogue, pack ? &wp : nullptr,
                         threads(nthreads));
  });
}

// t with its data pointer set to p; a null pointer is refused unless t has no elements.
Tensor4 at(Tensor4 t, uintptr_t p, const char* name) {
  t.data = reinterpret_cast<void*>(p);
  if (p == 0 && t.size[0] * t.size[1] * t.size[2] * t.size[3] > 0)
    throw std::invalid_argument(std::string("fastconv._C: ") + name + " has a null data pointer");
  return t;
}

// The input and weight gradients with their geometry fixed, as ConvFwdCall for the forward: the backward
// of a layer called again with tensors of that geometry passes only data pointers. The tensors were
// checked against the descriptor when the call was made; an absent ReLU mask or weight gradient is
// has_relu / has_dw false.
struct ConvDgradCall {
  ConvDesc d;
  DType dt;
  Tensor4 dy, w, relu_y, dx;
  bool has_relu;
};

struct ConvWgradCall {
  ConvDesc d;
  DType dt;
  Tensor4 dy, x, relu_y, dw;
  bool has_relu, has_dw;
};

// (sizes, strides) of a tensor whose pointer is given per call.
using Geometry = std::tuple<Dims, Dims>;

// A geometry with a non-null placeholder pointer: the pointers are checked per call (at()).
PyTensor placeholder(const Geometry& g) { return PyTensor{1, std::get<0>(g), std::get<1>(g)}; }

ConvDgradCall make_dgrad_call(const ConvDesc& d, int dtype, const PyTensor& dy, const PyTensor& w,
                              const std::optional<PyTensor>& relu_y, const PyTensor& dx) {
  ConvDgradCall c{d, as_dtype(dtype), as_tensor(dy, "grad_output", yshape(d)), as_tensor(w, "weight", wshape(d)),
                  {}, as_tensor(dx, "grad_input", xshape(d)), relu_y.has_value()};
  if (relu_y) c.relu_y = as_tensor(*relu_y, "output (ReLU mask)", yshape(d));
  return c;
}

ConvWgradCall make_wgrad_call(const ConvDesc& d, int dtype, const PyTensor& dy, const PyTensor& x,
                              const std::optional<PyTensor>& relu_y, const std::optional<PyTensor>& dw) {
  ConvWgradCall c{d, as_dtype(dtype), as_tensor(dy, "grad_output", yshape(d)), as_tensor(x, "input", xshape(d)),
                  {}, {}, relu_y.has_value(), dw.has_value()};
  if (relu_y) c.relu_y = as_tensor(*relu_y, "output (ReLU mask)", yshape(d));
  if (dw) c.dw = as_tensor(*dw, "grad_weight", wshape(d));
  return c;
}

// c's geometry with these tensors (c's own, or the same with the pointers of this call).
void run_conv_dgrad(const ConvDgradCall& c, const Tensor4& dy, const Tensor4& w, const Tensor4& relu_y,
                    const Tensor4& dx, int nthreads, const std::optional<PyPack>& pack) {
  const Tensor4* mask = c.has_relu ? &relu_y : nullptr;
  const int64_t body = kernels().conv2d_dgrad_pack_info(c.d, c.dt, dy, mask, dx).floats;
  WeightPack wp = as_pack(pack, with_sample(body, c.d, c.dt));
  py::gil_scoped_release release;
  with_checked_pack(pack ? &wp : nullptr, body, c.d, c.dt, w, [&] {
    kernels().conv2d_dgrad(c.d, c.dt, dy, w, mask, dx, pack ? &wp : nullptr, threads(nthreads));
  });
}

void run_conv_wgrad(const ConvWgradCall& c, const Tensor4& dy, const Tensor4& x, const Tensor4& relu_y,
                    const Tensor4& dw, uintptr_t dbias, int nthreads) {
  py::gil_scoped_release release;
  kernels().conv2d_wgrad(c.d, c.dt, dy, x, c.has_relu ? &relu_y : nullptr, c.has_dw ? &dw : nullptr,
                         reinterpret_cast<void*>(dbias), threads(nthreads));
}

void bind_descriptors(py::module_& m) {
  py::class_<ConvDesc>(m, "ConvDesc")
      .def(py::init<>())
      .def_readwrite("N", &ConvDesc::N).def_readwrite("C", &ConvDesc::C)
      .def_readwrite("H", &ConvDesc::H).def_readwrite("W", &ConvDesc::W)
      .def_readwrite("K", &ConvDesc::K).def_readwrite("R", &ConvDesc::R)
      .def_readwrite("S", &ConvDesc::S).def_readwrite("P", &ConvDesc::P)
      .def_readwrite("Q", &ConvDesc::Q)
      .def_readwrite("stride_h", &ConvDesc::stride_h).def_readwrite("stride_w", &ConvDesc::stride_w)
      .def_readwrite("pad_h", &ConvDesc::pad_h).def_readwrite("pad_w", &ConvDesc::pad_w)
      .def_readwrite("dil_h", &ConvDesc::dil_h).def_readwrite("dil_w", &ConvDesc::dil_w)
      .def_readwrite("groups", &ConvDesc::groups);

  py::class_<PoolDesc>(m, "PoolDesc")
      .def(py::init<>())
      .def_readwrite("N", &PoolDesc::N).def_readwrite("C", &PoolDesc::C)
      .def_readwrite("H", &PoolDesc::H).def_readwrite("W", &PoolDesc::W)
      .def_readwrite("P", &PoolDesc::P).def_readwrite("Q", &PoolDesc::Q)
      .def_readwrite("kernel_h", &PoolDesc::kernel_h).def_readwrite("kernel_w", &PoolDesc::kernel_w)
      .def_readwrite("stride_h", &PoolDesc::stride_h).def_readwrite("stride_w", &PoolDesc::stride_w)
      .def_readwrite("pad_h", &PoolDesc::pad_h).def_readwrite("pad_w", &PoolDesc::pad_w)
      .def_readwrite("dil_h", &PoolDesc::dil_h).def_readwrite("dil_w", &PoolDesc::dil_w)
      .def_readwrite("count_include_pad", &PoolDesc::count_include_pad)
      .def_readwrite("divisor_override", &PoolDesc::divisor_override);
}

void bind_conv(py::module_& m) {
  m.def(
      "conv2d_fwd",
      [](const ConvDesc& d, int dtype, const PyTensor& x, const PyTensor& w, uintptr_t bias,
         const PyTensor& y, int act, int nthreads, std::optional<PyPack> pack, std::optional<PyTensor> residual,
         bool residual_after) {
        check_conv(d);
        DType dt = as_dtype(dtype);
        const Tensor4 ty = as_tensor(y, "output", yshape(d));
        run_conv_fwd(d, dt, as_tensor(x, "input", xshape(d)), as_tensor(w, "weight", wshape(d)), bias, ty,
                     make_epilogue(act, residual, residual_after, ty), nthreads, pack);
      },
      py::arg("desc"), py::arg("dtype"), py::arg("input"), py::arg("weight"), py::arg("bias"),
      py::arg("output"), py::arg("act"), py::arg("nthreads"), py::arg("pack") = py::none(),
      py::arg("residual") = py::none(), py::arg("residual_after") = false,
      "y = act(conv(x, w) + bias [+ residual]) [+ residual]: act 0 none, 1 relu, 2 relu6, 3 silu, 4 hardswish, "
      "5 hardsigmoid, 6 gelu, 7 sigmoid; the residual has the output's sizes and strides.");

  py::class_<ConvFwdCall>(m, "ConvFwdCall",
                          "conv2d_fwd with its geometry fixed: ConvFwdCall(desc, dtype, input sizes, input "
                          "strides, weight sizes, weight strides, output sizes, output strides), then "
                          "call(input_ptr, weight_ptr, bias_ptr, output_ptr, act, nthreads, pack=None, "
                          "residual=None, residual_after=False).")
      .def(py::init(&make_fwd_call), py::arg("desc"), py::arg("dtype"), py::arg("input_size"),
           py::arg("input_stride"), py::arg("weight_size"), py::arg("weight_stride"), py::arg("output_size"),
           py::arg("output_stride"))
      .def("__call__", [](const ConvFwdCall& c, uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t y, int act,
                          int nthreads, std::optional<PyPack> pack, std::optional<PyTensor> residual,
                          bool residual_after) {
        const Tensor4 ty = at(c.y, y, "output");
        run_conv_fwd(c.d, c.dt, at(c.x, x, "input"), at(c.w, w, "weight"), bias, ty,
                     make_epilogue(act, residual, residual_after, ty), nthreads, pack);
      }, py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"), py::arg("act"),
         py::arg("nthreads"), py::arg("pack") = py::none(), py::arg("residual") = py::none(),
         py::arg("residual_after") = false)
      .def("pack_info", [](const ConvFwdCall& c) {
        const PackInfo p = kernels().conv2d_fwd_pack_info(c.d, c.dt, c.x, c.y);
        return std::make_tuple(with_sample(p.floats, c.d, c.dt), p.kind);
      }, "(floats, kind) of the pack buffer the forward kernel uses at the current ISA level (its packed "
         "weight, then a sample of the weight it checks on each use; 0, 0 when it uses none); packs of "
         "different kinds are different formats and must never be exchanged.");

  m.def(
      "conv2d_weight_pack_floats",
      [](const ConvDesc& d, int dtype, int pass) {
        check_conv(d);
        if (pass != 0 && pass != 1)
          throw std::invalid_argument("fastconv._C: pass must be 0 (forward) or 1 (input gradient)");
        return kernels().conv2d_weight_pack_floats(d, as_dtype(dtype), pass);
      },
      py::arg("desc"), py::arg("dtype"), py::arg("pass_"),
      "Floats of the Winograd weight transform the forward (pass 0) or input-gradient (pass 1) kernel uses; "
      "0 = that pass does not run Winograd.");

  m.def(
      "conv2d_dgrad_pack_info",
      [](const ConvDesc& d, int dtype, const PyTensor& dy, std::optional<PyTensor> relu_y, const PyTensor& dx) {
        check_conv(d);
        const DType dt = as_dtype(dtype);
        Tensor4 tdy = as_tensor(dy, "grad_output", yshape(d)), tdx = as_tensor(dx, "grad_input", xshape(d)), ty;
        if (relu_y) ty = as_tensor(*relu_y, "output (ReLU mask)", yshape(d));
        const PackInfo p = kernels().conv2d_dgrad_pack_info(d, dt, tdy, relu_y ? &ty : nullptr, tdx);
        return std::make_tuple(with_sample(p.floats, d, dt), p.kind, p.taps);
      },
      py::arg("desc"), py::arg("dtype"), py::arg("grad_output"), py::arg("relu_output"), py::arg("grad_input"),
      "(floats, kind, taps) of the pack buffer conv2d_dgrad uses for these tensors (its packed weight, then "
      "a sample of the weight it checks on each use; 0, 0, 0 when it uses none); kind names the format and "
      "taps which of the weight's taps it holds (0: all): packs that differ in either must never be "
      "exchanged.");

  m.def(
      "conv2d_dgrad",
      [](const ConvDesc& d, int dtype, const PyTensor& dy, const PyTensor& w,
         std::optional<PyTensor> relu_y, const PyTensor& dx, int nthreads, std::optional<PyPack> pack) {
        check_conv(d);
        const ConvDgradCall c = make_dgrad_call(d, dtype, dy, w, relu_y, dx);
        run_conv_dgrad(c, c.dy, c.w, c.relu_y, c.dx, nthreads, pack);
      },
      py::arg("desc"), py::arg("dtype"), py::arg("grad_output"), py::arg("weight"), py::arg("relu_output"),
      py::arg("grad_input"), py::arg("nthreads"), py::arg("pack") = py::none());

  py::class_<ConvDgradCall>(m, "ConvDgradCall",
                            "conv2d_dgrad with its geometry fixed: ConvDgradCall(desc, dtype, (grad_output sizes, "
                            "strides), (weight sizes, strides), (relu_output sizes, strides) or None, (grad_input "
                            "sizes, strides)), then call(grad_output_ptr, weight_ptr, relu_output_ptr, "
                            "grad_input_ptr, nthreads, pack=None).")
      .def(py::init([](const ConvDesc& d, int dtype, const Geometry& dy, const Geometry& w,
                       const std::optional<Geometry>& relu_y, const Geometry& dx) {
             check_conv(d);
             return make_dgrad_call(d, dtype, placeholder(dy), placeholder(w),
                                    relu_y ? std::optional<PyTensor>(placeholder(*relu_y)) : std::nullopt,
                                    placeholder(dx));
           }),
           py::arg("desc"), py::arg("dtype"), py::arg("grad_output"), py::arg("weight"), py::arg("relu_output"),
           py::arg("grad_input"))
      .def("__call__", [](const ConvDgradCall& c, uintptr_t dy, uintptr_t w, uintptr_t relu_y, uintptr_t dx,
                          int nthreads, std::optional<PyPack> pack) {
        if (c.has_relu != (relu_y != 0))
          throw std::invalid_argument(c.has_relu ? "fastconv._C: this call needs the relu_output pointer"
                                                 : "fastconv._C: this call takes no relu_output (pass 0)");
        run_conv_dgrad(c, at(c.dy, dy, "grad_output"), at(c.w, w, "weight"),
                       c.has_relu ? at(c.relu_y, relu_y, "relu_output") : Tensor4{}, at(c.dx, dx, "grad_input"),
                       nthreads, pack);
      }, py::arg("grad_output"), py::arg("weight"), py::arg("relu_output"), py::arg("grad_input"),
         py::arg("nthreads"), py::arg("pack") = py::none())
      .def("pack_info", [](const ConvDgradCall& c) {
        const PackInfo p = kernels().conv2d_dgrad_pack_info(c.d, c.dt, c.dy, c.has_relu ? &c.relu_y : nullptr, c.dx);
        return std::make_tuple(with_sample(p.floats, c.d, c.dt), p.kind, p.taps);
      }, "(floats, kind, taps) as conv2d_dgrad_pack_info gives them for this geometry.");

  m.def(
      "conv2d_wgrad",
      [](const ConvDesc& d, int dtype, const PyTensor& dy, const PyTensor& x,
         std::optional<PyTensor> relu_y, std::optional<PyTensor> dw, uintptr_t dbias, int nthreads) {
        check_conv(d);
        const ConvWgradCall c = make_wgrad_call(d, dtype, dy, x, relu_y, dw);
        run_conv_wgrad(c, c.dy, c.x, c.relu_y, c.dw, dbias, nthreads);
      },
      py::arg("desc"), py::arg("dtype"), py::arg("grad_output"), py::arg("input"), py::arg("relu_output"),
      py::arg("grad_weight"), py::arg("grad_bias"), py::arg("nthreads"));

  py::class_<ConvWgradCall>(m, "ConvWgradCall",
                            "conv2d_wgrad with its geometry fixed: ConvWgradCall(desc, dtype, (grad_output sizes, "
                            "strides), (input sizes, strides), (relu_output sizes, strides) or None, (grad_weight "
                            "sizes, strides) or None), then call(grad_output_ptr, input_ptr, relu_output_ptr, "
                            "grad_weight_ptr, grad_bias_ptr, nthreads); a pointer the geometry has no tensor for "
                            "is 0, grad_bias_ptr 0 when no bias gradient is wanted.")
      .def(py::init([](const ConvDesc& d, int dtype, const Geometry& dy, const Geometry& x,
                       const std::optional<Geometry>& relu_y, const std::optional<Geometry>& dw) {
             check_conv(d);
             return make_wgrad_call(d, dtype, placeholder(dy), placeholder(x),
                                    relu_y ? std::optional<PyTensor>(placeholder(*relu_y)) : std::nullopt,
                                    dw ? std::optional<PyTensor>(placeholder(*dw)) : std::nullopt);
           }),
           py::arg("desc"), py::arg("dtype"), py::arg("grad_output"), py::arg("input"), py::arg("relu_output"),
           py::arg("grad_weight"))
      .def("__call__", [](const ConvWgradCall& c, uintptr_t dy, uintptr_t x, uintptr_t relu_y, uintptr_t dw,
                          uintptr_t dbias, int nthreads) {
        if (c.has_relu != (relu_y != 0) || c.has_dw != (dw != 0))
          throw std::invalid_argument("fastconv._C: ConvWgradCall: relu_output and grad_weight pointers must be "
                                      "given exactly for the tensors the call was made with (0 otherwise)");
        run_conv_wgrad(c, at(c.dy, dy, "grad_output"), at(c.x, x, "input"),
                       c.has_relu ? at(c.relu_y, relu_y, "relu_output") : Tensor4{},
                       c.has_dw ? at(c.dw, dw, "grad_weight") : Tensor4{}, dbias, nthreads);
      }, py::arg("grad_output"), py::arg("input"), py::arg("relu_output"), py::arg("grad_weight"),
         py::arg("grad_bias"), py::arg("nthreads"));

  m.def(
      "conv2d_path",
      [](const ConvDesc& d, int dtype, const std::string& pass, const Dims& x_stride, const Dims& y_stride, bool relu) {
        check_conv(d);
        const int p = pass == "fwd" ? kConvFwd : pass == "dgrad" ? kConvDgrad : pass == "wgrad" ? kConvWgrad : -1;
        if (p < 0)
          throw std::invalid_argument("fastconv._C.conv2d_path: pass_ must be 'fwd', 'dgrad' or 'wgrad', got '" +
                                      pass + "'");
        const uintptr_t some = 1;  // only sizes and strides decide the path
        const Tensor4 x = as_tensor(PyTensor{some, xshape(d), x_stride}, "input", xshape(d));
        const Tensor4 y = as_tensor(PyTensor{some, yshape(d), y_stride}, "output", yshape(d));
        return kernels().conv2d_path(p, d, as_dtype(dtype), x, y, relu);
      },
      py::arg("desc"), py::arg("dtype"), py::arg("pass_"), py::arg("input_stride"), py::arg("output_stride"),
      py::arg("relu") = false,
      "The algorithm the CPU kernels run for this convolution pass ('fwd', 'dgrad', 'wgrad') at the current ISA "
      "level, as the path chooser decides it: input_stride is the strides of the input (of dx for 'dgrad'), "
      "output_stride those of the output (of dy for 'dgrad' and 'wgrad'); relu: the fused op's backward.");
}

void bind_pool(py::module_& m) {
  m.def(
      "max_pool2d_fwd",
      [](const PoolDesc& d, int dtype, const PyTensor& x, const PyTensor& y,
         std::optional<PyTensor> indices, int nthreads) {
        check_pool(d);
        DType dt = as_dtype(dtype);
        Tensor4 tx = as_tensor(x, "input", pool_in(d)), ty = as_tensor(y, "output", pool_out(d));
        Tensor4 ti;
        if (indices) ti = as_tensor(*indices, "indices", pool_out(d));
        py::gil_scoped_release release;
        kernels().max_pool2d_fwd(d, dt, tx, ty, indices ? &ti : nullptr, threads(nthreads));
      },
      py::arg("desc"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("indices"),
      py::arg("nthreads"));

  m.def(
      "max_pool2d_bwd",
      [](const PoolDesc& d, int dtype, const PyTensor& dy, const PyTensor& indices, const PyTensor& dx,
         int nthreads) {
        check_pool(d);
        DType dt = as_dtype(dtype);
        Tensor4 tdy = as_tensor(dy, "grad_output", pool_out(d)), ti = as_tensor(indices, "indices", pool_out(d)),
                tdx = as_tensor(dx, "grad_input", pool_in(d));
        py::gil_scoped_release release;
        kernels().max_pool2d_bwd(d, dt, tdy, ti, tdx, threads(nthreads));
      },
      py::arg("desc"), py::arg("dtype"), py::arg("grad_output"), py::arg("indices"), py::arg("grad_input"),
      py::arg("nthreads"));

  m.def(
      "avg_pool2d_fwd",
      [](const PoolDesc& d, int dtype, const PyTensor& x, const PyTensor& y, int nthreads) {
        check_pool(d);
        DType dt = as_dtype(dtype);
        Tensor4 tx = as_tensor(x, "input", pool_in(d)), ty = as_tensor(y, "output", pool_out(d));
        py::gil_scoped_release release;
        kernels().avg_pool2d_fwd(d, dt, tx, ty, threads(nthreads));
      },
      py::arg("desc"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("nthreads"));

  m.def(
      "avg_pool2d_bwd",
      [](const PoolDesc& d, int dtype, const PyTensor& dy, const PyTensor& dx, int nthreads) {
        check_pool(d);
        DType dt = as_dtype(dtype);
        Tensor4 tdy = as_tensor(dy, "grad_output", pool_out(d)), tdx = as_tensor(dx, "grad_input", pool_in(d));
        py::gil_scoped_release release;
        kernels().avg_pool2d_bwd(d, dt, tdy, tdx, threads(nthreads));
      },
      py::arg("desc"), py::arg("dtype"), py::arg("grad_output"), py::arg("grad_input"), py::arg("nthreads"));
}

// adaptive_avg_pool2d / adaptive_max_pool2d (pool2d_adaptive_isa.cpp): d.P x d.Q is the output size,
// the window fields are unused. adaptive max's backward is max_pool2d_bwd.
void bind_adaptive_pool(py::module_& m) {
  m.def(
      "adaptive_avg_pool2d_fwd",
      [](const PoolDesc& d, int dtype, const PyTensor& x, const PyTensor& y, int nthreads) {
        check_pool(d);
        DType dt = as_dtype(dtype);
        Tensor4 tx = as_tensor(x, "input", pool_in(d)), ty = as_tensor(y, "output", pool_out(d));
        py::gil_scoped_release release;
        kernels().adaptive_avg_pool2d_fwd(d, dt, tx, ty, threads(nthreads));
      },
      py::arg("desc"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("nthreads"));
  m.def(
      "adaptive_max_pool2d_fwd",
      [](const PoolDesc& d, int dtype, const PyTensor& x, const PyTensor& y, const PyTensor& indices,
         int nthreads) {
        check_pool(d);
        DType dt = as_dtype(dtype);
        Tensor4 tx = as_tensor(x, "input", pool_in(d)), ty = as_tensor(y, "output", pool_out(d)),
                ti = as_tensor(indices, "indices", pool_out(d));
        py::gil_scoped_release release;
        kernels().adaptive_max_pool2d_fwd(d, dt, tx, ty, ti, threads(nthreads));
      },
      py::arg("desc"), py::arg("dtype"), py::arg("input"), py::arg("output"), py::arg("indices"),
      py::arg("nthreads"));
  m.def(
      "adaptive_avg_pool2d_bwd",
      [](const PoolDesc& d, int dtype, const PyTensor& dy, const PyTensor& dx, int nthreads) {
        check_pool(d);
        DType dt = as_dtype(dtype);
        Tensor4 tdy = as_tensor(dy, "grad_output", pool_out(d)), tdx = as_tensor(dx, "grad_input", pool_in(d));
        py::gil_scoped_release release;
        kernels().adaptive_avg_pool2d_bwd(d, dt, tdy, tdx, threads(nthreads));
      },
      py::arg("desc"), py::arg("dtype"), py::arg("grad_output"), py::arg("grad_input"), py::arg("nthreads"));
  m.def(
      "adaptive_pool2d_path",
      [](const PoolDesc& d, const std::string& pass, const Dims& stride) {
        check_pool(d);
        const int p = pass == "avg_fwd" ? 0 : pass == "max_fwd" ? 1 : pass == "avg_bwd" ? 2 : -1;
        if (p < 0)
          throw std::invalid_argument("adaptive_pool2d_path: pass must be 'avg_fwd', 'max_fwd' or 'avg_bwd', got '" +
                                      pass + "'");
        const uintptr_t some = 1;
        const Tensor4 x = as_tensor(PyTensor{some, pool_in(d), stride}, "input", pool_in(d));
        return kernels().adaptive_pool2d_path(p, d, x);
      },
      py::arg("desc"), py::arg("pass_"), py::arg("input_stride"),
      "The path of the adaptive pooling kernels at the current ISA level: pass_ 'avg_fwd' / 'max_fwd' (input_stride: "
      "the input's strides) or 'avg_bwd' (input_stride: dx's strides).");
}

void bind_runtime(py::module_& m) {
  m.def("cpu_isa", []() { return std::string(kernels().isa); }, "ISA level of the kernels in use");
  m.def("detected_cpu_isa", &detected_isa, "best ISA level this CPU supports");
  m.def("set_cpu_isa", &set_isa, py::arg("isa"),
        "use the kernels of another ISA level ('baseline', 'avx2', 'avx512'); for tests and benchmarks");
  m.def("stream_stores", &stream_stores_name,
        "non-temporal output stores of the convolution kernels (forward, input gradient): 'auto', 'always' or 'never'");
  m.def("set_stream_stores", &set_stream_stores, py::arg("mode"),
        "force the convolution kernels' non-temporal output stores on ('always') or off ('never'), "
        "or let each layer decide ('auto'); for tests and benchmarks");
  m.def("build_info", []() {
    py::dict info;
    info["isa_variants"] = build_isas();
#ifdef _OPENMP
    info["openmp"] = true;
    info["openmp_max_threads"] = omp_get_max_threads();
#else
    info["openmp"] = false;
#endif
    info["compiler"] = std::string(__VERSION__);
    info["cplusplus"] = static_cast<long>(__cplusplus);
    return info;
  });
}

// Machine-peak probes (csrc/cpu/peak_isa.cpp) for the benchmark report's roofs; they run at the ISA
// level in use (cpu_isa()), with the GIL released.
void bind_peak_probes(py::module_& m) {
  m.def(
      "fma_peak",
      [](int64_t iterations, int repeats, int nthreads) {
        if (iterations <= 0) throw std::invalid_argument("fastconv._C.fma_peak: iterations must be > 0");
        if (repeats <= 0) throw std::invalid_argument("fastconv._C.fma_peak: repeats must be > 0");
        ProbeResult r;
        {
          py::gil_scoped_release release;
          r = kernels().fma_peak(iterations, repeats, threads(nthreads));
        }
        py::dict out;
        out["flops"] = r.work;
        out["seconds"] = r.seconds;
        out["gflops"] = r.work / r.seconds / 1e9;
        out["threads"] = r.threads;
        out["accumulators"] = r.accumulators;
        out["vector_floats"] = r.vector_floats;
        out["iterations"] = iterations;
        out["repeats"] = repeats;
        out["isa"] = std::string(kernels().isa);
        out["checksum"] = r.checksum;
        return out;
      },
      py::arg("iterations"), py::arg("repeats"), py::arg("nthreads"),
      "vector FMA throughput: best of `repeats`, each thread running `iterations` x accumulators "
      "independent FMAs; flops = 2 * vector_floats * accumulators * iterations * threads");

  // STREAM scale on arrays the probe allocates (2 MiB aligned) and first-touches in parallel, or on
  // caller buffers (stream_scale_buffers: tests compare b with s * a).
  auto stream_result = [](const ProbeResult& r, int64_t n, int repeats) {
    py::dict out;
    out["bytes"] = r.work;
    out["seconds"] = r.seconds;
    out["gbps"] = r.work / r.seconds / 1e9;
    out["threads"] = r.threads;
    out["n"] = n;
    out["array_bytes"] = n * static_cast<int64_t>(sizeof(float));
    out["repeats"] = repeats;
    out["isa"] = std::string(kernels().isa);
    out["mismatches"] = r.mismatches;
    return out;
  };
  m.def(
      "stream_scale",
      [stream_result](int64_t n, float scalar, int repeats, int nthreads) {
        if (n <= 0) throw std::invalid_argument("fastconv._C.stream_scale: n must be > 0");
        if (repeats <= 0) throw std::invalid_argument("fastconv._C.stream_scale: repeats must be > 0");
        constexpr size_t kAlign = size_t(2) << 20;  // huge-page aligned: fewer TLB misses when THP is on
        const size_t bytes = (static_cast<size_t>(n) * sizeof(float) + kAlign - 1) / kAlign * kAlign;
        std::unique_ptr<float, decltype(&std::free)> a(static_cast<float*>(std::aligned_alloc(kAlign, bytes)),
                                                       &std::free);
        std::unique_ptr<float, decltype(&std::free)> b(static_cast<float*>(std::aligned_alloc(kAlign, bytes)),
                                                       &std::free);
        if (!a || !b) throw std::bad_alloc();
        ProbeResult r;
        {
          py::gil_scoped_release release;
          kernels().stream_fill(a.get(), b.get(), n, threads(nthreads));
          r = kernels().stream_scale(a.get(), b.get(), n, scalar, repeats, threads(nthreads));
        }
        return stream_result(r, n, repeats);
      },
      py::arg("n"), py::arg("scalar"), py::arg("repeats"), py::arg("nthreads"),
      "STREAM scale b = scalar * a over two arrays of n floats: best of `repeats`, bytes = 2 * 4 * n per "
      "pass; mismatches = elements of b that differ from scalar * a afterwards");
  m.def(
      "stream_scale_buffers",
      [stream_result](uintptr_t a, uintptr_t b, int64_t n, float scalar, int repeats, int nthreads) {
        if (n <= 0) throw std::invalid_argument("fastconv._C.stream_scale_buffers: n must be > 0");
        if (repeats <= 0) throw std::invalid_argument("fastconv._C.stream_scale_buffers: repeats must be > 0");
        if (a == 0 || b == 0) throw std::invalid_argument("fastconv._C.stream_scale_buffers: null data pointer");
        const uintptr_t nbytes = static_cast<uintptr_t>(n) * sizeof(float);
        if (a < b + nbytes && b < a + nbytes)
          throw std::invalid_argument("fastconv._C.stream_scale_buffers: a and b overlap");
        ProbeResult r;
        {
          py::gil_scoped_release release;
          r = kernels().stream_scale(reinterpret_cast<const float*>(a), reinterpret_cast<float*>(b), n, scalar,
                                     repeats, threads(nthreads));
        }
        return stream_result(r, n, repeats);
      },
      py::arg("a"), py::arg("b"), py::arg("n"), py::arg("scalar"), py::arg("repeats"), py::arg("nthreads"),
      "stream_scale on caller buffers of n contiguous floats (data pointers): b = scalar * a");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastconv CPU kernels (C++17, OpenMP, runtime ISA dispatch); no libtorch dependency";
  bind_descriptors(m);
  bind_conv(m);
  bind_pool(m);
  bind_adaptive_pool(m);
  bind_runtime(m);
  bind_peak_probes(m);
}
