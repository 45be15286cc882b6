// The cache row for one measured candidate, shared by `jitattn tune` and on-first-use tuning.
#pragma once

#include <string>

#include "cache/store.h"
#include "runtime/backend.h"
#include "tuner/tuner.h"

namespace jitattn::tuner {

/// A tuning_results row: the key (context, spec, bucket, config), the measurement, and
/// provenance from `backend` (host, driver, device name, clock).
cache::TuningResult result_row(const cache::TuningContext& context, const KernelSpec& spec,
                               const std::string& bucket, const Candidate& candidate,
                               const Measurement& m, const BackendInfo& backend);

}  // namespace jitattn::tuner
