// placeholder until the conv kernels land
#include <stdexcept>
#include "cpu/kernels.h"
namespace fastconv { namespace cpu { namespace FC_ISA {
void conv2d_fwd(const ConvDesc&, DType, const Tensor4&, const Tensor4&, const void*, const Tensor4&, bool, int) { throw std::runtime_error("not implemented"); }
void conv2d_dgrad(const ConvDesc&, DType, const Tensor4&, const Tensor4&, const Tensor4*, const Tensor4&, int) { throw std::runtime_error("not implemented"); }
void conv2d_wgrad(const ConvDesc&, DType, const Tensor4&, const Tensor4&, const Tensor4*, const Tensor4*, void*, int) { throw std::runtime_error("not implemented"); }
} } }
