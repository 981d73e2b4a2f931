// The MPI world of the multi-rank unit tests. They are tagged [.mpi] (hidden:
// a plain ctest run skips them) and run by tests/cli/mpi_unit.sh under
// `mpirun -np N test_parallel "[mpi]"`. MPI is initialised on first use and
// finalised at exit, after the communicator (statics die in reverse order).
#pragma once
#include <memory>

#include "core/parallel/comm.h"
#include "core/parallel/mpi_session.h"

namespace m6::test {

inline MpiSession& mpi_session() {
  static MpiSession s;
  static bool started = false;
  if (!started) {
    int argc = 0;
    char** argv = nullptr;
    s.start(&argc, &argv);
    started = true;
  }
  return s;
}

inline Comm& mpi_world() {
  MpiSession& s = mpi_session();
  static std::unique_ptr<Comm> world = s.world();
  return *world;
}

}  // namespace m6::test
