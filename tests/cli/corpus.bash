# The text the CLI tests train on besides their own choices: license texts
# from Debian's base-files package (present on every Debian machine), fixed
# for the life of a release. Not the repository's README: a test's numbers
# must not move when documentation is edited -- the equivalence tests compare
# two summation orders with a tolerance, and a different corpus can put one
# router decision on a near-tie that then flips (seen: a README edit made
# cli.mpi_equivalence fail at step 30 of 30 with the loads still equal).
# shellcheck shell=bash
M6_CORPUS=(/usr/share/common-licenses/GPL-2 /usr/share/common-licenses/LGPL-2.1
           /usr/share/common-licenses/GFDL-1.3)
for f in "${M6_CORPUS[@]}"; do
  [[ -f $f ]] || { echo "corpus.bash: $f is missing (Debian package base-files)" >&2; exit 1; }
done
unset f
