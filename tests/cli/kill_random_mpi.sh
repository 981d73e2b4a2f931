#!/usr/bin/env bash
# The kill test of tests/cli/kill_random.sh on a 4-rank job with ep = 2: a
# random rank is killed (at a random moment, or inside a save by a
# failpoint on a random rank) and the job resumed with --resume auto.
# 10 runs of 24 steps keep it under a minute on 2 cores.
KILL_RANKS=4 KILL_RUNS=10 KILL_STEPS=24 exec bash "$(dirname "$0")/kill_random.sh"
