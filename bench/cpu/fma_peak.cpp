// FMA peak of this CPU in fp32: independent chains of vector FMAs (no loads), on one core and
// on every core at once. The denominator of the CPU kernel's "fraction of peak" (bench/NOTES.md).
// Built with -march=native so the vectors are the host's widest (AVX-512 here).
// Also prints each thread's rate over its own CPU time (CLOCK_THREAD_CPUTIME_ID): on a machine
// shared with other processes, wall-clock with every core busy only shows the cores we got.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float vec __attribute__((vector_size(kLanes * 4)));

// 16 independent accumulators: more than FMA latency x FMA pipes (4 x 2 on current x86 cores),
// so the chains never wait on each other.

float fma_chains(long long iterations, float seed) {
  // Named accumulators (an array stays in memory around the asm barrier with GCC).
  vec a0 = vec{} + seed, a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3, a4 = a0 + 4, a5 = a0 + 5,
      a6 = a0 + 6, a7 = a0 + 7, a8 = a0 + 8, a9 = a0 + 9, a10 = a0 + 10, a11 = a0 + 11,
      a12 = a0 + 12, a13 = a0 + 13, a14 = a0 + 14, a15 = a0 + 15;
  const vec m = vec{} + 0.999999f;
  const vec b = vec{} + 1e-7f;
  for (long long i = 0; i < iterations; ++i) {
    a0 = a0 * m + b; a1 = a1 * m + b; a2 = a2 * m + b; a3 = a3 * m + b;
    a4 = a4 * m + b; a5 = a5 * m + b; a6 = a6 * m + b; a7 = a7 * m + b;
    a8 = a8 * m + b; a9 = a9 * m + b; a10 = a10 * m + b; a11 = a11 * m + b;
    a12 = a12 * m + b; a13 = a13 * m + b; a14 = a14 * m + b; a15 = a15 * m + b;
    // Keeps the compiler from folding or shortening the chains; costs nothing at run time.
    asm volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7));
    asm volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13), "+v"(a14), "+v"(a15));
  }
  const vec s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11)) +
                ((a12 + a13) + (a14 + a15));
  float r = 0;
  for (int l = 0; l < kLanes; ++l) r += s[l];
  return r;
}

double thread_cpu_s() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

struct Rate {
  double wall = 0;        ///< GFLOP/s of all threads over wall-clock time
  double per_thread = 0;  ///< GFLOP/s of one thread over its own CPU time (the best thread)
};

// `threads` threads each running the chains; best of 5 runs.
Rate measure(int threads, long long iterations) {
  Rate best;
  const double flops_per_thread = 2.0 * kLanes * 16 * static_cast<double>(iterations);
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<std::thread> pool;
    std::vector<float> sink(static_cast<size_t>(threads));
    std::vector<double> cpu(static_cast<size_t>(threads));
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const double c0 = thread_cpu_s();
        sink[static_cast<size_t>(t)] = fma_chains(iterations, 1.0f + static_cast<float>(t));
        cpu[static_cast<size_t>(t)] = thread_cpu_s() - c0;
      });
    }
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best.wall = std::max(best.wall, flops_per_thread * threads / s / 1e9);
    for (double c : cpu) best.per_thread = std::max(best.per_thread, flops_per_thread / c / 1e9);
    if (sink[0] == 12345.0f) std::puts("");
  }
  return best;
}

}  // namespace

int main() {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const long long iterations = 50'000'000;
  std::printf("fp32 FMA peak, %d-lane vectors, 16 chains\n", kLanes);
  const Rate one = measure(1, iterations);
  const Rate all = measure(cores, iterations);
  std::printf("1 core:    %.1f GFLOP/s (wall), %.1f GFLOP/s (own CPU time)\n", one.wall, one.per_thread);
  std::printf("%d cores:   %.1f GFLOP/s (wall), %.1f GFLOP/s per core (own CPU time)\n", cores,
              all.wall, all.per_thread);
}
