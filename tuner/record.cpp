#include "tuner/record.h"

#include <unistd.h>

namespace jitattn::tuner {

cache::TuningResult result_row(const cache::TuningContext& context, const KernelSpec& spec,
                               const std::string& bucket, const Candidate& candidate,
                               const Measurement& m, const BackendInfo& backend) {
  cache::TuningResult r;
  r.context = context;
  r.spec_hash = cache::hex64(spec.hash());
  r.spec = spec.canonical();
  r.bucket = bucket;
  r.config = candidate.config.canonical();
  r.status = m.ok ? cache::ResultStatus::ok : cache::ResultStatus::failed_verify;
  if (m.ok) {  // failed rows keep NULL timings: they are never chosen
    r.median_ms = m.median_ms;
    r.p20_ms = m.p20_ms;
    r.p80_ms = m.p80_ms;
    r.samples = m.samples;
  }
  r.error = m.error;
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) == 0) r.provenance.host = host;
  if (!backend.cpu()) r.provenance.driver_version = std::to_string(backend.driver_version);
  r.provenance.device_name = backend.name;
  r.provenance.clock_mhz = backend.clock_mhz;
  return r;
}

}  // namespace jitattn::tuner
