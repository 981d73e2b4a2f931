// libFuzzer entry of one target (M6_FUZZ_TARGET names it; scripts/fuzz.sh).
// An exception escaping run_one is uncaught here: libFuzzer reports it as a
// crash and saves the input.
#include "tests/fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const m6::fuzz::Target* t = m6::fuzz::find_target(M6_FUZZ_TARGET);
  m6::fuzz::run_one(*t, data, size, nullptr);
  return 0;
}
