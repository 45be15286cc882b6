// NVRTC compilation to cubin, and the ptxas report parsed out of the program log.
#include "runtime/device/nvrtc.h"

#include <fmt/format.h>
#include <nvrtc.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string_view>

#include "jitattn/error.h"

namespace jitattn::device {
namespace {

// One NVRTC program per call, destroyed on every path; NVRTC is thread-safe across programs.
class Program {
 public:
  explicit Program(nvrtcProgram p) : program_(p) {}
  ~Program() { nvrtcDestroyProgram(&program_); }
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;
  nvrtcProgram get() const { return program_; }

 private:
  nvrtcProgram program_;
};

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& p : parts) {
    if (!out.empty()) out += ' ';
    out += p;
  }
  return out;
}

std::string program_log(nvrtcProgram p) {
  size_t size = 0;
  if (nvrtcGetProgramLogSize(p, &size) != NVRTC_SUCCESS || size == 0) return {};
  std::string log(size, '\0');
  if (nvrtcGetProgramLog(p, log.data()) != NVRTC_SUCCESS) return {};
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  return log;
}

// The integer written just before `suffix` in `line` ("2048 bytes stack frame"), or -1.
int number_before(std::string_view line, std::string_view suffix) {
  const size_t at = line.find(suffix);
  if (at == std::string_view::npos) return -1;
  size_t begin = at;
  while (begin > 0 && line[begin - 1] >= '0' && line[begin - 1] <= '9') --begin;
  if (begin == at) return -1;
  return std::atoi(std::string(line.substr(begin, at - begin)).c_str());
}

// The integer written just after `prefix` in `line` ("Used 40 registers"), or -1.
int number_after(std::string_view line, std::string_view prefix) {
  const size_t at = line.find(prefix);
  if (at == std::string_view::npos) return -1;
  const size_t begin = at + prefix.size();
  size_t end = begin;
  while (end < line.size() && line[end] >= '0' && line[end] <= '9') ++end;
  if (end == begin) return -1;
  return std::atoi(std::string(line.substr(begin, end - begin)).c_str());
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

// NVRTC 13.0 writes one block per entry function, in no promised order:
//   ptxas info    : Compiling entry function 'spill' for 'sm_90'
//   ptxas info    : Function properties for spill
//   ptxas         .     2048 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//   ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes cumulative stack size,
//                   256 bytes smem                                       (one line in the log)
// The "bytes smem" clause is absent when the kernel has no static shared memory, and blocks of
// non-inlined device functions ("Function properties for _Z3foov") may sit inside an entry's block.
// A Hopper kernel whose wgmma instructions ptxas had to serialise gets a line of its own, e.g.
//   ptxas info    : (C7510) Potential Performance Loss: wgmma.mma_async instructions are serialized
//                   due to wgmma pipeline crossing function boundary at a function call in the
//                   function 'k'                                         (one line in the log)
bool parse_ptxas_info(const std::string& log, const std::string& lowered_name,
                      CompileResult& result) {
  const std::string entry = "Compiling entry function '" + lowered_name + "'";
  const std::string properties = "Function properties for " + lowered_name;
  const std::string serialized_in = "in the function '" + lowered_name + "'";
  bool in_block = false;
  bool found = false;
  bool expect_frame = false;
  std::string_view rest(log);
  while (!rest.empty()) {
    const size_t eol = rest.find('\n');
    std::string_view line = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 1);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);

    if (line.find("wgmma.mma_async instructions are serialized") != std::string_view::npos &&
        ends_with(line, serialized_in)) {
      result.wgmma_serialized = true;
      const size_t why = line.find("serialized");
      result.wgmma_note = std::string(line.substr(why));
      continue;
    }

    if (line.find("Compiling entry function '") != std::string_view::npos) {
      if (found && in_block) break;  // the next kernel's block
      in_block = line.find(entry) != std::string_view::npos;
      found = found || in_block;
      expect_frame = false;
      continue;
    }
    if (!in_block) continue;
    if (line.find("Function properties for ") != std::string_view::npos) {
      expect_frame = ends_with(line, properties);
      continue;
    }
    if (expect_frame && line.find("bytes stack frame") != std::string_view::npos) {
      result.stack_frame_bytes = std::max(0, number_before(line, " bytes stack frame"));
      result.spill_store_bytes = std::max(0, number_before(line, " bytes spill stores"));
      result.spill_load_bytes = std::max(0, number_before(line, " bytes spill loads"));
      expect_frame = false;
      continue;
    }
    if (const int registers = number_after(line, "Used "); registers >= 0 &&
        line.find(" registers") != std::string_view::npos) {
      result.registers = registers;
      result.static_shared_bytes = std::max(0, number_before(line, " bytes smem"));
    }
  }
  return found;
}

std::vector<std::string> compile_options(int sm, bool arch_specific,
                                         const std::vector<std::string>& extra_options) {
  const std::string arch = fmt::format("sm_{}{}", sm, arch_specific ? "a" : "");
  // A real sm_XX target makes NVRTC run ptxas itself and return a cubin; -v puts ptxas' resource
  // report in the program log, which is how CI catches spills without a GPU. --no-cache: where
  // libcuda is present NVRTC (12.9+) reuses results from the driver's ~/.nv/ComputeCache and then
  // skips ptxas, so a repeated compile came back with no report at all (seen on an H200); our own
  // binary cache keys on source and options, so the driver's copy buys nothing.
  std::vector<std::string> options = {"--gpu-architecture=" + arch, "-std=c++17",
                                      "--ptxas-options=-v", "--no-cache"};
  options.insert(options.end(), extra_options.begin(), extra_options.end());
  return options;
}

CompileResult compile_to_cubin(const std::string& source, const std::string& kernel_name, int sm,
                               bool arch_specific,
                               const std::vector<std::string>& extra_options) {
  const auto start = std::chrono::steady_clock::now();
  const std::string arch = fmt::format("sm_{}{}", sm, arch_specific ? "a" : "");
  const std::vector<std::string> options = compile_options(sm, arch_specific, extra_options);

  CompileResult result;
  result.options = join(options);
  const std::string what = fmt::format("NVRTC failed to compile {} for {}", kernel_name, arch);
  const auto check = [&](nvrtcResult r, const char* call, const std::string& log) {
    if (r != NVRTC_SUCCESS) {
      throw CompileError(fmt::format("{}: {} returned {}", what, call, nvrtcGetErrorString(r)),
                         log, result.options);
    }
  };

  nvrtcProgram raw = nullptr;
  // The program name shows up in error lines of the log ("attn_fwd_....cu(12): error: ...").
  const std::string file_name = kernel_name + ".cu";
  check(nvrtcCreateProgram(&raw, source.c_str(), file_name.c_str(), 0, nullptr, nullptr),
        "nvrtcCreateProgram", "");
  const Program program(raw);
  // A name expression makes NVRTC resolve (and instantiate) the kernel and report its lowered
  // name, so templated kernels work and a misspelt name fails here rather than at load time.
  check(nvrtcAddNameExpression(program.get(), kernel_name.c_str()), "nvrtcAddNameExpression", "");

  std::vector<const char*> argv;
  argv.reserve(options.size());
  for (const std::string& o : options) argv.push_back(o.c_str());
  const nvrtcResult compiled =
      nvrtcCompileProgram(program.get(), static_cast<int>(argv.size()), argv.data());
  result.log = program_log(program.get());
  if (compiled != NVRTC_SUCCESS) {
    throw CompileError(fmt::format("{} ({})", what, nvrtcGetErrorString(compiled)), result.log,
                       result.options);
  }

  const char* lowered = nullptr;
  check(nvrtcGetLoweredName(program.get(), kernel_name.c_str(), &lowered), "nvrtcGetLoweredName",
        result.log);
  result.kernel_name = lowered != nullptr ? lowered : kernel_name;

  size_t cubin_size = 0;
  check(nvrtcGetCUBINSize(program.get(), &cubin_size), "nvrtcGetCUBINSize", result.log);
  if (cubin_size == 0) {
    throw CompileError(what + ": NVRTC produced no cubin (the target must be a real sm_XX)",
                       result.log, result.options);
  }
  result.cubin.resize(cubin_size);
  check(nvrtcGetCUBIN(program.get(), result.cubin.data()), "nvrtcGetCUBIN", result.log);

  parse_ptxas_info(result.log, result.kernel_name, result);
  result.compile_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return result;
}

std::string nvrtc_version() {
  int major = 0;
  int minor = 0;
  if (const nvrtcResult r = nvrtcVersion(&major, &minor); r != NVRTC_SUCCESS) {
    throw Error(fmt::format("nvrtcVersion failed: {}", nvrtcGetErrorString(r)));
  }
  return fmt::format("{}.{}", major, minor);
}

std::vector<int> nvrtc_supported_archs() {
  int count = 0;
  if (const nvrtcResult r = nvrtcGetNumSupportedArchs(&count); r != NVRTC_SUCCESS) {
    throw Error(fmt::format("nvrtcGetNumSupportedArchs failed: {}", nvrtcGetErrorString(r)));
  }
  std::vector<int> archs(static_cast<size_t>(count));
  if (const nvrtcResult r = nvrtcGetSupportedArchs(archs.data()); r != NVRTC_SUCCESS) {
    throw Error(fmt::format("nvrtcGetSupportedArchs failed: {}", nvrtcGetErrorString(r)));
  }
  return archs;
}

}  // namespace jitattn::device
