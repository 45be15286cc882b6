// The subcommands' work. gen and compile never touch the driver, so they run on machines with no
// GPU (CI compiles every variant there); info, check and bench need one and say why not.
#include "cli/commands.h"
#include "cli/json.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string_view>
#include <vector>

#include "generator/generator.h"
#include "generator/kernel_spec.h"
#include "jitattn/engine.h"
#include "jitattn/error.h"
#include "runtime/backend.h"
#include "runtime/device/cpu_jit.h"
#include "runtime/device/driver.h"
#include "runtime/device/nvrtc.h"
#include "runtime/harness.h"
#include "runtime/plan.h"
#include "runtime/problem.h"

#ifndef JITATTN_VERSION
#define JITATTN_VERSION "unknown"
#endif

namespace jitattn::cli {
namespace {

// ---- Human output helpers. ----

std::string format_bytes(double bytes) {
  if (bytes >= 1024.0 * 1024 * 1024) return fmt::format("{:.1f} GiB", bytes / (1024.0 * 1024 * 1024));
  if (bytes >= 1024.0 * 1024) return fmt::format("{:.1f} MiB", bytes / (1024.0 * 1024));
  if (bytes >= 1024.0) return fmt::format("{:.1f} KiB", bytes / 1024.0);
  return fmt::format("{} B", bytes);
}

void line(std::string_view label, std::string_view value) {
  fmt::print("{:<10} {}\n", label, value);
}

std::string compiled_text(const KernelReport& k) {
  return k.compiled_now ? fmt::format("compiled now, {:.0f} ms", k.compile_ms)
         : k.binary_from_cache ? std::string("binary from the cache (no compile)")
                               : std::string("already loaded");
}

// Which config ran and why: "exact (tuned, ...)" / "nearest (...)" / "default (...)" / "forced".
std::string config_text(const KernelReport& k) {
  // The cache's reasons start with the lookup's own word ("exact: ..."): say it once.
  std::string_view reason = k.config_reason;
  if (reason.starts_with(k.config_source + ": ")) reason.remove_prefix(k.config_source.size() + 2);
  return fmt::format("{} [{}: {}]", k.config, k.config_source, reason);
}

// ---- From a problem description to a kernel, with no device. ----

// Accepts sm_90, sm90, 90 and sm_90a (the arch-specific target, for compile).
int parse_arch(const std::string& text, bool* arch_specific) {
  std::string_view s = text;
  if (s.starts_with("sm_")) s.remove_prefix(3);
  else if (s.starts_with("sm")) s.remove_prefix(2);
  *arch_specific = !s.empty() && s.back() == 'a';
  if (*arch_specific) s.remove_suffix(1);
  int sm = 0;
  bool digits = !s.empty() && s.size() <= 3;
  for (const char c : s) {
    digits = digits && c >= '0' && c <= '9';
    sm = sm * 10 + (c - '0');
  }
  if (!digits) throw InvalidArgument("arch", fmt::format("expected sm_XX (e.g. sm_80, sm_90), got '{}'", text));
  // The kernel family is mma.sync + cp.async: nothing older than Ampere can run it.
  if (sm < 80) throw InvalidArgument("arch", fmt::format("sm_{} is unsupported: the kernels need sm_80 or newer", sm));
  return sm;
}

// A tensor at a fake address: validate() checks alignment and shapes but never dereferences.
TensorRef fake_tensor(uintptr_t address, DType dtype, std::array<int64_t, 4> shape,
                      const std::array<int, 4>& layout) {
  TensorRef t;
  t.data = reinterpret_cast<const void*>(address);
  t.dtype = dtype;
  t.shape = shape;
  int64_t stride = 1;
  for (size_t i = 4; i-- > 0;) {  // innermost physical dim first
    const auto dim = static_cast<size_t>(layout[i]);
    t.stride[dim] = stride;
    stride *= shape[dim];
  }
  return t;
}

// Runs the same validation users get from forward(), on AttentionArgs shaped like the ones the
// harness builds, so gen/compile refuse exactly what check/bench would.

struct BuiltKernel {
  KernelSpec spec;
  TileConfig config;
  KernelSource source;
};

// `sm` 0 means the CPU backend (--arch cpu). `backward`: the backward pass's module (the spec the
// runtime's backward builds), `deterministic` its deterministic mode.
BuiltKernel build_kernel(const harness::ProblemDesc& desc, const std::string& config, int sm,
                         bool backward = false, bool deterministic = false) {
  BuiltKernel k;
  const bool cpu = sm == 0;
  const Problem problem = problem_without_device(desc);
  k.spec = backward ? make_backward_spec(problem, Target{sm, cpu}, deterministic) : make_spec(problem, Target{sm, cpu});
  const DeviceLimits limits = cpu ? limits_for_cpu() : limits_for_arch(sm);
  k.config = config.empty() ? default_config(k.spec, limits, ShapeHint{problem.seqlen_k}) : parse_config(config);
  if (auto why = why_illegal(k.spec, k.config, limits)) {
    throw Unsupported(fmt::format("config {} is illegal for this problem on {}: {}", k.config.canonical(),
                                  cpu ? std::string("the CPU") : fmt::format("sm_{}", sm), *why));
  }
  k.source = generate(k.spec, k.config, limits);
  return k;
}

// peers.py's mask names: none, causal, bias (its ALiBi bias), window (causal sliding window).
// Combinations peers.py does not run are joined with '+'.
std::string peers_mask(const harness::ProblemDesc& d) {
  std::string s;
  auto append = [&s](std::string_view part) { s += s.empty() ? std::string(part) : "+" + std::string(part); };
  if (d.window) append("window");
  else if (d.mask != MaskKind::none) append(mask_flag(d.mask));
  if (d.alibi || d.bias != "none") append("bias");
  return s.empty() ? "none" : s;
}

std::string driver_version_text(int v) { return fmt::format("{}.{}", v / 1000, (v % 1000) / 10); }

}  // namespace

// ---- Devices. ----

// check and bench need the requested device (auto resolved: a GPU when present, else the CPU);
// say what is missing, not just "failed". Returns the resolved device.
Device require_device(Device wanted) {
  const Device d = harness::resolve_device(wanted);
  if (d.kind == Device::Kind::cpu) {
    cpu_backend();  // Unsupported when this build has no LLVM
    return d;
  }
  const int ordinal = d.ordinal;
  std::string reason;
  if (!device::driver_available(&reason)) throw NoDevice(reason);
  const int count = device::device_count();
  if (count == 0) throw NoDevice("the CUDA driver is loaded but reports no devices");
  if (ordinal >= count) {
    throw InvalidArgument("device", fmt::format("ordinal {} is out of range: this machine has {} "
                                                "device(s)",
                                                ordinal, count));
  }
  return d;
}



// ---- info ----

int run_info(const InfoOptions& o) {
  const std::string nvrtc = device::nvrtc_version();
  const std::vector<int> archs = device::nvrtc_supported_archs();
  std::string reason;
  const bool have_driver = device::driver_available(&reason);
  const int driver_version = have_driver ? device::driver().version : 0;
  const int count = have_driver ? device::device_count() : 0;
  if (have_driver && count == 0) reason = "the CUDA driver is loaded but reports no devices";

  std::vector<device::DeviceInfo> devices;
  for (int i = 0; i < count; ++i) devices.push_back(device::device_info(i));
  const bool have_cpu = device::cpu_jit_available();
  const device::HostCpu& cpu = device::host_cpu();

  if (o.json) {
    std::string arch_list, device_list;
    for (const int a : archs) arch_list += fmt::format("{}{}", arch_list.empty() ? "" : ", ", json_string(fmt::format("sm_{}", a)));
    for (const auto& d : devices) {
      JsonObject j;
      j.add("ordinal", d.ordinal).add("name", d.name).add("arch", fmt::format("sm_{}", d.sm()))
          .add("sm_count", d.sm_count).add("l2_bytes", d.l2_bytes)
          .add("max_shared_per_block_optin", d.max_shared_per_block_optin)
          .add("total_mem_bytes", d.total_mem);
      device_list += (device_list.empty() ? "" : ", ") + j.str();
    }
    JsonObject j;
    j.add("version", JITATTN_VERSION).add("generator_version", kGeneratorVersion)
        .add("nvrtc_version", nvrtc).raw("nvrtc_archs", "[" + arch_list + "]")
        .add("driver_available", have_driver);
    if (have_driver) j.add("driver_version", driver_version_text(driver_version));
    else j.raw("driver_version", "null");
    if (count == 0) j.add("no_device_reason", reason);
    j.raw("devices", "[" + device_list + "]");
    JsonObject c;
    c.add("available", have_cpu);
    if (have_cpu) {
      c.add("llvm_version", device::llvm_version()).add("triple", cpu.triple).add("name", cpu.name)
          .add("features", cpu.features).add("threads", cpu.threads).add("l2_bytes", cpu.l2_bytes)
          .add("arch", cpu.arch_key());
    } else {
      c.add("reason", "built without LLVM (JITATTN_WITH_LLVM=OFF)");
    }
    j.raw("cpu", c.str());
    fmt::print("{}\n", j.str());
  } else {
    line("jitattn", fmt::format("{} (generator {})", JITATTN_VERSION, kGeneratorVersion));
    std::string arch_list;
    for (const int a : archs) arch_list += fmt::format(" sm_{}", a);
    line("nvrtc", fmt::format("{} (targets{})", nvrtc, arch_list));
    line("driver", have_driver ? fmt::format("available, CUDA {}", driver_version_text(driver_version))
                               : fmt::format("unavailable: {}", reason));
    line("devices", fmt::format("{}", count));
    for (const auto& d : devices) {
      fmt::print("  [{}] {}  sm_{}  {} SMs  L2 {}  smem opt-in {}  memory {}\n", d.ordinal, d.name,
                 d.sm(), d.sm_count, format_bytes(d.l2_bytes),
                 format_bytes(d.max_shared_per_block_optin),
                 format_bytes(static_cast<double>(d.total_mem)));
    }
    line("cpu", have_cpu ? fmt::format("{} {}, {} threads, L2 {}, LLVM {} ({})", cpu.triple, cpu.name, cpu.threads,
                                       format_bytes(static_cast<double>(cpu.l2_bytes)), device::llvm_version(),
                                       cpu.arch_key())
                         : std::string("no CPU backend (built without LLVM)"));
  }
  // Without a GPU the CPU backend still runs everything; with neither there is nothing to run on.
  if (count == 0 && !have_cpu) {
    fmt::print(stderr, "error: no GPU ({}) and no CPU backend\n", reason);
    return kExitUsage;
  }
  if (count == 0) fmt::print(stderr, "note: no GPU ({}); the CPU backend runs every command\n", reason);
  return 0;
}

// ---- gen / compile ----

int run_gen(const GenOptions& o) {
  bool arch_specific = false;
  const int sm = o.arch == "cpu" ? 0 : parse_arch(o.arch, &arch_specific);
  const BuiltKernel k = build_kernel(problem_desc(o.problem), o.problem.config, sm, o.backward, o.deterministic);
  fmt::print("{}", k.source.source);
  return 0;
}

// --arch cpu: the in-process clang compile of the CPU kernel (object size, compile time).
int compile_cpu_kernel(const CompileOptions& o) {
  const harness::ProblemDesc desc = problem_desc(o.problem);
  const BuiltKernel k = build_kernel(desc, o.problem.config, 0, o.backward, o.deterministic);
  const device::CpuCompileResult r = device::compile_cpu(k.source.source, k.source.name);
  const std::string target = device::host_cpu().arch_key();
  if (o.json) {
    JsonObject j;
    j.add("kernel", k.source.name).add("pass", o.backward ? "backward" : "forward")
        .add("spec", k.spec.canonical()).add("config", k.config.canonical()).add("arch", target).add("problem", harness::describe(desc)).add("llvm_version", device::llvm_version())
        .add("object_bytes", r.object.size()).add("compile_ms", r.compile_ms);
    fmt::print("{}\n", j.str());
    return 0;
  }
  line("kernel", k.source.name);
  line("spec", k.spec.canonical());
  line("config", k.config.canonical());
  line("arch", fmt::format("{} (LLVM {}, {})", target, device::llvm_version(), device::host_cpu().triple));
  line("object", fmt::format("{} B", r.object.size()));
  line("compile", fmt::format("{:.1f} ms", r.compile_ms));
  return 0;
}

int run_compile(const CompileOptions& o) {
  if (o.arch == "cpu") return compile_cpu_kernel(o);
  bool arch_specific = false;
  const int sm = parse_arch(o.arch, &arch_specific);
  const harness::ProblemDesc desc = problem_desc(o.problem);
  const BuiltKernel k = build_kernel(desc, o.problem.config, sm, o.backward, o.deterministic);
  const device::CompileResult r =
      device::compile_to_cubin(k.source.source, k.source.name, sm, arch_specific || k.source.arch_specific);
  const std::string arch = fmt::format("sm_{}{}", sm, arch_specific || k.source.arch_specific ? "a" : "");
  if (o.json) {
    JsonObject j;
    j.add("kernel", k.source.name).add("pass", o.backward ? "backward" : "forward")
        .add("spec", k.spec.canonical()).add("config", k.config.canonical()).add("arch", arch).add("problem", harness::describe(desc)).add("registers", r.registers)
        .add("spill_store_bytes", r.spill_store_bytes).add("spill_load_bytes", r.spill_load_bytes)
        .add("stack_frame_bytes", r.stack_frame_bytes).add("shared_bytes", k.source.shared_bytes)
        .add("static_shared_bytes", r.static_shared_bytes).add("wgmma_serialized", r.wgmma_serialized)
        .add("threads", k.source.threads)
        .add("cubin_bytes", r.cubin.size()).add("compile_ms", r.compile_ms);
    fmt::print("{}\n", j.str());
    return 0;
  }
  line("kernel", k.source.name);
  line("spec", k.spec.canonical());
  line("config", fmt::format("{} ({} threads)", k.config.canonical(), k.source.threads));
  line("arch", arch);
  line("registers", r.registers < 0 ? std::string("not reported") : fmt::format("{}", r.registers));
  line("spills", fmt::format("{} B stores, {} B loads{}", r.spill_store_bytes, r.spill_load_bytes,
                             r.spill_store_bytes + r.spill_load_bytes > 0 ? "  (SPILLS)" : ""));
  line("stack", fmt::format("{} B", r.stack_frame_bytes));
  if (r.wgmma_serialized) line("wgmma", r.wgmma_note + "  (SERIALIZED)");
  line("shared", fmt::format("{} B dynamic, {} B static", k.source.shared_bytes, r.static_shared_bytes));
  line("cubin", fmt::format("{} B", r.cubin.size()));
  line("compile", fmt::format("{:.1f} ms", r.compile_ms));
  return 0;
}

// ---- check ----

namespace {

int run_check_backward(const CheckOptions& o) {
  harness::ProblemDesc desc = problem_desc(o.problem);
  desc.lse = true;  // backward reads the forward's LSE
  desc.device = require_device(desc.device);
  Engine engine;
  BackwardOptions options;
  options.config = o.problem.config;
  options.deterministic = o.deterministic;
  harness::Runner runner(desc);
  const harness::BackwardCheckResult r = runner.check_backward(engine, options);
  const std::string flags = fmt::format("{} --seed {}{}", to_flags(desc), r.seed,
                                        o.deterministic ? " --deterministic" : "");
  if (o.json) {
    JsonObject j;
    j.add("problem", harness::describe(desc)).add("flags", flags).add("mode", "bwd")
        .add("deterministic", o.deterministic).add("kernel", r.kernel.name)
        .add("config", r.kernel.config).add("config_source", r.kernel.config_source)
        .add("forward_kernel", r.forward.kernel.name).add("forward_rel_err", r.forward.rel_err)
        .add("forward_lse_rel_err", r.forward.lse_rel_err).add("forward_pass", r.forward.pass)
        .add("dq_rel_err", r.dq_err).add("dk_rel_err", r.dk_err).add("dv_rel_err", r.dv_err);
    if (desc.dbias) j.add("dbias_rel_err", r.dbias_err);
    else j.raw("dbias_rel_err", "null");
    j.add("tolerance", r.tolerance).add("pass", r.pass).add("seed", r.seed);
    fmt::print("{}\n", j.str());
  } else {
    line("problem", harness::describe(desc));
    line("flags", flags);
    line("forward", fmt::format("{}  rel err {:.3e}, lse {:.3e}", r.forward.kernel.name,
                                r.forward.rel_err, r.forward.lse_rel_err));
    line("kernel", fmt::format("{} ({})", r.kernel.name, compiled_text(r.kernel)));
    line("config", config_text(r.kernel));
    line("dq err", fmt::format("{:.3e}", r.dq_err));
    line("dk err", fmt::format("{:.3e}", r.dk_err));
    line("dv err", fmt::format("{:.3e}", r.dv_err));
    if (desc.dbias) line("dbias err", fmt::format("{:.3e}", r.dbias_err));
    line("tolerance", fmt::format("{:.0e} (relative norm)", r.tolerance));
    line("result", fmt::format("{}  (seed {})", r.pass ? "PASS" : "FAIL", r.seed));
  }
  return r.pass ? 0 : 1;
}

}  // namespace

int run_check(const CheckOptions& o) {
  if (o.backward) return run_check_backward(o);
  if (o.deterministic) throw InvalidArgument("deterministic", "is a backward option (add --backward)");
  harness::ProblemDesc desc = problem_desc(o.problem);
  desc.device = require_device(desc.device);
  Engine engine;
  ForwardOptions options;
  options.config = o.problem.config;
  const harness::CheckResult r = harness::check(engine, desc, options);
  const std::string flags = fmt::format("{} --seed {}", to_flags(desc), r.seed);
  if (o.json) {
    JsonObject j;
    j.add("problem", harness::describe(desc)).add("flags", flags).add("kernel", r.kernel.name)
        .add("config", r.kernel.config).add("config_source", r.kernel.config_source)
        .add("config_reason", r.kernel.config_reason).add("compiled_now", r.kernel.compiled_now)
        .add("binary_from_cache", r.kernel.binary_from_cache)
        .add("max_abs_err", r.max_abs_err).add("rel_err", r.rel_err);
    if (desc.lse) j.add("lse_rel_err", r.lse_rel_err).add("lse_inf_match", r.lse_inf_match);
    else j.raw("lse_rel_err", "null");
    j.add("tolerance", r.tolerance).add("pass", r.pass).add("seed", r.seed);
    fmt::print("{}\n", j.str());
  } else {
    line("problem", harness::describe(desc));
    line("flags", flags);
    line("kernel", fmt::format("{} ({})", r.kernel.name, compiled_text(r.kernel)));
    line("config", config_text(r.kernel));
    line("max abs", fmt::format("{:.3e}", r.max_abs_err));
    line("rel err", fmt::format("{:.3e}  (tolerance {:.0e})", r.rel_err, r.tolerance));
    if (desc.lse) {
      line("lse err", fmt::format("{:.3e}{}", r.lse_rel_err,
                                  r.lse_inf_match ? "" : "  (-inf rows differ from the reference)"));
    }
    line("result", fmt::format("{}  (seed {})", r.pass ? "PASS" : "FAIL", r.seed));
  }
  return r.pass ? 0 : 1;
}

// ---- bench ----

namespace {

std::string bench_json(const harness::ProblemDesc& d, const harness::BenchResult& r,
                       std::string_view grid_mask = {}, std::string_view mode = "fwd") {
  JsonObject j;
  j.add("problem", harness::describe(d)).add("dtype", dtype_flag(d.dtype)).add("b", d.batch)
      .add("h", d.heads_q).add("s", d.seqlen_q).add("d", d.head_dim).add("mask", peers_mask(d))
      .add("mode", mode).add("backend", "jitattn").add("flags", to_flags(d))
      .add("kernel", r.kernel.name).add("config", r.kernel.config)
      .add("config_source", r.kernel.config_source).add("binary_from_cache", r.kernel.binary_from_cache)
      .add("ms", r.median_ms)
      .add("p20_ms", r.p20_ms).add("p80_ms", r.p80_ms).add("tflops", r.tflops)
      .add("samples", r.samples);
  if (!grid_mask.empty()) j.add("grid_mask", grid_mask);
  return j.str();
}

std::vector<int> parse_int_list(const std::string& text, const char* flag) {
  std::vector<int> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v <= 0) {
      throw InvalidArgument(flag, fmt::format("expected a comma-separated list of positive "
                                              "integers, got '{}'",
                                              text));
    }
    out.push_back(v);
    start = comma + 1;
  }
  return out;
}

std::vector<std::string> parse_grid_masks(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    std::string m = text.substr(start, comma - start);
    if (m != "none" && m != "causal" && m != "alibi" && m != "bias" && m != "window") {
      throw InvalidArgument("masks", fmt::format("expected names from none, causal, alibi, bias, "
                                                 "window, got '{}'",
                                                 m));
    }
    out.push_back(std::move(m));
    start = comma + 1;
  }
  return out;
}

struct GridRow {
  harness::ProblemDesc desc;
  std::string mask;  // the grid's name: none/causal/alibi/bias/window
  int head_dim = 0;  // grid coordinates, known even when the row's flags were refused
  int seqlen = 0;
  int batch = 0;
  std::optional<harness::BenchResult> result;
  std::string error;
};

int run_grid(const BenchOptions& o) {
  const std::vector<int> hdims = parse_int_list(o.hdims, "hdims");
  const std::vector<int> seqlens = parse_int_list(o.seqlens, "seqlens");
  const std::vector<std::string> masks = parse_grid_masks(o.masks);
  if (o.window_size <= 0) throw InvalidArgument("window-size", fmt::format("must be > 0, got {}", o.window_size));
  const Device where = require_device(Device::parse(o.problem.device));

  Engine engine;
  ForwardOptions options;
  options.config = o.problem.config;
  std::vector<GridRow> rows;
  for (const int d : hdims) {
    for (const int s : seqlens) {
      for (const std::string& mask : masks) {
        // Sizes and masks come from the grid; every other flag (dtype, layout, lse, ...) applies
        // to each row as given.
        ProblemFlags f = o.problem;
        f.head_dim = d;
        f.head_dim_v = 0;
        f.seqlen_q = s;
        f.seqlen_k = 0;
        f.tokens = f.tokens > 0 ? f.tokens : 16384;  // peers.py's defaults
        f.width = f.width > 0 ? f.width : 2048;
        f.mask = mask == "causal" || mask == "window" ? "causal" : "none";
        f.window = mask == "window" ? fmt::format("{},0", o.window_size - 1) : "";
        f.alibi = mask == "alibi";
        f.bias = mask == "bias" ? "1hqk" : "none";
        GridRow row;
        row.mask = mask;
        row.head_dim = d;
        row.seqlen = s;
        row.batch = std::max(1, f.tokens / s);
        try {
          row.desc = problem_desc(f);
          row.desc.device = where;
          row.result = harness::bench(engine, row.desc, options, o.budget_ms, o.reps);
          if (o.json) fmt::print("{}\n", bench_json(row.desc, *row.result, mask));
          else fmt::print("{:<60} {:>9.3f} ms {:>8.1f} TFLOP/s\n", harness::describe(row.desc), row.result->median_ms, row.result->tflops);
        } catch (const std::exception& e) {
          const std::string what = e.what();
          row.error = what.substr(0, what.find('\n'));
          fmt::print(stderr, "error: d{} s{} {}: {}\n", d, s, mask, what);
          if (o.json) {
            JsonObject j;
            // peers.py's "bias" is ALiBi; our alibi and bias rows both map to it.
            const std::string peers = mask == "alibi" ? "bias" : mask;
            j.add("dtype", o.problem.dtype).add("b", row.batch)
                .add("h", std::max(1, f.width / d)).add("s", s).add("d", d).add("mask", peers)
                .add("mode", "fwd").add("backend", "jitattn").add("grid_mask", mask)
                .add("error", row.error);
            fmt::print("{}\n", j.str());
          }
        }
        std::fflush(stdout);
        rows.push_back(std::move(row));
      }
    }
  }

  // The same columns and widths as peers.py's table, so the two can be read side by side.
  fmt::print("\n{:<5} {:<4} {:<6} {:<4} {:<7} {:<7} {:<10} {:>9} {:>8}\n", "dtype", "d", "s", "b",
             "mask", "mode", "backend", "ms", "TFLOP/s");
  bool all_ran = true;
  for (const GridRow& r : rows) {
    const std::string head = fmt::format("{:<5} {:<4} {:<6} {:<4} {:<7} {:<7} {:<10}",
                                         o.problem.dtype, r.head_dim, r.seqlen,
                                         r.batch, r.mask, "fwd", "jitattn");
    if (r.result) {
      fmt::print("{} {:>9.3f} {:>8.1f}\n", head, r.result->median_ms, r.result->tflops);
    } else {
      fmt::print("{}  refused: {}\n", head, r.error.substr(0, 60));
      all_ran = false;
    }
  }
  return all_ran ? 0 : 1;
}

}  // namespace

int run_bench(const BenchOptions& o) {
  if (o.budget_ms <= 0) throw InvalidArgument("budget-ms", fmt::format("must be > 0, got {}", o.budget_ms));
  if (o.reps < 0) throw InvalidArgument("reps", fmt::format("must be >= 0 (0: by --budget-ms), got {}", o.reps));
  const bool backward = o.backward || o.fwd_bwd;
  if (o.backward && o.fwd_bwd) throw InvalidArgument("fwd-bwd", "choose one of --backward and --fwd-bwd");
  if (o.grid && backward) throw InvalidArgument("grid", "--grid times the forward pass only");
  if (o.deterministic && !backward) {
    throw InvalidArgument("deterministic", "is a backward option (add --backward or --fwd-bwd)");
  }
  if (o.grid) return run_grid(o);
  harness::ProblemDesc desc = problem_desc(o.problem);
  desc.device = backward ? require_device(desc.device) : require_device(desc.device);
  Engine engine;
  harness::BenchResult r;
  // peers.py's mode names: "bwd" and "fwd_bwd".
  const std::string_view mode = o.fwd_bwd ? "fwd_bwd" : o.backward ? "bwd" : "fwd";
  if (backward) {
    desc.lse = true;
    BackwardOptions options;
    options.config = o.problem.config;  // the backward's config; the forward uses its default
    options.deterministic = o.deterministic;
    harness::Runner runner(desc);
    r = runner.bench_backward(engine, o.fwd_bwd, options, o.budget_ms, o.reps);
  } else {
    ForwardOptions options;
    options.config = o.problem.config;
    r = harness::bench(engine, desc, options, o.budget_ms, o.reps);
  }
  if (o.json) {
    fmt::print("{}\n", bench_json(desc, r, {}, mode));
    return 0;
  }
  line("problem", harness::describe(desc));
  line("kernel", fmt::format("{} ({})", r.kernel.name, compiled_text(r.kernel)));
  line("config", config_text(r.kernel));
  line("time", fmt::format("median {:.4f} ms  p20 {:.4f}  p80 {:.4f}  ({} samples)", r.median_ms,
                           r.p20_ms, r.p80_ms, r.samples));
  line("mode", std::string(mode));
  if (r.kernel.backend == "cpu") {  // CPU rates read better in GFLOP/s
    line("speed", fmt::format("{:.1f} GFLOP/s  ({:.3g} FLOP, peers.py's count)", r.tflops * 1e3, r.flops));
  } else {
    line("speed", fmt::format("{:.1f} TFLOP/s  ({:.3g} FLOP, peers.py's count)", r.tflops, r.flops));
  }
  return 0;
}

// Declared in commands.h: the validated Problem of a description, without device memory.
Problem problem_without_device(const harness::ProblemDesc& d) {
  uintptr_t next = 0x10000000;
  auto address = [&next] { return next += 0x1000000; };  // distinct, 256-byte aligned
  const bool packed = d.varlen == VarlenKind::packed;
  const int64_t b = packed ? 1 : d.batch;
  const int64_t sq = packed ? int64_t{d.batch} * d.seqlen_q : d.seqlen_q;
  const int64_t sk = packed ? int64_t{d.batch} * d.seqlen_k : d.seqlen_k;
  AttentionArgs a;
  a.q = fake_tensor(address(), d.dtype, {b, sq, d.heads_q, d.head_dim}, d.layout);
  a.k = fake_tensor(address(), d.dtype, {b, sk, d.heads_kv, d.head_dim}, d.layout);
  a.v = fake_tensor(address(), d.dtype, {b, sk, d.heads_kv, d.dv()}, d.layout);
  a.o = fake_tensor(address(), d.dtype, {b, sq, d.heads_q, d.dv()}, d.layout);
  a.mask = d.mask;
  a.window = d.window;
  a.softcap = d.softcap;
  a.scale = d.scale;
  a.varlen = d.varlen;
  a.dropout_p = d.dropout_p;
  if (d.lse) a.lse = reinterpret_cast<float*>(address());
  if (d.alibi) a.alibi_slopes = reinterpret_cast<const float*>(address());
  if (d.bias != "none") {
    const int64_t full[4] = {d.batch, d.heads_q, d.seqlen_q, d.seqlen_k};
    std::array<int64_t, 4> shape{};
    for (size_t i = 0; i < 4; ++i) shape[i] = d.bias[i] == '1' ? 1 : full[i];
    a.bias = fake_tensor(address(), d.dtype, shape, {0, 1, 2, 3});
  }
  if (packed) {
    a.cu_seqlens_q = reinterpret_cast<const int32_t*>(address());
    a.cu_seqlens_k = reinterpret_cast<const int32_t*>(address());
    a.batch = d.batch;
    a.max_seqlen_q = d.seqlen_q;
    a.max_seqlen_k = d.seqlen_k;
  } else if (d.varlen == VarlenKind::padded) {
    a.seqused_q = reinterpret_cast<const int32_t*>(address());
    a.seqused_k = reinterpret_cast<const int32_t*>(address());
  }
  return validate(a);
}

}  // namespace jitattn::cli
