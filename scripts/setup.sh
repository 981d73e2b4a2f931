#!/usr/bin/env bash
# Installs the Debian 12 packages m6train needs. Idempotent: when dpkg already
# lists every package as installed, nothing is downloaded or changed.
#
#   scripts/setup.sh            everything: build, training, tests, benchmarks
#   scripts/setup.sh --runtime  only what building and training need (no PyTorch
#                               reference, no numpy); what quickstart.sh uses
set -euo pipefail

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
}

mode=full
for arg in "$@"; do
  case "$arg" in
    --runtime) mode=runtime ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "setup.sh: unknown option '$arg'" >&2
      usage >&2
      exit 2
      ;;
  esac
done

# Build toolchain and libraries (see CMakeLists.txt), the embedded corpus
# (fortune files, used by quickstart.sh), then the PyTorch reference.
runtime_packages=(
  build-essential cmake ninja-build pkg-config git
  libyaml-cpp-dev libcli11-dev nlohmann-json3-dev catch2
  libopenblas-dev libopenblas-openmp-dev libopenmpi-dev openmpi-bin
  fortunes fortunes-zh
)
# clang-14 and libclang-rt-14-dev: libFuzzer for scripts/fuzz.sh (the fuzz.run_* ctests).
test_packages=(python3 python3-numpy python3-torch clang-14 libclang-rt-14-dev)

packages=("${runtime_packages[@]}")
if [[ $mode == full ]]; then
  packages+=("${test_packages[@]}")
fi

echo "setup.sh: checking ${#packages[@]} Debian packages ($mode): ${packages[*]}"

missing=()
for p in "${packages[@]}"; do
  # dpkg -s also knows removed packages whose config files remain: check the status.
  if dpkg -s "$p" 2>/dev/null | grep -qx 'Status: install ok installed'; then
    printf '  %-22s installed\n' "$p"
  else
    printf '  %-22s missing\n' "$p"
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup.sh: all packages are installed; nothing to do"
  exit 0
fi

# Root runs apt-get directly; anyone else needs sudo.
if ((EUID == 0)); then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "setup.sh: missing packages (${missing[*]}) and not root, and sudo is not available;" \
    "run this script as root" >&2
  exit 1
fi

echo "setup.sh: installing ${#missing[@]} missing packages: ${missing[*]}"
echo "+ ${as_root[*]:+${as_root[*]} }apt-get update"
"${as_root[@]}" apt-get update
# Only the missing ones: installed packages are left at their version.
echo "+ ${as_root[*]:+${as_root[*]} }apt-get install -y --no-install-recommends ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"
echo "setup.sh: done"
