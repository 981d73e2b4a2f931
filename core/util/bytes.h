// Byte sizes as people write them: "80GiB", "512 GiB", "1.5TB", "4096".
// Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (kB, MB,
// GB, TB) powers of 1000; a bare number is bytes.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace m6 {

// The size TEXT names, or nothing when it is not a size (negative, no number,
// unknown unit).
std::optional<int64_t> parse_bytes(const std::string& text);

// 1536 -> "1.50 KiB"; bytes below 1 KiB as "N B".
std::string format_bytes(int64_t bytes);

// The process's peak resident set size in bytes (getrusage), 0 when unknown.
int64_t process_peak_rss_bytes();

}  // namespace m6
