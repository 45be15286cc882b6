// Internal to cache/: helpers the Store's source files share.
#pragma once

#include <string>

#include "cache/sqlite.h"
#include "cache/store.h"

namespace jitattn::cache::detail {

std::string host_name();
std::string project_version();
std::string now_iso();  ///< UTC ISO-8601 of now

/// Columns of tuning_results in the order read_result() and bind_result_key() use.
extern const char* const kResultColumns;
TuningResult read_result(const Stmt& s);
/// Binds the key columns as parameters 1..10; returns the next parameter index.
int bind_result_key(Stmt& s, const TuningResult& r, int schema_version);
/// Throws InvalidArgument("result.<field>") when `r` would break a tuning_results invariant.
void validate_result(const TuningResult& r);
/// Inserts `b`; an existing row of the same key is replaced when `replace`, else kept.
void write_binary(Db& db, const Binary& b, bool replace);

}  // namespace jitattn::cache::detail
