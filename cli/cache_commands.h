// `jitattn cache ...`: list, show, export, import, merge, prune and verify a tuning cache file.
// Everything goes through cache::Store; nothing here speaks SQL or touches CUDA. Each run_cache_*
// writes to `out` and returns the exit code (0 ok, 1 problems found). Errors are thrown, as in
// commands.h, so main.cpp maps them in one place: CacheError and other errors -> "error: ..."
// exit 1, InvalidArgument (a bad flag value, an ambiguous or short KEY) -> exit 2.
#pragma once

#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "cache/store.h"

namespace CLI {
class App;
}

namespace jitattn::cli {

/// Flags every cache subcommand takes. An empty `cache` means cache::default_cache_path().
struct CacheFileOptions {
  std::string cache;
};

struct CacheLsOptions : CacheFileOptions {
  bool json = false;
  std::string device;  ///< device arch ("sm_90a"); empty: every device
  std::string spec;    ///< spec hash or a prefix of one; empty: every spec
};

struct CacheShowOptions : CacheFileOptions {
  std::string key;  ///< a spec hash or a unique prefix of at least 6 hex digits
};

struct CacheExportOptions : CacheFileOptions {
  std::string file;
  std::string device;
  std::string spec;  ///< spec hash or unique prefix
};

struct CacheImportOptions : CacheFileOptions {
  std::string file;
  std::string policy = "keep";  ///< keep | faster
};

struct CacheMergeOptions {
  std::vector<std::string> inputs;
  std::string output;
  std::string policy = "keep";
};

struct CachePruneOptions : CacheFileOptions {
  std::optional<double> unused_days;  ///< remove binaries not used for this many days
  bool keep_other_devices = false;
  /// "ARCH,SMS,L2" (e.g. "sm_90a,132,50331648"): the device whose context is current. Without
  /// it (there is no GPU to ask), results are left alone and only binaries and claims go.
  std::string device_key;
};

using CacheVerifyOptions = CacheFileOptions;

/// One line per tuning result (or one JSON object per line), winners marked, then the number
/// of binaries. A cache file that does not exist yet lists as empty.
int run_cache_ls(const CacheLsOptions& options, std::ostream& out);
/// The spec text and every row of one spec, by device and bucket, and its binaries. Throws
/// jitattn::Error for an unknown key and InvalidArgument for a short or ambiguous one.
int run_cache_show(const CacheShowOptions& options, std::ostream& out);
int run_cache_export(const CacheExportOptions& options, std::ostream& out);
int run_cache_import(const CacheImportOptions& options, std::ostream& out);
/// Merges the inputs in order into a new file; refuses an existing output.
int run_cache_merge(const CacheMergeOptions& options, std::ostream& out);
int run_cache_prune(const CachePruneOptions& options, std::ostream& out);
/// Prints each problem Store::verify finds and returns 1, or prints "ok" and returns 0.
int run_cache_verify(const CacheVerifyOptions& options, std::ostream& out);

/// "keep" | "faster"; throws InvalidArgument(flag) otherwise.
cache::MergePolicy parse_merge_policy(const std::string& text, const std::string& flag);
/// "ARCH,SMS,L2"; throws InvalidArgument(flag) otherwise.
cache::DeviceKey parse_device_key(const std::string& text, const std::string& flag);

/// The `cache` subcommand's parsed flags; CLI11 binds to these members, so they stay put.
struct CacheCommands {
  CLI::App* app = nullptr;  ///< the `cache` subcommand
  CacheLsOptions ls;
  CacheShowOptions show;
  CacheExportOptions export_;
  CacheImportOptions import;
  CacheMergeOptions merge;
  CachePruneOptions prune;
  CacheVerifyOptions verify;
};

/// Declares `cache` and its subcommands on `app`. Keep the result alive until after parsing.
std::unique_ptr<CacheCommands> add_cache_commands(CLI::App& app);
/// Runs the cache subcommand that was parsed, printing to stdout (call when
/// app.got_subcommand("cache")).
int run_cache_commands(const CacheCommands& commands);

}  // namespace jitattn::cli
