#include "dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace fastconv {
namespace cpu {
namespace {

#define FASTCONV_TABLE(ISA)                                                                           \
  KernelTable {                                                                                       \
    #ISA, &ISA::conv2d_fwd, &ISA::conv2d_dgrad, &ISA::conv2d_wgrad, &ISA::conv2d_weight_pack_floats,      \
        &ISA::conv2d_fwd_pack_info, &ISA::conv2d_dgrad_pack_info, &ISA::conv2d_path, &ISA::max_pool2d_fwd, &ISA::max_pool2d_bwd,        \
        &ISA::avg_pool2d_fwd, &ISA::avg_pool2d_bwd, &ISA::adaptive_avg_pool2d_fwd,                         \
        &ISA::adaptive_max_pool2d_fwd, &ISA::adaptive_avg_pool2d_bwd, &ISA::adaptive_pool2d_path,          \
        &ISA::fma_peak, &ISA::stream_fill, &ISA::stream_scale                                              \
  }

const KernelTable kBaseline = FASTCONV_TABLE(baseline);
const KernelTable kAvx2 = FASTCONV_TABLE(avx2);
const KernelTable kAvx512 = FASTCONV_TABLE(avx512);

// Rank of a level, so "supported" is a comparison. The avx512 build also uses AVX-512 BW/VL/DQ
// (Skylake-SP and later); __builtin_cpu_supports also checks that the OS saves the wider state.
int rank_of(const std::string& isa) {
  if (isa == "baseline") return 0;
  if (isa == "avx2") return 1;
  if (isa == "avx512") return 2;
  throw std::invalid_argument("FASTCONV_CPU_ISA / set_cpu_isa: expected 'baseline', 'avx2' or 'avx512', got '" +
                              isa + "'");
}

int detected_rank() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
  return 0;
}

const KernelTable* table_for_rank(int rank) {
  return rank == 2 ? &kAvx512 : rank == 1 ? &kAvx2 : &kBaseline;
}

const KernelTable* initial_table() {
  const char* env = std::getenv("FASTCONV_CPU_ISA");
  if (env != nullptr && *env != '\0') {
    int want = rank_of(env);
    // An unsupported request falls back to the best supported level rather than crashing.
    return table_for_rank(want <= detected_rank() ? want : detected_rank());
  }
  return table_for_rank(detected_rank());
}

std::atomic<const KernelTable*> g_table{nullptr};

const char* const kStreamNames[] = {"auto", "always", "never"};

StreamStores stream_mode_of(const std::string& mode, const char* who) {
  for (int i = 0; i < 3; ++i)
    if (mode == kStreamNames[i]) return static_cast<StreamStores>(i);
  throw std::invalid_argument(std::string(who) + ": expected 'auto', 'always' or 'never', got '" + mode + "'");
}

StreamStores initial_stream_mode() {
  const char* env = std::getenv("FASTCONV_CPU_STREAM_STORES");
  if (env == nullptr || *env == '\0') return StreamStores::kAuto;
  try {
    return stream_mode_of(env, "FASTCONV_CPU_STREAM_STORES");
  } catch (const std::invalid_argument&) {
    return StreamStores::kAuto;  // as FASTCONV_CPU_ISA: a bad environment value falls back, never crashes
  }
}

std::atomic<int> g_stream{-1};  // -1: not read from the environment yet

}  // namespace

StreamStores stream_stores() {
  int m = g_stream.load(std::memory_order_relaxed);
  if (m < 0) {
    m = static_cast<int>(initial_stream_mode());
    g_stream.store(m, std::memory_order_relaxed);
  }
  return static_cast<StreamStores>(m);
}

std::string stream_stores_name() { return kStreamNames[static_cast<int>(stream_stores())]; }

void set_stream_stores(const std::string& mode) {
  g_stream.store(static_cast<int>(stream_mode_of(mode, "set_stream_stores")), std::memory_order_relaxed);
}

std::string detected_isa() { return table_for_rank(detected_rank())->isa; }

const KernelTable& kernels() {
  const KernelTable* t = g_table.load(std::memory_order_acquire);
  if (t == nullptr) {
    t = initial_table();
    g_table.store(t, std::memory_order_release);
  }
  return *t;
}

void set_isa(const std::string& isa) {
  int want = rank_of(isa);
  if (want > detected_rank())
    throw std::invalid_argument("set_cpu_isa: this CPU does not support '" + isa + "' (best: '" +
                                detected_isa() + "')");
  g_table.store(table_for_rank(want), std::memory_order_release);
}

}  // namespace cpu
}  // namespace fastconv
