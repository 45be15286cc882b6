// The cache store: schema, keys, lookups, foreign rows, read-only and corrupt files, claims,
// merge/export/prune/verify, several processes writing at once, and SHA-256. No GPU needed.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/sha256.h"
#include "cache/store.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace jitattn;
using namespace jitattn::cache;

namespace {

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("jitattn-cache-test") {}
};

const DeviceKey kH100{"sm_90a", 132, 50331648};
const DeviceKey kA100{"sm_80", 108, 41943040};
const TuningContext kCtx{1, "00000000deadbeef", kH100};
const std::string kSpecHash = "0123456789abcdef";
const std::string kSpec = "fwd sm90 bf16 d128 dv128 mask=causal";

TuningResult make_result(const TuningContext& ctx, const std::string& bucket,
                         const std::string& config, double median_ms,
                         const std::string& spec_hash = kSpecHash) {
  TuningResult r;
  r.context = ctx;
  r.spec_hash = spec_hash;
  r.spec = spec_hash == kSpecHash ? kSpec : "spec of " + spec_hash;
  r.bucket = bucket;
  r.config = config;
  r.median_ms = median_ms;
  r.p20_ms = median_ms * 0.95;
  r.p80_ms = median_ms * 1.05;
  r.samples = 20;
  r.provenance.device_name = "NVIDIA H100 80GB HBM3";
  r.provenance.driver_version = "580.65";
  r.provenance.clock_mhz = 1980;
  return r;
}

Binary make_binary(const std::string& source, const std::string& target, char fill = 'x') {
  Binary b;
  b.key = {sha256_hex(source), normalize_options({"-arch=" + target, " -lineinfo "}), "13.0.48",
           target};
  b.kernel_name = "attn_fwd_bf16_d128";
  b.cubin.assign(1000, fill);
  b.registers = 128;
  b.shared_bytes = 49152;
  return b;
}

StoreOptions quiet(std::vector<std::string>* warnings = nullptr) {
  StoreOptions o;
  o.warn = [warnings](const std::string& m) {
    if (warnings) warnings->push_back(m);
  };
  return o;
}

StoreOptions read_only() {
  StoreOptions o = quiet();
  o.read_only = true;
  return o;
}

/// Runs SQL on the file directly, bypassing the store (to inject rows the store would refuse).
void exec_raw(const fs::path& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  std::string msg = err ? err : "";
  sqlite3_free(err);
  sqlite3_close(db);
  ASSERT_EQ(rc, SQLITE_OK) << msg << " in " << sql;
}

std::string query_raw(const fs::path& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sql;
  std::string out;
  if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0)) {
    out = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return out;
}

/// Runs `body` in a child process; returns its exit code (body's return value; 99 on a throw).
int in_child(const std::function<int()>& body) {
  fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (const std::exception& e) {
      fprintf(stderr, "child %d: %s\n", getpid(), e.what());
    }
    _exit(code);  // no atexit handlers or gtest teardown in the child
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

}  // namespace

// ---- opening, schema, rows --------------------------------------------------------------------

TEST(CacheStore, CreatesFoldersSetsSchemaVersionAndWal) {
  TempDir dir;
  fs::path path = dir / "nested/deeper/cache.db";
  Store store(path, quiet());
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(store.schema_version(), kSchemaVersion);
  EXPECT_FALSE(store.read_only());
  EXPECT_EQ(query_raw(path, "PRAGMA user_version"), std::to_string(kSchemaVersion));
  EXPECT_EQ(query_raw(path, "PRAGMA journal_mode"), "wal");
  EXPECT_TRUE(store.verify().empty());
}

TEST(CacheStore, ReopenKeepsRowsAndProvenance) {
  TempDir dir;
  {
    Store store(dir / "c.db", quiet());
    store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm128_bn64_w4_s2", 1.5));
  }
  Store store(dir / "c.db", quiet());
  auto rows = store.all_results();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].context, kCtx);
  EXPECT_EQ(rows[0].config, "bm128_bn64_w4_s2");
  EXPECT_DOUBLE_EQ(rows[0].median_ms, 1.5);
  EXPECT_EQ(rows[0].samples, 20);
  EXPECT_EQ(rows[0].schema_version, kSchemaVersion);
  EXPECT_FALSE(rows[0].provenance.host.empty());
  EXPECT_EQ(rows[0].provenance.created_at.size(), 20u) << rows[0].provenance.created_at;
  EXPECT_EQ(rows[0].provenance.created_at.back(), 'Z');
  EXPECT_EQ(rows[0].provenance.device_name, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(rows[0].provenance.clock_mhz, 1980);
  EXPECT_FALSE(rows[0].provenance.project_version.empty());
}

TEST(CacheStore, SameKeyReplacesOtherConfigAdds) {
  TempDir dir;
  Store store(dir / "c.db", quiet());
  store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm128_bn64_w4_s2", 2.0));
  store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm128_bn64_w4_s2", 1.25));
  auto rows = store.all_results();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_DOUBLE_EQ(rows[0].median_ms, 1.25);
  store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm64_bn64_w4_s2", 1.5));
  EXPECT_EQ(store.all_results().size(), 2u);
  TuningResult failed = make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm64_bn64_w4_s2", 0);
  failed.status = ResultStatus::failed_verify;
  failed.median_ms = failed.p20_ms = failed.p80_ms = kNotMeasured;
  failed.error = "max error 0.5 at row 3";
  store.put_result(failed);
  ResultFilter by_bucket;
  by_bucket.bucket = "sq=4096,sk=4096,bh=64";
  rows = store.all_results(by_bucket);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1].status, ResultStatus::failed_verify);  // unmeasured rows list last
  EXPECT_TRUE(std::isnan(rows[1].median_ms));
  EXPECT_EQ(rows[1].error, "max error 0.5 at row 3");
  ResultFilter ok_only;
  ok_only.ok_only = true;
  EXPECT_EQ(store.all_results(ok_only).size(), 1u);
}

TEST(CacheStore, RejectsRowsThatBreakInvariants) {
  TempDir dir;
  Store store(dir / "c.db", quiet());
  TuningResult r = make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm128_bn64_w4_s2", 1.0);
  r.p20_ms = 1.5;  // p20 > median
  EXPECT_THROW(store.put_result(r), InvalidArgument);
  r = make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm128_bn64_w4_s2", 1.0);
  r.spec_hash.clear();
  EXPECT_THROW(store.put_result(r), InvalidArgument);
  r = make_result(kCtx, "sq=4096,oops", "bm128_bn64_w4_s2", 1.0);
  EXPECT_THROW(store.put_result(r), InvalidArgument);
  r = make_result(kCtx, "sq=4096", "bm128_bn64_w4_s2", 1.0);
  r.median_ms = kNotMeasured;  // an ok row needs timings
  EXPECT_THROW(store.put_result(r), InvalidArgument);
  Binary b = make_binary("src", "sm_90a");
  b.cubin.clear();
  EXPECT_THROW(store.put_binary(b), InvalidArgument);
  EXPECT_TRUE(store.all_results().empty());
}

// ---- lookups ----------------------------------------------------------------------------------

TEST(CacheStore, LookupExactThenNearestThenNone) {
  TempDir dir;
  Store store(dir / "c.db", quiet());
  const std::string b1k = "sq=1024,sk=1024,bh=64", b8k = "sq=8192,sk=8192,bh=64";
  store.put_result(make_result(kCtx, b1k, "bm64_bn64_w4_s2", 0.30));
  store.put_result(make_result(kCtx, b1k, "bm128_bn64_w4_s2", 0.40));
  store.put_result(make_result(kCtx, b8k, "bm128_bn64_w8_s2", 9.0));
  store.put_result(make_result(kCtx, b8k, "bm128_bn128_w8_s2", 8.0));
  TuningResult wrong = make_result(kCtx, b8k, "bm64_bn32_w4_s1", 1.0);  // fastest, but wrong
  wrong.status = ResultStatus::failed_verify;
  store.put_result(wrong);

  Lookup exact = store.best_config(kCtx, kSpecHash, b8k);
  EXPECT_EQ(exact.source, Lookup::Source::exact);
  EXPECT_EQ(exact.config, "bm128_bn128_w8_s2");  // fastest ok row, never the failed one
  ASSERT_TRUE(exact.row);
  EXPECT_DOUBLE_EQ(exact.row->median_ms, 8.0);
  EXPECT_NE(exact.reason.find("exact"), std::string::npos) << exact.reason;

  // 4096 is 2 log2 steps (one per seqlen field) from 8192 and 4 from 1024.
  Lookup near = store.best_config(kCtx, kSpecHash, "sq=4096,sk=4096,bh=64");
  EXPECT_EQ(near.source, Lookup::Source::nearest);
  EXPECT_EQ(near.config, "bm128_bn128_w8_s2");
  EXPECT_EQ(near.bucket, b8k);
  EXPECT_DOUBLE_EQ(near.distance, 2.0);
  EXPECT_NE(near.reason.find("nearest"), std::string::npos) << near.reason;
  EXPECT_NE(near.reason.find(b8k), std::string::npos) << near.reason;

  Lookup near_small = store.best_config(kCtx, kSpecHash, "sq=512,sk=2048,bh=64");
  EXPECT_EQ(near_small.bucket, b1k);  // distance 2 vs 6
  EXPECT_EQ(near_small.config, "bm64_bn64_w4_s2");

  // Buckets naming other fields are not comparable: none, not a guess.
  Lookup other_fields = store.best_config(kCtx, kSpecHash, "sq=4096,bh=64");
  EXPECT_EQ(other_fields.source, Lookup::Source::none);
  EXPECT_FALSE(other_fields.config);

  Lookup none = store.best_config(kCtx, "ffffffffffffffff", b8k);
  EXPECT_EQ(none.source, Lookup::Source::none);
  EXPECT_FALSE(none.config);
  EXPECT_FALSE(none.row);
  EXPECT_NE(none.reason.find("none"), std::string::npos) << none.reason;
  EXPECT_EQ(none.foreign_rows, 0);

  EXPECT_THROW(store.best_config(kCtx, kSpecHash, "garbage"), InvalidArgument);
}

TEST(CacheStore, ForeignAndStaleRowsAreNeverReturnedAndAreCounted) {
  TempDir dir;
  Store store(dir / "c.db", quiet());
  const std::string b = "sq=4096,sk=4096,bh=64";
  TuningContext other_device = kCtx;
  other_device.device = kA100;
  TuningContext other_sms = kCtx;
  other_sms.device.sm_count = 114;  // H100 PCIe: same arch, other SM count
  TuningContext other_generator = kCtx;
  other_generator.generator_version = 2;
  TuningContext other_template = kCtx;
  other_template.template_hash = "1111111111111111";
  for (const TuningContext& c : {other_device, other_sms, other_generator, other_template}) {
    store.put_result(make_result(c, b, "bm64_bn64_w4_s2", 0.1));  // faster than anything here
  }
  Lookup none = store.best_config(kCtx, kSpecHash, b);
  EXPECT_EQ(none.source, Lookup::Source::none);
  EXPECT_FALSE(none.config);
  EXPECT_EQ(none.foreign_rows, 4);
  EXPECT_NE(none.reason.find("ignored 4"), std::string::npos) << none.reason;
  EXPECT_NE(none.reason.find("2 other device"), std::string::npos) << none.reason;
  EXPECT_NE(none.reason.find("1 other generator version"), std::string::npos) << none.reason;
  EXPECT_NE(none.reason.find("1 other template hash"), std::string::npos) << none.reason;

  // A slower row of this context wins over the faster foreign ones, and not even "nearest"
  // crosses a device.
  store.put_result(make_result(kCtx, b, "bm128_bn64_w8_s2", 3.0));
  Lookup exact = store.best_config(kCtx, kSpecHash, b);
  EXPECT_EQ(exact.source, Lookup::Source::exact);
  EXPECT_EQ(exact.config, "bm128_bn64_w8_s2");
  EXPECT_EQ(exact.foreign_rows, 4);
  Lookup on_a100 = store.best_config(other_device, kSpecHash, "sq=8192,sk=8192,bh=64");
  EXPECT_EQ(on_a100.source, Lookup::Source::nearest);
  EXPECT_EQ(on_a100.row->context.device, kA100);
}

// ---- read-only, corrupt, newer files ----------------------------------------------------------

TEST(CacheStore, ReadOnlyOpenLooksUpButRefusesWrites) {
  TempDir dir;
  fs::path path = dir / "shared.db";
  Binary bin = make_binary("kernel source", "sm_90a");
  {
    Store store(path, quiet());
    store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm128_bn64_w4_s2", 1.0));
    store.put_binary(bin);
  }
  for (const std::string& name : {path.string(), "file:" + path.string() + "?mode=ro"}) {
    StoreOptions o = quiet();
    o.read_only = name == path.string();
    Store ro(name, o);
    EXPECT_TRUE(ro.read_only()) << name;
    EXPECT_EQ(ro.best_config(kCtx, kSpecHash, "sq=4096,sk=4096,bh=64").source,
              Lookup::Source::exact);
    auto got = ro.get_binary(bin.key);  // works, just does not record last use
    ASSERT_TRUE(got);
    EXPECT_EQ(got->cubin, bin.cubin);
    EXPECT_THROW(ro.put_result(make_result(kCtx, "sq=1,sk=1,bh=1", "c", 1.0)), CacheError);
    EXPECT_THROW(ro.put_binary(bin), CacheError);
    EXPECT_THROW(ro.try_claim("k", 10), CacheError);
    EXPECT_THROW(ro.record_untuned(kSpec, kSpecHash, "sq=1", "sm_90a"), CacheError);
    EXPECT_THROW(ro.prune({}), CacheError);
    EXPECT_TRUE(ro.verify().empty());
  }
  if (geteuid() != 0) {  // root writes through file permissions
    fs::permissions(path, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
    Store unwritable(path, quiet());
    EXPECT_TRUE(unwritable.read_only());
    EXPECT_THROW(unwritable.put_binary(bin), CacheError);
  }
  EXPECT_THROW(Store(dir / "missing.db", read_only()), CacheError);
}

TEST(CacheStore, GarbageFileIsMovedAsideAndAFreshCacheStarts) {
  TempDir dir;
  fs::path path = dir / "c.db";
  std::string garbage(8192, '\0');
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = char((i * 131 + 7) % 251);
  std::ofstream(path, std::ios::binary) << garbage;
  std::vector<std::string> warnings;
  Store store(path, quiet(&warnings));
  ASSERT_TRUE(store.moved_aside());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("corrupt"), std::string::npos) << warnings[0];
  EXPECT_TRUE(fs::exists(*store.moved_aside()));
  EXPECT_EQ(fs::file_size(*store.moved_aside()), garbage.size());
  EXPECT_NE(store.moved_aside()->string().find("c.db.corrupt-"), std::string::npos);
  EXPECT_TRUE(store.all_results().empty());
  store.put_result(make_result(kCtx, "sq=1,sk=1,bh=1", "bm64_bn64_w4_s2", 1.0));
  EXPECT_EQ(store.all_results().size(), 1u);
  EXPECT_TRUE(store.verify().empty());
}

TEST(CacheStore, TruncatedDatabaseIsMovedAside) {
  TempDir dir;
  fs::path path = dir / "c.db";
  {
    Store store(path, quiet());
    for (int i = 0; i < 400; ++i) {
      store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64",
                                   "bm128_bn64_w4_s" + std::to_string(i), 1.0 + i));
    }
    store.put_binary(make_binary("src", "sm_90a"));
  }
  ASSERT_FALSE(fs::exists(path.string() + "-wal"));  // checkpointed on close
  uintmax_t size = fs::file_size(path);
  ASSERT_GT(size, 16u * 4096u);
  fs::resize_file(path, size / 2);
  std::vector<std::string> warnings;
  Store store(path, quiet(&warnings));
  EXPECT_TRUE(store.moved_aside());
  EXPECT_EQ(warnings.size(), 1u);
  EXPECT_TRUE(store.all_results().empty());
  EXPECT_TRUE(store.verify().empty());
}

TEST(CacheStore, CorruptFileOpenedReadOnlyThrowsAndStaysPut) {
  TempDir dir;
  fs::path path = dir / "c.db";
  std::ofstream(path, std::ios::binary) << std::string(4096, 'z');
  EXPECT_THROW(Store(path, read_only()), CacheError);
  EXPECT_EQ(fs::file_size(path), 4096u);
}

TEST(CacheStore, NewerSchemaIsRefusedAndLeftUntouched) {
  TempDir dir;
  fs::path path = dir / "c.db";
  { Store store(path, quiet()); }
  exec_raw(path, "PRAGMA user_version = 99");
  try {
    Store store(path, quiet());
    FAIL() << "opened a newer schema";
  } catch (const CacheError& e) {
    EXPECT_NE(std::string(e.what()).find("newer"), std::string::npos) << e.what();
  }
  EXPECT_EQ(query_raw(path, "PRAGMA user_version"), "99");
}

TEST(CacheStore, ErrorsCarrySqliteTextAndStatement) {
  TempDir dir;
  fs::create_directories(dir / "a_folder");
  try {
    Store store(dir / "a_folder", quiet());
    FAIL() << "opened a folder";
  } catch (const CacheError& e) {
    EXPECT_FALSE(e.sqlite_message().empty());
    EXPECT_FALSE(e.statement().empty());
    EXPECT_NE(e.code(), 0);
    const Error& base = e;  // one catchable base type
    EXPECT_NE(std::string(base.what()).find("a_folder"), std::string::npos) << base.what();
  }
}

// ---- binaries, claims, pending ----------------------------------------------------------------

TEST(CacheStore, BinaryRoundTripAndLastUse) {
  TempDir dir;
  Store store(dir / "c.db", quiet());
  Binary b = make_binary("kernel source", "sm_90a");
  b.last_used_at = b.created_at = "2020-01-01T00:00:00Z";
  b.spill_bytes = 8;
  store.put_binary(b);
  auto got = store.get_binary(b.key);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->cubin, b.cubin);
  EXPECT_EQ(got->kernel_name, b.kernel_name);
  EXPECT_EQ(got->registers, 128);
  EXPECT_EQ(got->spill_bytes, 8);
  EXPECT_EQ(got->key.options, "-arch=sm_90a -lineinfo");
  EXPECT_GT(got->last_used_at, "2020-01-01T00:00:00Z");
  EXPECT_EQ(store.all_binaries()[0].last_used_at, got->last_used_at);
  BinaryKey other = b.key;
  other.nvrtc_version = "12.8.93";
  EXPECT_FALSE(store.get_binary(other));
  other = b.key;
  other.target = "sm_90";
  EXPECT_FALSE(store.get_binary(other));
}

TEST(CacheStore, ClaimIsExclusiveAcrossProcessesUntilReleaseOrExpiry) {
  TempDir dir;
  fs::path path = dir / "c.db";
  Store store(path, quiet());
  ASSERT_TRUE(store.try_claim("spec A / bucket 1", 60));
  EXPECT_TRUE(store.try_claim("spec A / bucket 1", 60));  // ours: renewed
  auto other_process_claims = [&](const std::string& key) {
    return in_child([&] { return Store(path, quiet()).try_claim(key, 60) ? 0 : 1; });
  };
  EXPECT_EQ(other_process_claims("spec A / bucket 1"), 1);
  EXPECT_EQ(other_process_claims("spec B / bucket 1"), 0);
  store.release_claim("spec A / bucket 1");
  EXPECT_EQ(other_process_claims("spec A / bucket 1"), 0);
  // That child's claim is held by a dead process but its lease runs for 60 s: still refused.
  EXPECT_FALSE(store.try_claim("spec A / bucket 1", 60));
  store.release_claim("spec A / bucket 1");  // not ours: left alone
  EXPECT_FALSE(store.try_claim("spec A / bucket 1", 60));

  ASSERT_TRUE(store.try_claim("short", 0.3));
  EXPECT_EQ(other_process_claims("short"), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(other_process_claims("short"), 0);  // lease expired
}

TEST(CacheStore, RecordUntunedCountsSightings) {
  TempDir dir;
  Store store(dir / "c.db", quiet());
  for (int i = 0; i < 3; ++i) store.record_untuned(kSpec, kSpecHash, "sq=4096,sk=4096,bh=64", "sm_90a");
  store.record_untuned(kSpec, kSpecHash, "sq=8192,sk=8192,bh=64", "sm_90a");
  store.record_untuned(kSpec, kSpecHash, "sq=4096,sk=4096,bh=64", "sm_80");
  auto pending = store.pending_shapes();
  ASSERT_EQ(pending.size(), 3u);
  EXPECT_EQ(pending[0].count, 3);
  EXPECT_EQ(pending[0].bucket, "sq=4096,sk=4096,bh=64");
  EXPECT_EQ(pending[0].device_arch, "sm_90a");
  EXPECT_EQ(pending[0].spec, kSpec);
  EXPECT_FALSE(pending[0].first_seen.empty());
  EXPECT_EQ(pending[1].count, 1);
  store.remove_pending(kSpecHash, "sq=4096,sk=4096,bh=64", "sm_90a");
  EXPECT_EQ(store.pending_shapes().size(), 2u);
}

// ---- merge, export, prune, verify -------------------------------------------------------------

TEST(CacheStore, MergeKeepNeverReplacesFasterOnlyBeyondTheSpread) {
  TempDir dir;
  const std::string b = "sq=4096,sk=4096,bh=64";
  auto row = [&](const std::string& config, double p20, double median, double p80) {
    TuningResult r = make_result(kCtx, b, config, median);
    r.p20_ms = p20;
    r.p80_ms = p80;
    return r;
  };
  Binary shared_bin = make_binary("shared", "sm_90a", 'a');
  {
    Store theirs(dir / "theirs.db", quiet());
    theirs.put_result(row("within_spread", 0.85, 0.90, 0.95));  // p80 0.95 >= our p20 0.9
    theirs.put_result(row("beyond_spread", 0.50, 0.52, 0.55));  // p80 0.55 <  our p20 0.9
    theirs.put_result(row("only_theirs", 1.0, 1.1, 1.2));
    Binary changed = shared_bin;
    changed.cubin.assign(10, 'b');
    theirs.put_binary(changed);
    theirs.put_binary(make_binary("only theirs", "sm_90a"));
  }
  for (MergePolicy policy : {MergePolicy::keep, MergePolicy::faster}) {
    fs::path mine_path = dir / (policy == MergePolicy::keep ? "keep.db" : "faster.db");
    Store mine(mine_path, quiet());
    mine.put_result(row("within_spread", 0.90, 1.0, 1.1));
    mine.put_result(row("beyond_spread", 0.90, 1.0, 1.1));
    mine.put_binary(shared_bin);
    MergeCounts c = mine.merge_from(dir / "theirs.db", policy);
    EXPECT_EQ(c.inserted, 1);
    EXPECT_EQ(c.binaries, 1);  // only the absent one; ours is not overwritten
    std::map<std::string, double> median;
    for (const TuningResult& r : mine.all_results()) median[r.config] = r.median_ms;
    ASSERT_EQ(median.size(), 3u);
    EXPECT_DOUBLE_EQ(median["within_spread"], 1.0);
    EXPECT_DOUBLE_EQ(median["only_theirs"], 1.1);
    if (policy == MergePolicy::keep) {
      EXPECT_EQ(c.replaced, 0);
      EXPECT_EQ(c.kept, 2);
      EXPECT_DOUBLE_EQ(median["beyond_spread"], 1.0);
    } else {
      EXPECT_EQ(c.replaced, 1);
      EXPECT_EQ(c.kept, 1);
      EXPECT_DOUBLE_EQ(median["beyond_spread"], 0.52);
    }
    EXPECT_EQ(mine.get_binary(shared_bin.key)->cubin, shared_bin.cubin);
    EXPECT_TRUE(mine.verify().empty());
  }
}

TEST(CacheStore, ExportFilterThenImportRoundTrips) {
  TempDir dir;
  Store store(dir / "c.db", quiet());
  TuningContext a100 = kCtx;
  a100.device = kA100;
  store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm128_bn64_w4_s2", 1.0));
  store.put_result(make_result(kCtx, "sq=8192,sk=8192,bh=64", "bm128_bn64_w8_s2", 4.0));
  store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64", "bm64_bn64_w4_s2", 2.0,
                               "aaaaaaaaaaaaaaaa"));
  store.put_result(make_result(a100, "sq=4096,sk=4096,bh=64", "bm128_bn64_w4_s2", 3.0));
  store.put_binary(make_binary("h100 kernel", "sm_90a"));
  store.put_binary(make_binary("a100 kernel", "sm_80"));

  ResultFilter filter;
  filter.device_arch = "sm_90a";
  filter.spec_hash = kSpecHash;
  fs::path exported = dir / "export.db";
  EXPECT_EQ(store.export_to(exported, filter), 2);
  EXPECT_FALSE(fs::exists(exported.string() + "-wal"));  // one portable file
  EXPECT_EQ(query_raw(exported, "PRAGMA journal_mode"), "delete");
  EXPECT_THROW(store.export_to(exported, filter), CacheError);  // never overwrites

  Store imported(dir / "imported.db", quiet());
  MergeCounts c = imported.merge_from(exported, MergePolicy::keep);
  EXPECT_EQ(c.inserted, 2);
  EXPECT_EQ(c.binaries, 1);
  auto want = store.all_results(filter);
  auto got = imported.all_results();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].context, want[i].context);
    EXPECT_EQ(got[i].spec, want[i].spec);
    EXPECT_EQ(got[i].bucket, want[i].bucket);
    EXPECT_EQ(got[i].config, want[i].config);
    EXPECT_EQ(got[i].median_ms, want[i].median_ms);
    EXPECT_EQ(got[i].p20_ms, want[i].p20_ms);
    EXPECT_EQ(got[i].p80_ms, want[i].p80_ms);
    EXPECT_EQ(got[i].provenance.created_at, want[i].provenance.created_at);
    EXPECT_EQ(got[i].provenance.host, want[i].provenance.host);
  }
  ASSERT_EQ(imported.all_binaries().size(), 1u);
  EXPECT_EQ(imported.all_binaries()[0].key.target, "sm_90a");
  EXPECT_EQ(imported.best_config(kCtx, kSpecHash, "sq=4096,sk=4096,bh=64").config,
            "bm128_bn64_w4_s2");
  // Importing again changes nothing.
  MergeCounts again = imported.merge_from(exported, MergePolicy::faster);
  EXPECT_EQ(again.inserted, 0);
  EXPECT_EQ(again.replaced, 0);
  EXPECT_EQ(again.kept, 2);
  EXPECT_EQ(again.binaries, 0);
}

TEST(CacheStore, PruneRemovesStaleForeignAndUnusedAndCountsThem) {
  TempDir dir;
  fs::path path = dir / "c.db";
  Store store(path, quiet());
  const std::string b = "sq=4096,sk=4096,bh=64";
  TuningContext old_gen = kCtx, old_tpl = kCtx, a100 = kCtx, h100_pcie = kCtx;
  old_gen.generator_version = 0 + 7;
  old_tpl.template_hash = "2222222222222222";
  a100.device = kA100;
  h100_pcie.device.sm_count = 114;
  store.put_result(make_result(kCtx, b, "keep1", 1.0));
  store.put_result(make_result(kCtx, "sq=1024,sk=1024,bh=64", "keep2", 1.0));
  store.put_result(make_result(old_gen, b, "stale1", 1.0));
  store.put_result(make_result(old_tpl, b, "stale2", 1.0));
  store.put_result(make_result(a100, b, "foreign1", 1.0));
  store.put_result(make_result(h100_pcie, b, "foreign2", 1.0));
  Binary old_bin = make_binary("old", "sm_90a");
  old_bin.created_at = old_bin.last_used_at = "2001-01-01T00:00:00Z";
  store.put_binary(old_bin);
  store.put_binary(make_binary("fresh", "sm_90a"));
  ASSERT_TRUE(store.try_claim("expired", 0.01));
  std::this_thread::sleep_for(std::chrono::milliseconds(30));

  PruneCounts none = store.prune({});
  EXPECT_EQ(none.stale_results + none.foreign_results + none.binaries, 0);
  EXPECT_EQ(none.expired_claims, 1);

  PruneCounts c = store.prune({.current = kCtx, .binaries_unused_days = 30});
  EXPECT_EQ(c.stale_results, 2);
  EXPECT_EQ(c.foreign_results, 2);
  EXPECT_EQ(c.binaries, 1);
  auto rows = store.all_results();
  ASSERT_EQ(rows.size(), 2u);
  for (const TuningResult& r : rows) EXPECT_EQ(r.config.substr(0, 4), "keep");
  ASSERT_EQ(store.all_binaries().size(), 1u);
  EXPECT_EQ(store.all_binaries()[0].key.source_sha256, sha256_hex("fresh"));
}

TEST(CacheStore, VerifyFindsInjectedBadRows) {
  TempDir dir;
  fs::path path = dir / "c.db";
  Store store(path, quiet());
  store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64", "good", 1.0));
  store.put_binary(make_binary("good", "sm_90a"));
  ASSERT_TRUE(store.verify().empty());
  const std::string cols =
      "INSERT INTO tuning_results (schema_version, generator_version, template_hash, device_arch, "
      "device_sm_count, device_l2_bytes, spec_hash, spec, bucket, config, status, median_ms, "
      "p20_ms, p80_ms, samples, created_at) VALUES ";
  exec_raw(path, cols + "(1, 1, 't', 'sm_90a', 132, 1, 'h', 's', 'sq=1', 'order', 'ok', 1.0, 2.0, "
                        "3.0, 5, 'now')");
  exec_raw(path, cols + "(1, 1, 't', 'sm_90a', 132, 1, '', 's', 'sq=1', 'nokey', 'ok', 1.0, 1.0, "
                        "1.0, 5, 'now')");
  exec_raw(path, cols + "(1, 1, 't', 'sm_90a', 132, 1, 'h', 's', 'sq=1', 'neg', 'ok', -1.0, "
                        "-2.0, 1.0, 5, 'now')");
  exec_raw(path, cols + "(1, 1, 't', 'sm_90a', 132, 1, 'h', 's', 'sq=1', 'nan', 'ok', 'NaN?', "
                        "NULL, 1.0, 5, 'now')");
  exec_raw(path, cols + "(1, 1, 't', 'sm_90a', 132, 1, 'h', 's', 'sq=x', 'badbucket', 'failed_"
                        "verify', NULL, NULL, NULL, 0, 'now')");
  exec_raw(path, cols + "(7, 1, 't', 'sm_90a', 132, 1, 'h', 's', 'sq=1', 'oldschema', "
                        "'failed_verify', NULL, NULL, NULL, 0, 'now')");
  exec_raw(path,
           "INSERT INTO binaries (source_sha256, options, nvrtc_version, target, kernel_name, "
           "cubin, created_at, last_used_at) VALUES ('" + std::string(64, 'e') +
               "', '', '13.0', 'sm_90a', 'k', x'', 'now', 'now')");
  auto problems = store.verify();
  std::string all;
  for (const std::string& p : problems) all += p + "\n";
  for (const char* want :
       {"not p20 <= median <= p80", "empty key column", "negative timing", "timing not a number",
        "ok row without timings", "malformed bucket 'sq=x'", "schema_version differs",
        "binaries: empty cubin"}) {
    EXPECT_NE(all.find(want), std::string::npos) << "missing '" << want << "' in:\n" << all;
  }
  exec_raw(path, "PRAGMA user_version = 5");
  auto version_problems = store.verify();
  ASSERT_FALSE(version_problems.empty());
  EXPECT_NE(version_problems.back().find("schema version 5"), std::string::npos);
}

// ---- several processes ------------------------------------------------------------------------

TEST(CacheStore, FourProcessesWritingAtOnceLoseNoRows) {
  TempDir dir;
  fs::path path = dir / "shared.db";  // not created yet: the children race to create it
  constexpr int kProcs = 4, kRows = 200;
  std::vector<pid_t> children;
  fflush(nullptr);
  for (int p = 0; p < kProcs; ++p) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int code = 0;
      try {
        Store store(path, quiet());
        for (int i = 0; i < kRows; ++i) {
          store.put_result(make_result(kCtx, "sq=4096,sk=4096,bh=64",
                                       "p" + std::to_string(p) + "_c" + std::to_string(i),
                                       1.0 + i));
          if (i % 50 == 0) store.record_untuned(kSpec, kSpecHash, "sq=1,sk=1,bh=1", "sm_90a");
        }
      } catch (const std::exception& e) {
        fprintf(stderr, "child %d: %s\n", p, e.what());
        code = 1;
      }
      _exit(code);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a writer failed";
  }
  Store store(path, quiet());
  EXPECT_EQ(store.all_results().size(), size_t{kProcs * kRows});
  ASSERT_EQ(store.pending_shapes().size(), 1u);
  EXPECT_EQ(store.pending_shapes()[0].count, kProcs * (kRows / 50));
  EXPECT_TRUE(store.verify().empty());
}

// ---- free functions ---------------------------------------------------------------------------

TEST(CacheBucket, ParsesAndMeasuresLog2Distance) {
  auto f = parse_bucket("sq=4096,sk=1024,bh=64");
  EXPECT_EQ(f.size(), 3u);
  EXPECT_EQ(f["sq"], 4096);
  EXPECT_EQ(f["bh"], 64);
  for (const char* bad : {"", "sq", "sq=", "=4", "sq=0", "sq=-4", "sq=4x", "sq=4,sq=8"}) {
    EXPECT_THROW(parse_bucket(bad), InvalidArgument) << bad;
  }
  EXPECT_DOUBLE_EQ(*bucket_distance("sq=4096,sk=4096", "sk=4096,sq=4096"), 0.0);
  EXPECT_DOUBLE_EQ(*bucket_distance("sq=4096,sk=1024", "sq=1024,sk=2048"), 3.0);
  EXPECT_FALSE(bucket_distance("sq=4096,sk=1024", "sq=4096,bh=1024"));
  EXPECT_FALSE(bucket_distance("sq=4096", "sq=4096,sk=1"));
}

TEST(CachePath, DefaultFollowsJitattnCacheThenXdgThenHome) {
  auto saved = [](const char* name) -> std::optional<std::string> {
    const char* v = getenv(name);
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
  auto restore = [](const char* name, const std::optional<std::string>& v) {
    if (v) setenv(name, v->c_str(), 1); else unsetenv(name);
  };
  auto cache = saved("JITATTN_CACHE"), xdg = saved("XDG_CACHE_HOME"), home = saved("HOME");
  setenv("JITATTN_CACHE", "/somewhere/my.db", 1);
  setenv("XDG_CACHE_HOME", "/xdg", 1);
  setenv("HOME", "/home/u", 1);
  EXPECT_EQ(default_cache_path(), fs::path("/somewhere/my.db"));
  unsetenv("JITATTN_CACHE");
  EXPECT_EQ(default_cache_path(), fs::path("/xdg/jitattn/cache.db"));
  setenv("XDG_CACHE_HOME", "relative/ignored", 1);
  EXPECT_EQ(default_cache_path(), fs::path("/home/u/.cache/jitattn/cache.db"));
  unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(default_cache_path(), fs::path("/home/u/.cache/jitattn/cache.db"));
  restore("JITATTN_CACHE", cache);
  restore("XDG_CACHE_HOME", xdg);
  restore("HOME", home);
}

TEST(CacheKeys, HexAndOptionsAreCanonical) {
  EXPECT_EQ(hex64(0), "0000000000000000");
  EXPECT_EQ(hex64(0xcbf29ce484222325ull), "cbf29ce484222325");
  EXPECT_EQ(normalize_options({" -arch=sm_90a", "", "  ", "-DX=1 "}), "-arch=sm_90a -DX=1");
  EXPECT_EQ(parse_status(to_string(ResultStatus::spilled)), ResultStatus::spilled);
  EXPECT_EQ(parse_status("from_the_future"), ResultStatus::other);
}

// ---- SHA-256 ----------------------------------------------------------------------------------

TEST(CacheSha256, Fips180TestVectors) {
  EXPECT_EQ(sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjk"
                       "lmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(CacheSha256, PaddingBoundariesAndIncrementalUpdates) {
  // Expected values from Python's hashlib for bytes (i * 7 + 3) % 256.
  const std::pair<size_t, const char*> cases[] = {
      {55, "e7313d333c272e639f790978283f9eb392e843d0f29b7016828bb1daa4aac70b"},
      {56, "4324d65f3c103567f5589c710bc08f8523f929a9272e3af36fc968e52abc6c27"},
      {63, "81c80242132f230c3bd41b3e63bbcff16107339549214a99614ff26664625055"},
      {64, "39e3d7b6b5d075d37d053ad89b24b41bef4f3c29760c84447cab3f3be1882241"},
      {65, "aacca6ff74fdbb296d165a45cecfa04e5127bc008770fbbdd48006f2d2fae95e"},
      {119, "9ce7368e4daf32341631b492e80359dc9f594b48453cd0dd5bf0b19279cc177e"},
      {120, "7836b787757e95e58b3ca5aec90b1b004e8deba1e50e9675af9cabf1a13a04b5"},
  };
  for (auto [n, want] : cases) {
    std::string data(n, '\0');
    for (size_t i = 0; i < n; ++i) data[i] = char((i * 7 + 3) % 256);
    EXPECT_EQ(sha256_hex(data), want) << n;
    for (size_t chunk : {1, 3, 17, 64}) {
      Sha256 h;
      for (size_t at = 0; at < n; at += chunk) h.update(std::string_view(data).substr(at, chunk));
      std::string hex;
      for (uint8_t byte : h.digest()) {
        static const char digits[] = "0123456789abcdef";
        hex += digits[byte >> 4];
        hex += digits[byte & 15];
      }
      EXPECT_EQ(hex, want) << n << " bytes in chunks of " << chunk;
    }
  }
}
