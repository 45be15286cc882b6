// The baseline of issue 5's speed goal: a straightforward float attention as one would write it
// first (per query row: scores by a dot product per key, softmax with std::exp, then the
// weighted sum of V rows), compiled with -O3 -march=native. fp32, [batch, seq, heads, dim].
// Runs on one thread and on every core (rows of (batch, head) pairs spread over threads).
//
//   cpu_naive_attention [d=64] [seqlen=2048] [heads=8] [batch=1]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

namespace {

struct Shape {
  int d = 64, seqlen = 2048, heads = 8, batch = 1;
};

// Heads [h0, h1) of every batch.
void attention(const Shape& s, const float* q, const float* k, const float* v, float* o, int h0, int h1) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
  const long long row = static_cast<long long>(s.heads) * s.d;
  std::vector<float> p(static_cast<size_t>(s.seqlen));
  for (int b = 0; b < s.batch; ++b) {
    for (int h = h0; h < h1; ++h) {
      const long long base = static_cast<long long>(b) * s.seqlen * row + static_cast<long long>(h) * s.d;
      for (int i = 0; i < s.seqlen; ++i) {
        const float* qi = q + base + i * row;
        float mx = -INFINITY;
        for (int j = 0; j < s.seqlen; ++j) {
          const float* kj = k + base + j * row;
          float dot = 0.0f;
          for (int e = 0; e < s.d; ++e) dot += qi[e] * kj[e];
          p[static_cast<size_t>(j)] = dot * scale;
          mx = std::max(mx, p[static_cast<size_t>(j)]);
        }
        float sum = 0.0f;
        for (int j = 0; j < s.seqlen; ++j) {
          p[static_cast<size_t>(j)] = std::exp(p[static_cast<size_t>(j)] - mx);
          sum += p[static_cast<size_t>(j)];
        }
        float* oi = o + base + i * row;
        for (int e = 0; e < s.d; ++e) oi[e] = 0.0f;
        for (int j = 0; j < s.seqlen; ++j) {
          const float* vj = v + base + j * row;
          for (int e = 0; e < s.d; ++e) oi[e] += p[static_cast<size_t>(j)] * vj[e];
        }
        for (int e = 0; e < s.d; ++e) oi[e] /= sum;
      }
    }
  }
}

double time_ms(const Shape& s, const std::vector<float>& q, const std::vector<float>& k,
               const std::vector<float>& v, std::vector<float>& o, int threads) {
  double best = 1e300;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      const int h0 = s.heads * t / threads, h1 = s.heads * (t + 1) / threads;
      pool.emplace_back([&, h0, h1] { attention(s, q.data(), k.data(), v.data(), o.data(), h0, h1); });
    }
    for (auto& th : pool) th.join();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  Shape s;
  if (argc > 1) s.d = std::atoi(argv[1]);
  if (argc > 2) s.seqlen = std::atoi(argv[2]);
  if (argc > 3) s.heads = std::atoi(argv[3]);
  if (argc > 4) s.batch = std::atoi(argv[4]);
  const size_t n = static_cast<size_t>(s.batch) * s.seqlen * s.heads * s.d;
  std::vector<float> q(n), k(n), v(n), o(n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (size_t i = 0; i < n; ++i) {
    q[i] = u(rng);
    k[i] = u(rng);
    v[i] = u(rng);
  }
  const double flops = 4.0 * s.batch * s.heads * double(s.seqlen) * s.seqlen * s.d;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::printf("naive fp32 attention b%d h%d s%d d%d\n", s.batch, s.heads, s.seqlen, s.d);
  for (int t : {1, cores}) {
    const double ms = time_ms(s, q, k, v, o, t);
    std::printf("%d thread%s: %9.1f ms  %7.2f GFLOP/s\n", t, t == 1 ? " " : "s", ms, flops / ms * 1e-6);
  }
}
