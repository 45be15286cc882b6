// Internal to cache/: the table definitions, their invariants, and the migrations between
// schema versions (PRAGMA user_version).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "cache/sqlite.h"

namespace jitattn::cache::detail {

/// Brings `db` to kSchemaVersion inside one BEGIN IMMEDIATE transaction (so two processes
/// opening a new file at once create the tables once). Throws CacheError for a file of a newer
/// schema, leaving it untouched.
void migrate(Db& db, std::chrono::milliseconds max_wait);

/// PRAGMA user_version.
int read_schema_version(const Db& db);

/// Checks the invariants written above the tables; one line per problem.
std::vector<std::string> check_invariants(const Db& db);

}  // namespace jitattn::cache::detail
