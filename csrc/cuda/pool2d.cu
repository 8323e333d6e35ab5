// Launchers of the pooling kernels (kernels/pool2d_max.cuh, pool2d_avg.cuh, pool2d_adaptive.cuh): checks of what the
// kernels rely on, then one dispatch over (dtype, thread mapping[, indices]) and one launch of one
// elementwise kernel on the caller's stream.
//
// Choices made here:
//  - thread mapping: channels-fastest (NHWC) when the tensor that sets the access pattern has a smaller
//    stride along C than along W, else w-fastest (NCHW). The forward follows the input (kH*kW reads per
//    output against one write), the backward follows dx (its only write, and the layout dy and the
//    indices were allocated in: Python allocates them after the input's format);
//  - grid: one thread per element; x covers one sample (ceil(elements / 256) blocks, 32-bit index math
//    in the kernel: a sample must have fewer than 2^31 elements), y and z the samples (65535 each).
//    No grid-stride loop: its loop state would stay live through the window loops.
#include "launch.h"

#include <climits>
#include <string>
#include <type_traits>

#include "pool2d_adaptive.cuh"
#include "pool2d_avg.cuh"
#include "pool2d_max.cuh"

namespace fc {
namespace {

// Samples per grid row (y). The emulator build takes 4, so that the tests (N <= 7) run the split of
// the samples over y and z that N > 65535 needs on a GPU.
#if defined(FC_SIMT_EMULATOR)
constexpr index_t kPoolGridY = 4;
#else
constexpr index_t kPoolGridY = kMaxGridYZ;
#endif

Tensor4 as_tensor4(const HostTensor4& t) {
  return Tensor4{t.size[0], t.size[1], t.size[2], t.size[3], t.stride[0], t.stride[1], t.stride[2], t.stride[3]};
}

bool channels_fastest(const HostTensor4& t) { return t.stride[1] < t.stride[3]; }

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

// Validates what the kernels' 32-bit index and window arithmetic needs and packs the descriptor.
PoolGeom pool_geom(const PoolShape& s, const char* op) {
  require(s.kernel_h >= 1 && s.kernel_w >= 1, op, "kernel_size must be >= 1");
  require(s.stride_h >= 1 && s.stride_w >= 1, op, "stride must be >= 1");
  require(s.pad_h >= 0 && s.pad_w >= 0, op, "padding must be >= 0");
  require(s.dil_h >= 1 && s.dil_w >= 1, op, "dilation must be >= 1");
  require(s.N >= 0 && s.C >= 0 && s.H >= 0 && s.W >= 0 && s.P >= 0 && s.Q >= 0, op, "negative size");
  const std::int64_t in_sample = s.C * s.H * s.W, out_sample = s.C * s.P * s.Q;
  require(in_sample < INT_MAX && out_sample < INT_MAX, op,
          "a sample of " + std::to_string(in_sample > out_sample ? in_sample : out_sample) +
              " elements (C x H x W or C x P x Q) is over the CUDA kernels' limit of 2^31 - 1");
  // Window coordinates reach p * stride + (kernel - 1) * dilation + 1, and h + padding.
  const std::int64_t reach_h = (s.P + 1) * std::int64_t(s.stride_h) + std::int64_t(s.kernel_h) * s.dil_h + s.H + s.pad_h;
  const std::int64_t reach_w = (s.Q + 1) * std::int64_t(s.stride_w) + std::int64_t(s.kernel_w) * s.dil_w + s.W + s.pad_w;
  require(reach_h < INT_MAX && reach_w < INT_MAX, op, "window coordinates overflow 32 bits (kernel, stride or dilation)");
  require(s.N <= kPoolGridY * index_t(kMaxGridYZ), op, "batch size " + std::to_string(s.N) + " too large for one grid");
  PoolGeom g;
  g.N = s.N;
  g.C = int(s.C);
  g.H = int(s.H);
  g.W = int(s.W);
  g.P = int(s.P);
  g.Q = int(s.Q);
  g.kh = s.kernel_h;
  g.kw = s.kernel_w;
  g.sh = s.stride_h;
  g.sw = s.stride_w;
  g.ph = s.pad_h;
  g.pw = s.pad_w;
  g.dh = s.dil_h;
  g.dw = s.dil_w;
  return g;
}

// One thread per element of the (N, C, rows, cols) tensor the kernel writes (see the header comment).
dim3 pool_grid(index_t N, index_t per_sample) {
  const index_t y = N < kPoolGridY ? N : kPoolGridY;
  return dim3(static_cast<unsigned>((per_sample + kPoolThreads - 1) / kPoolThreads), static_cast<unsigned>(y),
              static_cast<unsigned>((N + y - 1) / y));
}

// f(std::integral_constant<bool, b>): a runtime flag as a compile-time one, for template kernels.
template <class F>
void with_flag(bool b, F&& f) {
  if (b) f(std::true_type{});
  else f(std::false_type{});
}

int divisor_or_none(std::int64_t divisor_override, const char* op) {
  require(divisor_override <= INT_MAX, op, "divisor_override " + std::to_string(divisor_override) + " over 2^31 - 1");
  return divisor_override > 0 ? int(divisor_override) : 0;
}

// The adaptive kernels' window bounds multiply an output coordinate by an input size (and back) in 32 bits.
PoolGeom adaptive_geom(const PoolShape& s, const char* op) {
  const PoolGeom g = pool_geom(s, op);
  require((s.P + 1) * s.H < INT_MAX && (s.H + 1) * s.P < INT_MAX && (s.Q + 1) * s.W < INT_MAX &&
              (s.W + 1) * s.Q < INT_MAX,
          op, "output_size x input size overflows 32 bits");
  return g;
}

}  // namespace

void max_pool2d_fwd(const PoolShape& s, DType dtype, const HostTensor4& x, const HostTensor4& y,
                    const HostTensor4* indices, std::uintptr_t stream) {
  const PoolGeom g = pool_geom(s, "max_pool2d_fwd");
  if (s.N * s.C * s.P * s.Q == 0) return;
  const dim3 grid = pool_grid(s.N, s.C * s.P * s.Q);
  const Tensor4 xt = as_tensor4(x), yt = as_tensor4(y);
  const Tensor4 it = indices ? as_tensor4(*indices) : Tensor4{};
  long long* ind = indices ? static_cast<long long*>(indices->data) : nullptr;
  dispatch_dtype(dtype, "max_pool2d_fwd", [&](auto tag) {
    using T = decltype(tag);
    with_flag(channels_fastest(x), [&](auto cl) {
      with_flag(ind != nullptr, [&](auto with_ind) {
        auto kernel = max_pool2d_fwd_kernel<T, decltype(cl)::value, decltype(with_ind)::value>;
        FC_LAUNCH(kernel, grid, dim3(kPoolThreads), 0, as_stream(stream), static_cast<const T*>(x.data), xt,
                  static_cast<T*>(y.data), yt, ind, it, g);
        FC_CHECK_LAUNCH("max_pool2d_fwd");
      });
    });
  });
}

void max_pool2d_bwd(const PoolShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& indices,
                    const HostTensor4& dx, std::uintptr_t stream) {
  const PoolGeom g = pool_geom(s, "max_pool2d_bwd");
  if (s.N * s.C * s.H * s.W == 0) return;
  require(indices.data != nullptr || s.P * s.Q == 0, "max_pool2d_bwd", "indices is null");
  const dim3 grid = pool_grid(s.N, s.C * s.H * s.W);
  const Tensor4 dyt = as_tensor4(dy), it = as_tensor4(indices), dxt = as_tensor4(dx);
  dispatch_dtype(dtype, "max_pool2d_bwd", [&](auto tag) {
    using T = decltype(tag);
    with_flag(channels_fastest(dx), [&](auto cl) {
      auto kernel = max_pool2d_bwd_kernel<T, decltype(cl)::value>;
      FC_LAUNCH(kernel, grid, dim3(kPoolThreads), 0, as_stream(stream), static_cast<const T*>(dy.data), dyt,
                static_cast<const long long*>(indices.data), it, static_cast<T*>(dx.data), dxt, g);
      FC_CHECK_LAUNCH("max_pool2d_bwd");
    });
  });
}

void avg_pool2d_fwd(const PoolShape& s, DType dtype, const HostTensor4& x, const HostTensor4& y,
                    bool count_include_pad, std::int64_t divisor_override, std::uintptr_t stream) {
  const PoolGeom g = pool_geom(s, "avg_pool2d_fwd");
  const int divisor = divisor_or_none(divisor_override, "avg_pool2d_fwd");
  if (s.N * s.C * s.P * s.Q == 0) return;
  const dim3 grid = pool_grid(s.N, s.C * s.P * s.Q);
  const Tensor4 xt = as_tensor4(x), yt = as_tensor4(y);
  dispatch_dtype(dtype, "avg_pool2d_fwd", [&](auto tag) {
    using T = decltype(tag);
    with_flag(channels_fastest(x), [&](auto cl) {
      auto kernel = avg_pool2d_fwd_kernel<T, decltype(cl)::value>;
      FC_LAUNCH(kernel, grid, dim3(kPoolThreads), 0, as_stream(stream), static_cast<const T*>(x.data), xt,
                static_cast<T*>(y.data), yt, g, count_include_pad, divisor);
      FC_CHECK_LAUNCH("avg_pool2d_fwd");
    });
  });
}

void avg_pool2d_bwd(const PoolShape& s, DType dtype, const HostTensor4& dy, const HostTensor4& dx,
                    bool count_include_pad, std::int64_t divisor_override, std::uintptr_t stream) {
  const PoolGeom g = pool_geom(s, "avg_pool2d_bwd");
  const int divisor = divisor_or_none(divisor_override, "avg_pool2d_bwd");
  if (s.N * s.C * s.H * s.W == 0) return;
  const dim3 grid = pool_grid(s.N, s.C * s.H * s.W);
  const Tensor4 dyt = as_tensor4(dy), dxt = as_tensor4(dx);
  dispatch_dtype(dtype, "avg_pool2d_bwd", [&](auto tag) {
    using T = decltype(tag);
    with_flag(channels_fastest(dx), [&](auto cl) {
      auto kernel = avg_pool2d_bwd_kernel<T, decltype(cl)::value>;
      FC_LAUNCH(kernel, grid, dim3(kPoolThreads), 0, as_stream(stream), static_cast<const T*>(dy.data), dyt,
                static_cast<T*>(dx.data), dxt, g, count_include_pad, divisor);
      FC_CHECK_LAUNCH("avg_pool2d_bwd");
    });
  });
}

// ---- adaptive pooling (kernels/pool2d_adaptive.cuh) --------------------------------------------------

void adaptive_pool2d_fwd(const PoolShape& s, DType dtype, const HostTensor4& x, const HostTensor4& y,
                         const HostTensor4* indices, std::uintptr_t stream) {
  const char* op = indices ? "adaptive_max_pool2d_fwd" : "adaptive_avg_pool2d_fwd";
  const PoolGeom g = adaptive_geom(s, op);
  if (s.N * s.C * s.P * s.Q == 0) return;
  const Tensor4 xt = as_tensor4(x), yt = as_tensor4(y);
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    if (!indices && s.P == 1 && s.Q == 1 && !channels_fastest(x)) {  // global average: a warp per plane
      FC_LAUNCH(global_avg_pool2d_fwd_kernel<T>, pool_grid(s.N, s.C * 32),  // 32 threads per plane
                dim3(kPoolThreads), 0, as_stream(stream), static_cast<const T*>(x.data), xt,
                static_cast<T*>(y.data), yt, g);
      FC_CHECK_LAUNCH(op);
      return;
    }
    const Tensor4 it = indices ? as_tensor4(*indices) : Tensor4{};
    long long* ind = indices ? static_cast<long long*>(indices->data) : nullptr;
    with_flag(channels_fastest(x), [&](auto cl) {
      with_flag(indices != nullptr, [&](auto is_max) {
        auto kernel = adaptive_pool2d_fwd_kernel<T, decltype(cl)::value, decltype(is_max)::value>;
        FC_LAUNCH(kernel, pool_grid(s.N, s.C * s.P * s.Q), dim3(kPoolThreads), 0, as_stream(stream),
                  static_cast<const T*>(x.data), xt, static_cast<T*>(y.data), yt, ind, it, g);
        FC_CHECK_LAUNCH(op);
      });
    });
  });
}

void adaptive_pool2d_bwd(const PoolShape& s, DType dtype, const HostTensor4& dy, const HostTensor4* indices,
                         const HostTensor4& dx, std::uintptr_t stream) {
  const char* op = indices ? "adaptive_max_pool2d_bwd" : "adaptive_avg_pool2d_bwd";
  const PoolGeom g = adaptive_geom(s, op);
  if (s.N * s.C * s.H * s.W == 0) return;
  const Tensor4 dyt = as_tensor4(dy), dxt = as_tensor4(dx);
  const Tensor4 it = indices ? as_tensor4(*indices) : Tensor4{};
  const long long* ind = indices ? static_cast<const long long*>(indices->data) : nullptr;
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    with_flag(channels_fastest(dx), [&](auto cl) {
      with_flag(indices != nullptr, [&](auto is_max) {
        auto kernel = adaptive_pool2d_bwd_kernel<T, decltype(cl)::value, decltype(is_max)::value>;
        FC_LAUNCH(kernel, pool_grid(s.N, s.C * s.H * s.W), dim3(kPoolThreads), 0, as_stream(stream),
                  static_cast<const T*>(dy.data), dyt, ind, it, static_cast<T*>(dx.data), dxt, g);
        FC_CHECK_LAUNCH(op);
      });
    });
  });
}

}  // namespace fc
