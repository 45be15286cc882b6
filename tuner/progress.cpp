// The default progress sink: a single redrawn line on a terminal, plain lines in logs and CI
// (where \r would pile up into one unreadable line), at most one per measurement.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "tuner/tuner.h"

namespace jitattn::tuner {
namespace {

constexpr int kBarWidth = 20;

std::string best_text(const Progress& p) {
  if (p.best_config.empty()) return "";
  return fmt::format(", best {} {:.2f} ms", p.best_config, p.best_ms);
}

}  // namespace

ProgressSink stderr_progress() {
  const bool tty = isatty(STDERR_FILENO) != 0;
  // Shared by copies of the sink (std::function copies its target): the last measured count
  // printed, so a log gets no repeated lines when several updates carry the same count.
  auto last_printed = std::make_shared<int>(-1);
  return [tty, last_printed](const Progress& p) {
    if (tty) {
      // The finished bar ends with a newline once; later updates of a finished bar are dropped.
      if (p.total > 0 && p.measured >= p.total && *last_printed == p.measured) return;
      const int total = std::max(p.total, 1);
      const int filled = std::clamp(p.measured * kBarWidth / total, 0, kBarWidth);
      const std::string bar =
          std::string(size_t(filled), '#') + std::string(size_t(kBarWidth - filled), '.');
      // Trailing spaces wipe what a longer previous line left behind.
      std::fprintf(stderr, "\rtuning [%s] %d/%d measured%s   ", bar.c_str(), p.measured, p.total,
                   best_text(p).c_str());
      if (p.total > 0 && p.measured >= p.total) {
        std::fputc('\n', stderr);
        *last_printed = p.measured;
      }
      std::fflush(stderr);
      return;
    }
    if (p.measured == *last_printed) return;
    *last_printed = p.measured;
    std::fprintf(stderr, "tuning: %d compiled, %d verified, %d/%d measured%s\n", p.compiled,
                 p.verified, p.measured, p.total, best_text(p).c_str());
  };
}

}  // namespace jitattn::tuner
