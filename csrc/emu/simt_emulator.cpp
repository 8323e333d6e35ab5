// The SIMT emulator's runtime: fibers, the per-block scheduler, barriers, warp exchange, launches.
// See simt_emulator.h for the model.
#include "simt_emulator.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// Under AddressSanitizer every stack switch is announced, so ASan tracks which stack is live (and its
// fake stacks for use-after-return) instead of reporting the fiber stacks as wild accesses.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define FC_ASAN_START_SWITCH(save, bottom, size) __sanitizer_start_switch_fiber((save), (bottom), (size))
#define FC_ASAN_FINISH_SWITCH(save, bottom, size) __sanitizer_finish_switch_fiber((save), (bottom), (size))
#else
#define FC_ASAN_START_SWITCH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#define FC_ASAN_FINISH_SWITCH(save, bottom, size) ((void)(save), (void)(bottom), (void)(size))
#endif

#if !defined(__x86_64__)
#error "the SIMT emulator's context switch is written for x86-64"
#endif

// fc_emu_switch(void** save_sp, void* load_sp): saves the callee-saved registers, MXCSR and the x87
// control word on the current stack, stores the stack pointer in *save_sp, loads load_sp and restores
// the same set from there. A new fiber's stack is prepared (prepare_stack) so that this restore
// "returns" into fc_emu_fiber_start with the fiber pointer in r12.
extern "C" void fc_emu_switch(void** save_sp, void* load_sp);
extern "C" void fc_emu_fiber_start();
asm(R"(
    .text
    .globl fc_emu_switch
    .hidden fc_emu_switch
    .type fc_emu_switch, @function
fc_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fc_emu_switch, .-fc_emu_switch

    .globl fc_emu_fiber_start
    .hidden fc_emu_fiber_start
    .type fc_emu_fiber_start, @function
fc_emu_fiber_start:
    movq %r12, %rdi
    callq fc_emu_fiber_main
    ud2
    .size fc_emu_fiber_start, .-fc_emu_fiber_start
)");

namespace fc_emu {

struct Block {
  dim3 grid, block;
  uint3 index{0, 0, 0};
  const char* kernel = "";
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block_barrier;
  Fiber* running = nullptr;
  void* scheduler_sp = nullptr;
  std::vector<unsigned char> dynamic_smem;
  std::exception_ptr error;
  std::uint64_t barriers = 0, switches = 0;
  std::vector<const void*> stack_bottoms;                 // per fiber (for ASan's switch annotations)
  const void* scheduler_stack_bottom = nullptr;          // learned by ASan on the first switch
  std::size_t scheduler_stack_size = 0;
};

namespace {

constexpr std::size_t kStackBytes = 256 * 1024;   // lazily committed; kernels use a few KiB
constexpr std::size_t kGuardBytes = 4096;         // PROT_NONE page below each stack

thread_local Block* tl_block = nullptr;

// Stacks are mapped once per host thread and reused by every block it runs.
struct StackPool {
  std::vector<char*> stacks;
  ~StackPool() {
    for (char* s : stacks) munmap(s, kStackBytes + kGuardBytes);
  }
  const void* bottom(std::size_t i) { return stacks[i] + kGuardBytes; }
  char* top(std::size_t i) {
    while (stacks.size() <= i) {
      void* m = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) throw std::runtime_error("SIMT emulator: cannot map a fiber stack");
      mprotect(m, kGuardBytes, PROT_NONE);
      stacks.push_back(static_cast<char*>(m));
    }
    return stacks[i] + kStackBytes + kGuardBytes;
  }
};
thread_local StackPool tl_stacks;

std::atomic<int> g_order{0};
std::atomic<std::uint64_t> g_seed{0};
std::atomic<int> g_host_threads{1};
std::mutex g_stats_mutex;
LaunchStats g_stats;
thread_local cudaError_t tl_last_error = cudaSuccess;

void* prepare_stack(char* top, Fiber* f) {
  // From the saved stack pointer upward: control words, r15, r14, r13, r12, rbx, rbp, return address.
  // After fc_emu_switch's `ret` the stack pointer is 16-byte aligned, as fc_emu_fiber_start's call needs.
  auto* base = reinterpret_cast<std::uint64_t*>(reinterpret_cast<std::uintptr_t>(top) & ~std::uintptr_t(15)) - 2;
  std::uint64_t* sp = base - 8;
  std::uint32_t mxcsr;
  std::uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  std::uint64_t control = mxcsr | (static_cast<std::uint64_t>(fpucw) << 32);
  sp[0] = control;
  sp[1] = sp[2] = sp[3] = 0;                                 // r15 r14 r13
  sp[4] = reinterpret_cast<std::uint64_t>(f);                // r12: the fiber
  sp[5] = sp[6] = 0;                                         // rbx rbp
  sp[7] = reinterpret_cast<std::uint64_t>(&fc_emu_fiber_start);
  return sp;
}

void switch_to_scheduler() {
  Block& b = *tl_block;
  void* fake_stack = nullptr;
  FC_ASAN_START_SWITCH(&fake_stack, b.scheduler_stack_bottom, b.scheduler_stack_size);
  fc_emu_switch(&b.running->sp, b.scheduler_sp);
  FC_ASAN_FINISH_SWITCH(fake_stack, nullptr, nullptr);
}

[[noreturn]] void fail(const std::string& what) {
  Block& b = *tl_block;
  std::ostringstream msg;
  msg << "SIMT emulator: kernel " << b.kernel << ", block (" << b.index.x << "," << b.index.y << ","
      << b.index.z << "), thread (" << b.running->thread_idx.x << "," << b.running->thread_idx.y << ","
      << b.running->thread_idx.z << "): " << what;
  throw std::runtime_error(msg.str());
}

// Blocks the running fiber until `expected` participants have arrived at `bar`.
void arrive_and_wait(Barrier& bar, int expected, const char* what) {
  Block& b = *tl_block;
  ++b.barriers;
  if (++bar.arrived >= expected) {
    bar.arrived = 0;
    bar.mask = 0;
    ++bar.generation;   // releases the waiters; this fiber runs on (it may overtake them, as on a GPU)
    return;
  }
  Fiber& f = *b.running;
  f.state = Fiber::kWaiting;
  f.wait_on = &bar;
  f.wait_generation = bar.generation;
  f.wait_what = what;
  switch_to_scheduler();
  f.state = Fiber::kRunning;
}

unsigned warp_of(const Fiber& f) { return f.linear / 32; }

void run_block(Block& b) {
  const unsigned n = b.block.x * b.block.y * b.block.z;
  b.fibers.assign(n, Fiber{});
  b.stack_bottoms.assign(n, nullptr);
  b.warps.assign((n + 31) / 32, Warp{});
  b.block_barrier = Barrier{};
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.linear = i;
    f.thread_idx = {i % b.block.x, (i / b.block.x) % b.block.y, i / (b.block.x * b.block.y)};
    f.sp = prepare_stack(tl_stacks.top(i), &f);
    b.stack_bottoms[i] = tl_stacks.bottom(i);
    b.warps[i / 32].live |= 1u << (i % 32);
  }
  std::fill(b.dynamic_smem.begin(), b.dynamic_smem.end(), 0xFF);

  std::vector<unsigned> order(n);
  for (unsigned i = 0; i < n; ++i) order[i] = i;
  const Order mode = static_cast<Order>(g_order.load());
  if (mode == Order::reversed) {
    std::reverse(order.begin(), order.end());
  } else if (mode == Order::shuffled) {
    std::mt19937_64 rng(g_seed.load() ^ (b.index.x * 0x9E3779B97F4A7C15ull) ^ (b.index.y * 0xC2B2AE3D27D4EB4Full)
                        ^ (b.index.z * 0x165667B19E3779F9ull));
    std::shuffle(order.begin(), order.end(), rng);
  }

  unsigned done = 0;
  while (done < n) {
    bool progressed = false;
    for (unsigned i : order) {
      Fiber& f = b.fibers[i];
      if (f.state == Fiber::kDone) continue;
      if (f.state == Fiber::kWaiting && f.wait_on->generation == f.wait_generation) continue;
      f.state = Fiber::kRunning;
      b.running = &f;
      ++b.switches;
      void* fake_stack = nullptr;
      FC_ASAN_START_SWITCH(&fake_stack, b.stack_bottoms[i], kStackBytes);
      fc_emu_switch(&b.scheduler_sp, f.sp);
      FC_ASAN_FINISH_SWITCH(fake_stack, nullptr, nullptr);
      progressed = true;
      if (b.error) std::rethrow_exception(b.error);
      if (f.state == Fiber::kDone) {
        ++done;
        b.warps[warp_of(f)].live &= ~(1u << (f.linear % 32));
      }
    }
    if (!progressed) {
      // Every remaining thread waits at a barrier that can no longer complete.
      unsigned waiting = 0;
      const char* what = "";
      for (const Fiber& f : b.fibers)
        if (f.state == Fiber::kWaiting) { ++waiting; what = f.wait_what; }
      std::ostringstream msg;
      msg << "SIMT emulator: kernel " << b.kernel << ", block (" << b.index.x << "," << b.index.y << ","
          << b.index.z << "): deadlock: " << waiting << " of " << n << " threads wait at " << what
          << " while " << done << " have returned (a barrier inside divergent control flow)";
      throw std::runtime_error(msg.str());
    }
  }
}

}  // namespace

extern "C" __attribute__((visibility("hidden"))) void fc_emu_fiber_main(Fiber* f) {
  Block& b = *tl_block;
  FC_ASAN_FINISH_SWITCH(nullptr, &b.scheduler_stack_bottom, &b.scheduler_stack_size);
  try {
    (*b.body)();
  } catch (...) {
    b.error = std::current_exception();
  }
  f->state = Fiber::kDone;
  FC_ASAN_START_SWITCH(nullptr, b.scheduler_stack_bottom, b.scheduler_stack_size);   // this stack dies
  fc_emu_switch(&f->sp, b.scheduler_sp);
  std::abort();   // a finished fiber is never resumed
}

Block& current_block() {
  if (tl_block == nullptr || tl_block->running == nullptr)
    throw std::runtime_error("SIMT emulator: a device function was called outside a kernel launch");
  return *tl_block;
}
Fiber& current_fiber() { return *current_block().running; }
const uint3& block_idx() { return current_block().index; }
const dim3& block_dim() { return current_block().block; }
const dim3& grid_dim() { return current_block().grid; }
void* dynamic_shared_memory() {
  Block& b = current_block();
  return b.dynamic_smem.empty() ? nullptr : b.dynamic_smem.data();
}
unsigned lane_id() { return current_fiber().linear % 32; }

void syncthreads() {
  Block& b = current_block();
  arrive_and_wait(b.block_barrier, static_cast<int>(b.fibers.size()), "__syncthreads");
}

static Warp& join_warp_round(unsigned mask, const char* what) {
  Block& b = current_block();
  Fiber& f = *b.running;
  Warp& w = b.warps[warp_of(f)];
  const unsigned lane_bit = 1u << (f.linear % 32);
  if (!(mask & lane_bit)) fail(std::string(what) + " called by a lane that is not in its mask");
  if (w.barrier.arrived > 0 && w.barrier.mask != mask) {
    std::ostringstream msg;
    msg << what << " with mask 0x" << std::hex << mask << " while other lanes of the warp use 0x" << w.barrier.mask;
    fail(msg.str());
  }
  w.barrier.mask = mask;
  return w;
}

void syncwarp(unsigned mask) {
  Warp& w = join_warp_round(mask, "__syncwarp");
  arrive_and_wait(w.barrier, __builtin_popcount(mask & w.live), "__syncwarp");
}

std::uint64_t warp_exchange(unsigned mask, std::uint64_t mine, int source_lane, bool source_valid) {
  Warp& w = join_warp_round(mask, "a warp shuffle");
  const unsigned lane = lane_id();
  const int expected = __builtin_popcount(mask & w.live);
  w.slot[lane] = mine;
  arrive_and_wait(w.barrier, expected, "a warp shuffle");     // every lane has published its value
  std::uint64_t got = mine;
  if (source_valid && source_lane >= 0 && source_lane < 32 && (mask & (1u << source_lane))) got = w.slot[source_lane];
  w.barrier.mask = mask;
  arrive_and_wait(w.barrier, expected, "a warp shuffle");     // every lane has read before slots are reused
  return got;
}

unsigned warp_ballot(unsigned mask, bool predicate) {
  Warp& w = join_warp_round(mask, "a warp vote");
  const unsigned lane = lane_id();
  const int expected = __builtin_popcount(mask & w.live);
  w.slot[lane] = predicate ? 1 : 0;
  arrive_and_wait(w.barrier, expected, "a warp vote");
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((mask & w.live & (1u << l)) && w.slot[l]) bits |= 1u << l;
  w.barrier.mask = mask;
  arrive_and_wait(w.barrier, expected, "a warp vote");
  return bits;
}

void set_thread_order(Order order, std::uint64_t seed) {
  g_order = static_cast<int>(order);
  g_seed = seed;
}
Order thread_order() { return static_cast<Order>(g_order.load()); }
void set_host_threads(int n) { g_host_threads = std::max(1, n); }
int host_threads() { return g_host_threads.load(); }

LaunchStats launch_stats() {
  std::lock_guard<std::mutex> lock(g_stats_mutex);
  return g_stats;
}
void reset_launch_stats() {
  std::lock_guard<std::mutex> lock(g_stats_mutex);
  g_stats = LaunchStats{};
}

cudaError_t take_last_error() {
  cudaError_t e = tl_last_error;
  tl_last_error = cudaSuccess;
  return e;
}
cudaError_t peek_last_error() { return tl_last_error; }

// Launch limits of sm_80..sm_90 (a kernel launch that a GPU would refuse fails here too).
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr std::size_t kMaxDynamicSmem = 227 * 1024;

void launch_impl(const char* name, dim3 grid, dim3 block, std::size_t dynamic_smem,
                 const std::function<void()>& body) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > kMaxThreadsPerBlock ||
      block.z > 64 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu || dynamic_smem > kMaxDynamicSmem) {
    tl_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const long long blocks = 1ll * grid.x * grid.y * grid.z;
  std::exception_ptr error;
  std::uint64_t barriers = 0, switches = 0;
  std::mutex error_mutex;
  auto run_range = [&](long long first, long long step) {
    Block b;
    b.grid = grid;
    b.block = block;
    b.kernel = name;
    b.body = &body;
    b.dynamic_smem.assign(dynamic_smem, 0xFF);
    Block* saved = tl_block;
    tl_block = &b;
    try {
      for (long long i = first; i < blocks; i += step) {
        {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (error) break;
        }
        b.index = {static_cast<unsigned>(i % grid.x), static_cast<unsigned>((i / grid.x) % grid.y),
                   static_cast<unsigned>(i / (1ll * grid.x * grid.y))};
        b.error = nullptr;
        run_block(b);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
    tl_block = saved;
    std::lock_guard<std::mutex> lock(error_mutex);
    barriers += b.barriers;
    switches += b.switches;
  };
  const int workers = static_cast<int>(std::min<long long>(host_threads(), blocks));
#ifdef _OPENMP
  if (workers > 1) {
#pragma omp parallel num_threads(workers)
    run_range(omp_get_thread_num(), omp_get_num_threads());
  } else {
    run_range(0, 1);
  }
#else
  (void)workers;
  run_range(0, 1);
#endif
  {
    std::lock_guard<std::mutex> lock(g_stats_mutex);
    g_stats.launches += 1;
    g_stats.blocks += static_cast<std::uint64_t>(blocks);
    g_stats.threads += static_cast<std::uint64_t>(blocks) * threads;
    g_stats.barriers += barriers;
    g_stats.switches += switches;
  }
  if (error) std::rethrow_exception(error);
}

namespace {
thread_local bool tl_recording = false;
thread_local std::vector<RecordedLaunch> tl_recorded;
}  // namespace

void start_recording() {
  tl_recorded.clear();
  tl_recording = true;
}
std::vector<RecordedLaunch> stop_recording() {
  tl_recording = false;
  std::vector<RecordedLaunch> out;
  out.swap(tl_recorded);
  return out;
}
bool recording() { return tl_recording; }

void record_launch(const char* name, const void* kernel, dim3 grid, dim3 block, std::size_t dynamic_smem,
                   std::vector<std::string> params) {
  Dl_info info{};
  if (dladdr(kernel, &info) == 0 || info.dli_sname == nullptr || info.dli_saddr != kernel)
    throw std::runtime_error(std::string("SIMT emulator: cannot name kernel ") + name +
                             " for recording (not an exported symbol)");
  RecordedLaunch r;
  r.symbol = info.dli_sname;
  r.grid = grid;
  r.block = block;
  r.dynamic_smem = dynamic_smem;
  r.params = std::move(params);
  tl_recorded.push_back(std::move(r));
}

}  // namespace fc_emu
