// cache/: the one SQLite file that holds tuning results (every measured candidate) and compiled
// binaries. This is the only code that speaks SQL. It depends on nothing of ours that touches
// CUDA; runtime/, tuner/ and cli/ call it. Keys are those of shared/DESIGN.md ("Keys"): a stored
// row is used only by a lookup that matches its whole key, and the lookup says why it chose what
// it chose.
//
// Threads and processes: a Store is one SQLite connection and is not thread-safe; use one Store
// per thread. Any number of processes may open one file at once (WAL; writers take short
// BEGIN IMMEDIATE transactions and wait through SQLITE_BUSY), except on network filesystems.
//
// What must change with the structs below: the table definitions in schema.cpp, kSchemaVersion
// and a migration step there (a new column or a changed meaning is a new schema version).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "jitattn/error.h"

namespace jitattn {

/// A cache operation failed: SQLite's error text and the statement that failed are attached.
/// Also thrown for writes to a cache opened read-only and for files written by a newer schema.
class CacheError : public Error {
 public:
  CacheError(const std::string& message, std::string sqlite_message, std::string statement,
             int code = 0)
      : Error(message + ": " + sqlite_message + (statement.empty() ? "" : " [" + statement + "]")),
        sqlite_message_(std::move(sqlite_message)),
        statement_(std::move(statement)),
        code_(code) {}
  const std::string& sqlite_message() const { return sqlite_message_; }
  const std::string& statement() const { return statement_; }
  int code() const { return code_; }  ///< SQLite (extended) result code, 0 when not from SQLite

 private:
  std::string sqlite_message_;
  std::string statement_;
  int code_;
};

namespace cache {

/// Layout of the tables; stored in PRAGMA user_version. Bump with a migration step in schema.cpp.
inline constexpr int kSchemaVersion = 1;

/// $JITATTN_CACHE if set, else $XDG_CACHE_HOME/jitattn/cache.db, else ~/.cache/jitattn/cache.db.
std::filesystem::path default_cache_path();

/// 16 lowercase hex digits; the text form of KernelSpec::hash() and template_hash() in keys.
std::string hex64(uint64_t value);

/// Where a tuning result is valid: everything of its key except the spec, bucket and config.
struct DeviceKey {
  std::string arch;      ///< with suffix: "sm_90", "sm_90a"; the CPU backend's "cpu-<name>-<hash>"
  int sm_count = 0;      ///< multiprocessors (CPU: hardware threads)
  int64_t l2_bytes = 0;  ///< L2 cache size
  bool operator==(const DeviceKey&) const = default;
};

struct TuningContext {
  int generator_version = 0;  ///< kGeneratorVersion of the generator that emitted the kernels
  std::string template_hash;  ///< hex64(template_hash())
  DeviceKey device;
  bool operator==(const TuningContext&) const = default;
};

/// The running build's context on `device`: kGeneratorVersion and the template hash (the CPU
/// template's for a CPU arch "cpu-...", the GPU templates' otherwise).
TuningContext current_context(const DeviceKey& device);

/// Never part of a key: who measured or compiled a row, where and when.
struct Provenance {
  std::string host;        ///< empty: filled with this host's name on write
  std::string created_at;  ///< UTC ISO-8601; empty: filled with now on write
  std::string driver_version;
  std::string device_name;
  int clock_mhz = 0;
  std::string project_version;  ///< empty: filled with this build's version on write
};

enum class ResultStatus { ok, failed_verify, failed_compile, failed_launch, spilled, pruned, other };
std::string to_string(ResultStatus status);
/// Inverse of to_string; unknown text (a newer writer's status) reads as `other`.
ResultStatus parse_status(const std::string& text);

inline constexpr double kNotMeasured = std::numeric_limits<double>::quiet_NaN();

/// One measured candidate. Key: context, spec_hash, spec, bucket, config (and the schema
/// version); everything else is value or provenance.
struct TuningResult {
  TuningContext context;
  std::string spec_hash;  ///< hex64(KernelSpec::hash())
  std::string spec;       ///< KernelSpec::canonical()
  std::string bucket;     ///< shape bucket "name=value,...", e.g. "sq=4096,sk=4096,bh=64"
  std::string config;     ///< TileConfig::canonical()
  ResultStatus status = ResultStatus::ok;
  double median_ms = kNotMeasured;  ///< NaN (stored NULL) when not measured
  double p20_ms = kNotMeasured;
  double p80_ms = kNotMeasured;
  int samples = 0;
  std::string error;  ///< why a candidate failed; empty for ok rows
  Provenance provenance;
  int schema_version = kSchemaVersion;  ///< read back from the row; put_result writes the current
};

/// A lookup's answer: the config, where it came from and why.
struct Lookup {
  enum class Source { exact, nearest, none };
  std::optional<std::string> config;  ///< TileConfig::canonical(); empty when Source::none
  Source source = Source::none;
  std::string reason;                 ///< one line a person can act on
  std::optional<TuningResult> row;    ///< the chosen row (timings, provenance)
  std::string bucket;                 ///< the chosen row's bucket (differs for nearest)
  double distance = 0;                ///< bucket_distance to it (0 for exact)
  int64_t foreign_rows = 0;           ///< rows of this spec ignored: other device or versions
};
std::string to_string(Lookup::Source source);

/// Parses "name=value,..." (positive integers); throws InvalidArgument("bucket").
std::map<std::string, int64_t> parse_bucket(const std::string& bucket);
/// Sum over fields of |log2(a) - log2(b)|; nullopt when the buckets name different fields.
std::optional<double> bucket_distance(const std::string& a, const std::string& b);

struct BinaryKey {
  std::string source_sha256;  ///< sha256_hex of the exact source handed to the compiler
  std::string options;        ///< normalize_options(...) of the compile options
  std::string nvrtc_version;  ///< "major.minor.build"
  std::string target;         ///< "sm_90", "sm_90a"
  bool operator==(const BinaryKey&) const = default;
};

/// Options text used in BinaryKey: each option trimmed, empty ones dropped, joined by one space;
/// order kept (later -D/-arch options override earlier ones, so order is meaning).
std::string normalize_options(const std::vector<std::string>& options);

struct Binary {
  BinaryKey key;
  std::string kernel_name;
  std::vector<char> cubin;
  int registers = 0;
  int spill_bytes = 0;
  int shared_bytes = 0;
  std::string host;             ///< provenance; empty: filled on write
  std::string created_at;       ///< empty: filled on write
  std::string last_used_at;     ///< set on write and by get_binary
  std::string project_version;  ///< empty: filled on write
};

struct PendingShape {
  std::string spec;
  std::string spec_hash;
  std::string bucket;
  std::string device_arch;
  std::string first_seen;  ///< UTC ISO-8601
  int64_t count = 0;       ///< times record_untuned saw it
};

/// Selects rows for listing and export; an unset field matches everything.
struct ResultFilter {
  std::optional<std::string> device_arch;
  std::optional<std::string> spec_hash;
  std::optional<std::string> bucket;
  bool ok_only = false;
};

enum class MergePolicy {
  keep,    ///< an existing row is never replaced
  faster,  ///< replaced only when the incoming p80 < the existing p20 (wins beyond the spread)
};

struct MergeCounts {
  int64_t inserted = 0;  ///< rows whose key was absent
  int64_t replaced = 0;  ///< rows replaced under MergePolicy::faster
  int64_t kept = 0;      ///< rows whose key existed and stayed
  int64_t binaries = 0;  ///< binaries copied (absent keys only)
};

struct PruneOptions {
  /// When set: results of another schema, generator version or template hash are removed as
  /// stale, and (if remove_other_devices) results of another device as foreign.
  std::optional<TuningContext> current;
  bool remove_other_devices = true;
  /// When set: binaries whose last_used_at is older than this many days are removed.
  std::optional<double> binaries_unused_days;
};

struct PruneCounts {
  int64_t stale_results = 0;
  int64_t foreign_results = 0;
  int64_t binaries = 0;
  int64_t expired_claims = 0;
};

struct StoreOptions {
  bool read_only = false;  ///< also implied by a "file:...?mode=ro" path or an unwritable file
  std::chrono::milliseconds busy_timeout{10000};  ///< SQLite's own wait for a lock
  /// Warnings (a corrupt file moved aside); default prints "jitattn: warning: ..." on stderr.
  std::function<void(const std::string&)> warn;
};

namespace detail {
class Db;
}

class Store {
 public:
  /// Opens or creates the cache at `path` (a path, or a "file:" URI). Read-write creates the
  /// parent folders, enables WAL and migrates the schema. A corrupt or non-database file
  /// (PRAGMA quick_check fails) is renamed to "<path>.corrupt-<UTC time>" with a warning and a
  /// fresh database is created; read-only, it throws CacheError instead. A file written by a
  /// newer schema throws CacheError and is left untouched.
  explicit Store(const std::filesystem::path& path, StoreOptions options = {});
  ~Store();
  Store(Store&&) noexcept;
  Store& operator=(Store&&) noexcept;

  const std::filesystem::path& path() const { return path_; }
  bool read_only() const { return read_only_; }
  /// Set when opening moved a corrupt file aside: where it now lies.
  const std::optional<std::filesystem::path>& moved_aside() const { return moved_aside_; }
  int schema_version() const;

  // --- tuning results ---------------------------------------------------------------------
  /// Inserts or replaces (same key) one measured candidate, committed before returning.
  void put_result(const TuningResult& result);
  /// Fastest ok row (by median) for the exact key, else the nearest bucket of the same spec in
  /// the same context, else none; the reason counts rows ignored for a foreign context.
  Lookup best_config(const TuningContext& context, const std::string& spec_hash,
                     const std::string& bucket) const;
  std::vector<TuningResult> all_results(const ResultFilter& filter = {}) const;

  // --- binaries ---------------------------------------------------------------------------
  void put_binary(const Binary& binary);
  /// The binary of exactly this key; updates last_used_at (not when read-only).
  std::optional<Binary> get_binary(const BinaryKey& key);
  std::vector<Binary> all_binaries() const;

  // --- claims: one process tunes one key at a time ----------------------------------------
  /// Claims `key` for this host and process for `lease_seconds`. Succeeds when no claim exists,
  /// the existing lease has expired, or it is ours (then it is renewed). Checked inside the
  /// write lock, so two processes never both succeed.
  bool try_claim(const std::string& key, double lease_seconds);
  /// Removes our claim on `key` (someone else's claim is left alone).
  void release_claim(const std::string& key);

  // --- shapes seen at run time without tuning results -------------------------------------
  void record_untuned(const std::string& spec, const std::string& spec_hash,
                      const std::string& bucket, const std::string& device_arch);
  std::vector<PendingShape> pending_shapes() const;
  void remove_pending(const std::string& spec_hash, const std::string& bucket,
                      const std::string& device_arch);

  // --- maintenance (store_files.cpp) ------------------------------------------------------
  /// Copies rows of another cache file into this one; only identical keys are compared.
  MergeCounts merge_from(const std::filesystem::path& other, MergePolicy policy);
  /// Writes a new cache file (must not exist) with the selected results and the binaries of
  /// the selected arch (all binaries when no arch is given). One file, no WAL side files.
  int64_t export_to(const std::filesystem::path& path, const ResultFilter& filter = {}) const;
  PruneCounts prune(const PruneOptions& options);
  /// Problems found: integrity_check, empty keys, bad timings, empty blobs, wrong schema
  /// version. Empty when the store holds its invariants.
  std::vector<std::string> verify() const;

 private:
  void open();
  void require_writable(const char* what) const;
  std::chrono::milliseconds max_wait() const { return options_.busy_timeout * 6; }
  void write_result(const TuningResult& r, int schema_version);
  void touch_binary(const BinaryKey& key, const std::string& when);

  std::filesystem::path path_;
  StoreOptions options_;
  std::unique_ptr<detail::Db> db_;
  bool read_only_ = false;
  std::optional<std::filesystem::path> moved_aside_;
};

}  // namespace cache
}  // namespace jitattn
