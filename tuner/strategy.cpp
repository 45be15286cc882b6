// Search strategies over a Measurer: exhaustive for small spaces, successive halving for large
// ones, both followed by an interleaved re-measure of the top few so that one noisy sample
// (clock boost, a neighbour on the GPU) cannot pick the winner. 70% of the budget explores,
// the remaining 30% re-measures.
#include <algorithm>
#include <cstddef>
#include <exception>
#include <optional>
#include <set>
#include <vector>

#include "tuner/tuner.h"

namespace jitattn::tuner {
namespace {

constexpr double kExploreShare = 0.7;
// Below this a measurement is mostly warm-up and launch overhead: noise, not a ranking.
constexpr double kMinBudgetMs = 20.0;
constexpr int kFinalRounds = 3;

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Survivors after one halving step from `count`: the fastest half, never fewer than `top`.
size_t halved(size_t count, size_t top) { return std::min(count, std::max(top, (count + 1) / 2)); }

// Measures, records and reports; the one place a measurement happens, so every measurement
// reaches outcome.measured, on_measured and progress alike.
class Session {
 public:
  Session(const std::vector<Candidate>& cands, Measurer& measurer, const TuneOptions& options,
          TuneOutcome& outcome, int compiled, int planned)
      : cands_(cands), measurer_(measurer), options_(options), outcome_(outcome) {
    progress_.compiled = compiled;
    progress_.total = planned;
  }

  Measurement measure(size_t index, double budget_ms) {
    const Candidate& c = cands_[index];
    Measurement m;
    try {
      m = measurer_.measure(c, budget_ms);
    } catch (const std::exception& e) {  // a launch error is this candidate's failure, not ours
      m.ok = false;
      m.error = e.what();
    } catch (...) {
      m.ok = false;
      m.error = "unknown exception from the measurer";
    }
    outcome_.measured.emplace_back(c.config, m);
    if (options_.on_measured) options_.on_measured(c, m);
    ++progress_.measured;
    if (m.ok) {
      verified_.insert(index);
      progress_.verified = static_cast<int>(verified_.size());
      if (progress_.best_config.empty() || m.median_ms < progress_.best_ms) {
        progress_.best_config = c.config.canonical();
        progress_.best_ms = m.median_ms;
      }
    }
    progress_.total = std::max(progress_.total, progress_.measured);
    report();
    return m;
  }

  // The planned count shrinks when candidates fail; the bar must still end full.
  void finish(const std::optional<std::pair<size_t, double>>& chosen) {
    progress_.total = progress_.measured;
    if (chosen) {
      progress_.best_config = cands_[chosen->first].config.canonical();
      progress_.best_ms = chosen->second;
    }
    report();
  }

 private:
  void report() {
    if (options_.progress) options_.progress(progress_);
  }

  const std::vector<Candidate>& cands_;
  Measurer& measurer_;
  const TuneOptions& options_;
  TuneOutcome& outcome_;
  Progress progress_;
  std::set<size_t> verified_;
};

struct Timed {
  size_t index;
  double median_ms;
};

// Measures each of `indices` once with `budget_ms`; returns the ok ones, fastest first (ties in
// candidate order, so equal inputs give equal choices).
std::vector<Timed> measure_round(Session& s, const std::vector<size_t>& indices,
                                 double budget_ms) {
  std::vector<Timed> ok;
  for (size_t i : indices) {
    const Measurement m = s.measure(i, budget_ms);
    if (m.ok) ok.push_back({i, m.median_ms});
  }
  std::stable_sort(ok.begin(), ok.end(),
                   [](const Timed& a, const Timed& b) { return a.median_ms < b.median_ms; });
  return ok;
}

std::vector<size_t> indices_of(const std::vector<Timed>& ranked, size_t keep) {
  std::vector<size_t> out;
  for (size_t i = 0; i < ranked.size() && i < keep; ++i) out.push_back(ranked[i].index);
  return out;
}

// Round-robin re-measure of the finalists: each gets kFinalRounds measurements interleaved with
// the others, so slow drift (thermal, clocks) hits all of them alike. A finalist that fails any
// re-measure is dropped. Returns the chosen index and its median of medians.
std::optional<std::pair<size_t, double>> remeasure(Session& s, const std::vector<Timed>& ranked,
                                                   size_t top, double budget_ms) {
  if (ranked.empty()) return std::nullopt;
  // A single finalist has nothing to be compared against: its measurement stands.
  if (ranked.size() == 1 || top == 1) return std::pair{ranked[0].index, ranked[0].median_ms};
  const std::vector<size_t> finalists = indices_of(ranked, top);
  const double per = std::max(kMinBudgetMs, budget_ms / double(kFinalRounds * finalists.size()));
  std::vector<std::vector<double>> medians(finalists.size());
  std::vector<bool> failed(finalists.size(), false);
  for (int round = 0; round < kFinalRounds; ++round) {
    for (size_t f = 0; f < finalists.size(); ++f) {
      if (failed[f]) continue;  // a wrong result is not measured again
      const Measurement m = s.measure(finalists[f], per);
      if (m.ok) {
        medians[f].push_back(m.median_ms);
      } else {
        failed[f] = true;
      }
    }
  }
  std::optional<std::pair<size_t, double>> best;
  for (size_t f = 0; f < finalists.size(); ++f) {
    if (failed[f] || medians[f].empty()) continue;
    const double med = median_of(medians[f]);
    if (!best || med < best->second) best = std::pair{finalists[f], med};
  }
  return best;
}

}  // namespace

TuneOutcome tune(const std::vector<Candidate>& candidates, Measurer& measurer,
                 const TuneOptions& options) {
  TuneOutcome outcome;
  std::vector<size_t> live;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (!candidates[i].pruned) live.push_back(i);
  }
  const size_t n = live.size();
  const size_t top = static_cast<size_t>(std::max(1, options.final_top));
  const double budget_ms = std::max(0.0, options.budget_seconds) * 1000.0;
  const double explore_ms = budget_ms * kExploreShare;
  const double final_ms = budget_ms - explore_ms;
  const bool exhaustive = n <= static_cast<size_t>(std::max(0, options.exhaustive_limit));
  outcome.strategy = exhaustive ? "exhaustive" : "successive-halving";

  // Planned measurement count (for the progress bar) and the round sizes of successive halving:
  // every round measures its survivors once and keeps the fastest half, until <= top remain.
  std::vector<size_t> round_sizes;
  if (exhaustive) {
    round_sizes.push_back(n);
  } else {
    size_t c = n;
    do {
      round_sizes.push_back(c);
      c = halved(c, top);
    } while (c > top);
  }
  size_t planned = 0;
  for (size_t r : round_sizes) planned += r;
  const size_t finalists_planned = std::min(top, n);
  if (finalists_planned > 1) planned += finalists_planned * kFinalRounds;

  // Compiled = the candidates handed in that survived compile_all (pruned ones never compiled
  // or were pruned by ptxas).
  Session s(candidates, measurer, options, outcome, static_cast<int>(n), static_cast<int>(planned));
  if (n == 0) {
    s.finish(std::nullopt);
    return outcome;
  }

  std::vector<Timed> ranked;
  if (exhaustive) {
    ranked = measure_round(s, live, std::max(kMinBudgetMs, explore_ms / double(n)));
  } else {
    // Equal budget per round; within a round, an equal share per survivor, so later rounds
    // measure fewer candidates for longer (less noise where the choice is closer).
    const double round_ms = explore_ms / double(round_sizes.size());
    std::vector<size_t> survivors = live;
    for (size_t round = 0; round < round_sizes.size() && !survivors.empty(); ++round) {
      ranked = measure_round(s, survivors, std::max(kMinBudgetMs, round_ms / double(survivors.size())));
      survivors = indices_of(ranked, halved(survivors.size(), top));
      if (survivors.size() <= top) break;  // failures can end the halving early
    }
  }

  const auto chosen = remeasure(s, ranked, top, final_ms);
  if (chosen) outcome.best = candidates[chosen->first].config;
  s.finish(chosen);
  return outcome;
}

}  // namespace jitattn::tuner
