// Console logging. Rank 0 prints progress; every rank prints its errors with
// its rank. No globals beyond the process-wide rank tag set once at start-up.
#pragma once
#include <string>

namespace m6 {

void log_set_rank(int rank, int world);
void log_info(const std::string& msg);   // rank 0 only, stdout
void log_warn(const std::string& msg);   // every rank, stderr, tagged with the rank
void log_error(const std::string& msg);  // every rank, stderr, tagged with the rank

}  // namespace m6
