// A small CUDA emulator for the kernels of kernels/*.cu, for machines without a GPU.
//
// Included (g++ -include) before a kernel's source, it turns the kernel into a plain C++
// function and runs a launch block after block, each block as blockDim.x OS threads:
// __syncthreads is a barrier of the block's threads, the warp intrinsics exchange values
// through a barrier of the warp's 32 threads, atomics take one lock, and shared memory is
// static storage (one block runs at a time). Dynamic shared memory is filled with 0xff
// bytes before every block, so a kernel that reads it before writing it sees garbage.
//
// This checks a kernel's logic (indexing, bounds, barriers, warp reductions, ties) on the
// CPU. It is stricter than a GPU about warps: a warp intrinsic that not all 32 lanes reach
// hangs here (the test times out), where a GPU may let it pass. It says nothing about
// speed, and nothing about the GPU memory model beyond barriers. Used by
// tests/_cuda_emulator.py; the GPU tests stay the real check.

#pragma once

#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct emu_dim3 {
    unsigned int x = 0, y = 0, z = 0;
};

namespace emu {

inline thread_local emu_dim3 thread_index;
inline thread_local emu_dim3 block_index;
inline emu_dim3 block_dim;
inline emu_dim3 grid_dim;
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<unsigned long long> warp_slots;  // 32 per warp, for exchanges
inline std::vector<unsigned char> dynamic_shared;
inline std::mutex atomic_lock;

inline unsigned int lane() { return thread_index.x % 32u; }
inline unsigned int warp() { return thread_index.x / 32u; }

template <class T>
unsigned long long to_bits(T value)
{
    static_assert(sizeof(T) <= 8, "exchange of at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <class T>
T from_bits(unsigned long long bits)
{
    T value;
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

// Every lane publishes `value`; returns the 32 published values of the warp.
template <class T>
void publish(T value)
{
    warp_slots[warp() * 32u + lane()] = to_bits(value);
    warp_barriers[warp()]->arrive_and_wait();
}

inline void done_reading() { warp_barriers[warp()]->arrive_and_wait(); }

template <class Kernel>
void launch(unsigned int grid, unsigned int block, std::size_t shared_bytes, Kernel kernel)
{
    block_dim = {block, 1, 1};
    grid_dim = {grid, 1, 1};
    const unsigned int warps = (block + 31u) / 32u;
    for (unsigned int b = 0; b < grid; ++b) {
        dynamic_shared.assign(shared_bytes, 0xffu);
        block_barrier = std::make_unique<std::barrier<>>(block);
        warp_barriers.clear();
        for (unsigned int w = 0; w < warps; ++w) {
            const unsigned int lanes = block - 32u * w < 32u ? block - 32u * w : 32u;
            warp_barriers.push_back(std::make_unique<std::barrier<>>(lanes));
        }
        warp_slots.assign(32u * warps, 0ull);
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned int t = 0; t < block; ++t) {
            threads.emplace_back([=] {
                thread_index = {t, 0, 0};
                block_index = {b, 0, 0};
                kernel();
                // An exited thread no longer takes part in its block's or warp's barriers.
                warp_barriers[warp()]->arrive_and_drop();
                block_barrier->arrive_and_drop();
            });
        }
        for (std::thread& thread : threads) {
            thread.join();
        }
    }
}

}  // namespace emu

#define threadIdx (emu::thread_index)
#define blockIdx (emu::block_index)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <class T, class U>
T atomicAdd(T* address, U value)
{
    std::lock_guard<std::mutex> hold(emu::atomic_lock);
    const T old = *address;
    *address = old + static_cast<T>(value);
    return old;
}

template <class T>
T __shfl_down_sync(unsigned int mask, T value, unsigned int delta)
{
    (void)mask;
    emu::publish(value);
    const unsigned int source = emu::lane() + delta;
    const T result = source < 32u
        ? emu::from_bits<T>(emu::warp_slots[emu::warp() * 32u + source]) : value;
    emu::done_reading();
    return result;
}

template <class T>
unsigned int __match_any_sync(unsigned int mask, T value)
{
    (void)mask;
    emu::publish(value);
    unsigned int peers = 0;
    for (unsigned int l = 0; l < 32u; ++l) {
        if (emu::warp_slots[emu::warp() * 32u + l] == emu::to_bits(value)) {
            peers |= 1u << l;
        }
    }
    emu::done_reading();
    return peers;
}

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned int __float_as_uint(float x) { return emu::from_bits<unsigned int>(emu::to_bits(x)); }
inline float __uint_as_float(unsigned int x) { return emu::from_bits<float>(emu::to_bits(x)); }
inline float __int_as_float(int x) { return emu::from_bits<float>(emu::to_bits(x)); }
