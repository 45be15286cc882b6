#include "runtime/backend.h"

#include <fmt/format.h>

#include "cache/sha256.h"
#include "jitattn/error.h"
#include "runtime/device/cpu_jit.h"
#include "runtime/device/driver.h"
#include "runtime/device/nvrtc.h"

namespace jitattn {

BackendInfo cuda_backend(int ordinal) {
  const device::DeviceInfo info = device::device_info(ordinal);
  BackendInfo b;
  b.target.sm = info.sm();
  b.limits.sm = info.sm();
  b.limits.max_shared_per_block = info.max_shared_per_block_optin;
  b.limits.max_threads_per_block = info.max_threads_per_block;
  b.key = cache::DeviceKey{fmt::format("sm_{}", info.sm()), info.sm_count, static_cast<int64_t>(info.l2_bytes)};
  b.ordinal = ordinal;
  b.name = info.name;
  b.driver_version = info.driver_version;
  b.clock_mhz = info.clock_khz / 1000;
  return b;
}

BackendInfo cpu_backend() {
  if (!device::cpu_jit_available()) {
    throw Unsupported("this jitattn was built without LLVM (JITATTN_WITH_LLVM=OFF), so it has no CPU backend; "
                      "install Debian's llvm-16-dev and libclang-16-dev and rebuild");
  }
  const device::HostCpu& cpu = device::host_cpu();
  BackendInfo b;
  b.target.cpu = true;
  b.target.sm = 0;
  b.limits = limits_for_cpu();
  b.key = cache::DeviceKey{cpu.arch_key(), cpu.threads, cpu.l2_bytes};
  b.name = fmt::format("{} {} ({} threads)", cpu.triple, cpu.name, cpu.threads);
  return b;
}

cache::BinaryKey binary_key(const std::string& source, const BackendInfo& backend, bool arch_specific) {
  if (backend.cpu()) {
    return {cache::sha256_hex(source), cache::normalize_options(device::cpu_compile_options()),
            "llvm-" + device::llvm_version(), backend.key.arch};
  }
  // The target names the 'a' suffix: an sm_90a cubin is a different binary from an sm_90 one.
  return {cache::sha256_hex(source),
          cache::normalize_options(device::compile_options(backend.target.sm, arch_specific)),
          device::nvrtc_version(), fmt::format("sm_{}{}", backend.target.sm, arch_specific ? "a" : "")};
}

const char* compiler_name(const BackendInfo& backend) { return backend.cpu() ? "clang" : "NVRTC"; }

}  // namespace jitattn
