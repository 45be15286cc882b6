// Problem flags -> harness::ProblemDesc. Membership of enum-like flags is checked by CLI11 while
// parsing (so `--help` lists the choices); problem_desc() checks the rest again and throws
// InvalidArgument, because it is also called on flags that were not parsed (bench --grid rows).
#include "cli/problem_flags.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <string_view>
#include <system_error>

#include "jitattn/error.h"

namespace jitattn::cli {
namespace {

constexpr std::array<int, 4> kLayoutBSHD = {0, 1, 2, 3};
constexpr std::array<int, 4> kLayoutBHSD = {0, 2, 1, 3};

bool parse_int(std::string_view text, int* value) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *value);
  return ec == std::errc() && ptr == end && !text.empty();
}

// "L,R" with -1 meaning unbounded on that side (as FlashAttention's window_size).
Window parse_window(const std::string& text) {
  const size_t comma = text.find(',');
  Window w;
  if (comma == std::string::npos ||
      !parse_int(std::string_view(text).substr(0, comma), &w.left) ||
      !parse_int(std::string_view(text).substr(comma + 1), &w.right)) {
    throw InvalidArgument("window", fmt::format("expected two integers L,R (-1 = unbounded), "
                                                "got '{}'",
                                                text));
  }
  return w;
}

DType parse_dtype_flag(const std::string& text) {
  if (text == "bf16") return DType::bf16;
  if (text == "fp16" || text == "f16") return DType::f16;
  if (text == "fp32" || text == "f32") return DType::f32;
  throw InvalidArgument("dtype", fmt::format("expected bf16, fp16 or fp32 (CPU only), got '{}'", text));
}

std::array<int, 4> parse_layout(const std::string& text) {
  if (text == "bshd") return kLayoutBSHD;
  if (text == "bhsd") return kLayoutBHSD;
  throw InvalidArgument("layout", fmt::format("expected bshd or bhsd, got '{}'", text));
}

void require_positive(int value, const char* flag) {
  if (value <= 0) throw InvalidArgument(flag, fmt::format("must be > 0, got {}", value));
}

}  // namespace

std::string bias_pattern_error(const std::string& pattern) {
  if (pattern == "none") return {};
  static constexpr char kFull[] = "bhqk";
  bool ok = pattern.size() == 4;
  for (size_t i = 0; ok && i < 4; ++i) ok = pattern[i] == kFull[i] || pattern[i] == '1';
  if (ok) return {};
  return fmt::format("expected 'none' or 4 characters over [b|1][h|1][q|1][k|1] (e.g. bhqk, "
                     "1hqk, b11k), got '{}'",
                     pattern);
}

void add_problem_flags(CLI::App* app, ProblemFlags* f) {
  app->add_option("--dtype", f->dtype, "element type of q/k/v/o (fp32: CPU backend only)")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32"}))
      ->capture_default_str();
  app->add_option("--batch", f->batch, "batch size")->capture_default_str();
  app->add_option("--heads-q", f->heads_q, "query heads")->capture_default_str();
  app->add_option("--heads-kv", f->heads_kv, "key/value heads (default: heads-q)");
  app->add_option("--seqlen-q", f->seqlen_q, "queries per sequence")->capture_default_str();
  app->add_option("--seqlen-k", f->seqlen_k, "keys per sequence (default: seqlen-q)");
  app->add_option("--head-dim", f->head_dim, "QK head dim")->capture_default_str();
  app->add_option("--head-dim-v", f->head_dim_v, "V/O head dim (default: head-dim)");
  app->add_option("--mask", f->mask, "mask before any window")
      ->check(CLI::IsMember({"none", "causal", "causal-bottom-right"}))
      ->capture_default_str();
  app->add_option("--window", f->window,
                  "sliding window L,R around the diagonal (-1 = unbounded on that side)");
  app->add_flag("--alibi", f->alibi, "ALiBi with the standard per-head slopes");
  app->add_option("--bias", f->bias, "additive bias tensor: none or [b|1][h|1][q|1][k|1]")
      ->check(CLI::Validator(
          [](std::string& s) { return bias_pattern_error(s); }, "PATTERN", "bias pattern"))
      ->capture_default_str();
  app->add_option("--softcap", f->softcap, "tanh soft-capping of scores (0 = off)")
      ->capture_default_str();
  app->add_option_function<float>(
      "--scale", [f](const float& v) { f->scale = v; },
      "softmax scale (default: 1/sqrt(head-dim))");
  // A bare --varlen means packed; the default (flag absent) stays none.
  app->add_option("--varlen", f->varlen,
                  "per-batch random lengths: none, packed (bare --varlen), padded")
      ->expected(0, 1)
      ->default_str("packed")
      ->option_text("[none|packed|padded]")
      ->check(CLI::IsMember({"none", "packed", "padded"}));
  app->add_flag("--lse", f->lse, "also write the log-sum-exp");
  app->add_option("--dropout", f->dropout, "dropout probability in [0, 1) (seed and offset from --seed)");
  app->add_flag("--dbias", f->dbias, "backward: also compute the bias gradient (needs --bias)");
  app->add_option("--seed", f->seed, "random seed (0 = fresh)")->capture_default_str();
  app->add_option("--layout", f->layout, "physical layout of q/k/v/o")
      ->check(CLI::IsMember({"bshd", "bhsd"}))
      ->capture_default_str();
  app->add_option("--config", f->config,
                  "tile config, e.g. bm128_bn64_w8_s2[_qr] (default: the generator's choice)");
  app->add_option("--device", f->device,
                  "where to run: auto (a GPU when present, else the CPU), cpu, cuda or cuda:N")
      ->capture_default_str();
  app->add_option("--tokens", f->tokens,
                  "total tokens: batch = max(1, T / seqlen-q), overrides --batch");
  app->add_option("--width", f->width,
                  "model width: heads = max(1, W / head-dim), overrides --heads-q/--heads-kv");
}

harness::ProblemDesc problem_desc(const ProblemFlags& f) {
  harness::ProblemDesc d;
  d.dtype = parse_dtype_flag(f.dtype);
  d.seqlen_q = f.seqlen_q;
  d.seqlen_k = f.seqlen_k > 0 ? f.seqlen_k : f.seqlen_q;
  d.head_dim = f.head_dim;
  d.head_dim_v = f.head_dim_v > 0 ? f.head_dim_v : f.head_dim;
  require_positive(d.seqlen_q, "seqlen-q");
  require_positive(d.head_dim, "head-dim");
  if (f.tokens > 0) {
    d.batch = std::max(1, f.tokens / d.seqlen_q);
  } else {
    d.batch = f.batch;
  }
  if (f.width > 0) {
    d.heads_q = d.heads_kv = std::max(1, f.width / d.head_dim);
  } else {
    d.heads_q = f.heads_q;
    d.heads_kv = f.heads_kv > 0 ? f.heads_kv : f.heads_q;
  }
  require_positive(d.batch, "batch");
  require_positive(d.heads_q, "heads-q");
  d.mask = harness::parse_mask(f.mask);
  if (!f.window.empty()) d.window = parse_window(f.window);
  d.alibi = f.alibi;
  if (std::string why = bias_pattern_error(f.bias); !why.empty()) throw InvalidArgument("bias", why);
  d.bias = f.bias;
  d.softcap = f.softcap;
  d.scale = f.scale;
  d.varlen = harness::parse_varlen(f.varlen.empty() ? "packed" : f.varlen);
  d.lse = f.lse;
  d.dropout_p = f.dropout;
  d.dbias = f.dbias;
  d.seed = f.seed;
  d.layout = parse_layout(f.layout);
  d.device = Device::parse(f.device);
  return d;
}

std::string dtype_flag(DType t) { return t == DType::f16 ? "fp16" : t == DType::f32 ? "fp32" : "bf16"; }

std::string mask_flag(MaskKind m) {
  switch (m) {
    case MaskKind::none: return "none";
    case MaskKind::causal: return "causal";
    case MaskKind::causal_bottom_right: return "causal-bottom-right";
  }
  return "?";
}

std::string varlen_flag(VarlenKind v) {
  switch (v) {
    case VarlenKind::none: return "none";
    case VarlenKind::packed: return "packed";
    case VarlenKind::padded: return "padded";
  }
  return "?";
}

std::string to_flags(const harness::ProblemDesc& d) {
  std::string s = fmt::format("--dtype {} --batch {} --heads-q {} --heads-kv {} --seqlen-q {} "
                              "--seqlen-k {} --head-dim {} --head-dim-v {}",
                              dtype_flag(d.dtype), d.batch, d.heads_q, d.heads_kv, d.seqlen_q,
                              d.seqlen_k, d.head_dim, d.dv());
  if (d.mask != MaskKind::none) s += fmt::format(" --mask {}", mask_flag(d.mask));
  if (d.window) s += fmt::format(" --window={},{}", d.window->left, d.window->right);
  if (d.alibi) s += " --alibi";
  if (d.bias != "none") s += fmt::format(" --bias {}", d.bias);
  if (d.softcap > 0.0f) s += fmt::format(" --softcap {}", d.softcap);
  if (d.scale) s += fmt::format(" --scale {}", *d.scale);
  if (d.varlen != VarlenKind::none) s += fmt::format(" --varlen {}", varlen_flag(d.varlen));
  if (d.lse) s += " --lse";
  if (d.dropout_p > 0) s += fmt::format(" --dropout {}", d.dropout_p);
  if (d.dbias) s += " --dbias";
  if (d.layout == kLayoutBHSD) s += " --layout bhsd";
  if (d.device.kind != Device::Kind::automatic) s += fmt::format(" --device {}", d.device.str());
  return s;
}

}  // namespace jitattn::cli
