#!/usr/bin/env bash
# The multi-rank unit tests -- the hidden [mpi] cases of test_parallel -- under
# mpirun --oversubscribe: the MPI communicator (exact results of every
# collective, half-precision reductions, uneven and empty all-to-all blocks,
# process-grid communicators, gradient buckets, timeouts) on 2, 3 and 4 ranks,
# and expert-parallel MoE layers (outputs and gradients equal to the layer
# with every expert local) on 2 and 4. Then the collective timeout: a rank 30 s
# late at a barrier, an all-reduce or the communicator split makes the
# watchdog of the waiting ranks (timeout_s 0.3) abort the job at once, with a
# non-zero exit, a message naming the step, the collective, the label and the
# communicator, and no process left behind.
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

for op in barrier all_reduce split; do
  echo "=== 3 ranks: [mpi_timeout] in $op"
  err=$(mktemp)
  t0=$(date +%s)
  rc=0
  timeout 120 mpirun --oversubscribe --bind-to none -np 3 -x M6_TEST_TIMEOUT_OP="$op" "$bin" \
    "[mpi_timeout]" > /dev/null 2> "$err" || rc=$?
  elapsed=$(($(date +%s) - t0))
  fail() { echo "FAILED ($op): $*"; tail -20 "$err"; rm -f "$err"; exit 1; }
  ((rc != 0 && rc != 124)) || fail "exit $rc, want the abort's non-zero exit"
  # The late rank sleeps 30 s: the abort must not have waited for it.
  ((elapsed < 25)) || fail "the job took ${elapsed}s to end (timeout_s 0.3)"
  grep -Eq "\[rank [02]/3\] error: step 7: timed out after (0\.[3-9]|[1-9][0-9]*\.[0-9]) s waiting in $op \(test $op\) on the world communicator \(3 ranks\)" "$err" ||
    fail "no timeout message naming the step, $op, its label and the communicator"
  # Open MPI prints "MPI_ABORT was invoked" from the first aborting rank; when
  # two ranks abort at once mpirun may end the second while its help text is
  # in flight (ORTE_ERROR_LOG ... show_help.c), so the watchdog's own line,
  # printed just before its MPI_Abort, also counts.
  grep -Eq "MPI_ABORT was invoked|aborting the job \(parallel.timeout_s" "$err" ||
    fail "the job did not end by MPI_Abort"
  if pgrep -f "$bin" > /dev/null; then fail "processes left behind: $(pgrep -f "$bin")"; fi
  echo "ok: $op timed out, job ended in ${elapsed}s: $(grep -m1 'timed out' "$err")"
  rm -f "$err"
done
