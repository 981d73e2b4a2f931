// Test-only fault injection. The CLI tests of checkpoints, preemption and
// numerical faults (tests/cli/ckpt_*.sh, kill_*.sh) need faults at exact
// places -- a NaN gradient at step 7 on rank 1, a kill -9 between writing a
// checkpoint's files and renaming its directory -- that an outside `kill`
// can only hit by luck. They are named in the environment variable
//   M6_FAILPOINTS="name@step[@rank],..."   e.g. "nan_grad@7@1,kill_save_files@12"
// (rank omitted: every rank). `step` counts completed steps: nan_grad@5 poisons
// the step that completes as step 6 (the console's "step 6/N"), signal@15
// stops at the boundary after 15 steps, kill_save_files@12 dies in the save
// of step_00000012. Unset, every query is one test of an empty list.
#pragma once
#include <cstdint>

namespace m6 {

enum class Failpoint {
  NanGrad,           // nan_grad: poison one gradient element after backward
  Overflow,          // overflow: one gradient element +inf, as an fp16 overflow leaves it
  NanLoss,           // nan_loss: the step's loss reads as NaN
  SpikeLoss,         // spike_loss: the step's loss reads 100x too high (spike guard tests)
  Signal,            // signal: raise(SIGTERM) at the start of the step
  SignalSave,        // signal_save: raise(SIGTERM) inside the save, after this rank's files
  SlowSave,          // slow_save: sleep 1 s inside the save, before this rank's files (the
                     // window in which a test sends a real signal during the write)
  KillStep,          // kill_step: raise(SIGKILL) at the start of the step
  KillSaveFiles,     // kill_save_files: SIGKILL after this rank's files of the step's save
  KillSaveManifest,  // kill_save_manifest: after the manifest, before the directory rename
  KillSaveRename,    // kill_save_rename: after the rename, before `latest` is replaced
  KillSaveLatest,    // kill_save_latest: after `latest`, before older checkpoints are pruned
};

// Whether M6_FAILPOINTS names `f` for this step and rank. Throws ConfigError
// for a malformed M6_FAILPOINTS (parsed once, on first use).
bool failpoint_hit(Failpoint f, int64_t step, int rank);

// raise(SIGKILL) when failpoint_hit: the process dies as under kill -9.
void failpoint_kill(Failpoint f, int64_t step, int rank);

}  // namespace m6
