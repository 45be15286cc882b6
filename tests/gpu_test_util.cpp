#include "tests/gpu_test_util.h"

#include <fmt/format.h>

namespace jitattn::test {

Engine& gpu_engine() {
  static Engine e(EngineOptions{"off", false});
  return e;
}

harness::ProblemDesc gpu_base(int d, DType dt) {
  harness::ProblemDesc p;
  p.dtype = dt;
  p.batch = 2;
  p.heads_q = 3;
  p.heads_kv = 3;
  p.seqlen_q = 190;
  p.seqlen_k = 211;
  p.head_dim = d;
  p.lse = true;
  return p;
}

void add_mask_cases(int d, const AddCase& add) {
  harness::ProblemDesc p = gpu_base(d);
  p.mask = MaskKind::causal_bottom_right;
  add(fmt::format("causal_br_sk_longer_d{}", d), p);
  p.seqlen_q = 300;
  p.seqlen_k = 130;  // the first rows see no key
  add(fmt::format("causal_br_fully_masked_rows_d{}", d), p);
  p = gpu_base(d);
  p.window = Window{50, 70};
  add(fmt::format("window_both_sides_d{}", d), p);
  p.mask = MaskKind::causal;
  p.window = Window{37, 0};
  add(fmt::format("causal_window_d{}", d), p);
}

void add_layout_cases(int d, const AddCase& add) {
  harness::ProblemDesc p = gpu_base(d);
  p.heads_q = 8;
  p.heads_kv = 2;
  add(fmt::format("gqa_d{}", d), p);
  p.heads_kv = 1;
  p.mask = MaskKind::causal;
  add(fmt::format("mqa_causal_d{}", d), p);
  p = gpu_base(d);
  p.batch = 4;
  p.varlen = VarlenKind::packed;
  p.mask = MaskKind::causal;
  add(fmt::format("varlen_packed_causal_d{}", d), p);
  p.varlen = VarlenKind::padded;
  p.mask = MaskKind::causal_bottom_right;
  add(fmt::format("varlen_padded_causal_br_d{}", d), p);
}

std::string check_failure(const harness::ProblemDesc& d, const harness::CheckResult& r) {
  return fmt::format("{} config {} seed {}: rel_err {} (tol {}), max_abs {}, lse_rel {}, lse -inf match {}",
                     harness::describe(d), r.kernel.config, r.seed, r.rel_err, r.tolerance, r.max_abs_err,
                     r.lse_rel_err, r.lse_inf_match);
}

}  // namespace jitattn::test
