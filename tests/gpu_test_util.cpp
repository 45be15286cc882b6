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

std::string check_failure(const harness::ProblemDesc& d, const harness::CheckResult& r) {
  return fmt::format("{} config {} seed {}: rel_err {} (tol {}), max_abs {}, lse_rel {}, lse -inf match {}",
                     harness::describe(d), r.kernel.config, r.seed, r.rel_err, r.tolerance, r.max_abs_err,
                     r.lse_rel_err, r.lse_inf_match);
}

}  // namespace jitattn::test
