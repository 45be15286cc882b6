// Store: binaries, claims and pending shapes.
#include <unistd.h>

#include "cache/store.h"
#include "cache/store_internal.h"

namespace jitattn::cache {

using namespace detail;

// ---- binaries ---------------------------------------------------------------------------------

namespace {

constexpr const char* kBinaryColumns =
    "source_sha256, options, nvrtc_version, target, kernel_name, cubin, registers, spill_bytes, "
    "shared_bytes, host, created_at, last_used_at, project_version";

Binary read_binary(const Stmt& s) {
  Binary b;
  b.key = {s.text(0), s.text(1), s.text(2), s.text(3)};
  b.kernel_name = s.text(4);
  b.cubin = s.blob(5);
  b.registers = s.int32(6);
  b.spill_bytes = s.int32(7);
  b.shared_bytes = s.int32(8);
  b.host = s.text(9);
  b.created_at = s.text(10);
  b.last_used_at = s.text(11);
  b.project_version = s.text(12);
  return b;
}

void validate_binary(const Binary& b) {
  auto need = [](bool ok, const char* field, const char* what) {
    if (!ok) throw InvalidArgument(std::string("binary.") + field, what);
  };
  need(b.key.source_sha256.size() == 64, "key.source_sha256", "must be 64 hex digits");
  need(!b.key.nvrtc_version.empty(), "key.nvrtc_version", "empty key column");
  need(!b.key.target.empty(), "key.target", "empty key column");
  need(!b.kernel_name.empty(), "kernel_name", "empty");
  need(!b.cubin.empty(), "cubin", "empty binary");
  need(b.registers >= 0 && b.spill_bytes >= 0 && b.shared_bytes >= 0, "registers",
       "negative resource count");
}

}  // namespace

// Shared with merge_from: `replace` false keeps an existing row of the same key.
void detail::write_binary(Db& db, const Binary& b, bool replace) {
  validate_binary(b);
  std::string now = now_iso();
  Stmt s(db, std::string("INSERT INTO binaries (") + kBinaryColumns +
                 ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13) " +
                 (replace ? "ON CONFLICT DO UPDATE SET kernel_name=excluded.kernel_name, "
                            "cubin=excluded.cubin, registers=excluded.registers, "
                            "spill_bytes=excluded.spill_bytes, shared_bytes=excluded.shared_bytes, "
                            "host=excluded.host, created_at=excluded.created_at, "
                            "last_used_at=excluded.last_used_at, "
                            "project_version=excluded.project_version"
                          : "ON CONFLICT DO NOTHING"));
  s.bind(1, b.key.source_sha256)
      .bind(2, b.key.options)
      .bind(3, b.key.nvrtc_version)
      .bind(4, b.key.target)
      .bind(5, b.kernel_name)
      .bind_blob(6, b.cubin)
      .bind(7, b.registers)
      .bind(8, b.spill_bytes)
      .bind(9, b.shared_bytes)
      .bind(10, b.host.empty() ? host_name() : b.host)
      .bind(11, b.created_at.empty() ? now : b.created_at)
      .bind(12, b.last_used_at.empty() ? now : b.last_used_at)
      .bind(13, b.project_version.empty() ? project_version() : b.project_version);
  s.run();
}

void Store::put_binary(const Binary& binary) {
  require_writable("store a binary");
  WriteTxn txn(*db_, max_wait());
  write_binary(*db_, binary, /*replace=*/true);
  txn.commit();
}

std::optional<Binary> Store::get_binary(const BinaryKey& key) {
  std::optional<Binary> out;
  {
    Stmt s(*db_, std::string("SELECT ") + kBinaryColumns +
                     " FROM binaries WHERE source_sha256=?1 AND options=?2 AND nvrtc_version=?3 "
                     "AND target=?4");
    s.bind(1, key.source_sha256).bind(2, key.options).bind(3, key.nvrtc_version).bind(4, key.target);
    if (s.step()) out = read_binary(s);
  }
  if (out && !read_only_) {
    // Last use feeds prune; a shared read-only cache simply does not record it, and failing to
    // record it (the write lock held past the wait) must not fail the load.
    out->last_used_at = now_iso();
    try {
      touch_binary(key, out->last_used_at);
    } catch (const CacheError&) {
    }
  }
  return out;
}

void Store::touch_binary(const BinaryKey& key, const std::string& when) {
  WriteTxn txn(*db_, max_wait());
  Stmt u(*db_,
         "UPDATE binaries SET last_used_at=?5 WHERE source_sha256=?1 AND options=?2 AND "
         "nvrtc_version=?3 AND target=?4");
  u.bind(1, key.source_sha256)
      .bind(2, key.options)
      .bind(3, key.nvrtc_version)
      .bind(4, key.target)
      .bind(5, when);
  u.run();
  txn.commit();
}

std::vector<Binary> Store::all_binaries() const {
  Stmt s(*db_, std::string("SELECT ") + kBinaryColumns +
                   " FROM binaries ORDER BY target, source_sha256, options, nvrtc_version");
  std::vector<Binary> out;
  while (s.step()) out.push_back(read_binary(s));
  return out;
}

// ---- claims -----------------------------------------------------------------------------------

bool Store::try_claim(const std::string& key, double lease_seconds) {
  require_writable("claim a key");
  const std::string host = host_name();
  const int64_t pid = getpid();
  WriteTxn txn(*db_, max_wait());
  const double now = unix_seconds_now();  // read under the write lock
  {
    Stmt s(*db_, "SELECT host, pid, lease_until FROM claims WHERE key=?1");
    s.bind(1, key);
    if (s.step()) {
      bool ours = s.text(0) == host && s.int64(1) == pid;
      if (!ours && s.real(2) > now) return false;  // held by a live lease; txn rolls back
    }
  }
  Stmt w(*db_,
         "INSERT INTO claims (key, host, pid, lease_until) VALUES (?1,?2,?3,?4) ON CONFLICT (key) "
         "DO UPDATE SET host=excluded.host, pid=excluded.pid, lease_until=excluded.lease_until");
  w.bind(1, key).bind(2, host).bind(3, pid).bind(4, now + lease_seconds);
  w.run();
  txn.commit();
  return true;
}

void Store::release_claim(const std::string& key) {
  require_writable("release a claim");
  WriteTxn txn(*db_, max_wait());
  Stmt s(*db_, "DELETE FROM claims WHERE key=?1 AND host=?2 AND pid=?3");
  s.bind(1, key).bind(2, host_name()).bind(3, int64_t{getpid()});
  s.run();
  txn.commit();
}

// ---- pending shapes ---------------------------------------------------------------------------

void Store::record_untuned(const std::string& spec, const std::string& spec_hash,
                           const std::string& bucket, const std::string& device_arch) {
  require_writable("record an untuned shape");
  if (spec.empty() || spec_hash.empty() || device_arch.empty()) {
    throw InvalidArgument("record_untuned", "empty spec, spec_hash or device_arch");
  }
  parse_bucket(bucket);
  WriteTxn txn(*db_, max_wait());
  Stmt s(*db_,
         "INSERT INTO pending_shapes (spec, spec_hash, bucket, device_arch, first_seen, count) "
         "VALUES (?1,?2,?3,?4,?5,1) ON CONFLICT (spec_hash, bucket, device_arch) "
         "DO UPDATE SET count = count + 1");
  s.bind(1, spec).bind(2, spec_hash).bind(3, bucket).bind(4, device_arch).bind(5, now_iso());
  s.run();
  txn.commit();
}

std::vector<PendingShape> Store::pending_shapes() const {
  Stmt s(*db_,
         "SELECT spec, spec_hash, bucket, device_arch, first_seen, count FROM pending_shapes "
         "ORDER BY count DESC, spec_hash, bucket, device_arch");
  std::vector<PendingShape> out;
  while (s.step()) {
    out.push_back({s.text(0), s.text(1), s.text(2), s.text(3), s.text(4), s.int64(5)});
  }
  return out;
}

void Store::remove_pending(const std::string& spec_hash, const std::string& bucket,
                           const std::string& device_arch) {
  require_writable("remove a pending shape");
  WriteTxn txn(*db_, max_wait());
  Stmt s(*db_, "DELETE FROM pending_shapes WHERE spec_hash=?1 AND bucket=?2 AND device_arch=?3");
  s.bind(1, spec_hash).bind(2, bucket).bind(3, device_arch);
  s.run();
  txn.commit();
}

}  // namespace jitattn::cache
