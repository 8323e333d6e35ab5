// fastconv._C_emu's extra bindings: the emulator's controls (thread order, host threads, launch
// statistics) and its self-test kernels (csrc/emu/selftest_kernels.h), for tests/test_emu_runtime.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cxxabi.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "../cuda/launch.h"
#include "selftest_kernels.h"

namespace py = pybind11;

namespace {

template <class T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

void check(const char* name) { FC_CHECK_LAUNCH(name); }

}  // namespace

void bind_mma_selftest(py::module_& m);   // csrc/emu/bind_mma_selftest.cpp

void bind_emulator(py::module_& m) {
  m.def("set_thread_order", [](const std::string& order, std::uint64_t seed) {
    if (order == "forward") fc_emu::set_thread_order(fc_emu::Order::forward, seed);
    else if (order == "reversed") fc_emu::set_thread_order(fc_emu::Order::reversed, seed);
    else if (order == "shuffled") fc_emu::set_thread_order(fc_emu::Order::shuffled, seed);
    else throw std::invalid_argument("set_thread_order: order must be 'forward', 'reversed' or 'shuffled', got '" + order + "'");
  }, py::arg("order"), py::arg("seed") = 0,
     "Order in which the threads of a block are first scheduled (and rescheduled after each barrier).");
  m.def("thread_order", []() {
    switch (fc_emu::thread_order()) {
      case fc_emu::Order::reversed: return std::string("reversed");
      case fc_emu::Order::shuffled: return std::string("shuffled");
      default: return std::string("forward");
    }
  });
  m.def("set_host_threads", &fc_emu::set_host_threads, py::arg("n"),
        "Host threads that run the blocks of one launch (default 1).");
  m.def("host_threads", &fc_emu::host_threads);
  m.def("launch_stats", []() {
    const fc_emu::LaunchStats s = fc_emu::launch_stats();
    py::dict d;
    d["launches"] = s.launches; d["blocks"] = s.blocks; d["threads"] = s.threads;
    d["barriers"] = s.barriers; d["switches"] = s.switches;
    return d;
  });
  m.def("reset_launch_stats", &fc_emu::reset_launch_stats);
  m.def("start_recording", &fc_emu::start_recording,
        "From now on this thread's launches are recorded, not run (see stop_recording).");
  m.def("stop_recording", []() {
    py::list out;
    for (const fc_emu::RecordedLaunch& r : fc_emu::stop_recording()) {
      py::dict d;
      d["symbol"] = r.symbol;
      int status = 0;
      char* demangled = abi::__cxa_demangle(r.symbol.c_str(), nullptr, nullptr, &status);
      d["signature"] = status == 0 && demangled ? std::string(demangled) : r.symbol;
      std::free(demangled);
      d["grid"] = py::make_tuple(r.grid.x, r.grid.y, r.grid.z);
      d["block"] = py::make_tuple(r.block.x, r.block.y, r.block.z);
      d["dynamic_smem"] = r.dynamic_smem;
      py::list params;
      for (const std::string& p : r.params) params.append(py::bytes(p));
      d["params"] = params;
      out.append(d);
    }
    return out;
  }, "The launches recorded since start_recording: kernel symbol and signature, grid, block, dynamic "
     "shared memory and the bytes of each argument.");

  bind_mma_selftest(m);
  // Self-test kernels: pointers are host addresses of torch CPU tensors.
  py::module_ t = m.def_submodule("selftest", "kernels that test the emulator itself");
  t.def("block_sum", [](std::uintptr_t x, std::uintptr_t out, int n, int threads, bool skip_barrier) {
    const int blocks = (n + threads - 1) / threads;
    auto k = fc_emu_selftest::block_sum;
    FC_LAUNCH(k, dim3(blocks), dim3(threads), 0, nullptr, ptr<const float>(x), ptr<float>(out), n, skip_barrier);
    check("block_sum");
  });
  t.def("warp_sum", [](std::uintptr_t x, std::uintptr_t out, int blocks, int threads, int mode) {
    auto k = fc_emu_selftest::warp_sum;
    FC_LAUNCH(k, dim3(blocks), dim3(threads), 0, nullptr, ptr<const float>(x), ptr<float>(out), mode);
    check("warp_sum");
  });
  t.def("warp_ballot", [](std::uintptr_t x, std::uintptr_t out, int blocks, int threads) {
    auto k = fc_emu_selftest::warp_ballot;
    FC_LAUNCH(k, dim3(blocks), dim3(threads), 0, nullptr, ptr<const float>(x), ptr<unsigned>(out));
    check("warp_ballot");
  });
  t.def("divergent_barrier", [](std::uintptr_t out, int threads) {
    auto k = fc_emu_selftest::divergent_barrier;
    FC_LAUNCH(k, dim3(1), dim3(threads), 0, nullptr, ptr<float>(out));
    check("divergent_barrier");
  });
  t.def("atomic_histogram", [](std::uintptr_t bins, int n, std::uintptr_t counts, std::uintptr_t weights, int threads) {
    auto k = fc_emu_selftest::atomic_histogram;
    FC_LAUNCH(k, dim3((n + threads - 1) / threads), dim3(threads), 0, nullptr, ptr<const int>(bins), n,
              ptr<int>(counts), ptr<float>(weights));
    check("atomic_histogram");
  });
  t.def("dynamic_smem_roundtrip", [](std::uintptr_t before, std::uintptr_t after, int threads, std::size_t smem) {
    auto k = fc_emu_selftest::dynamic_smem_roundtrip;
    FC_LAUNCH(k, dim3(1), dim3(threads), smem, nullptr, ptr<float>(before), ptr<float>(after));
    check("dynamic_smem_roundtrip");
  });
  t.def("coordinates", [](std::uintptr_t out, std::array<unsigned, 3> grid, std::array<unsigned, 3> block) {
    auto k = fc_emu_selftest::coordinates;
    FC_LAUNCH(k, dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), 0, nullptr, ptr<int>(out));
    check("coordinates");
  });
}
