// placeholder: filled in by the pool2d kernel work
#include "cpu/kernels.h"
#include <stdexcept>
namespace fastconv { namespace cpu { namespace FC_ISA {
} } }
