// Device layer, CPU side: generated C++ -> object code with clang's C++ API in-process (no
// temporary files, no subprocess), optimised at -O3 for the host CPU, then linked into the running
// process by LLVM's ORC LLJIT. Plus the thread pool that spreads a kernel's work items over the
// cores. Built only with JITATTN_WITH_LLVM; without it every entry point but cpu_jit_available()
// throws Unsupported.
//
// Kernel ABI (what the generator emits for a CPU target):
//   extern "C" void NAME(const jitattn_kernel::AttnFwdParams* p, long long begin, long long end);
// processes work items [begin, end); item = (b * heads_q + h) * m_blocks + m_block with
// m_blocks = ceil(seqlen_q / block_m) (seqlen_q is the maximum when packed). Items are independent.
// A backward spec's object has three entries of the same signature taking an AttnBwdParams*, run
// one pass after another (items within a pass are independent; templates/attn_bwd_cpu.h):
//   NAME_pre  delta = rowsum(dO * O), items as the forward's;
//   NAME      dK, dV: item = (b * heads_kv + kv_head) * n_blocks + n_block, n_blocks =
//             ceil(seqlen_k / block_n);
//   NAME_dq   dQ (and dBias): items as the forward's, except that dims the bias gradient is
//             broadcast over (batch, head, rows) collapse to 1 and one item loops over them, so
//             each item owns its slice of dbias and sums into it in a fixed order (no atomics).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace jitattn::device {

/// True when this build has the LLVM backend (JITATTN_WITH_LLVM).
bool cpu_jit_available();

/// The host CPU as LLVM sees it: name ("znver3", "skylake-avx512", ...), the enabled feature
/// list ("+avx2,+fma,..." sorted) and the hardware threads.
struct HostCpu {
  std::string triple;
  std::string name;
  std::string features;
  int threads = 1;
  int64_t l2_bytes = 1;  ///< per-core L2 (sysconf, else sysfs); 1 when neither says
  /// "cpu-<name>-<8 hex digits of a hash of triple and features>": the tuning cache's arch.
  std::string arch_key() const;
};
const HostCpu& host_cpu();

/// LLVM's version, e.g. "16.0.6" (part of the binary cache key).
std::string llvm_version();

/// The clang options compile_cpu uses (part of the binary cache key).
std::vector<std::string> cpu_compile_options();

/// An object file for the host CPU and what produced it.
struct CpuCompileResult {
  std::string kernel_name;
  std::vector<char> object;  ///< relocatable ELF object for the host triple
  std::string log;           ///< clang diagnostics (warnings) as text
  double compile_ms = 0;
};

/// Compiles one generated C++ translation unit in-process (clang -O3 for the host CPU, C++17, no
/// exceptions or RTTI, no standard headers). Throws CompileError with the diagnostics when it does
/// not compile or does not define `kernel_name`. Thread-safe.
CpuCompileResult compile_cpu(const std::string& source, const std::string& kernel_name);

/// A loaded object: its own JIT instance, so unloading one never disturbs another.
class CpuModule {
 public:
  using Kernel = void (*)(const void* params, long long begin, long long end);

  /// Links `object` into this process and resolves `kernel_name`. Throws CompileError.
  static CpuModule load(const std::vector<char>& object, const std::string& kernel_name);

  CpuModule();
  ~CpuModule();
  CpuModule(CpuModule&&) noexcept;
  CpuModule& operator=(CpuModule&&) noexcept;

  Kernel kernel() const { return kernel_; }
  /// Another extern "C" entry of the same object (the backward's passes). Throws CompileError.
  Kernel symbol(const std::string& name) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  Kernel kernel_ = nullptr;
};

/// Runs fn(begin, end) over [0, items) in chunks of `grain` items on a process-wide pool of
/// host_cpu().threads workers with 16 MiB stacks (kernels keep their blocks on the stack, so fn
/// never runs on the caller's thread); returns when all are done. `threads` > 0 caps the workers
/// used. Calls from several threads run one after another. The first exception thrown by fn is
/// rethrown (the remaining chunks are skipped).
void parallel_for(long long items, long long grain, const std::function<void(long long, long long)>& fn,
                  int threads = 0);

}  // namespace jitattn::device
