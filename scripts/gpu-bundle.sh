#!/usr/bin/env bash
# Builds the CUDA build on THIS machine (nvcc + the CUDA libraries, no GPU
# needed) and packs what a GPU machine with only the driver, CUDA and Python
# needs to run it into bundle/ (well under 60 MB; the largest libraries packed
# with xz, unpacked by bundle/run on first use):
#   bundle/bin/m6train, test_cuda_ops, test_cuda_attention, test_cuda_nccl   the binaries
#   bundle/lib/*.so*     every shared library they load that is neither glibc's,
#       the driver's, nor one of the large CUDA libraries: yaml-cpp, OpenBLAS,
#       gomp, gfortran, Open MPI's libmpi and its dependencies, cudart, ...
#   bundle/lib/fallback/ libstdc++ and libgcc_s, used only when the target's
#       own are older than the build's (a newer system one must win, since the
#       target's cuBLAS and NCCL are loaded into the same process)
#   bundle/run           wrapper: finds cuBLAS, cuBLASLt and NCCL on the target
#       (ldconfig, /usr/local/cuda, the nvidia-* wheels of its Python, e.g.
#       PyTorch's) and runs bundle/bin/PROGRAM with them
#   bundle/configs, bundle/tests/ref, bundle/scripts   for the check run
# cuBLAS/cuBLASLt (over 500 MB) and NCCL (over 200 MB) are NOT carried: the
# target's are used, found at run time.
# Single-rank runs do not need an MPI launcher (m6train calls MPI_Init only
# when it finds one, core/parallel/mpi_session.h), but libmpi is linked in and
# must still load: it is bundled, without Open MPI's plugins.
# Usage: scripts/gpu-bundle.sh [BUILD_DIR=build-gpu] [BUNDLE_DIR=bundle]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-gpu}
out=${2:-$src/bundle}
jobs=${M6_JOBS:-2}

cmake -S "$src" -B "$build" -G Ninja -DM6_CUDA=ON -DM6_TESTS=ON
ninja -C "$build" -j"$jobs" m6train test_cuda_ops test_cuda_attention test_cuda_nccl

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/scripts"
cp "$build/m6train" "$out/bin/"
cp "$build/tests/test_cuda_ops" "$build/tests/test_cuda_attention" "$build/tests/test_cuda_nccl" \
  "$out/bin/"
cp -r "$src/configs" "$out/"
mkdir -p "$out/tests/ref"
cp -r "$src/tests/ref/configs" "$src/tests/ref/safetensors_io.py" "$out/tests/ref/"
cp "$src/scripts/gpu-check.sh" "$src/scripts/gpu_compare.py" "$src/scripts/bench-gpu.sh" \
  "$src/scripts/bench_torch_gpu.py" "$src/scripts/gpu_common.bash" "$src/scripts/gpu-session.sh" \
  "$out/scripts/"
cp "$src/README.md" "$out/"
# -dirty: the bundle holds changes that no commit has.
git -C "$src" describe --always --dirty > "$out/COMMIT" 2> /dev/null || echo unknown > "$out/COMMIT"

# Libraries to leave to the target machine: glibc's own (they must match its
# kernel and loader), the NVIDIA driver (libcuda must come from the driver),
# and the large CUDA libraries (cuBLAS, cuBLASLt, NCCL), which the target's
# CUDA or PyTorch install provides.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libutil\.so|libcuda\.so|libnvidia|libcublas|libcublasLt|libnccl)'
fallback='^(libstdc\+\+\.so|libgcc_s\.so)'
mkdir -p "$out/lib/fallback"
for bin in "$out"/bin/*; do
  ldd "$bin" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ "$name" =~ $skip ]]; then continue; fi
  if [[ "$name" =~ $fallback ]]; then cp -L "$path" "$out/lib/fallback/$name"; continue; fi
  cp -L "$path" "$out/lib/$name"
done
# The newest GLIBCXX version the build's libstdc++ provides: the run wrapper
# keeps the target's own libstdc++ when it has it.
grep -ao 'GLIBCXX_3\.4\.[0-9]*' "$out/lib/fallback/libstdc++.so.6" | sort -t. -k3 -n | tail -1 \
  > "$out/lib/fallback/glibcxx" || true

cat > "$out/run" <<'RUN'
#!/usr/bin/env bash
# bundle/run PROGRAM [ARGS...]: runs bundle/bin/PROGRAM with the bundled
# libraries and the target's cuBLAS, cuBLASLt and NCCL.
here=$(cd "$(dirname "$0")" && pwd)
prog=$1
shift
dirs="$here/lib"
# Libraries packed as NAME.xz (the large ones: OpenBLAS, ICU's data): unpacked
# once, next to the pack when bundle/lib is writable, else under $TMPDIR.
packed=$(ls "$here"/lib/*.xz 2>/dev/null)
if [[ -n "$packed" ]]; then
  unpack=$here/lib
  [[ -w $unpack ]] || unpack=${TMPDIR:-/tmp}/m6-bundle-lib-$(id -u)-$(cat "$here/COMMIT" 2>/dev/null)
  mkdir -p "$unpack"
  for p in $packed; do
    so=$unpack/$(basename "${p%.xz}")
    [[ -s $so ]] && continue
    if command -v xz > /dev/null; then
      xz -dc "$p" > "$so.tmp"
    else
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$p" "$so.tmp"
    fi && mv "$so.tmp" "$so" || { echo "bundle/run: cannot unpack $p" >&2; exit 1; }
  done
  [[ $unpack == "$here/lib" ]] || dirs="$unpack:$dirs"
fi
# libstdc++: the target's when it is at least as new as the build's.
need=$(cat "$here/lib/fallback/glibcxx" 2>/dev/null)
sys=$(ldconfig -p 2>/dev/null | awk '$1 == "libstdc++.so.6" {print $NF; exit}')
if [[ -z "$sys" || ( -n "$need" && -z $(grep -ao "$need" "$sys" 2>/dev/null | head -1) ) ]]; then
  dirs="$dirs:$here/lib/fallback"
fi
# cuBLAS/cuBLASLt/NCCL: the loader's cache, the CUDA toolkit, then the nvidia
# wheels of the Python on the PATH (PyTorch's).
find_lib() {
  local name=$1 p
  p=$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n {print $NF; exit}')
  if [[ -n "$p" ]]; then return 0; fi
  for d in ${CUDA_HOME:-/usr/local/cuda}/lib64 ${CUDA_HOME:-/usr/local/cuda}/targets/x86_64-linux/lib \
           /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu; do
    if [[ -e "$d/$name" ]]; then echo "$d"; return 0; fi
  done
  local roots
  roots=$(python3 -c 'import nvidia, sys; print(" ".join(nvidia.__path__))' 2>/dev/null)
  for r in $roots; do
    p=$(find "$r" -name "$name" 2>/dev/null | head -1)
    if [[ -n "$p" ]]; then dirname "$p"; return 0; fi
  done
  echo "bundle/run: $name not found (CUDA toolkit or PyTorch's nvidia wheels)" >&2
  return 1
}
# Found once per bundle and machine (each search may start python3 and a
# find over the wheels), then read from the cache.
# The cache is named after the machine: a bundle run here before it travels
# must not hand this machine's paths to the next.
cache=$here/lib/.cuda_dirs.$(hostname 2>/dev/null || echo host)
[[ -w $here/lib ]] || cache=${TMPDIR:-/tmp}/m6-bundle-cuda-dirs-$(id -u)-$(cat "$here/COMMIT" 2>/dev/null)-$(hostname 2>/dev/null)
if [[ -f $cache ]]; then
  cuda_dirs=$(cat "$cache")
else
  cuda_dirs="" found=1
  for lib in libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    d=$(find_lib "$lib") || found=0
    if [[ -n "$d" && ":$cuda_dirs:" != *":$d:"* ]]; then cuda_dirs="${cuda_dirs:+$cuda_dirs:}$d"; fi
  done
  # cached only when every library was found (else the next run says again which is missing)
  ((found)) && { echo "$cuda_dirs" > "$cache.$$" 2>/dev/null && mv "$cache.$$" "$cache" 2>/dev/null; }
fi
[[ -n $cuda_dirs ]] && dirs="$dirs:$cuda_dirs"
export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/bin/$prog" "$@"
RUN
chmod +x "$out/run"

# Every library must resolve from bundle/lib, glibc, or (on the target) the
# CUDA libraries left out above.
missing=$(LD_LIBRARY_PATH="$out/lib:$out/lib/fallback" ldd "$out/bin/m6train" | grep "not found" |
  grep -Ev 'libcublas|libnccl' || true)
if [[ -n "$missing" ]]; then
  echo "gpu-bundle: m6train has unresolved libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
# Smaller to carry: binaries without symbols; libraries over 8 MB (OpenBLAS
# with its kernels for every CPU, ICU's data) packed with xz, which bundle/run
# unpacks on first use (xz, or Python's lzma where xz is missing).
strip --strip-unneeded "$out"/bin/*
for lib in "$out"/lib/*.so*; do
  if (($(stat -c %s "$lib") > 8 * 1024 * 1024)); then
    xz -T"$jobs" -6 "$lib"
  fi
done

echo "bundle: $out"
du -sh "$out"
ls "$out/lib"
total=$(du -sm "$out" | cut -f1)
if ((total >= 60)); then
  echo "gpu-bundle: the bundle is ${total} MB, over the 60 MB limit" >&2
  exit 1
fi
