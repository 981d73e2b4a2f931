#!/usr/bin/env bash
# Builds the CUDA build on THIS machine (nvcc + the CUDA libraries, no GPU
# needed) and packs what a GPU machine with only the driver, CUDA and Python
# needs to run it into bundle/:
#   bundle/bin/m6train, bundle/bin/test_cuda_ops   the binaries
#   bundle/lib/*.so*                               every shared library they
#       load that is not part of glibc or the driver (ldd): yaml-cpp, OpenBLAS,
#       gomp, gfortran, libstdc++, Open MPI's libmpi and its dependencies,
#       cuBLAS/cuBLASLt, cudart when dynamic, ...
#   bundle/run                                     wrapper: LD_LIBRARY_PATH=bundle/lib
#   bundle/configs, bundle/scripts/gpu-check.sh    for the check run
# Single-rank runs do not need an MPI launcher (m6train calls MPI_Init only
# when it finds one, core/parallel/mpi_session.h), but libmpi is linked in and
# must still load: it is bundled, without Open MPI's plugins (multi-rank CUDA
# needs NCCL, not built yet, and is refused anyway).
# Usage: scripts/gpu-bundle.sh [BUILD_DIR=build-gpu] [BUNDLE_DIR=bundle]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-gpu}
out=${2:-$src/bundle}
jobs=${M6_JOBS:-2}

cmake -S "$src" -B "$build" -G Ninja -DM6_CUDA=ON -DM6_TESTS=ON
ninja -C "$build" -j"$jobs" m6train test_cuda_ops

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/scripts"
cp "$build/m6train" "$out/bin/"
cp "$build/tests/test_cuda_ops" "$out/bin/"
cp -r "$src/configs" "$out/"
cp "$src/scripts/gpu-check.sh" "$out/scripts/"

# Libraries to leave to the target machine: glibc's own (they must match its
# kernel and loader) and the NVIDIA driver (libcuda must come from the driver).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libutil\.so|libcuda\.so|libnvidia)'
for bin in "$out"/bin/*; do
  ldd "$bin" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ "$name" =~ $skip ]]; then continue; fi
  cp -L "$path" "$out/lib/$name"
done
# cuBLAS loads cuBLASLt by name at run time on some versions: take it when present.
for extra in libcublasLt.so.13 libcublasLt.so.12; do
  p=$(ldconfig -p | awk -v n="$extra" '$1 == n {print $NF; exit}')
  if [[ -z "$p" && -e /usr/local/cuda/lib64/$extra ]]; then p=/usr/local/cuda/lib64/$extra; fi
  if [[ -n "$p" && ! -e "$out/lib/$extra" ]]; then cp -L "$p" "$out/lib/$extra"; fi
done

cat > "$out/run" <<'RUN'
#!/usr/bin/env bash
# bundle/run PROGRAM [ARGS...]: runs bundle/bin/PROGRAM with the bundled libraries.
here=$(cd "$(dirname "$0")" && pwd)
prog=$1
shift
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/bin/$prog" "$@"
RUN
chmod +x "$out/run"

echo "bundle: $out"
du -sh "$out/lib" "$out/bin"
ls "$out/lib"
# The bundled binaries must resolve every library from bundle/lib or glibc.
if LD_LIBRARY_PATH="$out/lib" ldd "$out/bin/m6train" | grep -q "not found"; then
  echo "gpu-bundle: m6train has unresolved libraries:" >&2
  LD_LIBRARY_PATH="$out/lib" ldd "$out/bin/m6train" | grep "not found" >&2
  exit 1
fi
