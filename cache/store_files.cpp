// Store maintenance: merge another file in, export a selection, prune, verify.
#include <sqlite3.h>

#include "cache/schema.h"
#include "cache/store.h"
#include "cache/store_internal.h"

namespace jitattn::cache {

using namespace detail;

MergeCounts Store::merge_from(const std::filesystem::path& other, MergePolicy policy) {
  require_writable("merge into the cache");
  // The other file is only read: opened read-only, a corrupt one throws instead of moving.
  Store src(other, StoreOptions{.read_only = true, .busy_timeout = options_.busy_timeout,
                                .warn = options_.warn});
  std::vector<TuningResult> rows = src.all_results();
  std::vector<Binary> binaries = src.all_binaries();

  MergeCounts counts;
  WriteTxn txn(*db_, max_wait());
  for (const TuningResult& r : rows) {
    // Only identical keys are compared; provenance never is.
    Stmt s(*db_,
           "SELECT status, p20_ms FROM tuning_results WHERE schema_version=?1 AND "
           "generator_version=?2 AND template_hash=?3 AND device_arch=?4 AND "
           "device_sm_count=?5 AND device_l2_bytes=?6 AND spec_hash=?7 AND spec=?8 AND "
           "bucket=?9 AND config=?10");
    bind_result_key(s, r, r.schema_version);
    if (!s.step()) {
      write_result(r, r.schema_version);
      ++counts.inserted;
      continue;
    }
    // `faster` must win beyond the measured spread: its p80 under our p20, both measured ok.
    bool replace = policy == MergePolicy::faster && r.status == ResultStatus::ok &&
                   parse_status(s.text(0)) == ResultStatus::ok && r.p80_ms < s.real(1);
    if (replace) {
      write_result(r, r.schema_version);
      ++counts.replaced;
    } else {
      ++counts.kept;
    }
  }
  for (const Binary& b : binaries) {
    write_binary(*db_, b, /*replace=*/false);
    counts.binaries += db_->changes();
  }
  txn.commit();
  return counts;
}

int64_t Store::export_to(const std::filesystem::path& path, const ResultFilter& filter) const {
  if (std::filesystem::exists(path)) {
    throw CacheError("cannot export", "file exists (export writes a new file)", path.string());
  }
  std::vector<TuningResult> rows = all_results(filter);
  std::vector<Binary> binaries;
  for (Binary& b : all_binaries()) {
    if (!filter.device_arch || b.key.target == *filter.device_arch) binaries.push_back(std::move(b));
  }
  Store out(path, StoreOptions{.busy_timeout = options_.busy_timeout, .warn = options_.warn});
  {
    WriteTxn txn(*out.db_, out.max_wait());
    for (const TuningResult& r : rows) out.write_result(r, r.schema_version);
    for (const Binary& b : binaries) write_binary(*out.db_, b, /*replace=*/true);
    txn.commit();
  }
  // A portable file travels alone: leave WAL so no -wal/-shm side files are needed, and a
  // read-only open elsewhere needs no shared-memory file next to it.
  exec_retrying(*out.db_, "PRAGMA journal_mode=DELETE", out.max_wait());
  return static_cast<int64_t>(rows.size());
}

PruneCounts Store::prune(const PruneOptions& options) {
  require_writable("prune the cache");
  PruneCounts counts;
  WriteTxn txn(*db_, max_wait());
  if (options.current) {
    const TuningContext& c = *options.current;
    Stmt stale(*db_,
               "DELETE FROM tuning_results WHERE schema_version<>?1 OR generator_version<>?2 OR "
               "template_hash<>?3");
    stale.bind(1, kSchemaVersion).bind(2, c.generator_version).bind(3, c.template_hash);
    stale.run();
    counts.stale_results = db_->changes();
    if (options.remove_other_devices) {
      Stmt foreign(*db_,
                   "DELETE FROM tuning_results WHERE NOT (device_arch=?1 AND device_sm_count=?2 "
                   "AND device_l2_bytes=?3)");
      foreign.bind(1, c.device.arch).bind(2, c.device.sm_count).bind(3, c.device.l2_bytes);
      foreign.run();
      counts.foreign_results = db_->changes();
    }
  }
  if (options.binaries_unused_days) {
    auto cutoff = std::chrono::system_clock::now() -
                  std::chrono::duration_cast<std::chrono::system_clock::duration>(
                      std::chrono::duration<double>(*options.binaries_unused_days * 86400.0));
    Stmt s(*db_, "DELETE FROM binaries WHERE last_used_at < ?1");
    s.bind(1, iso_utc(cutoff));
    s.run();
    counts.binaries = db_->changes();
  }
  Stmt claims(*db_, "DELETE FROM claims WHERE lease_until < ?1");
  claims.bind(1, unix_seconds_now());
  claims.run();
  counts.expired_claims = db_->changes();
  txn.commit();
  return counts;
}

std::vector<std::string> Store::verify() const { return check_invariants(*db_); }

}  // namespace jitattn::cache
