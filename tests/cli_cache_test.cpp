// `jitattn cache ...`: each command run directly on temporary cache files filled through
// cache::Store, plus the CLI11 wiring. No GPU needed.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cache/sha256.h"
#include "cache/store.h"
#include "tests/test_util.h"
#include "cli/cache_commands.h"

namespace fs = std::filesystem;
using namespace jitattn;
using namespace jitattn::cache;
using namespace jitattn::cli;

namespace {

StoreOptions read_only_options(bool read_only) {
  StoreOptions options;
  options.read_only = read_only;
  return options;
}

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("jitattn-cli-cache-test") {}
};

const DeviceKey kH100{"sm_90a", 132, 50331648};
const DeviceKey kA100{"sm_80", 108, 41943040};
const TuningContext kCtx{1, "00000000deadbeef", kH100};
const std::string kSpecHash = "0123456789abcdef";
const std::string kSpec = "fwd sm90 bf16 d128 dv128 mask=causal";
const std::string kBucket = "sq=4096,sk=4096,bh=64";
// generator.cpp folds the spec hash into kernel names: 0x89abcdef ^ 0x01234567.
const std::string kKernelName = "attn_fwd_sm90_bf16_d128_causal_bm128_bn64_w4_s2_88888888";

TuningResult make_result(const TuningContext& ctx, const std::string& config, double median_ms,
                         const std::string& spec_hash = kSpecHash) {
  TuningResult r;
  r.context = ctx;
  r.spec_hash = spec_hash;
  r.spec = spec_hash == kSpecHash ? kSpec : "spec of " + spec_hash;
  r.bucket = kBucket;
  r.config = config;
  r.median_ms = median_ms;
  r.p20_ms = median_ms * 0.95;
  r.p80_ms = median_ms * 1.05;
  r.samples = 20;
  return r;
}

Binary make_binary(const std::string& source, const std::string& target) {
  Binary b;
  b.key = {sha256_hex(source), normalize_options({"-arch=" + target}), "13.0.48", target};
  b.kernel_name = kKernelName;
  b.cubin.assign(1000, 'x');
  b.registers = 128;
  return b;
}

/// Two configs and a failed one for kSpecHash on the H100, one binary.
void fill(const std::string& path) {
  Store store(path);
  store.put_result(make_result(kCtx, "bm128_bn64_w4_s2", 0.100));
  store.put_result(make_result(kCtx, "bm64_bn64_w4_s2", 0.200));
  TuningResult failed = make_result(kCtx, "bm128_bn128_w8_s2", kNotMeasured);
  failed.status = ResultStatus::failed_verify;
  failed.p20_ms = failed.p80_ms = kNotMeasured;
  failed.samples = 0;
  failed.error = "max rel error 0.5";
  store.put_result(failed);
  store.put_binary(make_binary("source one", "sm_90a"));
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string line_with(const std::string& text, const std::string& needle) {
  for (const std::string& line : lines_of(text)) {
    if (line.find(needle) != std::string::npos) return line;
  }
  return "";
}

void exec_sql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* message = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message);
  EXPECT_EQ(rc, SQLITE_OK) << (message ? message : "");
  sqlite3_free(message);
  sqlite3_close(db);
}

}  // namespace

TEST(CliCache, LsListsRowsAndMarksTheWinner) {
  TempDir dir;
  const std::string db = dir / "cache.db";
  fill(db);
  std::ostringstream text;
  CacheLsOptions o;
  o.cache = db;
  EXPECT_EQ(run_cache_ls(o, text), 0);
  const std::string fast = line_with(text.str(), "bm128_bn64_w4_s2");
  const std::string slow = line_with(text.str(), "bm64_bn64_w4_s2");
  EXPECT_EQ(fast.rfind("*", 0), 0u) << text.str();
  EXPECT_NE(slow.rfind("*", 0), 0u) << text.str();
  EXPECT_NE(fast.find("sm_90a"), std::string::npos);
  EXPECT_NE(fast.find("0123456789ab"), std::string::npos);
  EXPECT_NE(fast.find(kBucket), std::string::npos);
  EXPECT_NE(line_with(text.str(), "failed_verify"), "");
  EXPECT_NE(text.str().find("binaries: 1"), std::string::npos) << text.str();

  std::ostringstream json;
  o.json = true;
  EXPECT_EQ(run_cache_ls(o, json), 0);
  const std::vector<std::string> lines = lines_of(json.str());
  ASSERT_EQ(lines.size(), 4u) << json.str();
  EXPECT_EQ(lines.back(), "{\"binaries\": 1}");
  const std::string fast_json = line_with(json.str(), "\"config\": \"bm128_bn64_w4_s2\"");
  EXPECT_NE(fast_json.find("\"winner\": true"), std::string::npos) << fast_json;
  EXPECT_NE(fast_json.find("\"device_arch\": \"sm_90a\""), std::string::npos);
  EXPECT_NE(fast_json.find("\"spec_hash\": \"" + kSpecHash + "\""), std::string::npos);
  EXPECT_NE(fast_json.find("\"median_ms\": 0.1,"), std::string::npos) << fast_json;
  EXPECT_NE(fast_json.find("\"samples\": 20"), std::string::npos);
  const std::string failed_json = line_with(json.str(), "failed_verify");
  EXPECT_NE(failed_json.find("\"median_ms\": null"), std::string::npos) << failed_json;
  EXPECT_NE(failed_json.find("\"winner\": false"), std::string::npos);

  // Filters: another device lists nothing, a spec prefix keeps the rows.
  std::ostringstream none;
  o.device = "sm_80";
  EXPECT_EQ(run_cache_ls(o, none), 0);
  EXPECT_EQ(lines_of(none.str()).size(), 1u) << none.str();
  std::ostringstream by_spec;
  o.device.clear();
  o.spec = "012345";
  EXPECT_EQ(run_cache_ls(o, by_spec), 0);
  EXPECT_EQ(lines_of(by_spec.str()).size(), 4u);
}

TEST(CliCache, LsOfAMissingFileIsEmpty) {
  TempDir dir;
  CacheLsOptions o;
  o.cache = dir / "absent.db";
  std::ostringstream out;
  EXPECT_EQ(run_cache_ls(o, out), 0);
  EXPECT_NE(out.str().find("binaries: 0"), std::string::npos);
  EXPECT_FALSE(fs::exists(o.cache)) << "ls must not create a cache";
}

TEST(CliCache, ShowFindsASpecByPrefix) {
  TempDir dir;
  const std::string db = dir / "cache.db";
  fill(db);
  {
    Store store(db);
    Binary other = make_binary("source two", "sm_90a");
    other.kernel_name = "attn_fwd_sm90_bf16_d64_none_bm64_bn64_w4_s2_feedf00d";
    store.put_binary(other);
  }
  CacheShowOptions o;
  o.cache = db;
  o.key = "0123456";
  std::ostringstream out;
  EXPECT_EQ(run_cache_show(o, out), 0);
  const std::string s = out.str();
  EXPECT_NE(s.find(kSpec), std::string::npos) << s;
  EXPECT_NE(s.find("device sm_90a"), std::string::npos) << s;
  EXPECT_NE(s.find("bucket " + kBucket), std::string::npos) << s;
  EXPECT_NE(line_with(s, "bm128_bn64_w4_s2").find("*"), std::string::npos) << s;
  EXPECT_NE(line_with(s, "failed_verify").find("max rel error 0.5"), std::string::npos) << s;
  EXPECT_NE(s.find(kKernelName), std::string::npos) << s;
  EXPECT_EQ(s.find("feedf00d"), std::string::npos) << "another spec's binary: " << s;
  EXPECT_NE(s.find("binaries: 1"), std::string::npos) << s;
}

TEST(CliCache, ShowRejectsUnknownShortAndAmbiguousKeys) {
  TempDir dir;
  const std::string db = dir / "cache.db";
  fill(db);
  {
    Store store(db);
    store.put_result(make_result(kCtx, "bm64_bn64_w4_s2", 0.3, "0123450000000000"));
  }
  CacheShowOptions o;
  o.cache = db;
  std::ostringstream out;
  o.key = "fedcba98";
  try {
    run_cache_show(o, out);
    FAIL() << "unknown key accepted";
  } catch (const InvalidArgument&) {
    FAIL() << "unknown key is not a usage error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fedcba98"), std::string::npos) << e.what();
  }
  o.key = "01234";  // under 6 hex digits
  EXPECT_THROW(run_cache_show(o, out), InvalidArgument);
  o.key = "012345";  // both specs
  EXPECT_THROW(run_cache_show(o, out), InvalidArgument);
  o.key = "not-hex!";
  EXPECT_THROW(run_cache_show(o, out), InvalidArgument);
  o.key = "0123456789ABCDEF";  // case does not matter
  EXPECT_EQ(run_cache_show(o, out), 0);
}

TEST(CliCache, ExportThenImportRoundTrips) {
  TempDir dir;
  const std::string db = dir / "cache.db";
  fill(db);
  {
    Store store(db);
    store.put_result(make_result(TuningContext{1, "00000000deadbeef", kA100}, "bm64_bn64_w4_s2", 0.4));
    store.put_binary(make_binary("source a100", "sm_80"));
  }
  CacheExportOptions e;
  e.cache = db;
  e.file = dir / "all.db";
  std::ostringstream out;
  EXPECT_EQ(run_cache_export(e, out), 0);
  EXPECT_NE(out.str().find("exported 4 results and 2 binaries"), std::string::npos) << out.str();
  EXPECT_THROW(run_cache_export(e, out), CacheError) << "export must not overwrite";

  e.file = dir / "h100.db";
  e.device = "sm_90a";
  e.spec = "0123456789";
  std::ostringstream h100;
  EXPECT_EQ(run_cache_export(e, h100), 0);
  EXPECT_NE(h100.str().find("exported 3 results and 1 binaries"), std::string::npos) << h100.str();

  CacheImportOptions i;
  i.cache = dir / "other.db";
  i.file = dir / "all.db";
  std::ostringstream first, second;
  EXPECT_EQ(run_cache_import(i, first), 0);
  EXPECT_NE(first.str().find("4 inserted, 0 replaced, 0 kept, 2 binaries"), std::string::npos)
      << first.str();
  EXPECT_EQ(run_cache_import(i, second), 0);
  EXPECT_NE(second.str().find("0 inserted, 0 replaced, 4 kept, 0 binaries"), std::string::npos)
      << second.str();
  Store imported(i.cache, read_only_options(true));
  EXPECT_EQ(imported.all_results().size(), 4u);
  EXPECT_EQ(imported.all_binaries().size(), 2u);

  i.policy = "fastest";
  EXPECT_THROW(run_cache_import(i, second), InvalidArgument);
}

TEST(CliCache, MergeKeepsOrTakesTheFaster) {
  TempDir dir;
  const std::string a = dir / "a.db", b = dir / "b.db";
  {
    Store store(a);
    store.put_result(make_result(kCtx, "bm128_bn64_w4_s2", 0.200));
  }
  {
    Store store(b);
    store.put_result(make_result(kCtx, "bm128_bn64_w4_s2", 0.100));  // p80 0.105 < p20 0.19
    store.put_result(make_result(kCtx, "bm64_bn64_w4_s2", 0.300));
    store.put_binary(make_binary("source one", "sm_90a"));
  }
  const auto median_of_merged = [](const std::string& path) {
    Store store(path, read_only_options(true));
    for (const TuningResult& r : store.all_results()) {
      if (r.config == "bm128_bn64_w4_s2") return r.median_ms;
    }
    return -1.0;
  };

  CacheMergeOptions m;
  m.inputs = {a, b};
  m.output = dir / "keep.db";
  std::ostringstream keep;
  EXPECT_EQ(run_cache_merge(m, keep), 0);
  EXPECT_NE(keep.str().find("merged into " + m.output + ": 2 inserted, 0 replaced, 1 kept, 1 "
                            "binaries"),
            std::string::npos)
      << keep.str();
  EXPECT_DOUBLE_EQ(median_of_merged(m.output), 0.200);

  m.output = dir / "faster.db";
  m.policy = "faster";
  std::ostringstream faster;
  EXPECT_EQ(run_cache_merge(m, faster), 0);
  EXPECT_NE(faster.str().find("2 inserted, 1 replaced, 0 kept, 1 binaries"), std::string::npos)
      << faster.str();
  EXPECT_DOUBLE_EQ(median_of_merged(m.output), 0.100);

  EXPECT_THROW(run_cache_merge(m, faster), InvalidArgument) << "output exists";
  m.output = dir / "missing-input.db";
  m.inputs = {a, dir / "absent.db"};
  EXPECT_THROW(run_cache_merge(m, faster), CacheError);
  EXPECT_FALSE(fs::exists(m.output));
}

TEST(CliCache, VerifyFindsAnInjectedBadRow) {
  TempDir dir;
  const std::string db = dir / "cache.db";
  fill(db);
  CacheVerifyOptions v;
  v.cache = db;
  std::ostringstream clean;
  EXPECT_EQ(run_cache_verify(v, clean), 0);
  EXPECT_EQ(clean.str(), "ok\n");

  // Store::put_result refuses such a row; only a foreign writer or a bug could leave one.
  exec_sql(db, "UPDATE tuning_results SET median_ms = -1 WHERE config = 'bm64_bn64_w4_s2'");
  std::ostringstream bad;
  EXPECT_EQ(run_cache_verify(v, bad), 1);
  EXPECT_NE(bad.str().find("problems in"), std::string::npos) << bad.str();

  v.cache = dir / "absent.db";
  EXPECT_THROW(run_cache_verify(v, bad), CacheError);
}

TEST(CliCache, PruneCountsWhatItRemoves) {
  TempDir dir;
  const std::string db = dir / "cache.db";
  const TuningContext current = current_context(kH100);
  {
    Store store(db);
    store.put_result(make_result(current, "bm128_bn64_w4_s2", 0.1));
    TuningContext old = current;
    old.generator_version = current.generator_version + 1;  // another build's kernels
    store.put_result(make_result(old, "bm128_bn64_w4_s2", 0.1));
    store.put_result(make_result(current_context(kA100), "bm64_bn64_w4_s2", 0.2));
    store.put_binary(make_binary("source one", "sm_90a"));
    store.put_binary(make_binary("source two", "sm_90a"));
  }
  exec_sql(db, "UPDATE binaries SET last_used_at = '2000-01-01T00:00:00Z' WHERE source_sha256 = '" +
                   sha256_hex("source one") + "'");

  CachePruneOptions p;
  p.cache = db;
  p.unused_days = 30;
  std::ostringstream no_device;
  EXPECT_EQ(run_cache_prune(p, no_device), 0);
  EXPECT_NE(no_device.str().find("removed 0 stale results, 0 results of other devices, 1 binaries"),
            std::string::npos)
      << no_device.str();
  EXPECT_NE(no_device.str().find("note: no --device-key"), std::string::npos);

  p.device_key = "sm_90a,132,50331648";
  p.keep_other_devices = true;
  std::ostringstream keep_others;
  EXPECT_EQ(run_cache_prune(p, keep_others), 0);
  EXPECT_NE(keep_others.str().find("removed 1 stale results, 0 results of other devices, 0 "
                                   "binaries"),
            std::string::npos)
      << keep_others.str();

  p.keep_other_devices = false;
  std::ostringstream all;
  EXPECT_EQ(run_cache_prune(p, all), 0);
  EXPECT_NE(all.str().find("removed 0 stale results, 1 results of other devices"), std::string::npos)
      << all.str();
  Store store(db, read_only_options(true));
  EXPECT_EQ(store.all_results().size(), 1u);
  EXPECT_EQ(store.all_binaries().size(), 1u);

  p.device_key = "sm_90a,132";
  EXPECT_THROW(run_cache_prune(p, all), InvalidArgument);
}

TEST(CliCache, FlagValuesAreChecked) {
  EXPECT_EQ(parse_merge_policy("faster", "--policy"), MergePolicy::faster);
  EXPECT_THROW(parse_merge_policy("Keep", "--policy"), InvalidArgument);
  EXPECT_EQ(parse_device_key("sm_80,108,41943040", "k"), kA100);
  for (const char* bad : {"", "sm_80", "sm_80,108", "sm_80,108,4x", "sm_80,-1,5", "80,108,5",
                          "sm_80,108,5,6"}) {
    EXPECT_THROW(parse_device_key(bad, "k"), InvalidArgument) << bad;
  }
}

TEST(CliCache, CliFlagsReachTheOptions) {
  CLI::App app;
  const auto commands = add_cache_commands(app);
  app.parse("cache merge a.db b.db -o out.db --policy faster", /*program_name_included=*/false);
  EXPECT_TRUE(commands->app->got_subcommand("merge"));
  EXPECT_EQ(commands->merge.inputs, (std::vector<std::string>{"a.db", "b.db"}));
  EXPECT_EQ(commands->merge.output, "out.db");
  EXPECT_EQ(commands->merge.policy, "faster");

  CLI::App prune_app;
  const auto prune = add_cache_commands(prune_app);
  prune_app.parse("cache prune --cache x.db --unused-days 7 --device-key sm_90a,132,5", false);
  EXPECT_EQ(prune->prune.cache, "x.db");
  ASSERT_TRUE(prune->prune.unused_days.has_value());
  EXPECT_DOUBLE_EQ(*prune->prune.unused_days, 7.0);
  EXPECT_EQ(prune->prune.device_key, "sm_90a,132,5");

  CLI::App bad_app;
  const auto bad = add_cache_commands(bad_app);
  EXPECT_THROW(bad_app.parse("cache merge a.db -o out.db --policy best", false), CLI::ParseError);
}
