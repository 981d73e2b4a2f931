#!/usr/bin/env bash
# The multi-rank unit tests -- the hidden [mpi] cases of test_parallel -- under
# mpirun --oversubscribe: the MPI communicator (exact results of every
# collective, half-precision reductions, uneven and empty all-to-all blocks,
# process-grid communicators, gradient buckets, timeouts) on 2, 3 and 4 ranks,
# and expert-parallel MoE layers (outputs and gradients equal to the layer
# with every expert local) on 2 and 4.
set -euo pipefail
: "${M6_BUILD_DIR:?}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
bin="$M6_BUILD_DIR/tests/test_parallel"
[[ -x $bin ]] || { echo "FAILED: $bin not built"; exit 1; }
for np in 2 3 4; do
  tags='[mpi]'
  ((np == 3)) && tags='[mpi]~[moe]'  # the MoE layer test needs ranks dividing 4 experts
  echo "=== $np ranks: $tags"
  timeout 300 mpirun --oversubscribe --bind-to none -np "$np" "$bin" "$tags"
done
