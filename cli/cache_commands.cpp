// `jitattn cache ...`: the Store's listing and maintenance paths as commands. Reading commands
// (ls, show, export, verify) open the file read-only, so they work on a shared read-only cache
// and never create or migrate one by accident.
#include "cli/cache_commands.h"
#include "cli/json.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <string_view>
#include <system_error>
#include <tuple>

#include "jitattn/error.h"

namespace jitattn::cli {
namespace {

namespace fs = std::filesystem;
using cache::TuningResult;

// ---- Opening the cache. ----

bool is_uri(const fs::path& path) { return path.string().rfind("file:", 0) == 0; }

fs::path cache_path(const CacheFileOptions& o) {
  return o.cache.empty() ? cache::default_cache_path() : fs::path(o.cache);
}

cache::StoreOptions read_only_options(bool read_only) {
  cache::StoreOptions options;
  options.read_only = read_only;
  return options;
}

// Reading commands must not create an empty cache where the user mistyped a path.
cache::Store open_existing(const fs::path& path, bool read_only) {
  if (!is_uri(path) && !fs::exists(path)) {
    throw CacheError("no cache at " + path.string(), "file does not exist", "");
  }
  return cache::Store(path, read_only_options(read_only));
}

// ---- Rows. ----

std::string ms_text(double v) { return std::isnan(v) ? "-" : fmt::format("{:.4f}", v); }

std::string short_hash(const std::string& hash) { return hash.substr(0, 12); }

// Everything of a row's key but the config: rows sharing it compete for one winner, exactly
// as best_config compares them (a row of another context is never chosen over this one).
auto contest_key(const TuningResult& r) {
  const cache::TuningContext& c = r.context;
  return std::tuple(r.schema_version, c.generator_version, c.template_hash, c.device.arch,
                    c.device.sm_count, c.device.l2_bytes, r.spec_hash, r.bucket);
}

// winners[i]: rows[i] is the fastest ok row (by median) of its contest.
std::vector<bool> mark_winners(const std::vector<TuningResult>& rows) {
  std::map<decltype(contest_key(rows.front())), size_t> best;
  for (size_t i = 0; i < rows.size(); ++i) {
    const TuningResult& r = rows[i];
    if (r.status != cache::ResultStatus::ok || std::isnan(r.median_ms)) continue;
    auto [it, inserted] = best.try_emplace(contest_key(r), i);
    if (!inserted && r.median_ms < rows[it->second].median_ms) it->second = i;
  }
  std::vector<bool> winners(rows.size(), false);
  for (const auto& [key, i] : best) winners[i] = true;
  return winners;
}

// Device, spec, bucket, then fastest first with unmeasured rows last: the order a person scans.
void sort_rows(std::vector<TuningResult>& rows) {
  auto order = [](const TuningResult& r) {
    return std::tuple(r.context.device.arch, r.context.device.sm_count, r.context.device.l2_bytes,
                      r.context.generator_version, r.context.template_hash, r.spec_hash, r.bucket,
                      std::isnan(r.median_ms), std::isnan(r.median_ms) ? 0.0 : r.median_ms,
                      r.config);
  };
  std::stable_sort(rows.begin(), rows.end(),
                   [&](const TuningResult& a, const TuningResult& b) { return order(a) < order(b); });
}

// Prints cells left-aligned in columns as wide as their widest cell.
void print_table(const std::vector<std::vector<std::string>>& table, std::ostream& out) {
  std::vector<size_t> width;
  for (const auto& row : table) {
    width.resize(std::max(width.size(), row.size()), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (const auto& row : table) {
    std::string text;
    for (size_t c = 0; c < row.size(); ++c) {
      text += c + 1 == row.size() ? row[c] : fmt::format("{:<{}}  ", row[c], width[c]);
    }
    while (!text.empty() && text.back() == ' ') text.pop_back();
    out << text << "\n";
  }
}

// A spec hash, or a unique prefix of one, to the full hash of a stored spec.
std::string resolve_spec(const cache::Store& store, std::string key, const std::string& flag) {
  std::transform(key.begin(), key.end(), key.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const bool hex = std::all_of(key.begin(), key.end(),
                               [](unsigned char c) { return std::isxdigit(c) != 0; });
  // Shorter prefixes match too much to be safe in scripts that export or prune by them.
  if (!hex || key.size() < 6 || key.size() > 16) {
    throw InvalidArgument(flag, "'" + key + "' is not a spec hash or a prefix of 6 to 16 hex digits");
  }
  std::set<std::string> matches;
  for (const TuningResult& r : store.all_results()) {
    if (r.spec_hash.rfind(key, 0) == 0) matches.insert(r.spec_hash);
  }
  if (matches.empty()) throw Error("no cached spec matches '" + key + "' in " + store.path().string());
  if (matches.size() > 1) {
    std::string list;
    for (const std::string& m : matches) list += (list.empty() ? "" : ", ") + m;
    throw InvalidArgument(flag, "'" + key + "' matches " + std::to_string(matches.size()) +
                                    " specs: " + list);
  }
  return *matches.begin();
}

// Binaries are keyed by their source, not their spec; the generator folds the spec hash into
// every kernel name (generator.cpp kernel_name: "_" + 8 hex digits of h ^ (h >> 32)), which is
// what ties a binary back to its spec.
std::string kernel_name_tag(const std::string& spec_hash) {
  const uint64_t h = std::stoull(spec_hash, nullptr, 16);
  return fmt::format("_{:08x}", static_cast<uint32_t>(h ^ (h >> 32)));
}

void print_counts(std::ostream& out, const std::string& what, const cache::MergeCounts& c) {
  out << fmt::format("{}: {} inserted, {} replaced, {} kept, {} binaries copied\n", what,
                     c.inserted, c.replaced, c.kept, c.binaries);
}

}  // namespace

// ---- Flag values. ----

cache::MergePolicy parse_merge_policy(const std::string& text, const std::string& flag) {
  if (text == "keep") return cache::MergePolicy::keep;
  if (text == "faster") return cache::MergePolicy::faster;
  throw InvalidArgument(flag, "'" + text + "' is not keep or faster");
}

cache::DeviceKey parse_device_key(const std::string& text, const std::string& flag) {
  const auto bad = [&] {
    return InvalidArgument(flag, "'" + text + "' is not ARCH,SMS,L2_BYTES (e.g. sm_90a,132,50331648)");
  };
  const size_t a = text.find(',');
  const size_t b = a == std::string::npos ? a : text.find(',', a + 1);
  if (b == std::string::npos || text.find(',', b + 1) != std::string::npos) throw bad();
  cache::DeviceKey key;
  key.arch = text.substr(0, a);
  try {
    size_t used_sms = 0, used_l2 = 0;
    const std::string sms = text.substr(a + 1, b - a - 1), l2 = text.substr(b + 1);
    key.sm_count = std::stoi(sms, &used_sms);
    key.l2_bytes = std::stoll(l2, &used_l2);
    if (used_sms != sms.size() || used_l2 != l2.size()) throw bad();
  } catch (const std::logic_error&) {  // stoi's invalid_argument / out_of_range
    throw bad();
  }
  if (key.arch.rfind("sm_", 0) != 0 || key.sm_count <= 0 || key.l2_bytes <= 0) throw bad();
  return key;
}

// ---- Commands. ----

int run_cache_ls(const CacheLsOptions& o, std::ostream& out) {
  const fs::path path = cache_path(o);
  if (!is_uri(path) && !fs::exists(path)) {
    // Nothing tuned yet is a normal state, not an error.
    if (o.json) {
      out << "{\"binaries\": 0}\n";
    } else {
      out << "no cache at " << path.string() << " (nothing tuned yet)\nbinaries: 0\n";
    }
    return 0;
  }
  const cache::Store store = open_existing(path, /*read_only=*/true);
  cache::ResultFilter filter;
  if (!o.device.empty()) filter.device_arch = o.device;
  std::vector<TuningResult> rows = store.all_results(filter);
  // A prefix filter, unlike show's KEY, may match several specs: ls is for looking around.
  if (!o.spec.empty()) {
    std::erase_if(rows, [&](const TuningResult& r) { return r.spec_hash.rfind(o.spec, 0) != 0; });
  }
  sort_rows(rows);
  const std::vector<bool> winners = mark_winners(rows);
  const size_t binaries = store.all_binaries().size();

  if (o.json) {
    for (size_t i = 0; i < rows.size(); ++i) {
      const TuningResult& r = rows[i];
      out << fmt::format(
          "{{\"device_arch\": {}, \"spec_hash\": {}, \"spec\": {}, \"bucket\": {}, "
          "\"config\": {}, \"status\": {}, \"median_ms\": {}, \"p20_ms\": {}, \"p80_ms\": {}, "
          "\"samples\": {}, \"created_at\": {}, \"winner\": {}}}\n",
          json_string(r.context.device.arch), json_string(r.spec_hash), json_string(r.spec),
          json_string(r.bucket), json_string(r.config), json_string(cache::to_string(r.status)),
          json_number(r.median_ms), json_number(r.p20_ms), json_number(r.p80_ms), r.samples,
          json_string(r.provenance.created_at), winners[i] ? "true" : "false");
    }
    out << fmt::format("{{\"binaries\": {}}}\n", binaries);
    return 0;
  }
  std::vector<std::vector<std::string>> table = {{"", "device", "spec", "bucket", "config",
                                                  "status", "median_ms", "p20_ms", "p80_ms",
                                                  "samples", "created_at"}};
  for (size_t i = 0; i < rows.size(); ++i) {
    const TuningResult& r = rows[i];
    table.push_back({winners[i] ? "*" : "", r.context.device.arch, short_hash(r.spec_hash),
                     r.bucket, r.config, cache::to_string(r.status), ms_text(r.median_ms),
                     ms_text(r.p20_ms), ms_text(r.p80_ms), std::to_string(r.samples),
                     r.provenance.created_at});
  }
  print_table(table, out);
  out << fmt::format("{} results (* fastest ok per device, spec and bucket), binaries: {}\n",
                     rows.size(), binaries);
  return 0;
}

int run_cache_show(const CacheShowOptions& o, std::ostream& out) {
  const cache::Store store = open_existing(cache_path(o), /*read_only=*/true);
  const std::string hash = resolve_spec(store, o.key, "KEY");
  cache::ResultFilter filter;
  filter.spec_hash = hash;
  std::vector<TuningResult> rows = store.all_results(filter);
  sort_rows(rows);
  const std::vector<bool> winners = mark_winners(rows);

  // verify reports a hash with two spec texts; show both rather than hide one.
  std::set<std::string> specs;
  for (const TuningResult& r : rows) specs.insert(r.spec);
  out << "spec " << hash << "\n";
  for (const std::string& s : specs) out << "  " << s << "\n";

  std::string device_line, bucket_line;
  std::vector<std::vector<std::string>> table;
  const auto flush = [&] {
    print_table(table, out);
    table.clear();
  };
  for (size_t i = 0; i < rows.size(); ++i) {
    const TuningResult& r = rows[i];
    const cache::TuningContext& c = r.context;
    std::string d = fmt::format("device {} ({} {}, L2 {} bytes), generator {}, templates {}",
                                c.device.arch, c.device.sm_count,
                                c.device.arch.rfind("cpu-", 0) == 0 ? "threads" : "SMs", c.device.l2_bytes,
                                c.generator_version, c.template_hash);
    if (r.schema_version != cache::kSchemaVersion) d += fmt::format(", schema {}", r.schema_version);
    if (d != device_line) {
      flush();
      out << "\n" << d << "\n";
      device_line = d;
      bucket_line.clear();
    }
    if (r.bucket != bucket_line) {
      flush();
      out << "  bucket " << r.bucket << "\n";
      bucket_line = r.bucket;
    }
    table.push_back({winners[i] ? "    *" : "     ", r.config, cache::to_string(r.status),
                     std::isnan(r.median_ms) ? "-" : ms_text(r.median_ms) + " ms",
                     fmt::format("[{}, {}]", ms_text(r.p20_ms), ms_text(r.p80_ms)),
                     fmt::format("n={}", r.samples), r.provenance.host, r.provenance.created_at,
                     r.error});
  }
  flush();

  const std::string tag = kernel_name_tag(hash);
  std::vector<std::vector<std::string>> found;
  for (const cache::Binary& b : store.all_binaries()) {
    if (b.kernel_name.find(tag) == std::string::npos) continue;
    found.push_back({"  " + b.kernel_name, b.key.target, fmt::format("{} regs", b.registers),
                     fmt::format("{} B spilled", b.spill_bytes),
                     fmt::format("{} B cubin", b.cubin.size()), "last used " + b.last_used_at});
  }
  out << "\nbinaries: " << found.size() << "\n";
  print_table(found, out);
  return 0;
}

int run_cache_export(const CacheExportOptions& o, std::ostream& out) {
  const cache::Store store = open_existing(cache_path(o), /*read_only=*/true);
  cache::ResultFilter filter;
  if (!o.device.empty()) filter.device_arch = o.device;
  if (!o.spec.empty()) filter.spec_hash = resolve_spec(store, o.spec, "--spec");
  const int64_t results = store.export_to(o.file, filter);
  // export_to counts results only; the written file says how many binaries went with them.
  const size_t binaries = cache::Store(o.file, read_only_options(true))
                              .all_binaries().size();
  out << fmt::format("exported {} results and {} binaries to {}\n", results, binaries, o.file);
  return 0;
}

int run_cache_import(const CacheImportOptions& o, std::ostream& out) {
  const cache::MergePolicy policy = parse_merge_policy(o.policy, "--policy");
  if (!is_uri(o.file) && !fs::exists(o.file)) {
    throw CacheError("cannot import " + o.file, "file does not exist", "");
  }
  cache::Store store(cache_path(o));
  print_counts(out, "imported " + o.file, store.merge_from(o.file, policy));
  return 0;
}

int run_cache_merge(const CacheMergeOptions& o, std::ostream& out) {
  const cache::MergePolicy policy = parse_merge_policy(o.policy, "--policy");
  if (o.inputs.empty()) throw InvalidArgument("INPUTS", "give at least one cache file to merge");
  if (fs::exists(o.output)) {
    throw InvalidArgument("-o", o.output + " exists (merge writes a new file)");
  }
  for (const std::string& in : o.inputs) {
    if (!fs::exists(in)) throw CacheError("cannot merge " + in, "file does not exist", "");
  }
  cache::MergeCounts total;
  try {
    cache::Store store(o.output);
    for (const std::string& in : o.inputs) {
      const cache::MergeCounts c = store.merge_from(in, policy);
      print_counts(out, in, c);
      total.inserted += c.inserted;
      total.replaced += c.replaced;
      total.kept += c.kept;
      total.binaries += c.binaries;
    }
  } catch (...) {
    // A half-merged output would pass for a complete one later: leave nothing behind.
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(o.output + suffix, ec);
    throw;
  }
  print_counts(out, "merged into " + o.output, total);
  return 0;
}

int run_cache_prune(const CachePruneOptions& o, std::ostream& out) {
  cache::PruneOptions prune;
  prune.remove_other_devices = !o.keep_other_devices;
  if (o.unused_days) {
    if (!(*o.unused_days >= 0)) throw InvalidArgument("--unused-days", "must be 0 or more");
    prune.binaries_unused_days = o.unused_days;
  }
  // Which results are stale or foreign depends on the current device, and the CLI asks no GPU
  // for it here; without --device-key results are left alone rather than guessed at.
  if (!o.device_key.empty()) {
    prune.current = cache::current_context(parse_device_key(o.device_key, "--device-key"));
  }
  cache::Store store(open_existing(cache_path(o), /*read_only=*/false));
  const cache::PruneCounts c = store.prune(prune);
  out << fmt::format(
      "removed {} stale results, {} results of other devices, {} binaries, {} expired claims\n",
      c.stale_results, c.foreign_results, c.binaries, c.expired_claims);
  if (!prune.current) {
    out << "note: no --device-key ARCH,SMS,L2 given: tuning results were kept; only "
        << (prune.binaries_unused_days ? "unused binaries and " : "") << "expired claims were pruned\n";
  }
  return 0;
}

int run_cache_verify(const CacheVerifyOptions& o, std::ostream& out) {
  const cache::Store store = open_existing(cache_path(o), /*read_only=*/true);
  const std::vector<std::string> problems = store.verify();
  for (const std::string& p : problems) out << p << "\n";
  if (!problems.empty()) {
    out << fmt::format("{} problems in {}\n", problems.size(), store.path().string());
    return 1;
  }
  out << "ok\n";
  return 0;
}

// ---- CLI11 wiring. ----

std::unique_ptr<CacheCommands> add_cache_commands(CLI::App& app) {
  auto c = std::make_unique<CacheCommands>();
  CLI::App* cache = app.add_subcommand("cache", "list, show, export, import, merge, prune and "
                                                "verify the tuning cache (no GPU needed)");
  cache->require_subcommand(1);
  c->app = cache;
  const std::string cache_help =
      "cache file (default: $JITATTN_CACHE, else " + cache::default_cache_path().string() + ")";
  const auto file_flag = [&](CLI::App* sub, CacheFileOptions& options) {
    sub->add_option("--cache", options.cache, cache_help);
  };
  const auto policy_flag = [](CLI::App* sub, std::string& policy) {
    sub->add_option("--policy", policy, "on identical keys: keep the existing row, or take the "
                                        "incoming one when faster beyond the measured spread")
        ->check(CLI::IsMember({"keep", "faster"}))
        ->capture_default_str();
  };

  CLI::App* ls = cache->add_subcommand("ls", "every tuning result, winners marked with *");
  file_flag(ls, c->ls);
  ls->add_flag("--json", c->ls.json, "one JSON object per result, then {\"binaries\": N}");
  ls->add_option("--device", c->ls.device, "only this device arch (sm_90a)");
  ls->add_option("--spec", c->ls.spec, "only specs whose hash starts with this");

  CLI::App* show = cache->add_subcommand("show", "one spec: its text, results and binaries");
  file_flag(show, c->show);
  show->add_option("KEY", c->show.key, "spec hash or a unique prefix (6+ hex digits)")->required();

  CLI::App* exp = cache->add_subcommand("export", "write a selection to a new portable file");
  file_flag(exp, c->export_);
  exp->add_option("FILE", c->export_.file, "file to write (must not exist)")->required();
  exp->add_option("--device", c->export_.device, "only this device arch (and its binaries)");
  exp->add_option("--spec", c->export_.spec, "only this spec (hash or unique prefix)");

  CLI::App* imp = cache->add_subcommand("import", "merge a cache file into the cache");
  file_flag(imp, c->import);
  imp->add_option("FILE", c->import.file, "cache file to read")->required()->check(CLI::ExistingFile);
  policy_flag(imp, c->import.policy);

  CLI::App* merge = cache->add_subcommand("merge", "merge cache files, in order, into a new one");
  merge->add_option("INPUTS", c->merge.inputs, "cache files to merge")->required();
  merge->add_option("-o,--output", c->merge.output, "file to create (must not exist)")->required();
  policy_flag(merge, c->merge.policy);

  CLI::App* prune = cache->add_subcommand("prune", "remove stale results, unused binaries and "
                                                   "expired claims");
  file_flag(prune, c->prune);
  CachePruneOptions* p = &c->prune;
  prune->add_option_function<double>("--unused-days", [p](const double& d) { p->unused_days = d; },
                                     "remove binaries not used for this many days");
  prune->add_flag("--keep-other-devices", p->keep_other_devices,
                  "with --device-key: keep results of other devices");
  prune->add_option("--device-key", p->device_key,
                    "current device as ARCH,SMS,L2_BYTES (sm_90a,132,50331648): results of "
                    "other versions (and devices) are removed");

  CLI::App* verify = cache->add_subcommand("verify", "check integrity and invariants; exit 1 on "
                                                     "problems");
  file_flag(verify, c->verify);
  return c;
}

int run_cache_commands(const CacheCommands& c) {
  std::ostream& out = std::cout;
  if (c.app->got_subcommand("ls")) return run_cache_ls(c.ls, out);
  if (c.app->got_subcommand("show")) return run_cache_show(c.show, out);
  if (c.app->got_subcommand("export")) return run_cache_export(c.export_, out);
  if (c.app->got_subcommand("import")) return run_cache_import(c.import, out);
  if (c.app->got_subcommand("merge")) return run_cache_merge(c.merge, out);
  if (c.app->got_subcommand("prune")) return run_cache_prune(c.prune, out);
  if (c.app->got_subcommand("verify")) return run_cache_verify(c.verify, out);
  return 1;  // unreachable: require_subcommand(1)
}

}  // namespace jitattn::cli
