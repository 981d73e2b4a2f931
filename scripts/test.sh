#!/usr/bin/env bash
# The whole test suite, from a fresh clone, as root or not:
#   1. install every Debian package, the PyTorch reference included (setup.sh)
#   2. configure build/ (Release, tests on; the CUDA backend is built when nvcc
#      is found, on PATH or in /usr/local/cuda/bin)
#   3. build everything and run ctest; the exit status is ctest's.
#
#   scripts/test.sh [ctest options...]   e.g. scripts/test.sh -R '^metrics\.'
#   scripts/test.sh --sanitize [--ci] [ctest options...]
#
# --sanitize builds build-asan/ instead (CPU only, RelWithDebInfo, AddressSanitizer and
# UndefinedBehaviorSanitizer; any report fails the test that caused it) and
# runs the same suite there, the multi-rank MPI tests included. Open MPI's
# own leaks and reports are suppressed by tests/sanitize/*.supp, each entry
# explained there. The fuzz.run_* tests are left to the normal build (they
# fuzz build-fuzz/). --ci runs the subset that CI affords (see README,
# "Tests"): also leaves out the tests labelled slow-sanitize.
set -euo pipefail

sanitize=0 ci=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sanitize) sanitize=1; shift ;;
    --ci) ci=1; shift ;;
    *) break ;;
  esac
done
((ci == 0 || sanitize == 1)) || { echo "test.sh: --ci goes with --sanitize" >&2; exit 2; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

jobs=$(nproc)

echo "=== test: setup"
scripts/setup.sh

if [[ -d /usr/local/cuda/bin ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
# Multi-rank tests run mpirun; Open MPI refuses root unless told otherwise
# (CI containers run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

if ((sanitize)); then
  build=build-asan
  supp="$repo_root/tests/sanitize"
  flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
  # Every process of the suite (m6train under mpirun and Python included)
  # inherits these; a report exits non-zero and fails its test.
  export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:strict_string_checks=1:check_initialization_order=1"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
  echo "=== test: configure $build (ASan + UBSan)"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DM6_TESTS=ON -DM6_CUDA=OFF \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined"
  echo "=== test: build $build (-j$jobs)"
  cmake --build "$build" -j"$jobs"
  # fuzz.run_* fuzz build-fuzz (already sanitized), not this build: the
  # normal run has them.
  ctest_args=(-LE fuzz) what="whole suite"
  ((ci)) && ctest_args=(-LE 'slow-sanitize|fuzz') what="CI subset"
  echo "=== test: ctest in $build ($what)"
  rc=0
  ctest --test-dir "$build" --output-on-failure -j"$jobs" --timeout 1800 "${ctest_args[@]}" "$@" ||
    rc=$?
  echo "=== test: ctest exit code $rc"
  exit "$rc"
fi

# M6_CUDA keeps the default of CMakeLists.txt (ON iff a CUDA compiler works).
# build/ may hold a cache from quickstart.sh (M6_CUDA=OFF) or from a run when
# nvcc was not on PATH, so the cached decision is dropped and the compiler
# found now is named.
cmake_args=(-S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DM6_TESTS=ON -UM6_CUDA)
if nvcc_path=$(command -v nvcc); then
  echo "=== test: nvcc found at $nvcc_path; the CUDA backend is built"
  cmake_args+=("-DCMAKE_CUDA_COMPILER:FILEPATH=$nvcc_path")
else
  echo "=== test: no nvcc; CPU only (GPU tests report as skipped)"
fi

echo "=== test: configure"
cmake "${cmake_args[@]}"

echo "=== test: build (-j$jobs)"
cmake --build build -j"$jobs"

echo "=== test: ctest"
rc=0
ctest --test-dir build --output-on-failure -j"$jobs" --timeout 900 "$@" || rc=$?
echo "=== test: ctest exit code $rc"
exit "$rc"
