// Parallel compilation of the unpruned candidates. NVRTC is thread-safe with no shared state
// (runtime/device/nvrtc.h), so a plain pool of std::threads pulling indices from one atomic
// counter keeps every core busy; each worker writes only to the candidate it claimed.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "generator/generator.h"
#include "jitattn/error.h"
#include "runtime/device/cpu_jit.h"
#include "runtime/device/nvrtc.h"
#include "tuner/tuner.h"

namespace jitattn::tuner {
namespace {

std::string first_line(const std::string& text) {
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

// Compiles one candidate and records what ptxas said; prunes it on failure, on spills or on
// serialised wgmma. Never throws: an exception escaping a std::thread would terminate the process.
void compile_one(const KernelSpec& spec, const DeviceLimits& limits, Candidate& c) noexcept {
  const auto start = std::chrono::steady_clock::now();
  try {
    KernelSource src = generate(spec, c.config, limits);
    if (spec.target.cpu) {
      device::CpuCompileResult r = device::compile_cpu(src.source, src.name);
      c.kernel_name = std::move(r.kernel_name);
      c.cubin = std::move(r.object);
      c.source = std::move(src.source);
      c.compile_ms = r.compile_ms;
      return;
    }
    device::CompileResult r =
        device::compile_to_cubin(src.source, src.name, spec.target.sm, src.arch_specific);
    c.source = std::move(src.source);
    c.registers = r.registers;
    // Stack frame counts too: local arrays there are spills in all but name.
    c.spill_bytes = r.spill_store_bytes + r.spill_load_bytes + r.stack_frame_bytes;
    c.kernel_name = std::move(r.kernel_name);
    if (c.spill_bytes > 0) {
      c.pruned = fmt::format("ptxas: {} bytes spilled, {} registers", c.spill_bytes, r.registers);
    } else if (r.wgmma_serialized) {
      c.pruned = "ptxas: wgmma " + r.wgmma_note;
    } else {
      c.cubin = std::move(r.cubin);
    }
  } catch (const CompileError& e) {
    c.pruned = "compile failed: " + first_line(e.what());
  } catch (const std::exception& e) {
    c.pruned = "compile failed: " + first_line(e.what());
  } catch (...) {
    c.pruned = "compile failed: unknown exception";
  }
  c.compile_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

void compile_all(const KernelSpec& spec, const DeviceLimits& limits, std::vector<Candidate>& cands,
                 int threads) {
  std::vector<size_t> todo;
  for (size_t i = 0; i < cands.size(); ++i) {
    if (!cands[i].pruned) todo.push_back(i);
  }
  if (todo.empty()) return;

  size_t n_threads = threads > 0 ? static_cast<size_t>(threads)
                                 : std::max(1u, std::thread::hardware_concurrency());
  n_threads = std::min(n_threads, todo.size());

  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t k = next.fetch_add(1); k < todo.size(); k = next.fetch_add(1)) {
      compile_one(spec, limits, cands[todo[k]]);
    }
  };
  // The calling thread is one of the workers; if the system refuses more threads, the ones
  // started (and this one) still drain the queue.
  std::vector<std::thread> pool;
  pool.reserve(n_threads - 1);
  try {
    for (size_t t = 1; t < n_threads; ++t) pool.emplace_back(worker);
  } catch (const std::system_error&) {
  }
  worker();
  for (auto& t : pool) t.join();
}

}  // namespace jitattn::tuner
