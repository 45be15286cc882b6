// Which query blocks a key block of the Hopper backward visits, and, in its deterministic mode, the
// order in which the key blocks add into a query block's dQ. Included by the host (the unit tests
// check the rank against the ranges by brute force) and embedded in the Hopper backward's source.
// Plain C++ types only.
#pragma once

#ifndef JITATTN_HOST_DEVICE
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define JITATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JITATTN_HOST_DEVICE inline
#endif
#endif

namespace jitattn_kernel {

// One sequence's mask as the backward sees it: `offset` is len_k - len_q for a bottom-right
// causal mask, else 0; a window side below 0 is unbounded (no window: both -1).
struct BwdMask {
  int len_q, len_k, offset;
  bool causal;
  int window_left, window_right;
};

// The query rows [begin, end) that see any key of key block n_block (block_n keys); end <= begin
// when none do, or when the block starts at or past len_k.
struct QueryRows {
  int begin, end;
};
JITATTN_HOST_DEVICE QueryRows bwd_query_rows(const BwdMask& m, int n_block, int block_n) {
  const int n0 = n_block * block_n;
  const int n_last = (n0 + block_n < m.len_k ? n0 + block_n : m.len_k) - 1;
  QueryRows r{0, m.len_q};
  if (m.causal && n0 - m.offset > r.begin) r.begin = n0 - m.offset;
  if (m.window_right >= 0 && n0 - m.offset - m.window_right > r.begin) r.begin = n0 - m.offset - m.window_right;
  if (m.window_left >= 0 && n_last - m.offset + m.window_left + 1 < r.end) r.end = n_last - m.offset + m.window_left + 1;
  if (n0 >= m.len_k) r.end = r.begin;
  return r;
}

// Whether a query block's dQ sums its key blocks last to first: with a causal mask or a right
// window the later key blocks start their query loops later, so they reach a given query block
// first (and the launch dispatches them first). Else first to last.
JITATTN_HOST_DEVICE bool dq_descending(const BwdMask& m) { return m.causal || m.window_right >= 0; }

// The place of key block n_block among the key blocks whose query rows (bwd_query_rows) meet query
// block mb (block_m rows), in dq_descending's order; n_block must be one of them. They are
// consecutive: a left window drops the early ones (the first is the one whose last key still sees
// the block's first row), a causal mask or right window the late ones (the last is the last whose
// first key, less the offset and right window, comes before the block's last row), and the keys
// end at len_k.
JITATTN_HOST_DEVICE int dq_rank(const BwdMask& m, int n_block, int mb, int block_m, int block_n) {
  if (dq_descending(m)) {
    const int right = m.causal ? 0 : m.window_right;  // a right window is no wider than causal
    const int rows_end = (mb + 1) * block_m < m.len_q ? (mb + 1) * block_m : m.len_q;
    const int x = rows_end + m.offset + right;  // key blocks starting before x reach the block
    const int by_mask = (x + block_n - 1) / block_n;
    const int by_keys = (m.len_k + block_n - 1) / block_n;
    return (by_mask < by_keys ? by_mask : by_keys) - 1 - n_block;
  }
  int first = 0;
  if (m.window_left >= 0) {
    const int y = mb * block_m + m.offset - m.window_left;
    first = y > 0 ? y / block_n : 0;
  }
  return n_block - first;
}

}  // namespace jitattn_kernel
