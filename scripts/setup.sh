#!/usr/bin/env bash
# Installs the Debian 12 packages m6train needs. Idempotent: when dpkg already
# lists every package as installed, nothing is downloaded or changed.
#
#   scripts/setup.sh            everything: build, training, tests, benchmarks,
#                               and the Python venv build/venv with the
#                               `tensorboard` package from PyPI (the TensorBoard
#                               test reads event files with it)
#   scripts/setup.sh --runtime  only what building, training and plotting need
#                               (no PyTorch reference, no venv); what
#                               quickstart.sh uses
# M6_VENV=DIR puts the venv elsewhere (tests look in <build dir>/venv).
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
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
  libicu-dev libsentencepiece-dev
  fortunes fortunes-zh
  python3-matplotlib
)
# Tests: the PyTorch reference; a one-node Slurm cluster (tests/cli/slurm.sh);
# spm_train for SentencePiece; venvs for tiktoken and GPT-2's vocabulary files;
# clang-14 and libclang-rt-14-dev: libFuzzer for scripts/fuzz.sh (the fuzz.run_* ctests).
test_packages=(python3 python3-numpy python3-torch python3-yaml
  slurmctld slurmd slurm-client munge sentencepiece python3-venv clang-14 libclang-rt-14-dev)

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

# The TensorBoard reader for tests/cli/tensorboard.sh: the real `tensorboard`
# package (PyPI, pinned) in a venv of Debian's python3, so the system Python
# is left alone.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${M6_VENV:-$repo_root/build/venv}
tensorboard_pin=tensorboard==2.21.0
setup_venv() {
  [[ $mode == full ]] || return 0
  if [[ -x $venv/bin/python ]] &&
    "$venv/bin/python" -c 'import sys, tensorboard; sys.exit(tensorboard.__version__ != sys.argv[1])' \
      "${tensorboard_pin#*==}" 2>/dev/null; then
    echo "setup.sh: $venv has $tensorboard_pin"
    return 0
  fi
  echo "setup.sh: creating $venv with $tensorboard_pin (PyPI)"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet "$tensorboard_pin"
  "$venv/bin/python" -c 'import tensorboard; print("setup.sh: tensorboard", tensorboard.__version__)'
}

if ((${#missing[@]} == 0)); then
  echo "setup.sh: all packages are installed"
  setup_venv
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
setup_venv
echo "setup.sh: done"
