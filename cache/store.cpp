// Store: opening (with recovery from corrupt files), tuning results and lookups, binaries,
// claims and pending shapes. Maintenance (merge, export, prune, verify) is in store_files.cpp.
#include "cache/store.h"

#include <pwd.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <thread>

#include "cache/schema.h"
#include "cache/sqlite.h"
#include "cache/store_internal.h"
#include "generator/generator.h"

#ifndef JITATTN_VERSION
#define JITATTN_VERSION "unknown"
#endif

namespace jitattn::cache {

using detail::Db;
using detail::Stmt;
using detail::WriteTxn;

// ---- free functions ---------------------------------------------------------------------------

std::filesystem::path default_cache_path() {
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  if (std::string p = env("JITATTN_CACHE"); !p.empty()) return p;
  // XDG Base Directory: a relative XDG_CACHE_HOME is invalid and ignored.
  if (std::string x = env("XDG_CACHE_HOME"); !x.empty() && x.front() == '/') {
    return std::filesystem::path(x) / "jitattn" / "cache.db";
  }
  std::string home = env("HOME");
  if (home.empty()) {
    if (const passwd* pw = getpwuid(getuid()); pw && pw->pw_dir) home = pw->pw_dir;
  }
  if (home.empty()) home = std::filesystem::temp_directory_path().string();
  return std::filesystem::path(home) / ".cache" / "jitattn" / "cache.db";
}

std::string hex64(uint64_t value) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, value);
  return buf;
}

TuningContext current_context(const DeviceKey& device) {
  // CPU rows (arch "cpu-...") depend on the CPU template only, GPU rows on the GPU templates.
  const bool cpu = device.arch.rfind("cpu-", 0) == 0;
  return {kGeneratorVersion, hex64(cpu ? cpu_template_hash() : template_hash()), device};
}

std::string to_string(ResultStatus status) {
  switch (status) {
    case ResultStatus::ok: return "ok";
    case ResultStatus::failed_verify: return "failed_verify";
    case ResultStatus::failed_compile: return "failed_compile";
    case ResultStatus::failed_launch: return "failed_launch";
    case ResultStatus::spilled: return "spilled";
    case ResultStatus::pruned: return "pruned";
    case ResultStatus::other: return "other";
  }
  return "other";
}

ResultStatus parse_status(const std::string& text) {
  for (ResultStatus s : {ResultStatus::ok, ResultStatus::failed_verify,
                         ResultStatus::failed_compile, ResultStatus::failed_launch,
                         ResultStatus::spilled, ResultStatus::pruned}) {
    if (text == to_string(s)) return s;
  }
  return ResultStatus::other;
}

std::string to_string(Lookup::Source source) {
  switch (source) {
    case Lookup::Source::exact: return "exact";
    case Lookup::Source::nearest: return "nearest";
    case Lookup::Source::none: return "none";
  }
  return "none";
}

std::map<std::string, int64_t> parse_bucket(const std::string& bucket) {
  std::map<std::string, int64_t> fields;
  std::stringstream in(bucket);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) {
      throw InvalidArgument("bucket", "'" + bucket + "': expected name=value,...");
    }
    std::string name = item.substr(0, eq), value = item.substr(eq + 1);
    char* end = nullptr;
    long long v = std::strtoll(value.c_str(), &end, 10);
    if (*end != '\0' || v <= 0) {
      throw InvalidArgument("bucket", "'" + bucket + "': " + name + " is not a positive integer");
    }
    if (!fields.emplace(name, v).second) {
      throw InvalidArgument("bucket", "'" + bucket + "': " + name + " given twice");
    }
  }
  if (fields.empty()) throw InvalidArgument("bucket", "empty bucket");
  return fields;
}

std::optional<double> bucket_distance(const std::string& a, const std::string& b) {
  auto fa = parse_bucket(a), fb = parse_bucket(b);
  if (fa.size() != fb.size()) return std::nullopt;
  double d = 0;
  for (const auto& [name, va] : fa) {
    auto it = fb.find(name);
    if (it == fb.end()) return std::nullopt;
    d += std::abs(std::log2(double(va)) - std::log2(double(it->second)));
  }
  return d;
}

std::string normalize_options(const std::vector<std::string>& options) {
  std::string out;
  for (const std::string& o : options) {
    size_t b = o.find_first_not_of(" \t\n"), e = o.find_last_not_of(" \t\n");
    if (b == std::string::npos) continue;
    if (!out.empty()) out += ' ';
    out += o.substr(b, e - b + 1);
  }
  return out;
}

namespace detail {

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

std::string project_version() { return JITATTN_VERSION; }

std::string now_iso() { return iso_utc(std::chrono::system_clock::now()); }

const char* const kResultColumns =
    "schema_version, generator_version, template_hash, device_arch, device_sm_count, "
    "device_l2_bytes, spec_hash, spec, bucket, config, status, median_ms, p20_ms, p80_ms, "
    "samples, error, host, created_at, driver_version, device_name, clock_mhz, project_version";

TuningResult read_result(const Stmt& s) {
  TuningResult r;
  r.schema_version = s.int32(0);
  r.context.generator_version = s.int32(1);
  r.context.template_hash = s.text(2);
  r.context.device = {s.text(3), s.int32(4), s.int64(5)};
  r.spec_hash = s.text(6);
  r.spec = s.text(7);
  r.bucket = s.text(8);
  r.config = s.text(9);
  r.status = parse_status(s.text(10));
  r.median_ms = s.real(11);
  r.p20_ms = s.real(12);
  r.p80_ms = s.real(13);
  r.samples = s.int32(14);
  r.error = s.text(15);
  r.provenance = {s.text(16), s.text(17), s.text(18), s.text(19), s.int32(20), s.text(21)};
  return r;
}

int bind_result_key(Stmt& s, const TuningResult& r, int schema_version) {
  s.bind(1, schema_version)
      .bind(2, r.context.generator_version)
      .bind(3, r.context.template_hash)
      .bind(4, r.context.device.arch)
      .bind(5, r.context.device.sm_count)
      .bind(6, r.context.device.l2_bytes)
      .bind(7, r.spec_hash)
      .bind(8, r.spec)
      .bind(9, r.bucket)
      .bind(10, r.config);
  return 11;  // next parameter index
}

void validate_result(const TuningResult& r) {
  auto need = [](bool ok, const char* field, const char* what) {
    if (!ok) throw InvalidArgument(std::string("result.") + field, what);
  };
  need(r.context.generator_version > 0, "context.generator_version", "must be positive");
  need(!r.context.template_hash.empty(), "context.template_hash", "empty key column");
  need(!r.context.device.arch.empty(), "context.device.arch", "empty key column");
  need(r.context.device.sm_count > 0, "context.device.sm_count", "must be positive");
  need(r.context.device.l2_bytes > 0, "context.device.l2_bytes", "must be positive");
  need(!r.spec_hash.empty(), "spec_hash", "empty key column");
  need(!r.spec.empty(), "spec", "empty key column");
  need(!r.config.empty(), "config", "empty key column");
  parse_bucket(r.bucket);
  for (double t : {r.median_ms, r.p20_ms, r.p80_ms}) {
    need(std::isnan(t) || (t >= 0 && std::isfinite(t)), "timing", "negative or infinite");
  }
  if (r.status == ResultStatus::ok) {
    need(!std::isnan(r.median_ms) && !std::isnan(r.p20_ms) && !std::isnan(r.p80_ms), "timing",
         "an ok row needs median, p20 and p80");
    need(r.p20_ms <= r.median_ms && r.median_ms <= r.p80_ms, "timing",
         "needs p20 <= median <= p80");
    need(r.samples >= 1, "samples", "an ok row needs at least one sample");
  }
}

}  // namespace detail

using namespace detail;

// ---- opening ----------------------------------------------------------------------------------

namespace {

// Empty when PRAGMA quick_check passes; else what is wrong. Only "this is not a sound database"
// answers count as corruption; a lock held while another process creates the file or recovers
// its WAL is waited out; anything else (I/O) is thrown.
std::string quick_check(const Db& db, std::chrono::milliseconds max_wait) {
  auto deadline = std::chrono::steady_clock::now() + max_wait;
  for (;;) {
    try {
      Stmt s(db, "PRAGMA quick_check");
      std::string problems;
      while (s.step()) {
        std::string line = s.text(0);
        if (line != "ok") problems += (problems.empty() ? "" : "; ") + line;
      }
      return problems;
    } catch (const CacheError& e) {
      int primary = e.code() & 0xff;
      if (primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT) return e.sqlite_message();
      bool busy = primary == SQLITE_BUSY || primary == SQLITE_LOCKED;
      if (!busy || std::chrono::steady_clock::now() >= deadline) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

// Renames `path` and its WAL side files to "<path>.corrupt-<time>[...]". A stale -wal left
// next to a fresh database would be replayed into it, so the side files go too.
std::filesystem::path move_aside(const std::filesystem::path& path) {
  std::string stamp = iso_utc(std::chrono::system_clock::now());
  std::erase(stamp, ':');
  std::string base = path.string() + ".corrupt-" + stamp;
  std::string target = base;
  for (int n = 1; std::filesystem::exists(target); ++n) target = base + "." + std::to_string(n);
  std::error_code ec;
  std::filesystem::rename(path, target, ec);  // another process may have moved it already
  for (const char* side : {"-wal", "-shm", "-journal"}) {
    std::filesystem::path p = path.string() + side;
    if (std::filesystem::exists(p, ec)) std::filesystem::rename(p, target + side, ec);
  }
  return target;
}

}  // namespace

Store::Store(const std::filesystem::path& path, StoreOptions options)
    : path_(path), options_(std::move(options)) {
  if (!options_.warn) {
    options_.warn = [](const std::string& m) { std::cerr << "jitattn: warning: " << m << "\n"; };
  }
  open();
}

Store::~Store() = default;
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&&) noexcept = default;

void Store::open() {
  const std::string name = path_.string();
  const bool uri = name.rfind("file:", 0) == 0;
  if (!options_.read_only && !uri && path_.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path_.parent_path(), ec);
    if (ec) throw CacheError("cannot create the cache folder", ec.message(), "");
  }
  for (int attempt = 0;; ++attempt) {
    db_ = std::make_unique<Db>(name, options_.read_only, !options_.read_only);
    db_->set_busy_timeout(options_.busy_timeout);
    read_only_ = db_->read_only();
    std::string problem = quick_check(*db_, max_wait());
    if (problem.empty()) break;
    if (read_only_ || uri || attempt > 0) {
      throw CacheError("cache file is corrupt: " + name, problem, "PRAGMA quick_check");
    }
    db_.reset();
    moved_aside_ = move_aside(path_);
    options_.warn("cache " + name + " is corrupt (" + problem + "); moved it to " +
                  moved_aside_->string() + " and started an empty cache");
  }
  int version = read_schema_version(*db_);
  if (read_only_) {
    if (version != kSchemaVersion) {
      throw CacheError("cannot read cache " + name,
                       "schema version " + std::to_string(version) + ", this build reads " +
                           std::to_string(kSchemaVersion) + " (read-only: cannot migrate)",
                       "PRAGMA user_version");
    }
    return;
  }
  // WAL: readers never block the one writer. synchronous=NORMAL is durable against crashes of
  // the process (a power loss may drop the last commits, never corrupts) and keeps each
  // per-measurement commit cheap.
  exec_retrying(*db_, "PRAGMA journal_mode=WAL", max_wait());
  db_->exec("PRAGMA synchronous=NORMAL");
  migrate(*db_, max_wait());
}

int Store::schema_version() const { return read_schema_version(*db_); }

void Store::require_writable(const char* what) const {
  if (read_only_) {
    throw CacheError(std::string("cannot ") + what + " in " + path_.string(),
                     "cache is open read-only", "", SQLITE_READONLY);
  }
}

// ---- tuning results ---------------------------------------------------------------------------

void Store::write_result(const TuningResult& r, int schema_version) {
  validate_result(r);
  Stmt s(*db_, std::string("INSERT INTO tuning_results (") + kResultColumns +
                   ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,"
                   "?20,?21,?22) ON CONFLICT (schema_version, generator_version, template_hash, "
                   "device_arch, device_sm_count, device_l2_bytes, spec_hash, spec, bucket, config) "
                   "DO UPDATE SET status=excluded.status, median_ms=excluded.median_ms, "
                   "p20_ms=excluded.p20_ms, p80_ms=excluded.p80_ms, samples=excluded.samples, "
                   "error=excluded.error, host=excluded.host, created_at=excluded.created_at, "
                   "driver_version=excluded.driver_version, device_name=excluded.device_name, "
                   "clock_mhz=excluded.clock_mhz, project_version=excluded.project_version");
  int i = bind_result_key(s, r, schema_version);
  const Provenance& p = r.provenance;
  s.bind(i, to_string(r.status))
      .bind(i + 1, r.median_ms)
      .bind(i + 2, r.p20_ms)
      .bind(i + 3, r.p80_ms)
      .bind(i + 4, r.samples)
      .bind(i + 5, r.error)
      .bind(i + 6, p.host.empty() ? host_name() : p.host)
      .bind(i + 7, p.created_at.empty() ? now_iso() : p.created_at)
      .bind(i + 8, p.driver_version)
      .bind(i + 9, p.device_name)
      .bind(i + 10, p.clock_mhz)
      .bind(i + 11, p.project_version.empty() ? project_version() : p.project_version);
  s.run();
}

void Store::put_result(const TuningResult& result) {
  require_writable("store a tuning result");
  WriteTxn txn(*db_, max_wait());
  write_result(result, kSchemaVersion);
  txn.commit();
}

std::vector<TuningResult> Store::all_results(const ResultFilter& filter) const {
  Stmt s(*db_, std::string("SELECT ") + kResultColumns +
                   " FROM tuning_results WHERE (?1 IS NULL OR device_arch = ?1) AND "
                   "(?2 IS NULL OR spec_hash = ?2) AND (?3 IS NULL OR bucket = ?3) AND "
                   "(?4 = 0 OR status = 'ok') "
                   "ORDER BY spec_hash, device_arch, bucket, median_ms IS NULL, median_ms, config");
  auto bind_opt = [&](int i, const std::optional<std::string>& v) {
    if (v) s.bind(i, *v); else s.bind_null(i);
  };
  bind_opt(1, filter.device_arch);
  bind_opt(2, filter.spec_hash);
  bind_opt(3, filter.bucket);
  s.bind(4, filter.ok_only ? 1 : 0);
  std::vector<TuningResult> out;
  while (s.step()) out.push_back(read_result(s));
  return out;
}

namespace {

// Parameters ?1..?7 of the lookup statements: schema version, the tuning context, the spec.
void bind_lookup_key(Stmt& s, const TuningContext& context, const std::string& spec_hash) {
  s.bind(1, kSchemaVersion)
      .bind(2, context.generator_version)
      .bind(3, context.template_hash)
      .bind(4, context.device.arch)
      .bind(5, context.device.sm_count)
      .bind(6, context.device.l2_bytes)
      .bind(7, spec_hash);
}

}  // namespace

Lookup Store::best_config(const TuningContext& context, const std::string& spec_hash,
                          const std::string& bucket) const {
  parse_bucket(bucket);  // a malformed request is the caller's bug, not "no result"
  // Every ok row of this spec in exactly this context, fastest first.
  Stmt s(*db_, std::string("SELECT ") + kResultColumns +
                   " FROM tuning_results WHERE schema_version=?1 AND generator_version=?2 AND "
                   "template_hash=?3 AND device_arch=?4 AND device_sm_count=?5 AND "
                   "device_l2_bytes=?6 AND spec_hash=?7 AND status='ok' AND median_ms IS NOT NULL "
                   "ORDER BY median_ms, config");
  bind_lookup_key(s, context, spec_hash);
  std::vector<TuningResult> rows;
  while (s.step()) rows.push_back(read_result(s));

  Lookup out;
  // Rows of this spec that a lookup here must not use, by why.
  Stmt f(*db_,
         "SELECT count(*), "
         "coalesce(sum(schema_version <> ?1), 0), coalesce(sum(generator_version <> ?2), 0), "
         "coalesce(sum(template_hash <> ?3), 0), "
         "coalesce(sum(device_arch <> ?4 OR device_sm_count <> ?5 OR device_l2_bytes <> ?6), 0) "
         "FROM tuning_results WHERE spec_hash = ?7 AND NOT (schema_version=?1 AND "
         "generator_version=?2 AND template_hash=?3 AND device_arch=?4 AND device_sm_count=?5 "
         "AND device_l2_bytes=?6)");
  bind_lookup_key(f, context, spec_hash);
  f.step();
  out.foreign_rows = f.int64(0);
  std::string foreign;
  if (out.foreign_rows > 0) {
    std::string parts;
    auto part = [&](int64_t n, const char* what) {
      if (n > 0) parts += (parts.empty() ? "" : ", ") + std::to_string(n) + " " + what;
    };
    part(f.int64(4), "other device");
    part(f.int64(2), "other generator version");
    part(f.int64(3), "other template hash");
    part(f.int64(1), "other schema version");
    foreign = "; ignored " + std::to_string(out.foreign_rows) +
              " foreign/stale rows of this spec (" + parts + ")";
  }

  const TuningResult* chosen = nullptr;
  for (const TuningResult& r : rows) {
    if (r.bucket == bucket) {
      chosen = &r;  // rows are fastest first
      break;
    }
  }
  if (chosen) {
    out.source = Lookup::Source::exact;
  } else {
    double best = std::numeric_limits<double>::infinity();
    for (const TuningResult& r : rows) {
      std::optional<double> d;
      try {
        d = bucket_distance(bucket, r.bucket);
      } catch (const InvalidArgument&) {
        continue;  // a malformed stored bucket is reported by verify(), never used
      }
      // Strictly closer wins; on a tie the first seen (the faster row) stays.
      if (d && *d < best) {
        best = *d;
        chosen = &r;
      }
    }
    if (chosen) {
      out.source = Lookup::Source::nearest;
      out.distance = best;
    }
  }
  char ms[32] = "";
  if (chosen) std::snprintf(ms, sizeof ms, "%.4g", chosen->median_ms);
  // DeviceKey::sm_count counts hardware threads for a CPU arch ("cpu-...").
  const char* units = context.device.arch.rfind("cpu-", 0) == 0 ? " threads, L2 " : " SMs, L2 ";
  const std::string where = " on " + context.device.arch + " (" +
                            std::to_string(context.device.sm_count) + units +
                            std::to_string(context.device.l2_bytes) + " B), generator " +
                            std::to_string(context.generator_version) + ", template " +
                            context.template_hash;
  if (!chosen) {
    out.reason = "none: no tuning result for spec " + spec_hash + where + foreign;
    return out;
  }
  out.config = chosen->config;
  out.bucket = chosen->bucket;
  out.row = *chosen;
  if (out.source == Lookup::Source::exact) {
    out.reason = "exact: fastest ok candidate for bucket " + bucket + where + " (median " + ms +
                 " ms)" + foreign;
  } else {
    char dist[32];
    std::snprintf(dist, sizeof dist, "%.3g", out.distance);
    out.reason = "nearest: no result for bucket " + bucket + "; fastest of tuned bucket " +
                 chosen->bucket + " (log2 distance " + dist + ")" + where + " (median " + ms +
                 " ms)" + foreign;
  }
  return out;
}

}  // namespace jitattn::cache
