// Hopper (sm_90a) device primitives, as inline PTX, for attn_fwd_sm90.cuh: mbarriers, TMA bulk
// tensor copies, wgmma (warpgroup MMA) and its shared-memory descriptors, register reallocation.
// NVRTC-safe (no #include); appended after common.cuh, whose elem_t/u32/JITATTN_MMA_TYPES it uses.
// The wgmma instructions themselves, one per N the kernel needs, are emitted by the generator
// (their operand lists grow with N).

namespace jitattn_kernel {

typedef unsigned long long u64;

// ---- mbarriers (shared::cta, 8 bytes each) ------------------------------------------------------
JITATTN_DEVICE void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the async proxy (the TMA unit) before first use.
JITATTN_DEVICE void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// Arrives once and adds `bytes` to the transaction count the current phase waits for.
JITATTN_DEVICE void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
JITATTN_DEVICE void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase with parity `parity` has completed.
JITATTN_DEVICE void mbar_wait(u32 bar, u32 parity) {
  u32 done;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// ---- TMA: one box of a 4-d tensor map into shared memory, completing on an mbarrier -------------
// Coordinates are (column, row, head, batch) in elements; boxes reaching past the tensor are
// zero-filled (rows past the sequence end, columns past an unpadded head dim).
JITATTN_DEVICE void tma_load_4d(u32 dst, const void* tensor_map, u32 bar, int c0, int c1, int c2,
                                int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<u64>(tensor_map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
JITATTN_DEVICE void tma_prefetch_descriptor(const void* tensor_map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<u64>(tensor_map)) : "memory");
}

// ---- reading TMA-swizzled tiles with ordinary loads ----------------------------------------------
// Byte offset within a panel of `kSwizzle`-byte rows (1 KiB aligned) -> where the TMA unit put it:
// the 16-byte chunk index (bits 4..) is XORed with the row bits above the 128-byte line
// (Swizzle<1|2|3, 4, 3> for 32, 64 and 128-byte rows), the same pattern wgmma's descriptors read.
template <int kSwizzle>
JITATTN_DEVICE u32 swizzled(u32 offset) {
  constexpr u32 mask = kSwizzle == 128 ? 7u : kSwizzle == 64 ? 3u : 1u;
  return offset ^ (((offset >> 7) & mask) << 4);
}
JITATTN_DEVICE u32 ld_shared_u32(u32 addr) {
  u32 v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}
JITATTN_DEVICE void st_shared_u32(u32 addr, u32 v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

// ---- register reallocation between warpgroup roles (needs __launch_bounds__(threads, 1)) --------
template <int N>
JITATTN_DEVICE void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
JITATTN_DEVICE void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// 2^x on the FMA pipe: 2^n * 2^f with n = round(x) (the 1.5 * 2^23 rounding trick; n sits in the
// low mantissa bits of t) and 2^f, f in [-0.5, 0.5], by a degree-3 polynomial through Chebyshev
// nodes (relative error 1e-4, under the 16-bit rounding of P). Exactly 0 below -125, so -inf
// (masked scores) gives 0 as ex2.approx does.
JITATTN_DEVICE float exp2_poly(float x) {
  const float xc = fmaxf(x, -125.0f);
  const float t = xc + 12582912.0f;
  const float f = xc - (t - 12582912.0f);
  const float p = fmaf(fmaf(fmaf(0.0558382829f, f, 0.242639479f), f, 0.693136734f), f, 0.999924557f);
  const float r = __int_as_float(__float_as_int(p) +
                                 static_cast<int>(static_cast<unsigned>(__float_as_int(t)) << 23));
  return x < -125.0f ? 0.0f : r;
}

// ---- named barriers (ids 1..15; 0 is __syncthreads) -----------------------------------------------
JITATTN_DEVICE void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
JITATTN_DEVICE void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- wgmma ------------------------------------------------------------------------------------
JITATTN_DEVICE void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
JITATTN_DEVICE void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
JITATTN_DEVICE void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads or writes of wgmma operands across the asynchronous
// window: an empty asm that "modifies" each register, placed after wgmma_wait (and before the
// first wgmma), orders every later use after the wait.
template <int N>
JITATTN_DEVICE void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
JITATTN_DEVICE void fence_regs(u32 (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// Shared-memory matrix descriptor (PTX ISA, "matrix descriptor"): start address, leading and
// stride byte offsets (all >> 4), swizzle mode in bits 62-63 (1 = 128 B, 2 = 64 B, 3 = 32 B).
// Tiles here are panels of rows of `swizzle` bytes, 8-row groups `8 * swizzle` bytes apart
// (the stride byte offset); for an MN-major B (V) the leading byte offset steps to the next panel.
template <int kSwizzle>
JITATTN_DEVICE u64 make_smem_desc(u32 addr, u32 leading_bytes) {
  static_assert(kSwizzle == 32 || kSwizzle == 64 || kSwizzle == 128, "swizzle must be 32, 64 or 128 bytes");
  constexpr u64 mode = kSwizzle == 128 ? 1 : kSwizzle == 64 ? 2 : 3;
  constexpr u64 stride = 8 * kSwizzle;
  return static_cast<u64>((addr & 0x3FFFF) >> 4) | (static_cast<u64>((leading_bytes >> 4) & 0x3FFF) << 16) |
         ((stride >> 4) << 32) | (mode << 62);
}

// ---- tile orders --------------------------------------------------------------------------------
// Position `linear` of an order over `pairs` (head, batch) pairs of `tiles` tiles each, walked in
// groups of `group` pairs (the last may be smaller): tile 0 of every pair of the group, then tile
// 1, ... Both Hopper kernels walk it: the forward's persistent and causal tiles, the backward's
// causal key blocks (runtime/plan.h causal_pair_group).
struct GroupedTile {
  unsigned tile, pair;
};
JITATTN_DEVICE GroupedTile grouped_tile(unsigned linear, unsigned tiles, unsigned pairs, unsigned group) {
  const unsigned first = linear / (group * tiles) * group;
  const unsigned size = min(group, pairs - first);
  const unsigned r = linear - first * tiles;
  return {r / size, first + r % size};
}

// ---- lazy rescaling of O (kLazyRescale, both forward templates) ----------------------------------
// A row's running max moves only when the new one `mx` exceeds the old one by more than 2^8 in the
// exp2 domain (`exp_scale` takes raw scores there); below that the probabilities (at most 256) use
// the old one and O keeps its scale. NaN (both -inf: no visible key yet) moves it, as does -inf.
JITATTN_DEVICE float lazy_row_max(float mx, float old, float exp_scale) {
  return (mx - old) * exp_scale <= 8.0f ? old : mx;
}
// Whether any row of the warp changed its scale (a correction other than 1): O's rescale is needed.
JITATTN_DEVICE bool warp_rescales(const float (&correction)[2]) {
  return __any_sync(0xffffffffu, correction[0] != 1.0f || correction[1] != 1.0f);
}

}  // namespace jitattn_kernel
