#include "runtime/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <regex>

#include "jitattn/error.h"

namespace jitattn {

KernelSpec make_spec(const Problem& problem, Target target) {
  KernelSpec s;
  s.target = target;
  s.dtype = problem.dtype;
  s.head_dim = problem.head_dim;
  s.head_dim_v = problem.head_dim_v;
  s.mask = problem.mask;
  s.window = problem.window;
  s.varlen = problem.varlen;
  s.bias = problem.bias;
  // Tiled bias staging is a GPU shared-memory strategy; CPU kernels read bias rows directly.
  s.bias_tiled = problem.bias && problem.bias_tileable && !target.cpu;
  s.alibi = problem.alibi;
  s.scale = problem.scale;
  s.softcap = problem.softcap;
  s.lse = problem.lse;
  s.dropout = problem.dropout();
  return s;
}

KernelSpec make_backward_spec(const Problem& problem, Target target, bool deterministic) {
  KernelSpec s = make_spec(problem, target);
  s.pass = Pass::backward;
  s.bias_tiled = false;  // backward reads the bias per element
  s.lse = false;         // always read
  s.deterministic = deterministic && !target.cpu;
  s.dbias = problem.dbias;
  return s;
}

jitattn_kernel::AttnFwdParams make_params(const AttentionArgs& a, const Problem& pr) {
  jitattn_kernel::AttnFwdParams p{};
  p.q = a.q.data;
  p.k = a.k.data;
  p.v = a.v.data;
  p.o = const_cast<void*>(a.o.data);
  p.lse = a.lse;
  p.bias = pr.bias ? a.bias.data : nullptr;
  p.alibi_slopes = pr.alibi ? a.alibi_slopes : nullptr;
  p.cu_seqlens_q = a.cu_seqlens_q;
  p.cu_seqlens_k = a.cu_seqlens_k;
  p.seqused_q = a.seqused_q;
  p.seqused_k = a.seqused_k;
  p.q_batch_stride = a.q.stride[0];
  p.q_row_stride = a.q.stride[1];
  p.q_head_stride = a.q.stride[2];
  p.k_batch_stride = a.k.stride[0];
  p.k_row_stride = a.k.stride[1];
  p.k_head_stride = a.k.stride[2];
  p.v_batch_stride = a.v.stride[0];
  p.v_row_stride = a.v.stride[1];
  p.v_head_stride = a.v.stride[2];
  p.o_batch_stride = a.o.stride[0];
  p.o_row_stride = a.o.stride[1];
  p.o_head_stride = a.o.stride[2];
  if (pr.bias) {
    // A broadcast dimension (size 1) is read at index 0 for every position: stride 0.
    auto st = [&](int d) { return a.bias.shape[static_cast<size_t>(d)] == 1 ? 0 : a.bias.stride[static_cast<size_t>(d)]; };
    p.bias_batch_stride = st(0);
    p.bias_head_stride = st(1);
    p.bias_row_stride = st(2);
    p.bias_col_stride = st(3);
  }
  if (pr.varlen == VarlenKind::packed) {
    p.lse_batch_stride = 0;  // packed rows are global: lse[h * total_q + row]
    p.lse_head_stride = pr.total_q;
  } else {
    p.lse_batch_stride = static_cast<long long>(pr.heads_q) * pr.seqlen_q;
    p.lse_head_stride = pr.seqlen_q;
  }
  p.seqlen_q = pr.seqlen_q;
  p.seqlen_k = pr.seqlen_k;
  p.heads_q = pr.heads_q;
  p.group = pr.heads_q / pr.heads_kv;
  p.window_left = pr.window ? pr.window_left : -1;
  p.window_right = pr.window ? pr.window_right : -1;
  if (pr.dropout()) {
    p.dropout_seed = a.dropout_seed;
    p.dropout_offset = a.dropout_offset;
    p.dropout_threshold = dropout_threshold(pr.dropout_p);
    p.dropout_scale = static_cast<float>(1.0 / (1.0 - double(pr.dropout_p)));
  }
  return p;
}

BackwardWorkspace backward_workspace(const Problem& pr) {
  auto align = [](size_t n) { return (n + 255) / 256 * 256; };
  BackwardWorkspace w;
  const size_t rows = pr.varlen == VarlenKind::packed ? size_t(pr.total_q)
                                                      : size_t(pr.batch) * size_t(pr.seqlen_q);
  w.delta_bytes = align(rows * size_t(pr.heads_q) * sizeof(float));
  w.dq_accum_bytes = align(rows * size_t(pr.heads_q) * size_t(pr.head_dim) * sizeof(float));
  w.dq_sem_stride = (pr.seqlen_q + 63) / 64;
  w.dq_sem_bytes = align(size_t(pr.batch) * size_t(pr.heads_q) * size_t(w.dq_sem_stride) * sizeof(int));
  w.dbias_accum_bytes = align(size_t(pr.dbias_elements) * sizeof(float));
  return w;
}

DqSum backward_dq_sum(const TileConfig& config, bool deterministic, bool cpu) {
  if (cpu || (deterministic && !config.hopper())) return DqSum::own_kernel;
  return deterministic ? DqSum::ordered : DqSum::atomic;
}

jitattn_kernel::AttnBwdParams make_backward_params(const AttentionArgs& a, const BackwardArgs& g,
                                                   const Problem& pr, void* workspace, DqSum sum) {
  jitattn_kernel::AttnBwdParams p{};
  p.fwd = make_params(a, pr);
  p.d_o = g.d_o.data;
  p.dq = const_cast<void*>(g.dq.data);
  p.dk = const_cast<void*>(g.dk.data);
  p.dv = const_cast<void*>(g.dv.data);
  const BackwardWorkspace w = backward_workspace(pr);
  auto* base = static_cast<unsigned char*>(workspace);
  p.delta = reinterpret_cast<float*>(base);
  size_t at = w.delta_bytes;
  if (sum != DqSum::own_kernel) {
    p.dq_accum = reinterpret_cast<float*>(base + at);
    at += w.dq_accum_bytes;
  }
  if (sum == DqSum::ordered) {
    p.dq_sem = reinterpret_cast<int*>(base + at);
    p.dq_sem_stride = w.dq_sem_stride;
    at += w.dq_sem_bytes;
  }
  p.dbias_accum = pr.dbias ? reinterpret_cast<float*>(base + at) : nullptr;
  p.do_batch_stride = g.d_o.stride[0];
  p.do_row_stride = g.d_o.stride[1];
  p.do_head_stride = g.d_o.stride[2];
  p.dq_batch_stride = g.dq.stride[0];
  p.dq_row_stride = g.dq.stride[1];
  p.dq_head_stride = g.dq.stride[2];
  p.dk_batch_stride = g.dk.stride[0];
  p.dk_row_stride = g.dk.stride[1];
  p.dk_head_stride = g.dk.stride[2];
  p.dv_batch_stride = g.dv.stride[0];
  p.dv_row_stride = g.dv.stride[1];
  p.dv_head_stride = g.dv.stride[2];
  if (pr.dbias) {
    p.dbias = const_cast<void*>(g.dbias.data);
    // The workspace is dbias's shape, contiguous; broadcast dims collapse (stride 0).
    const auto& sh = g.dbias.shape;
    long long step = 1;
    long long st[4] = {};
    for (int d = 3; d >= 0; --d) {
      st[d] = sh[size_t(d)] == 1 ? 0 : step;
      step *= sh[size_t(d)];
    }
    p.dba_batch_stride = st[0];
    p.dba_head_stride = st[1];
    p.dba_row_stride = st[2];
    p.dba_col_stride = st[3];
    for (size_t d = 0; d < 4; ++d) {
      p.dbias_shape[d] = sh[d];
      p.dbias_stride[d] = g.dbias.stride[d];
    }
  }
  p.rows_q = pr.varlen == VarlenKind::packed ? pr.total_q : pr.batch * pr.seqlen_q;
  p.batch = pr.batch;
  return p;
}

namespace {
// CTAs per tile along the grid's first dimension: mma.sync column slices are CTAs of their own; the
// Hopper family's split is inside one CTA, between its consumer warpgroups.
int cta_slices(const TileConfig& c) { return c.hopper() ? 1 : c.split; }
}  // namespace

BackwardGrids make_backward_grids(const Problem& pr, const TileConfig& c, DqSum sum) {
  BackwardGrids g;
  const long long row_heads = (pr.varlen == VarlenKind::packed ? (long long)pr.total_q
                                                                : (long long)pr.batch * pr.seqlen_q) *
                              pr.heads_q;
  const auto batch = static_cast<unsigned>(pr.batch);
  g.preprocess = {static_cast<unsigned>((row_heads + 3) / 4), 1, 1};
  const int slices = cta_slices(c);
  g.main = {static_cast<unsigned>((pr.seqlen_k + c.block_n - 1) / c.block_n * slices),
            static_cast<unsigned>(pr.heads_kv), batch};
  if (sum == DqSum::own_kernel) {
    g.dq = {static_cast<unsigned>((pr.seqlen_q + c.block_n - 1) / c.block_n * slices),
            static_cast<unsigned>(pr.heads_q), batch};
  } else {
    g.convert = g.preprocess;
  }
  if (pr.dbias) g.dbias = {static_cast<unsigned>((pr.dbias_elements + 255) / 256), 1, 1};
  return g;
}

CpuBackwardItems cpu_backward_items(const Problem& pr, const TileConfig& c,
                                    const jitattn_kernel::AttnBwdParams& p) {
  CpuBackwardItems n;
  const long long m_blocks = (pr.seqlen_q + c.block_m - 1) / c.block_m;
  const long long n_blocks = (pr.seqlen_k + c.block_n - 1) / c.block_n;
  n.preprocess = static_cast<long long>(pr.batch) * pr.heads_q * m_blocks;
  n.dkdv = static_cast<long long>(pr.batch) * pr.heads_kv * n_blocks;
  const bool db = pr.dbias;
  n.dq = (db && p.dba_batch_stride == 0 ? 1 : pr.batch) * (db && p.dba_head_stride == 0 ? 1 : pr.heads_q) *
         (db && p.dba_row_stride == 0 ? 1 : m_blocks);
  return n;
}

std::array<unsigned, 3> make_grid(const Problem& pr, const TileConfig& c) {
  const int blocks = (pr.seqlen_q + c.block_m - 1) / c.block_m * cta_slices(c);
  return {static_cast<unsigned>(blocks), static_cast<unsigned>(pr.heads_q),
          static_cast<unsigned>(pr.batch)};
}

std::array<unsigned, 3> make_launch_grid(const Problem& pr, const TileConfig& c, int sm_count) {
  const std::array<unsigned, 3> tiles = make_grid(pr, c);
  if (!c.persistent) return tiles;
  const unsigned long long n = static_cast<unsigned long long>(tiles[0]) * tiles[1] * tiles[2];
  return {static_cast<unsigned>(std::min<unsigned long long>(n, static_cast<unsigned>(std::max(sm_count, 1)))), 1, 1};
}

unsigned persistent_tile_group(const Problem& pr, long long l2_bytes) {
  const long long pairs = std::max(1ll, static_cast<long long>(pr.heads_q) * pr.batch);
  // K and V rows of one query head (GQA heads share theirs): seqlen_k x (d + dv) 16-bit values.
  const long long group = std::max(1, pr.heads_q / std::max(1, pr.heads_kv));
  const long long kv = std::max(1ll, static_cast<long long>(pr.seqlen_k) * (pr.head_dim + pr.head_dim_v) * 2 / group);
  return static_cast<unsigned>(std::clamp(l2_bytes / 2 / kv, 1ll, pairs));
}

unsigned causal_pair_group(long long pairs, long long tiles, int sm_count, long long cap) {
  if (pairs <= 1 || tiles <= 1) return 1;
  const long long need = (std::max(sm_count, 1) + tiles - 1) / tiles;
  long long best = 1;
  // Bounded search (host time per launch): divisors up to 8 waves' worth.
  for (long long g = 1; g <= pairs && g <= cap && g <= 8 * need; ++g) {
    if (pairs % g != 0) continue;
    best = g;
    if (g >= need) break;
  }
  return static_cast<unsigned>(best);
}

TileConfig parse_config(const std::string& text) {
  // At most 4 digits each: every legal value fits, and std::stoi can never overflow.
  static const std::regex re(R"(bm(\d{1,4})_bn(\d{1,4})_w(\d{1,4})_s(\d{1,4})(_qr)?(_x(\d{1,2}))?)");
  static const std::regex cpu_re(R"(cpu_bm(\d{1,4})_bn(\d{1,4}))");
  static const std::regex sm90_re(R"(h_bm(\d{1,4})_bn(\d{1,4})_wg(\d{1,2})_s(\d{1,4})(_ov)?(_pp)?(_pe)?(_ps)?(_x(\d{1,2}))?)");
  std::smatch m;
  if (std::regex_match(text, m, cpu_re)) return cpu_config(std::stoi(m[1]), std::stoi(m[2]));
  if (std::regex_match(text, m, sm90_re)) {
    TileConfig c = sm90_config(std::stoi(m[2]), std::stoi(m[3]), std::stoi(m[4]), m[5].matched, m[6].matched,
                               m[7].matched);
    c.block_m = std::stoi(m[1]);  // why_illegal checks it against the warpgroups
    c.persistent = m[8].matched;
    if (m[9].matched) c.split = std::stoi(m[10]);
    return c;
  }
  if (!std::regex_match(text, m, re)) {
    throw InvalidArgument("config", fmt::format("expected bm<M>_bn<N>_w<warps>_s<stages>[_qr][_x<split>] "
                                                "(GPU), h_bm<M>_bn<N>_wg<consumers>_s<stages>[_ov][_pp][_pe][_ps][_x2] "
                                                "(Hopper) or cpu_bm<M>_bn<N> (CPU), got '{}'",
                                                text));
  }
  TileConfig c;
  c.block_m = std::stoi(m[1]);
  c.block_n = std::stoi(m[2]);
  c.warps = std::stoi(m[3]);
  c.stages = std::stoi(m[4]);
  c.q_in_regs = m[5].matched;
  if (m[6].matched) c.split = std::stoi(m[7]);
  return c;
}

}  // namespace jitattn
