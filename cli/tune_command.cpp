// `jitattn tune`: tune one problem or a plan of problems on this GPU (or the CPU backend) into the
// cache.
//
// Per spec: claim the key (so two processes never tune the same one), enumerate and prune the
// search space, compile the survivors in parallel and store their binaries, then verify each
// candidate against the float64 reference on a small problem of the same spec and time it on the
// real one (the same Runner code `jitattn bench` uses), committing every measurement as it
// completes. Already-measured configs are skipped, so an interrupted run resumes.
#include "cli/tune_command.h"

#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <iostream>
#include <set>
#include <sstream>

#include "cache/sha256.h"
#include "cache/store.h"
#include "cli/commands.h"
#include "generator/generator.h"
#include "jitattn/error.h"
#include "runtime/backend.h"
#include "runtime/device/driver.h"
#include "runtime/device/nvrtc.h"
#include "runtime/harness.h"
#include "runtime/plan.h"
#include "tuner/record.h"
#include "tuner/tuner.h"

namespace jitattn::cli {
namespace {

// The verification problem: the same spec on a small shape, so the reference is cheap. Sequence
// lengths keep their remainder mod 8, which decides whether a bias is streamed (a spec fact).
harness::ProblemDesc small_version(const harness::ProblemDesc& d) {
  harness::ProblemDesc s = d;
  const int group = std::max(1, d.heads_q / std::max(1, d.heads_kv));
  s.batch = std::min(d.batch, 2);
  s.heads_kv = 1;
  s.heads_q = group;
  auto shrink = [](int n) { return n <= 384 ? n : 384 + n % 8; };
  s.seqlen_q = shrink(d.seqlen_q);
  s.seqlen_k = shrink(d.seqlen_k);
  return s;
}

// Verifies on the small problem against the float64 reference, then times on the real one (GPU:
// CUDA events after an L2 flush; CPU: a steady clock).
class RunnerMeasurer : public tuner::Measurer {
 public:
  RunnerMeasurer(Engine& engine, const harness::ProblemDesc& desc, bool backward, bool deterministic)
      : engine_(engine), verify_(small_version(desc)), timing_(desc), backward_(backward),
        deterministic_(deterministic) {}

  tuner::Measurement measure(const tuner::Candidate& c, double budget_ms) override {
    tuner::Measurement m;
    ForwardOptions opt;
    opt.config = c.config.canonical();
    try {
      if (backward_) {
        BackwardOptions bopt;
        bopt.config = c.config.canonical();
        bopt.deterministic = deterministic_;
        const harness::BackwardCheckResult chk = verify_.check_backward(engine_, bopt);
        if (!chk.pass) {
          m.error = fmt::format("verification failed: dq {:.3e} dk {:.3e} dv {:.3e} (tol {:.0e})",
                                chk.dq_err, chk.dk_err, chk.dv_err, chk.tolerance);
          return m;
        }
        const harness::BenchResult b = timing_.bench_backward(engine_, false, bopt, budget_ms);
        m.ok = true;
        m.median_ms = b.median_ms;
        m.p20_ms = b.p20_ms;
        m.p80_ms = b.p80_ms;
        m.samples = b.samples;
        return m;
      }
      const harness::CheckResult chk = verify_.check(engine_, opt);
      if (!chk.pass) {
        m.error = fmt::format("verification failed: rel err {:.3e} (tol {:.0e})", chk.rel_err, chk.tolerance);
        return m;
      }
      const harness::BenchResult b = timing_.bench(engine_, opt, budget_ms);
      m.ok = true;
      m.median_ms = b.median_ms;
      m.p20_ms = b.p20_ms;
      m.p80_ms = b.p80_ms;
      m.samples = b.samples;
    } catch (const Error& e) {
      m.error = e.what();
    }
    return m;
  }

 private:
  Engine& engine_;
  harness::Runner verify_;
  harness::Runner timing_;
  bool backward_;
  bool deterministic_;
};

// Tunes one problem; returns false when it could not (claimed elsewhere, nothing ok).
bool tune_one(harness::ProblemDesc desc, const TuneOptions& o, std::ostream& out) {
  if (o.backward) desc.lse = true;  // backward reads the forward's LSE
  const BackendInfo backend =
      desc.device.kind == Device::Kind::cpu ? cpu_backend() : cuda_backend(desc.device.ordinal);
  const DeviceLimits& limits = backend.limits;
  const cache::DeviceKey& key = backend.key;
  const cache::TuningContext ctx = cache::current_context(key);

  Problem problem = problem_without_device(desc);
  problem.dbias = desc.dbias;
  const KernelSpec spec = o.backward ? make_backward_spec(problem, backend.target, o.deterministic)
                                     : make_spec(problem, backend.target);
  const std::string spec_hash = cache::hex64(spec.hash());
  const std::string bucket = tuner::shape_bucket(problem);
  out << fmt::format("tune {}\n  spec {} ({})\n  bucket {} on {} ({})\n", harness::describe(desc), spec_hash,
                     spec.canonical(), bucket, backend.name, key.arch);

  cache::Store store(o.cache_path.empty() ? cache::default_cache_path() : std::filesystem::path(o.cache_path));
  const std::string claim = fmt::format("{}|{}|{}", key.arch, spec_hash, bucket);
  if (!store.try_claim(claim, o.budget_seconds * 4 + 120)) {
    out << "  skipped: another process is tuning this key\n";
    return false;
  }
  struct Release {
    cache::Store& s;
    const std::string& k;
    ~Release() {
      try {
        s.release_claim(k);
      } catch (...) {
      }
    }
  } release{store, claim};

  // Resume: configs already measured for this exact key are not measured again.
  std::set<std::string> done;
  cache::ResultFilter filter;
  filter.device_arch = key.arch;
  filter.spec_hash = spec_hash;
  filter.bucket = bucket;
  for (const auto& r : store.all_results(filter)) {
    if (r.context.generator_version == ctx.generator_version && r.context.template_hash == ctx.template_hash) {
      done.insert(r.config);
    }
  }

  std::vector<tuner::Candidate> cands = tuner::search_space(spec, limits);
  const size_t legal = static_cast<size_t>(std::count_if(cands.begin(), cands.end(), [](auto& c) { return !c.pruned; }));
  tuner::compile_all(spec, limits, cands);
  // Binaries go into the cache so the measurement engine (and later processes) load them.
  std::vector<tuner::Candidate> todo;
  for (auto& c : cands) {
    if (c.pruned) continue;
    cache::Binary b;
    b.key = binary_key(c.source, backend, c.config.hopper());
    b.kernel_name = c.kernel_name;
    b.cubin = c.cubin;
    b.registers = std::max(0, c.registers);  // -1 (CPU, no report) is stored as 0
    b.spill_bytes = c.spill_bytes;
    b.shared_bytes = shared_memory_bytes(spec, c.config);
    store.put_binary(b);
    if (!done.count(c.config.canonical())) todo.push_back(c);
  }
  out << fmt::format("  {} candidates, {} legal, {} compiled without spills, {} already measured, {} to measure\n",
                     cands.size(), legal, todo.size() + done.size(), done.size(), todo.size());
  for (const auto& c : cands) {
    if (c.pruned && o.verbose) out << fmt::format("    pruned {}: {}\n", c.config.canonical(), *c.pruned);
  }

  EngineOptions eo;
  eo.cache_path = store.path().string();
  Engine engine(eo);
  RunnerMeasurer measurer(engine, desc, o.backward, o.deterministic);
  tuner::TuneOptions topt;
  topt.budget_seconds = o.budget_seconds;
  topt.progress = tuner::stderr_progress();
  topt.on_measured = [&](const tuner::Candidate& c, const tuner::Measurement& m) {
    // Committed now: an interrupted run keeps every finished measurement.
    store.put_result(tuner::result_row(ctx, spec, bucket, c, m, backend));
  };
  const tuner::TuneOutcome outcome = tuner::tune(todo, measurer, topt);

  const cache::Lookup best = store.best_config(ctx, spec_hash, bucket);
  if (!best.config) {
    out << "  no config passed verification: " << best.reason << "\n";
    return false;
  }
  const std::string def = default_config(spec, limits, ShapeHint{problem.seqlen_k}).canonical();
  double default_ms = 0;
  for (const auto& r : store.all_results(filter)) {
    if (r.config == def && r.status == cache::ResultStatus::ok) default_ms = r.median_ms;
  }
  out << fmt::format("  best {} {:.3f} ms ({}, {} measured this run)", *best.config, best.row->median_ms,
                     outcome.strategy.empty() ? "resumed" : outcome.strategy, outcome.measured.size());
  if (default_ms > 0) {
    out << fmt::format("; default {} {:.3f} ms: {:.2f}x", def, default_ms, default_ms / best.row->median_ms);
  }
  out << "\n";
  return true;
}

// A plan: one problem per line, written as problem flags ("--head-dim 128 --mask causal ...");
// '#' starts a comment.
std::vector<harness::ProblemDesc> read_plan(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InvalidArgument("--plan", fmt::format("cannot read {}", path));
  std::vector<harness::ProblemDesc> out;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    CLI::App app{"plan line"};
    ProblemFlags flags;
    add_problem_flags(&app, &flags);
    try {
      app.parse(line, false);
    } catch (const CLI::ParseError& e) {
      throw InvalidArgument("--plan", fmt::format("{} line {}: {}", path, n, e.what()));
    }
    out.push_back(problem_desc(flags));
  }
  return out;
}

}  // namespace

void add_run_command(CLI::App& app, RunOptions& o) {
  CLI::App* run = app.add_subcommand(
      "run", "run every problem of a plan once in this process: warm-start time and compile count");
  run->add_option("--plan", o.plan, "a file of problems, one line of problem flags each")->required();
  run->add_option("--device", o.device, "auto, cpu, cuda or cuda:N for every problem (default: each line's)")
      ->capture_default_str();
  run->callback([&o] { o.selected = true; });
}

namespace {
// The plan's problems with their devices resolved and checked; `device` (unless auto) overrides
// the lines' own --device.
std::vector<harness::ProblemDesc> resolve_plan(std::vector<harness::ProblemDesc> plan, const std::string& device) {
  const Device all = Device::parse(device);
  for (auto& d : plan) {
    d.device = require_device(all.kind == Device::Kind::automatic ? d.device : all);
  }
  return plan;
}
}  // namespace

int run_plan(const RunOptions& o, std::ostream& out) {
  const std::vector<harness::ProblemDesc> plan = resolve_plan(read_plan(o.plan), o.device);
  // Inputs are built first; the clock covers the calls only: first call to all results.
  std::vector<std::unique_ptr<harness::Runner>> runners;
  for (const auto& d : plan) runners.push_back(std::make_unique<harness::Runner>(d));
  Engine engine;  // the default cache ($JITATTN_CACHE or XDG), as a user's process would
  const auto start = std::chrono::steady_clock::now();
  std::vector<KernelReport> reports;
  for (auto& r : runners) reports.push_back(r->run(engine));
  for (const auto& d : plan) {
    if (d.device.kind == Device::Kind::cuda) {
      device::ScopedContext ctx(d.device.ordinal);
      JITATTN_CU_CHECK(device::driver().cuCtxSynchronize());
    }
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  int exact = 0, from_cache = 0;
  for (size_t i = 0; i < reports.size(); ++i) {
    exact += reports[i].config_source == "exact" ? 1 : 0;
    from_cache += reports[i].binary_from_cache ? 1 : 0;
    out << fmt::format("  {:<60} {:<22} {:<8} {}\n", harness::describe(plan[i]), reports[i].config,
                       reports[i].config_source, reports[i].binary_from_cache ? "cached binary" : reports[i].compiled_now ? "compiled" : "loaded");
  }
  out << fmt::format("{} problems: first call to all results {:.1f} ms; {} compiles; {} tuned (exact), {} binaries from the cache\n",
                     plan.size(), ms, engine.compile_count(), exact, from_cache);
  return 0;
}

void add_tune_command(CLI::App& app, TuneOptions& o) {
  CLI::App* tune = app.add_subcommand("tune", "tune tile configs on this GPU (or the CPU) into the cache");
  add_problem_flags(tune, &o.problem);
  tune->add_option("--plan", o.plan, "a file of problems, one line of problem flags each");
  tune->add_option("--budget", o.budget_seconds, "measurement budget per spec, seconds")->default_val(30);
  tune->add_option("--shard", o.shard, "I/N: tune every N-th plan line starting at I (split a plan over GPUs)");
  tune->add_option("--cache", o.cache_path, "cache file (default: $JITATTN_CACHE or ~/.cache/jitattn/cache.db)");
  tune->add_flag("--verbose", o.verbose, "list pruned candidates with their reasons");
  tune->add_flag("--backward", o.backward, "tune the backward kernels instead of the forward");
  tune->add_flag("--deterministic", o.deterministic,
                 "with --backward: tune the deterministic mode's kernels (bitwise reproducible dQ; a spec of its own)");
  tune->callback([&o] { o.selected = true; });
}

int run_tune(const TuneOptions& o, std::ostream& out) {
  if (o.deterministic && !o.backward) {
    throw InvalidArgument("deterministic", "is a backward option (add --backward)");
  }
  std::vector<harness::ProblemDesc> plan =
      o.plan.empty() ? std::vector<harness::ProblemDesc>{problem_desc(o.problem)}
                     : resolve_plan(read_plan(o.plan), o.problem.device);
  if (o.plan.empty()) plan[0].device = require_device(plan[0].device);
  int index = 0, count = 1;
  if (!o.shard.empty()) {
    if (std::sscanf(o.shard.c_str(), "%d/%d", &index, &count) != 2 || count < 1 || index < 0 || index >= count) {
      throw InvalidArgument("--shard", fmt::format("expected I/N with 0 <= I < N, got '{}'", o.shard));
    }
  }
  int tuned = 0, failed = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (static_cast<int>(i % static_cast<size_t>(count)) != index) continue;
    (tune_one(plan[i], o, out) ? tuned : failed) += 1;
  }
  out << fmt::format("tuned {} spec(s), {} not tuned\n", tuned, failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace jitattn::cli
