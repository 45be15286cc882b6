// The search space of a spec on a device, pruned before anything is compiled: first by the
// generator's own legality rules (why_illegal), then by a static register model, so NVRTC time
// is spent only on candidates that have a chance of compiling without spills.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <initializer_list>

#include "tuner/tuner.h"

namespace jitattn::tuner {
namespace {

// ptxas' hard per-thread limit on sm_80/sm_90.
constexpr int kMaxRegisters = 255;
// Accumulators alone above this leave too few of the 255 registers for addresses, softmax state,
// fragments of K/V and loop counters: ptxas spills. Conservative on purpose (the ptxas report
// after compiling is the precise filter); it must never prune default_config, which is checked
// by tests/tuner_test.cpp for every head dim on sm_80 and sm_90. The densest default
// (d80, 32 rows per warp, block_n 64) holds 144 accumulator registers.
constexpr int kAccumulatorRegisterCeiling = 200;

// Registers per thread that the static model expects for accumulators (and Q fragments).
int accumulator_registers(const KernelSpec& spec, const TileConfig& cfg) {
  const int rows_per_warp = cfg.block_m / cfg.warps;
  // An m16n8 MMA spreads a 16x8 float tile over 32 lanes: rows*cols/32 floats per thread for the
  // O accumulator (rows x head_dim_v, or the column slice's share) and the S tile (rows x block_n).
  const int v_cols = (spec.head_dim_v / 8 + cfg.split - 1) / cfg.split * 8;
  int regs = rows_per_warp * (v_cols + cfg.block_n) / 32;
  // Q fragments in registers: rows x head_dim 16-bit values, two per register, over 32 lanes.
  if (cfg.q_in_regs) regs += rows_per_warp * spec.head_dim / 64;
  return regs;
}

// Backward (dK/dV kernel): a warp's 16 keys hold their dK and dV slices, plus S^T and dP^T over
// block_m queries: 4 * (ceil(d / 8 / split) + ceil(dv / 8 / split)) + block_m floats per thread.
int backward_accumulator_registers(const KernelSpec& spec, const TileConfig& cfg) {
  auto tiles = [&](int dim) { return (dim / 8 + cfg.split - 1) / cfg.split; };
  return 4 * (tiles(spec.head_dim) + tiles(spec.head_dim_v)) + cfg.block_m;
}

std::vector<Candidate> backward_search_space(const KernelSpec& spec, const DeviceLimits& limits) {
  static constexpr int kBlockM[] = {16, 32, 64, 128};
  static constexpr int kWarps[] = {2, 4, 8};
  static constexpr int kStages[] = {1, 2};
  static constexpr int kSplit[] = {1, 2, 4};
  std::vector<Candidate> out;
  auto add = [&](const TileConfig& cfg) {
    Candidate c;
    c.config = cfg;
    if (auto why = why_illegal(spec, c.config, limits)) {
      c.pruned = std::move(*why);
    } else if (const int regs = backward_accumulator_registers(spec, c.config);
               regs > kAccumulatorRegisterCeiling) {
      c.pruned = fmt::format("static model: ~{} accumulator registers of {} (would spill)", regs, kMaxRegisters);
    }
    out.push_back(std::move(c));
  };
  for (int bm : kBlockM) {
    for (int w : kWarps) {
      for (int s : kStages) {
        for (int x : kSplit) add(TileConfig{bm, 16 * w, w, s, false, x});
      }
    }
  }
  // 8 slices for head dims above 256, appended (the order above is what resumed tunings see).
  if (std::max(spec.head_dim, spec.head_dim_v) > 256) {
    for (int bm : kBlockM) {
      for (int w : kWarps) {
        for (int s : kStages) add(TileConfig{bm, 16 * w, w, s, false, 8});
      }
    }
  }
  // The Hopper-family backward on sm_90 (templates/attn_bwd_sm90.cuh): block_m 64 or 128 query
  // rows per step, 1 or 2 consumer warpgroups of 64 keys (2: shared or independent dQ, _pp), 1-3
  // Q/dO stages. why_illegal holds its register model (dK + dV with S^T + dP^T or the dQ tiles
  // under setmaxnreg 240).
  if (limits.sm == 90 && spec.target.sm == 90) {
    for (int bm : {64, 128}) {
      for (int consumers : {1, 2}) {
        for (bool independent : {false, true}) {
          if (independent && consumers == 1) continue;
          for (int s : {1, 2, 3}) {
            Candidate c;
            c.config = sm90_backward_config(bm, consumers, s, independent);
            if (auto why = why_illegal(spec, c.config, limits)) c.pruned = std::move(*why);
            out.push_back(std::move(c));
          }
        }
      }
    }
    // The column split (_x2: two consumers share 64 keys, each half of the head dims' columns),
    // appended; why_illegal keeps it to head dims up to 256.
    for (int s : {1, 2, 3}) {
      Candidate c;
      c.config = sm90_backward_wide_config(s);
      if (auto why = why_illegal(spec, c.config, limits)) c.pruned = std::move(*why);
      out.push_back(std::move(c));
    }
  }
  return out;
}

}  // namespace

std::vector<Candidate> search_space(const KernelSpec& spec, const DeviceLimits& limits) {
  if (spec.pass == Pass::backward && !spec.target.cpu) return backward_search_space(spec, limits);
  if (spec.target.cpu) {
    // CPU kernels, forward and backward: rows per work item (backward: per step) x keys per step
    // (backward: per dK/dV item); the generator's menu and stack budget (why_illegal) decide
    // what is legal.
    static constexpr int kCpuBlockM[] = {4, 8, 16, 32, 64, 128};
    static constexpr int kCpuBlockN[] = {16, 32, 64, 128, 256, 512};
    std::vector<Candidate> out;
    for (int bm : kCpuBlockM) {
      for (int bn : kCpuBlockN) {
        Candidate c;
        c.config = cpu_config(bm, bn);
        if (auto why = why_illegal(spec, c.config, limits)) c.pruned = std::move(*why);
        out.push_back(std::move(c));
      }
    }
    return out;
  }
  static constexpr int kBlockM[] = {32, 64, 128};
  static constexpr int kBlockN[] = {16, 32, 64, 128};
  static constexpr int kWarps[] = {2, 4, 8};
  static constexpr int kStages[] = {1, 2, 3, 4};

  std::vector<Candidate> out;
  out.reserve(std::size(kBlockM) * std::size(kBlockN) * std::size(kWarps) * std::size(kStages) *
              2);
  // Nested loops in a fixed order: the order is part of what a resumed tuning relies on.
  for (int bm : kBlockM) {
    for (int bn : kBlockN) {
      for (int w : kWarps) {
        for (int s : kStages) {
          for (bool qr : {false, true}) {
            Candidate c;
            c.config = TileConfig{bm, bn, w, s, qr};
            if (auto why = why_illegal(spec, c.config, limits)) {
              c.pruned = std::move(*why);
            } else if (const int regs = accumulator_registers(spec, c.config);
                       regs > kAccumulatorRegisterCeiling) {
              c.pruned = fmt::format(
                  "static model: ~{} accumulator registers of {} (would spill)", regs,
                  kMaxRegisters);
            }
            out.push_back(std::move(c));
          }
        }
      }
    }
  }
  // Column slices of O (split CTAs per query block) for V head dims above 256, where no config
  // above fits O in registers; appended so that the order above is unchanged.
  if (spec.head_dim_v > 256) {
    for (int x : {2, 4}) {
      for (int bm : {64, 128}) {
        for (int bn : {16, 32, 64}) {
          for (int s : {1, 2}) {
            Candidate c;
            c.config = TileConfig{bm, bn, bm / 16, s, false, x};
            if (auto why = why_illegal(spec, c.config, limits)) {
              c.pruned = std::move(*why);
            } else if (const int regs = accumulator_registers(spec, c.config);
                       regs > kAccumulatorRegisterCeiling) {
              c.pruned = fmt::format("static model: ~{} accumulator registers of {} (would spill)",
                                     regs, kMaxRegisters);
            }
            out.push_back(std::move(c));
          }
        }
      }
    }
  }
  // The Hopper family on sm_90, after the mma.sync family (appended, so the order of the
  // candidates above, which resumed tunings rely on, is unchanged). why_illegal applies its own
  // register and shared-memory limits.
  if (spec.target.sm == 90 && limits.sm == 90) {
    // Multiples of 16 that the measurements (bench/NOTES.md, "Hopper family") favour; the
    // polynomial exp (_pe) lost on every row measured, so it is not searched.
    static constexpr int kSm90BlockN[] = {64, 80, 96, 128, 160, 192};
    auto add_sm90 = [&](std::initializer_list<int> consumer_counts, bool persistent) {
      for (int consumers : consumer_counts) {
        for (int bn : kSm90BlockN) {
          for (int s : {2, 3}) {
            for (int schedule : {0, 1, 2}) {  // serial, overlap, overlap + ping-pong
              Candidate c;
              c.config = sm90_config(bn, consumers, s, schedule >= 1, schedule == 2);
              c.config.persistent = persistent;
              if (auto why = why_illegal(spec, c.config, limits)) c.pruned = std::move(*why);
              out.push_back(std::move(c));
            }
          }
        }
      }
    };
    add_sm90({1, 2, 3}, false);
    // Persistent twins (_ps) of the 2- and 3-consumer candidates, appended after them.
    add_sm90({2, 3}, true);
    // V head dims above 256: the two consumers split S's and O's columns (_x2); every block_n
    // the default may pick (multiples of 16 up to 128).
    if (spec.head_dim_v > 256) {
      for (int bn = 16; bn <= 128; bn += 16) {
        for (int s : {1, 2, 3}) {
          Candidate c;
          c.config = sm90_wide_config(bn, s);
          if (auto why = why_illegal(spec, c.config, limits)) c.pruned = std::move(*why);
          out.push_back(std::move(c));
        }
      }
    }
  }
  return out;
}

std::string shape_bucket(const Problem& problem) {
  // Power-of-two ceiling; 0 stays 0 (an empty problem is its own bucket), 1 stays 1.
  auto ceil2 = [](int64_t v) -> uint64_t {
    return v <= 0 ? 0 : std::bit_ceil(static_cast<uint64_t>(v));
  };
  const int64_t bh = static_cast<int64_t>(problem.batch) * problem.heads_q;
  return fmt::format("sq={},sk={},bh={}", ceil2(problem.seqlen_q), ceil2(problem.seqlen_k),
                     ceil2(bh));
}

}  // namespace jitattn::tuner
