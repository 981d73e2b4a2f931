#include "core/parallel/grid.h"

#include <sstream>

#include "core/util/error.h"

namespace m6 {

GridLayout grid_layout(int world, int rank, int ep) {
  if (world < 1 || rank < 0 || rank >= world)
    throw Error(fmt("process grid: rank ", rank, " outside a world of ", world));
  if (ep < 1 || world % ep != 0)
    throw ConfigError(fmt("parallel.ep (", ep, ") must divide the world size (", world,
                          "); allowed: a divisor of ", world));
  GridLayout g;
  g.world = world;
  g.rank = rank;
  g.ep = ep;
  g.ep_group = rank / ep;
  g.ep_rank = rank % ep;
  g.edp_size = world / ep;
  g.edp_rank = rank / ep;
  return g;
}

std::string describe_grid(const GridLayout& g, int experts) {
  std::ostringstream os;
  os << "world " << g.world << ", ep " << g.ep << ": EP groups";
  for (int grp = 0; grp < g.world / g.ep; ++grp) {
    os << " {";
    for (int j = 0; j < g.ep; ++j) os << (j ? "," : "") << grp * g.ep + j;
    os << "}";
  }
  os << ", expert-DP groups";
  for (int j = 0; j < g.ep; ++j) {
    os << " {";
    for (int grp = 0; grp < g.world / g.ep; ++grp) os << (grp ? "," : "") << grp * g.ep + j;
    os << "}";
  }
  if (experts > 0) {
    const int per = experts / g.ep;
    os << "; EP rank j holds experts [" << per << "j, " << per << "j+" << per << ") of " << experts;
  }
  return os.str();
}

ProcessGrid::ProcessGrid(Comm& world, int ep)
    : world_(world), layout_(grid_layout(world.size(), world.rank(), ep)) {
  ep_ = world_.split(layout_.ep_group, layout_.rank);
  ep_->set_role("ep");
  edp_ = world_.split(layout_.ep_rank, layout_.rank);
  edp_->set_role("expert-dp");
  M6_CHECK(ep_->size() == layout_.ep && ep_->rank() == layout_.ep_rank, "EP communicator has ",
           ep_->size(), " ranks (rank ", ep_->rank(), "), expected ", layout_.ep, " (rank ",
           layout_.ep_rank, ")");
  M6_CHECK(edp_->size() == layout_.edp_size && edp_->rank() == layout_.edp_rank,
           "expert-DP communicator has ", edp_->size(), " ranks (rank ", edp_->rank(),
           "), expected ", layout_.edp_size, " (rank ", layout_.edp_rank, ")");
}

}  // namespace m6
