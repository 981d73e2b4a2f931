// The process grid of DESIGN.md section 4 (Whale's DP+EP). W ranks form W/ep
// expert-parallel (EP) groups of ep consecutive ranks, {g*ep .. g*ep+ep-1};
// EP rank j of a group holds experts [j*E/ep, (j+1)*E/ep). The W/ep ranks
// with the same rank % ep hold the same experts and form an
// expert-data-parallel (expert-DP) group. Dense gradients are all-reduced over
// the world, expert gradients over the expert-DP group, tokens travel inside
// the EP group.
#pragma once
#include <memory>
#include <string>

#include "core/parallel/comm.h"

namespace m6 {

struct GridLayout {
  int world = 1, rank = 0, ep = 1;
  int ep_group = 0;  // rank / ep
  int ep_rank = 0;   // rank % ep: decides the experts
  int edp_size = 1;  // world / ep: ranks holding the same experts
  int edp_rank = 0;  // rank / ep: position in the expert-DP group

  int first_expert(int experts) const { return ep_rank * (experts / ep); }
  int expert_count(int experts) const { return experts / ep; }
};

// Throws ConfigError when ep does not divide world (validate_config reports it
// earlier with the config's location; this guards programmatic use).
GridLayout grid_layout(int world, int rank, int ep);

// One line for the log: "world 4, ep 2: EP groups {0,1} {2,3}, expert-DP
// groups {0,2} {1,3}; EP rank j holds experts [2j, 2j+2) of 4".
std::string describe_grid(const GridLayout& g, int experts);

class ProcessGrid {
 public:
  // Collective over `world`: splits it into this rank's EP and expert-DP
  // communicators. `world` must outlive the grid.
  ProcessGrid(Comm& world, int ep);

  const GridLayout& layout() const { return layout_; }
  Comm& world() { return world_; }
  Comm& ep() { return *ep_; }
  Comm& edp() { return *edp_; }
  CommActivity& activity() { return world_.activity(); }

 private:
  Comm& world_;
  GridLayout layout_;
  std::unique_ptr<Comm> ep_, edp_;
};

}  // namespace m6
