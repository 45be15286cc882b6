// Counter-based random numbers for attention dropout: Philox4x32-10 (Salmon et al., "Parallel
// random numbers: as easy as 1, 2, 3", SC 2011). Included by the host (runtime/reference.cpp) and
// embedded verbatim in every generated kernel, so the float64 reference and the GPU draw the same
// keep decision for every (seed, offset, batch, head, row, column). Plain C++ types only.
//
// What must change with it: kGeneratorVersion (the keep decisions are part of the result).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define JITATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JITATTN_HOST_DEVICE inline
#endif

namespace jitattn_kernel {

struct Philox4 {
  unsigned int x[4];
};

// Ten rounds of Philox4x32 on `counter` with key (k0, k1); the key is bumped by the Weyl
// constants before every round but the first.
JITATTN_HOST_DEVICE Philox4 philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2,
                                          unsigned int c3, unsigned int k0, unsigned int k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const unsigned long long p0 = static_cast<unsigned long long>(0xD2511F53u) * c0;
    const unsigned long long p1 = static_cast<unsigned long long>(0xCD9E8D57u) * c2;
    const unsigned int hi0 = static_cast<unsigned int>(p0 >> 32), lo0 = static_cast<unsigned int>(p0);
    const unsigned int hi1 = static_cast<unsigned int>(p1 >> 32), lo1 = static_cast<unsigned int>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  Philox4 r;
  r.x[0] = c0;
  r.x[1] = c1;
  r.x[2] = c2;
  r.x[3] = c3;
  return r;
}

// Word i (0..3) of r. Selects rather than r.x[i]: a runtime index would put r in local memory.
JITATTN_HOST_DEVICE unsigned int philox_word(const Philox4& r, unsigned int i) {
  return i == 0u ? r.x[0] : i == 1u ? r.x[1] : i == 2u ? r.x[2] : r.x[3];
}

// The random words of columns 4*(col/4) .. 4*(col/4)+3 of one attention row. `bh` is
// batch * heads_q + query head (batch = sequence number for packed varlen), `row` and `col` index
// within the sequence. The 64-bit seed is the key; the caller's 64-bit offset is counter word 3
// (low half) and is added to the key's high word (high half), so offsets that differ anywhere give
// different streams.
JITATTN_HOST_DEVICE Philox4 dropout_bits4(unsigned long long seed, unsigned long long offset,
                                          unsigned int bh, unsigned int row, unsigned int col) {
  return philox4x32_10(col >> 2, row, bh, static_cast<unsigned int>(offset),
                       static_cast<unsigned int>(seed),
                       static_cast<unsigned int>(seed >> 32) + static_cast<unsigned int>(offset >> 32));
}

// dropout_keep's decisions for columns 4*(col/4) .. 4*(col/4)+3 of one row at once: bit i is
// column 4*(col/4) + i's (the Hopper kernels draw a call per lane and trade the bits).
JITATTN_HOST_DEVICE unsigned int dropout_keep4(unsigned long long seed, unsigned long long offset,
                                               unsigned int bh, unsigned int row, unsigned int col,
                                               unsigned int threshold) {
  const Philox4 r = dropout_bits4(seed, offset, bh, row, col);
  return static_cast<unsigned int>(r.x[0] >= threshold) | static_cast<unsigned int>(r.x[1] >= threshold) << 1 |
         static_cast<unsigned int>(r.x[2] >= threshold) << 2 | static_cast<unsigned int>(r.x[3] >= threshold) << 3;
}

// A probability is kept when its random word is >= threshold, threshold = floor(p * 2^32)
// (dropout_threshold on the host): kept with probability 1 - threshold / 2^32.
JITATTN_HOST_DEVICE bool dropout_keep(unsigned long long seed, unsigned long long offset,
                                      unsigned int bh, unsigned int row, unsigned int col,
                                      unsigned int threshold) {
  return philox_word(dropout_bits4(seed, offset, bh, row, col), col & 3u) >= threshold;
}

}  // namespace jitattn_kernel
