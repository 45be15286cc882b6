// wgmma issue rate on one Hopper GPU: m64nNk16 bf16 (fp32 accumulators), A from shared memory
// (SS) or registers (RS), chains of 4 or 16 k-steps each waited on, one CTA per SM with one or two
// warpgroups issuing; optionally a third warpgroup storing (traffic 1) or loading (traffic 2)
// shared memory meanwhile. Prints clocks per instruction per warpgroup and FMA per clock per SM
// (2048 is the tensor cores' full rate). bench/NOTES.md, session 12. Build and run (sm_90a):
//   python3 gen_mma.py mma.h && nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O3 -o wgmma_rate wgmma_rate.cu
//   ./wgmma_rate
#include <cstdio>
#include <cuda_runtime.h>
#include "mma.h"
__device__ __forceinline__ unsigned long long desc(unsigned addr) {  // K-major, 128 B swizzle
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((1024ull >> 4) << 32) | (1ull << 62);
}
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int K> __device__ __forceinline__ void wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(K) : "memory"); }
template <int N, bool RS, int KSTEPS>
__global__ void __launch_bounds__(384, 1) kern(int reps, int wgs, int shareB, unsigned long long* out, float* sink, int traffic) {
  __shared__ volatile int done;
  extern __shared__ __align__(1024) unsigned char sm[];
  unsigned base = (unsigned)__cvta_generic_to_shared(sm);
  base = (base + 1023) & ~1023u;
  for (int i = threadIdx.x; i < 200 * 1024 / 4; i += blockDim.x) ((unsigned*)(sm))[i] = 0x3c003c00u ^ (i * 2654435761u & 0x00ff00ffu);
  if (threadIdx.x == 0) done = 0;
  __syncthreads();
  const int w = threadIdx.x / 128;
  if (w == 2 && traffic) {
    // st.shared.v4 (traffic 1) or ld.shared.v4 (traffic 2) over a 32 KB region, until the mma warpgroups finish
    const unsigned reg = base + 131072 + (threadIdx.x % 128) * 16;
    unsigned long long n = 0, c0 = clock64();
    unsigned x = threadIdx.x, acc = 0;
    while (!done) {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const unsigned a = reg + (j % 16) * 2048;
        if (traffic == 1) asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" ::"r"(a), "r"(x) : "memory");
        else { unsigned v0, v1, v2, v3; asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v0), "=r"(v1), "=r"(v2), "=r"(v3) : "r"(a) : "memory"); acc += v0 ^ v3; }
      }
      n += 16;
    }
    unsigned long long c1 = clock64();
    if (acc == 12345) sink[0] = acc;
    if (threadIdx.x == 256 && blockIdx.x == 0) { out[4] = n * 128 * 16; out[5] = c1 - c0; }
    return;
  }
  if (w >= wgs) return;
  const unsigned sA = base + w * 8192;              // (64, 64) per warpgroup
  const unsigned sB = base + 32768 + (shareB ? 0 : w) * 32768;  // (N, 64)
  float acc[N / 2];
  for (int i = 0; i < N / 2; ++i) acc[i] = 0.f;
  unsigned a[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};
  unsigned long long t0 = clock64();
  for (int r = 0; r < reps; ++r) {
    fence();
#pragma unroll
    for (int k = 0; k < KSTEPS; ++k) {
      const unsigned ko = (k % 4) * 32;
      if constexpr (RS) {
        if constexpr (N == 32) mma_rs32(acc, a, desc(sB + ko)); else if constexpr (N == 64) mma_rs64(acc, a, desc(sB + ko));
        else if constexpr (N == 128) mma_rs128(acc, a, desc(sB + ko)); else mma_rs256(acc, a, desc(sB + ko));
      } else {
        if constexpr (N == 32) mma_ss32(acc, desc(sA + ko), desc(sB + ko)); else if constexpr (N == 64) mma_ss64(acc, desc(sA + ko), desc(sB + ko));
        else if constexpr (N == 128) mma_ss128(acc, desc(sA + ko), desc(sB + ko)); else mma_ss256(acc, desc(sA + ko), desc(sB + ko));
      }
    }
    commit();
    wait<0>();
  }
  unsigned long long t1 = clock64();
  if (threadIdx.x == 0) done = 1;
  float s = 0; for (int i = 0; i < N / 2; ++i) s += acc[i];
  if (s == 1.2345f) sink[threadIdx.x] = s;
  if (threadIdx.x % 128 == 0 && blockIdx.x == 0) out[w] = t1 - t0;
}
template <int N, bool RS, int KS>
void run(int wgs, int shareB, unsigned long long* d, float* sink, int traffic = 0) {
  auto k = kern<N, RS, KS>;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024 + 1024);
  const int reps = 2000;
  k<<<132, 384, 200 * 1024 + 1024>>>(reps, wgs, shareB, d, sink, traffic);
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  cudaEventRecord(e0);
  k<<<132, 384, 200 * 1024 + 1024>>>(reps, wgs, shareB, d, sink, traffic);
  cudaEventRecord(e1); cudaEventSynchronize(e1);
  float ms; cudaEventElapsedTime(&ms, e0, e1);
  unsigned long long h[6] = {0, 0, 0, 0, 0, 0};
  cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost);
  cudaError_t err = cudaGetLastError();
  double fma_per_wg = 64.0 * N * 16 * KS * reps;
  double tf = 2 * fma_per_wg * wgs * 132 / (ms * 1e-3) / 1e12;
  printf("m64n%-3d %s ksteps %2d wgs %d sharedB %d traffic %d (%5.1f B/clk): %6.1f clk/instr/wg, SM FMA/clk %6.0f, %6.1f TFLOP/s %s\n", N, RS ? "RS" : "SS", KS, wgs, shareB, traffic, h[5] ? double(h[4]) / h[5] : 0.0,
         double(h[0]) / (KS * reps), fma_per_wg * wgs / double(h[0]), tf, err ? cudaGetErrorString(err) : "");
}
int main() {
  unsigned long long* d;
  float* sink;
  cudaMalloc(&d, 64);
  cudaMemset(d, 0, 64);
  cudaMalloc(&sink, 4096);
  for (int wgs = 1; wgs <= 2; ++wgs) {
    for (int tr = 0; tr <= 2; ++tr) {
      cudaMemset(d, 0, 64);
      run<64, false, 4>(wgs, wgs > 1, d, sink, tr); run<64, true, 4>(wgs, wgs > 1, d, sink, tr);
      run<64, false, 16>(wgs, wgs > 1, d, sink, tr); run<64, true, 16>(wgs, wgs > 1, d, sink, tr);
      run<128, false, 4>(wgs, wgs > 1, d, sink, tr); run<128, true, 4>(wgs, wgs > 1, d, sink, tr);
      run<128, false, 16>(wgs, wgs > 1, d, sink, tr);
      run<256, false, 4>(wgs, wgs > 1, d, sink, tr); run<256, false, 16>(wgs, wgs > 1, d, sink, tr);
      run<32, false, 16>(wgs, wgs > 1, d, sink, tr); run<32, true, 16>(wgs, wgs > 1, d, sink, tr);
    }
  }
  return 0;
}
