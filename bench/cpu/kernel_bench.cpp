// Times generated CPU kernels directly through the device layer (generate -> compile_cpu ->
// CpuModule::load -> parallel_for), below the engine: fp32 inputs in [batch, seq, heads, dim],
// median of repeated runs, FLOP/s counted as 4 * b * h * sq * sk * d (halved when causal).
//
//   cpu_kernel_bench [--d 64] [--dv D] [--seqlen 2048] [--batch 1] [--heads 8] [--causal]
//                    [--dtype f32|bf16|f16] [--config cpu_bm32_bn64 | --sweep] [--threads N]
//                    [--seconds 2] [--rounds 1] [--emit] [--variant FILE]...
// --sweep times every legal config of the menu and prints one line each (the data behind
// default_config's CPU branch, bench/NOTES.md). --rounds N repeats the whole list N times,
// interleaved, and reports each kernel's best median and the median of its medians (other
// processes on a small machine make single runs noisy). --emit prints the generated source of
// the config; --variant FILE times edited copies of it (same kernel name) beside the generated
// one, for A/B experiments on the template.
// Besides wall-clock FLOP/s, each line gives FLOP/s per busy core: FLOPs over the CPU time the
// process used (getrusage), which time-slicing with other processes does not dilute.
#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "generator/generator.h"
#include "runtime/device/cpu_jit.h"
#include "runtime/numeric.h"
#include "runtime/plan.h"

namespace {

using namespace jitattn;

struct Options {
  int d = 64, dv = 0, seqlen = 2048, batch = 1, heads = 8, threads = 0;
  bool causal = false, sweep = false;
  DType dtype = DType::f32;
  std::string config;
  double seconds = 2.0;
  int rounds = 1;
  bool emit = false;
  std::vector<std::string> variants;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        fmt::print(stderr, "{} needs a value\n", a);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--d") o.d = std::stoi(next());
    else if (a == "--dv") o.dv = std::stoi(next());
    else if (a == "--seqlen") o.seqlen = std::stoi(next());
    else if (a == "--batch") o.batch = std::stoi(next());
    else if (a == "--heads") o.heads = std::stoi(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--causal") o.causal = true;
    else if (a == "--sweep") o.sweep = true;
    else if (a == "--dtype") o.dtype = parse_dtype(next());
    else if (a == "--config") o.config = next();
    else if (a == "--seconds") o.seconds = std::stod(next());
    else if (a == "--rounds") o.rounds = std::stoi(next());
    else if (a == "--emit") o.emit = true;
    else if (a == "--variant") o.variants.push_back(next());
    else {
      fmt::print(stderr, "unknown option {}\n", a);
      std::exit(2);
    }
  }
  if (o.dv == 0) o.dv = o.d;
  return o;
}

struct Buffers {
  std::vector<char> q, k, v, o;
};

std::vector<char> random_buffer(DType t, size_t n, std::mt19937_64& rng) {
  std::vector<char> b(n * static_cast<size_t>(dtype_size(t)));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (size_t i = 0; i < n; ++i) store_from_float(b.data(), t, static_cast<int64_t>(i), u(rng));
  return b;
}

struct Kernel {
  std::string label;
  TileConfig cfg;
  device::CpuModule module;
  double compile_ms = 0;
  std::vector<double> medians;
  std::vector<double> cpu_ms;  ///< CPU time per run (all threads), one entry per round
};

double process_cpu_ms() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return (static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 +
          static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-3);
}

Kernel compile(const std::string& label, const TileConfig& cfg, const std::string& name,
               const std::string& source) {
  const device::CpuCompileResult r = device::compile_cpu(source, name);
  return {label, cfg, device::CpuModule::load(r.object, name), r.compile_ms, {}, {}};
}

std::string read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    fmt::print(stderr, "cannot read {}\n", path);
    std::exit(2);
  }
  std::string text;
  char buf[65536];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  return text;
}

// Median time of repeated runs over about `seconds` (at least 3); *cpu_ms gets the mean CPU time
// of one run.
double time_kernel(const Options& o, const Kernel& kn, const jitattn_kernel::AttnFwdParams& params,
                   double* cpu_ms) {
  const device::CpuModule::Kernel k = kn.module.kernel();
  const long long items =
      static_cast<long long>(o.batch) * o.heads * ((o.seqlen + kn.cfg.block_m - 1) / kn.cfg.block_m);
  auto once = [&] {
    device::parallel_for(items, 1, [&](long long b, long long e) { k(&params, b, e); }, o.threads);
  };
  once();  // warm-up: page faults, caches
  std::vector<double> ms;
  const double cpu0 = process_cpu_ms();
  const auto start = std::chrono::steady_clock::now();
  while (ms.size() < 3 ||
         (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < o.seconds &&
          ms.size() < 1000)) {
    const auto t0 = std::chrono::steady_clock::now();
    once();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  *cpu_ms = (process_cpu_ms() - cpu0) / static_cast<double>(ms.size());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (!device::cpu_jit_available()) {
    fmt::print(stderr, "this build has no CPU backend (JITATTN_WITH_LLVM=OFF)\n");
    return 1;
  }
  std::mt19937_64 rng(42);
  const size_t rows = static_cast<size_t>(o.batch) * static_cast<size_t>(o.seqlen) * static_cast<size_t>(o.heads);
  Buffers b;
  b.q = random_buffer(o.dtype, rows * static_cast<size_t>(o.d), rng);
  b.k = random_buffer(o.dtype, rows * static_cast<size_t>(o.d), rng);
  b.v = random_buffer(o.dtype, rows * static_cast<size_t>(o.dv), rng);
  b.o.assign(rows * static_cast<size_t>(o.dv) * static_cast<size_t>(dtype_size(o.dtype)), 0);

  KernelSpec spec;
  spec.target.cpu = true;
  spec.dtype = o.dtype;
  spec.head_dim = o.d;
  spec.head_dim_v = o.dv;
  spec.mask = o.causal ? MaskKind::causal : MaskKind::none;
  spec.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(o.d)));

  jitattn_kernel::AttnFwdParams p{};
  p.q = b.q.data();
  p.k = b.k.data();
  p.v = b.v.data();
  p.o = b.o.data();
  const long long hs = o.heads;
  p.q_batch_stride = p.k_batch_stride = static_cast<long long>(o.seqlen) * hs * o.d;
  p.q_row_stride = p.k_row_stride = hs * o.d;
  p.q_head_stride = p.k_head_stride = o.d;
  p.v_batch_stride = p.o_batch_stride = static_cast<long long>(o.seqlen) * hs * o.dv;
  p.v_row_stride = p.o_row_stride = hs * o.dv;
  p.v_head_stride = p.o_head_stride = o.dv;
  p.seqlen_q = p.seqlen_k = o.seqlen;
  p.heads_q = o.heads;
  p.group = 1;
  p.window_left = p.window_right = -1;

  const double flops = 4.0 * o.batch * o.heads * double(o.seqlen) * o.seqlen * o.d * (o.causal ? 0.5 : 1.0);
  std::vector<TileConfig> configs;
  if (o.sweep) {
    for (int bm : {4, 8, 16, 32, 64}) {
      for (int bn : {16, 32, 64, 128, 256}) {
        if (!why_illegal(spec, cpu_config(bm, bn), limits_for_cpu())) configs.push_back(cpu_config(bm, bn));
      }
    }
  } else {
    configs.push_back(o.config.empty() ? default_config(spec, limits_for_cpu()) : parse_config(o.config));
  }
  const device::HostCpu& cpu = device::host_cpu();
  if (!o.emit) fmt::print("{} ({}), {} threads; {} b{} h{} s{} d{} dv{}{}\n", cpu.name, cpu.triple,
             o.threads > 0 ? o.threads : cpu.threads, dtype_name(o.dtype), o.batch, o.heads, o.seqlen,
             o.d, o.dv, o.causal ? " causal" : "");
  std::vector<Kernel> kernels;
  for (const TileConfig& cfg : configs) {
    const KernelSource src = generate(spec, cfg, limits_for_cpu());
    if (o.emit) {
      fmt::print("{}", src.source);
      return 0;
    }
    kernels.push_back(compile(cfg.canonical(), cfg, src.name, src.source));
    for (const std::string& path : o.variants) {
      kernels.push_back(compile(cfg.canonical() + " " + path, cfg, src.name, read_file(path)));
    }
  }
  for (int round = 0; round < o.rounds; ++round) {
    for (Kernel& k : kernels) {
      double cpu_ms = 0;
      k.medians.push_back(time_kernel(o, k, p, &cpu_ms));
      k.cpu_ms.push_back(cpu_ms);
    }
  }
  for (Kernel& k : kernels) {
    std::sort(k.medians.begin(), k.medians.end());
    std::sort(k.cpu_ms.begin(), k.cpu_ms.end());
    const double best = k.medians.front(), mid = k.medians[k.medians.size() / 2];
    fmt::print("{:24} best {:8.3f} ms {:6.1f} GFLOP/s  median {:8.3f} ms {:6.1f} GFLOP/s  per busy core {:6.1f} GFLOP/s  (compile {:.0f} ms)\n",
               k.label, best, flops / best * 1e-6, mid, flops / mid * 1e-6,
               flops / k.cpu_ms.front() * 1e-6, k.compile_ms);
  }
}
