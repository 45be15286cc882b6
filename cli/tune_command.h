// `jitattn tune`: tune problems (flags or a --plan file) on this GPU into the SQLite cache.
#pragma once

#include <CLI/CLI.hpp>

#include <ostream>
#include <string>

#include "cli/problem_flags.h"

namespace jitattn::cli {

struct TuneOptions {
  ProblemFlags problem;
  std::string plan;        ///< file: one line of problem flags per problem
  double budget_seconds = 30;
  std::string shard;       ///< "I/N"
  std::string cache_path;  ///< empty: the default cache
  bool verbose = false;
  bool backward = false;   ///< tune the backward kernels (timed alone, verified against the reference)
  bool deterministic = false;  ///< with backward: the deterministic mode's kernels (their own spec)
  bool selected = false;   ///< set when the subcommand was given
};

struct RunOptions {
  std::string plan;
  std::string device = "auto";  ///< overrides the plan lines' devices unless auto
  bool selected = false;
};

void add_tune_command(CLI::App& app, TuneOptions& options);
/// `jitattn run --plan FILE`: every problem once in one process (the warm-start measurement).
void add_run_command(CLI::App& app, RunOptions& options);
int run_plan(const RunOptions& options, std::ostream& out);
/// Returns the exit code; throws jitattn errors (NoDevice, InvalidArgument, CacheError).
int run_tune(const TuneOptions& options, std::ostream& out);

}  // namespace jitattn::cli
