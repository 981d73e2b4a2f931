#!/usr/bin/env bash
# The whole test suite, from a fresh clone, as root or not:
#   1. install every Debian package, the PyTorch reference included (setup.sh)
#   2. configure build/ (Release, tests on; the CUDA backend is built when nvcc
#      is found, on PATH or in /usr/local/cuda/bin)
#   3. build everything and run ctest; the exit status is ctest's.
#
#   scripts/test.sh [ctest options...]   e.g. scripts/test.sh -R '^metrics\.'
set -euo pipefail

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
