// Runtime choice of the instruction-set level for the CPU kernels (see kernels.h) and the machine-peak
// probes (see peak.h).
#pragma once

#include <string>

#include "kernels.h"
#include "peak.h"

namespace fastconv {
namespace cpu {

struct KernelTable {
  const char* isa;
  decltype(&baseline::conv2d_fwd) conv2d_fwd;
  decltype(&baseline::conv2d_dgrad) conv2d_dgrad;
  decltype(&baseline::conv2d_wgrad) conv2d_wgrad;
  decltype(&baseline::conv2d_weight_pack_floats) conv2d_weight_pack_floats;
  decltype(&baseline::conv2d_fwd_pack_info) conv2d_fwd_pack_info;
  decltype(&baseline::conv2d_dgrad_pack_info) conv2d_dgrad_pack_info;
  decltype(&baseline::conv2d_path) conv2d_path;
  decltype(&baseline::max_pool2d_fwd) max_pool2d_fwd;
  decltype(&baseline::max_pool2d_bwd) max_pool2d_bwd;
  decltype(&baseline::avg_pool2d_fwd) avg_pool2d_fwd;
  decltype(&baseline::avg_pool2d_bwd) avg_pool2d_bwd;
  decltype(&baseline::adaptive_avg_pool2d_fwd) adaptive_avg_pool2d_fwd;
  decltype(&baseline::adaptive_max_pool2d_fwd) adaptive_max_pool2d_fwd;
  decltype(&baseline::adaptive_avg_pool2d_bwd) adaptive_avg_pool2d_bwd;
  decltype(&baseline::adaptive_pool2d_path) adaptive_pool2d_path;
  // Machine-peak probes (peak.h): the roofs of the benchmark report, at the kernels' ISA level.
  decltype(&baseline::fma_peak) fma_peak;
  decltype(&baseline::stream_fill) stream_fill;
  decltype(&baseline::stream_scale) stream_scale;
};

// The best level this CPU and OS support: "avx512", "avx2" or "baseline".
std::string detected_isa();
// The table in use (initially the detected level, or FASTCONV_CPU_ISA if set and supported).
const KernelTable& kernels();
// Select a level by name; throws std::invalid_argument for an unknown level or one the CPU lacks.
void set_isa(const std::string& isa);
// The streaming-store mode (kernels.h: StreamStores) by name: "auto", "always" or "never"; set_ throws
// std::invalid_argument for another name.
std::string stream_stores_name();
void set_stream_stores(const std::string& mode);

}  // namespace cpu
}  // namespace fastconv
