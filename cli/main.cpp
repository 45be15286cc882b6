// jitattn command-line tool: declares the subcommands and their flags (CLI11), runs the one
// given, and turns exceptions into messages and exit codes in this one place:
//   InvalidArgument, NoDevice -> 2;  CompileError (log printed), other errors -> 1;
//   CLI11 parse errors -> CLI11's own codes and messages.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <exception>
#include <iostream>

#include "cli/cache_commands.h"
#include "cli/commands.h"
#include "cli/tune_command.h"
#include "cli/problem_flags.h"
#include "jitattn/error.h"

namespace {

using namespace jitattn::cli;

struct Options {
  InfoOptions info;
  GenOptions gen;
  CompileOptions compile;
  CheckOptions check;
  BenchOptions bench;
};

void add_arch_flag(CLI::App* app, std::string* arch) {
  app->add_option("--arch", *arch, "target architecture: sm_80, sm_86, sm_89, sm_90 (sm_90a: "
                                   "arch-specific cubin), or cpu (the CPU backend's C++)")
      ->capture_default_str();
}

int run(CLI::App& app, const Options& o) {
  if (app.got_subcommand("info")) return run_info(o.info);
  if (app.got_subcommand("gen")) return run_gen(o.gen);
  if (app.got_subcommand("compile")) return run_compile(o.compile);
  if (app.got_subcommand("check")) return run_check(o.check);
  if (app.got_subcommand("bench")) return run_bench(o.bench);
  return 1;  // unreachable: require_subcommand(1)
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"jitattn: FlashAttention-style forward kernels generated per head dim, mask, bias "
               "and scale, compiled at run time with NVRTC.",
               "jitattn"};
  app.require_subcommand(1);
  app.set_version_flag("--version", JITATTN_VERSION);
  Options o;

  CLI::App* info = app.add_subcommand("info", "version, NVRTC, driver and devices");
  info->add_flag("--json", o.info.json, "one JSON object");

  CLI::App* gen = app.add_subcommand("gen", "print the generated CUDA source (no GPU needed)");
  add_problem_flags(gen, &o.gen.problem);
  add_arch_flag(gen, &o.gen.arch);
  gen->add_flag("--backward", o.gen.backward, "the backward pass's kernels (dK/dV main kernel and its helpers)");
  gen->add_flag("--deterministic", o.gen.deterministic, "backward: deterministic mode");

  CLI::App* compile = app.add_subcommand(
      "compile", "generate and compile to a cubin, print the ptxas report (no GPU needed)");
  add_problem_flags(compile, &o.compile.problem);
  add_arch_flag(compile, &o.compile.arch);
  compile->add_flag("--json", o.compile.json, "one JSON object");
  compile->add_flag("--backward", o.compile.backward, "the backward pass's module (dK/dV main kernel's report)");
  compile->add_flag("--deterministic", o.compile.deterministic, "backward: deterministic mode");

  CLI::App* check = app.add_subcommand("check", "run once and compare with the float64 reference");
  add_problem_flags(check, &o.check.problem);
  check->add_flag("--json", o.check.json, "one JSON object");
  check->add_flag("--backward", o.check.backward,
                  "also run backward and compare dq, dk, dv (and --dbias) with the reference");
  check->add_flag("--deterministic", o.check.deterministic, "backward: bitwise reproducible dq");

  CLI::App* bench = app.add_subcommand("bench", "time the kernel (or a --grid of problems)");
  add_problem_flags(bench, &o.bench.problem);
  bench->add_flag("--json", o.bench.json, "one JSON object per problem");
  bench->add_flag("--backward", o.bench.backward, "time backward (FLOPs: 2.5x forward)");
  bench->add_flag("--fwd-bwd", o.bench.fwd_bwd, "time forward + backward (FLOPs: 3.5x forward)");
  bench->add_flag("--deterministic", o.bench.deterministic, "backward: deterministic mode");
  bench->add_option("--budget-ms", o.bench.budget_ms, "timing budget per problem")
      ->capture_default_str();
  bench->add_option("--reps", o.bench.reps,
                    "time exactly this many repetitions after the warm-up, whatever --budget-ms says "
                    "(peers.py times 20 after 3; 0: as many as --budget-ms allows)")
      ->capture_default_str();
  bench->add_flag("--grid", o.bench.grid,
                  "run hdims x seqlens x masks on peers.py's conventions (tokens 16384 and "
                  "width 2048 unless given)");
  bench->add_option("--hdims", o.bench.hdims, "grid head dims")->capture_default_str();
  bench->add_option("--seqlens", o.bench.seqlens, "grid sequence lengths")->capture_default_str();
  bench->add_option("--masks", o.bench.masks,
                    "grid masks from none, causal, alibi, bias (a 1hqk tensor), window (causal + "
                    "window-size keys)")
      ->capture_default_str();
  bench->add_option("--window-size", o.bench.window_size, "keys per window for mask 'window'")
      ->capture_default_str();

  const auto cache_commands = add_cache_commands(app);
  jitattn::cli::TuneOptions tune_options;
  jitattn::cli::add_tune_command(app, tune_options);
  jitattn::cli::RunOptions run_options;
  jitattn::cli::add_run_command(app, run_options);

  if (argc <= 1) {
    fmt::print("{}", app.help());
    return 0;
  }
  CLI11_PARSE(app, argc, argv);

  try {
    if (app.got_subcommand("cache")) return run_cache_commands(*cache_commands);
    if (app.got_subcommand("tune")) return jitattn::cli::run_tune(tune_options, std::cout);
    if (app.got_subcommand("run")) return jitattn::cli::run_plan(run_options, std::cout);
    return run(app, o);
  } catch (const jitattn::CompileError& e) {
    fmt::print(stderr, "error: {}\nnvrtc options: {}\n", e.what(), e.options());
    return 1;
  } catch (const jitattn::InvalidArgument& e) {
    fmt::print(stderr, "error: {}\n", e.what());  // what() is "<argument>: <what>"
    return kExitUsage;
  } catch (const jitattn::NoDevice& e) {
    fmt::print(stderr, "error: no GPU: {}\n", e.what());
    return kExitUsage;
  } catch (const jitattn::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
