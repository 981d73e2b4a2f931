#!/usr/bin/env bash
# Fuzzes one reader of outside files with libFuzzer (tests/fuzz/fuzz_targets.h).
#
#   scripts/fuzz.sh TARGET SECONDS [libFuzzer options...]
#   TARGET: config (YAML config loader), shard (token shard reader), manifest
#           (checkpoint manifest reader), safetensors (safetensors reader)
#
# Builds the fuzz targets with clang and -fsanitize=fuzzer,address,undefined
# into build-fuzz/ (env BUILD_FUZZ to change), seeds the corpus from
# tests/fuzz/seeds/TARGET, tests/fuzz/regress/TARGET (and for config, configs/
# and tests/cli/bad_configs/), then fuzzes for SECONDS. The corpus grows in
# build-fuzz/corpus/TARGET and is reused by the next run. A finding (crash,
# sanitizer report, leak, uncaught exception, an input slower than 30 s) ends
# the run with exit 1 and leaves the input in build-fuzz/findings/TARGET/: fix
# the reader, then add the input to tests/fuzz/regress/TARGET/, where the
# ctest fuzz.replay_TARGET replays it through the normal build.
# Exit 77 (ctest: skipped) when clang or libFuzzer is not installed
# (scripts/setup.sh installs clang-14 and libclang-rt-14-dev).
set -euo pipefail

cd "$(dirname "$0")/.."
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
if [[ $# -lt 2 || $1 == -h || $1 == --help ]]; then
  usage
  [[ $# -ge 1 && ($1 == -h || $1 == --help) ]] && exit 0
  exit 2
fi
target=$1 seconds=$2
shift 2
case "$target" in config | shard | manifest | safetensors) ;;
  *) echo "fuzz.sh: unknown target '$target' (config, shard, manifest, safetensors)" >&2; exit 2 ;;
esac
[[ $seconds =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS must be a whole number (got '$seconds')" >&2; exit 2; }

cxx=$(command -v clang++-14 || command -v clang++ || true)
cc=$(command -v clang-14 || command -v clang || true)
if [[ -z $cxx || -z $cc ]]; then
  echo "fuzz.sh: skipped: clang is not installed (apt-get install clang-14 libclang-rt-14-dev)"
  exit 77
fi
fuzzer_lib=$("$cxx" -print-file-name=libclang_rt.fuzzer-x86_64.a)
if [[ ! -f $fuzzer_lib ]]; then
  echo "fuzz.sh: skipped: libFuzzer is not installed (apt-get install libclang-rt-14-dev)"
  exit 77
fi

build=${BUILD_FUZZ:-build-fuzz}
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
if [[ ! -f $build/CMakeCache.txt ]]; then
  echo "fuzz.sh: configuring $build ($cxx)"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DM6_TESTS=OFF -DM6_CUDA=OFF \
    -DM6_FUZZ=ON -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >/dev/null
fi
cmake --build "$build" --target "fuzz_$target" -j"$(nproc)"

corpus=$build/corpus/$target findings=$build/findings/$target
mkdir -p "$corpus" "$findings"
seeds=(tests/fuzz/seeds/"$target")
[[ -d tests/fuzz/regress/$target ]] && seeds+=(tests/fuzz/regress/"$target")
[[ $target == config ]] && seeds+=(configs tests/cli/bad_configs)

# The readers take paths: the inputs go to files in a scratch directory, in
# memory where possible. Open MPI is linked but never initialised here.
[[ -z ${TMPDIR:-} && -d /dev/shm && -w /dev/shm ]] && export TMPDIR=/dev/shm
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "fuzz.sh: fuzzing $target for ${seconds}s (corpus $corpus, seeds ${seeds[*]})"
rc=0
"$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
  -max_len=8192 -print_final_stats=1 -artifact_prefix="$findings/" "$@" "$corpus" "${seeds[@]}" ||
  rc=$?
if ((rc != 0)); then
  echo "fuzz.sh: FINDING in $target (exit $rc): input(s) in $findings/:" >&2
  ls -1 "$findings" >&2
  exit 1
fi
echo "fuzz.sh: $target: no finding in ${seconds}s"
