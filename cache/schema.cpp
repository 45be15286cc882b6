#include "cache/schema.h"

#include <iterator>
#include <string>

#include "cache/store.h"

namespace jitattn::cache::detail {

namespace {

// Schema version 1. Times are UTC ISO-8601 text "YYYY-MM-DDTHH:MM:SSZ" (they sort as text);
// hashes are lowercase hex text (SQLite integers are signed 64-bit, hashes are not).
constexpr const char* kCreateV1 = R"sql(
-- tuning_results: one row per measured candidate (every config the tuner tried, not only the
-- winner), committed as each measurement completes.
-- Invariants:
--   * The key is (schema_version, generator_version, template_hash, device_arch,
--     device_sm_count, device_l2_bytes, spec_hash, spec, bucket, config); every key column is
--     non-empty / positive, and at most one row exists per key (re-measuring replaces it).
--   * A row is used only by a lookup that matches all of its key but bucket and config; a
--     different bucket is used only as "nearest" and said so.
--   * spec is KernelSpec::canonical() and spec_hash its hash as 16 hex digits: one spec text per
--     spec_hash. bucket is "name=value,..." with positive integer values.
--   * status 'ok': median_ms, p20_ms, p80_ms are non-NULL and 0 <= p20_ms <= median_ms <= p80_ms,
--     samples >= 1. Other statuses may leave timings NULL and say why in error.
--   * host, created_at, driver_version, device_name, clock_mhz, project_version are provenance:
--     never compared by a lookup or a merge.
CREATE TABLE tuning_results (
  id                INTEGER PRIMARY KEY,
  schema_version    INTEGER NOT NULL,
  generator_version INTEGER NOT NULL,
  template_hash     TEXT NOT NULL,
  device_arch       TEXT NOT NULL,
  device_sm_count   INTEGER NOT NULL,
  device_l2_bytes   INTEGER NOT NULL,
  spec_hash         TEXT NOT NULL,
  spec              TEXT NOT NULL,
  bucket            TEXT NOT NULL,
  config            TEXT NOT NULL,
  status            TEXT NOT NULL,
  median_ms         REAL,
  p20_ms            REAL,
  p80_ms            REAL,
  samples           INTEGER NOT NULL DEFAULT 0,
  error             TEXT NOT NULL DEFAULT '',
  host              TEXT NOT NULL DEFAULT '',
  created_at        TEXT NOT NULL,
  driver_version    TEXT NOT NULL DEFAULT '',
  device_name       TEXT NOT NULL DEFAULT '',
  clock_mhz         INTEGER NOT NULL DEFAULT 0,
  project_version   TEXT NOT NULL DEFAULT '',
  UNIQUE (schema_version, generator_version, template_hash, device_arch, device_sm_count,
          device_l2_bytes, spec_hash, spec, bucket, config)
);
CREATE INDEX tuning_results_by_spec ON tuning_results (spec_hash, bucket);

-- binaries: compiled kernels, so a warm process loads them without compiling.
-- Invariants:
--   * The key is (source_sha256, options, nvrtc_version, target): source_sha256 is 64 lowercase
--     hex digits of the exact source text compiled; options is normalize_options() text (may be
--     empty); nvrtc_version "major.minor.build"; target "sm_XX" or "sm_XXa". A binary is used
--     only for exactly this key.
--   * cubin is a non-empty BLOB; registers, spill_bytes, shared_bytes >= 0.
--   * created_at <= last_used_at; last_used_at is refreshed by every get, and prune removes
--     binaries unused for N days.
CREATE TABLE binaries (
  source_sha256   TEXT NOT NULL,
  options         TEXT NOT NULL,
  nvrtc_version   TEXT NOT NULL,
  target          TEXT NOT NULL,
  kernel_name     TEXT NOT NULL,
  cubin           BLOB NOT NULL,
  registers       INTEGER NOT NULL DEFAULT 0,
  spill_bytes     INTEGER NOT NULL DEFAULT 0,
  shared_bytes    INTEGER NOT NULL DEFAULT 0,
  host            TEXT NOT NULL DEFAULT '',
  created_at      TEXT NOT NULL,
  last_used_at    TEXT NOT NULL,
  project_version TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (source_sha256, options, nvrtc_version, target)
);

-- claims: a process tuning a key holds its claim, so two processes never tune one key at once.
-- Invariants:
--   * At most one row per key; (host, pid) is the holder; lease_until is Unix seconds. A claim
--     whose lease_until has passed belongs to no one (its holder died or overran).
--   * Taken and released only inside BEGIN IMMEDIATE, so the check and the write are atomic.
CREATE TABLE claims (
  key         TEXT PRIMARY KEY,
  host        TEXT NOT NULL,
  pid         INTEGER NOT NULL,
  lease_until REAL NOT NULL
);

-- pending_shapes: shapes seen at run time with no tuning result (record-untuned mode), for
-- `jitattn tune` to pick up later.
-- Invariants: one row per (spec_hash, bucket, device_arch); count >= 1 is how often it was seen.
CREATE TABLE pending_shapes (
  spec        TEXT NOT NULL,
  spec_hash   TEXT NOT NULL,
  bucket      TEXT NOT NULL,
  device_arch TEXT NOT NULL,
  first_seen  TEXT NOT NULL,
  count       INTEGER NOT NULL,
  PRIMARY KEY (spec_hash, bucket, device_arch)
);
)sql";

// migration_steps[i] takes the schema from version i to version i + 1. Version 2 appends a step
// (ALTER TABLE ..., UPDATE the rows' schema_version if they stay valid) and bumps
// kSchemaVersion; a step never drops rows the new version can still use.
constexpr const char* kMigrationSteps[] = {
    kCreateV1,  // 0 -> 1: empty file to version 1
};
static_assert(std::size(kMigrationSteps) == kSchemaVersion,
              "one migration step per schema version");

}  // namespace

int read_schema_version(const Db& db) {
  Stmt s(db, "PRAGMA user_version");
  s.step();
  return s.int32(0);
}

void migrate(Db& db, std::chrono::milliseconds max_wait) {
  if (read_schema_version(db) == kSchemaVersion) return;  // the common case takes no lock
  WriteTxn txn(db, max_wait);
  int version = read_schema_version(db);  // again, under the write lock
  if (version > kSchemaVersion) {
    throw CacheError("cache file was written by a newer jitattn",
                     "schema version " + std::to_string(version) + ", this build reads up to " +
                         std::to_string(kSchemaVersion),
                     "PRAGMA user_version");
  }
  for (int v = version; v < kSchemaVersion; ++v) {
    db.exec(kMigrationSteps[v]);
    // An integer constant from this build, not a value from outside: PRAGMA takes no parameters.
    db.exec("PRAGMA user_version = " + std::to_string(v + 1));
  }
  txn.commit();
}

std::vector<std::string> check_invariants(const Db& db) {
  std::vector<std::string> problems;
  {
    Stmt s(db, "PRAGMA integrity_check");
    while (s.step()) {
      std::string line = s.text(0);
      if (line != "ok") problems.push_back("integrity_check: " + line);
    }
  }
  int version = read_schema_version(db);
  if (version != kSchemaVersion) {
    problems.push_back("schema version " + std::to_string(version) + ", expected " +
                       std::to_string(kSchemaVersion));
    return problems;  // the tables below may not exist
  }
  // Each query returns (row id or key text, problem) for rows breaking an invariant above.
  struct Check {
    const char* what;
    const char* sql;
  };
  const Check checks[] = {
      {"tuning_results: empty key column",
       "SELECT id FROM tuning_results WHERE generator_version <= 0 OR template_hash = '' OR "
       "device_arch = '' OR device_sm_count <= 0 OR device_l2_bytes <= 0 OR spec_hash = '' OR "
       "spec = '' OR bucket = '' OR config = ''"},
      {"tuning_results: schema_version differs from the file's",
       "SELECT id FROM tuning_results WHERE schema_version <> (SELECT user_version FROM "
       "pragma_user_version)"},
      {"tuning_results: timing not a number",
       "SELECT id FROM tuning_results WHERE typeof(median_ms) NOT IN ('real','integer','null') "
       "OR typeof(p20_ms) NOT IN ('real','integer','null') OR typeof(p80_ms) NOT IN "
       "('real','integer','null')"},
      {"tuning_results: negative timing",
       "SELECT id FROM tuning_results WHERE median_ms < 0 OR p20_ms < 0 OR p80_ms < 0"},
      {"tuning_results: ok row without timings or samples",
       "SELECT id FROM tuning_results WHERE status = 'ok' AND (median_ms IS NULL OR p20_ms IS "
       "NULL OR p80_ms IS NULL OR samples < 1)"},
      {"tuning_results: not p20 <= median <= p80",
       "SELECT id FROM tuning_results WHERE p20_ms > median_ms OR median_ms > p80_ms"},
      {"tuning_results: one spec_hash with several spec texts",
       "SELECT spec_hash FROM tuning_results GROUP BY spec_hash HAVING COUNT(DISTINCT spec) > 1"},
      {"binaries: empty key column",
       "SELECT source_sha256 FROM binaries WHERE length(source_sha256) <> 64 OR "
       "nvrtc_version = '' OR target = '' OR kernel_name = ''"},
      {"binaries: empty cubin",
       "SELECT source_sha256 FROM binaries WHERE cubin IS NULL OR length(cubin) = 0"},
      {"binaries: negative resource count",
       "SELECT source_sha256 FROM binaries WHERE registers < 0 OR spill_bytes < 0 OR "
       "shared_bytes < 0"},
      {"pending_shapes: count < 1", "SELECT spec_hash FROM pending_shapes WHERE count < 1"},
  };
  for (const Check& c : checks) {
    Stmt s(db, c.sql);
    while (s.step()) problems.push_back(std::string(c.what) + " (" + s.text(0) + ")");
  }
  Stmt buckets(db, "SELECT DISTINCT bucket FROM tuning_results");
  while (buckets.step()) {
    std::string b = buckets.text(0);
    try {
      parse_bucket(b);
    } catch (const Error& e) {
      problems.push_back("tuning_results: malformed bucket '" + b + "': " + e.what());
    }
  }
  return problems;
}

}  // namespace jitattn::cache::detail
