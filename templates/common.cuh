// Device primitives shared by the kernel templates: tensor-core MMA, ldmatrix, cp.async,
// conversions and fast math, all as inline PTX. NVRTC-safe: no #include at all, so the
// generated translation unit compiles with no CUDA or host headers on the include path.
// Elements travel as raw 16-bit patterns (unsigned short); JITATTN_BF16 selects the type.

#define JITATTN_DEVICE __device__ __forceinline__

namespace jitattn_kernel {

typedef unsigned short elem_t;  // raw f16 / bf16 bits
typedef unsigned int u32;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

JITATTN_DEVICE float neg_inf() { return __int_as_float(0xff800000); }

JITATTN_DEVICE u32 smem_addr(const void* p) {
  return static_cast<u32>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes == 0 zero-fills the destination (rows past the end).
JITATTN_DEVICE void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
JITATTN_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
JITATTN_DEVICE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

JITATTN_DEVICE void ldmatrix_x4(u32 (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
JITATTN_DEVICE void ldmatrix_x2(u32 (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}
JITATTN_DEVICE void ldmatrix_x4_trans(u32 (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
JITATTN_DEVICE void ldmatrix_x2_trans(u32 (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}

#if JITATTN_BF16
#define JITATTN_MMA_TYPES "bf16.bf16"
#define JITATTN_CVT_X2 "cvt.rn.bf16x2.f32"
#else
#define JITATTN_MMA_TYPES "f16.f16"
#define JITATTN_CVT_X2 "cvt.rn.f16x2.f32"
#endif

// D (16x8 fp32) += A (16x16, row) * B (16x8, col).
JITATTN_DEVICE void mma_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." JITATTN_MMA_TYPES
               ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// D (16x8 fp32) += A (16x8, row) * B (8x8, col): the k=8 tail of head dims that are 8 mod 16,
// so such head dims are computed exactly instead of being padded to the next multiple of 16.
JITATTN_DEVICE void mma_1688(float (&d)[4], const u32 (&a)[2], u32 b0) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32." JITATTN_MMA_TYPES
               ".f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(b0));
}

// Two floats -> packed pair, `lo` in the low half (the lower column index).
JITATTN_DEVICE u32 pack2(float lo, float hi) {
  u32 r;
  asm(JITATTN_CVT_X2 " %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

JITATTN_DEVICE float elem_to_float(elem_t x) {
#if JITATTN_BF16
  return __uint_as_float(static_cast<u32>(x) << 16);
#else
  float f;
  asm("{ .reg .b16 h; mov.b16 h, %1; cvt.f32.f16 %0, h; }\n" : "=f"(f) : "h"(x));
  return f;
#endif
}

JITATTN_DEVICE float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
JITATTN_DEVICE float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

JITATTN_DEVICE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
JITATTN_DEVICE float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace jitattn_kernel
