// emulated_cuda.h: the CUDA execution model on the host, for amsim's kernels (tests/support/emulated_cuda.py).
// Included before amsim_gemm.cu by the host C++ compiler: CUDA's vector types, thread/block indices as globals,
// __syncthreads as a fiber switch, and emu_launch, which runs a kernel body as every thread of every block.
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <ucontext.h>
#include <vector>

struct dim3 { unsigned x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
struct alignas(16) int4 { int x, y, z, w; };

// CUDA threads as fibers on one OS thread: a fiber runs until __syncthreads() or its end, and a barrier is
// released once every fiber of the block has reached it. Deterministic, and a missing barrier shows up
// reliably: the first fiber then runs ahead and reads shared memory the others have not written yet
// (poisoned). The fibers of a block run in ascending or descending order, alternating from one barrier
// interval to the next and from one block to the next, so a read of what another thread writes in the same
// interval is caught whichever of the two comes first in the code's thread numbering.
namespace emu {
inline dim3 thread_idx, block_idx, block_dim, grid_dim;
inline unsigned char* smem = nullptr;
inline ucontext_t scheduler;
inline std::vector<ucontext_t> fibers;
inline std::vector<int> finished;
inline unsigned current = 0;
inline void (*trampoline_body)(void*) = nullptr;
inline void* trampoline_arg = nullptr;
inline constexpr std::size_t STACK = 256 * 1024;
inline std::vector<std::unique_ptr<unsigned char[]>> stacks;

inline void fiber_main() {
    trampoline_body(trampoline_arg);
    finished[current] = 1;
    swapcontext(&fibers[current], &scheduler);
}
}  // namespace emu
#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define AMSIM_DYN_SMEM(name) unsigned char* name = emu::smem
inline void __syncthreads() { swapcontext(&emu::fibers[emu::current], &emu::scheduler); }

// Run body() as every thread of every block, blocks one after another.
template <class F>
void emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, long long shared, F body) {
    const std::size_t bytes = (std::size_t)shared + 64;
    std::unique_ptr<unsigned char[]> buf(new (std::align_val_t(64)) unsigned char[bytes]);
    emu::grid_dim = {gx, gy, gz};
    emu::block_dim = {bx, 1, 1};
    while (emu::stacks.size() < bx) emu::stacks.emplace_back(new unsigned char[emu::STACK]);
    emu::fibers.assign(bx, ucontext_t{});
    emu::finished.assign(bx, 0);
    emu::trampoline_body = [](void* p) { (*static_cast<F*>(p))(); };
    emu::trampoline_arg = &body;
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                std::memset(buf.get(), 0xFF, bytes);  // poison: unwritten shared memory reads as NaN / -1
                emu::smem = buf.get();
                emu::block_idx = {x, y, z};
                for (unsigned t = 0; t < bx; ++t) {
                    emu::finished[t] = 0;
                    getcontext(&emu::fibers[t]);
                    emu::fibers[t].uc_stack.ss_sp = emu::stacks[t].get();
                    emu::fibers[t].uc_stack.ss_size = emu::STACK;
                    emu::fibers[t].uc_link = nullptr;
                    makecontext(&emu::fibers[t], emu::fiber_main, 0);
                }
                unsigned pass = x + y + z;  // the order's parity: changes from block to block and pass to pass
                for (;; ++pass) {  // one pass = every live fiber runs up to its next barrier (or its end)
                    unsigned live = 0;
                    for (unsigned n = 0; n < bx; ++n) {
                        const unsigned t = pass % 2 ? bx - 1 - n : n;
                        if (emu::finished[t]) continue;
                        emu::current = t;
                        emu::thread_idx = {t, 0, 0};
                        swapcontext(&emu::scheduler, &emu::fibers[t]);
                        live += !emu::finished[t];
                    }
                    if (live == 0) break;
                    if (live != bx) {
                        std::fprintf(stderr, "emu: __syncthreads reached by %u of %u threads\n", live, bx);
                        std::abort();
                    }
                }
            }
}
