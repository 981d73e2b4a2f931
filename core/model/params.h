// Parameter layout: every tensor has a stable global name (DESIGN.md section 3)
// that decides its initial values, its checkpoint entry and its export name.
// Tensors live in chunks -- the embeddings, one layer set's dense part, one
// expert, the final LayerNorm -- each a contiguous device buffer with its
// gradient and Adam moments beside it. Chunks are the unit of gradient
// buckets, offload and checkpoint entries.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"

namespace m6 {

enum class InitKind { Normal, Zeros, Ones };

struct ParamTensor {
  std::string name;            // global name, e.g. layers.3.moe.experts.5.fc1.weight
  std::vector<int64_t> shape;  // row-major, [out, in] for weights
  size_t offset = 0;           // floats from the start of the chunk
  size_t numel = 0;
  InitKind init = InitKind::Zeros;
  float init_std = 0.0f;
  bool decay = false;          // AdamW weight decay applies (weights, not biases or LayerNorm)
};

enum class ChunkKind { Embedding, Layer, Expert, Head };

struct Chunk {
  std::string name;  // "embed", "layers.3", "layers.3.moe.experts.5", "ln_f"
  ChunkKind kind = ChunkKind::Layer;
  int layer = -1;    // the layer set (Layer, Expert); -1 otherwise
  int expert = -1;   // global expert id (Expert); -1 otherwise
  std::vector<ParamTensor> tensors;
  size_t numel = 0;
  float* param = nullptr;  // buffers of numel floats each: the fp32 master weights,
  float* grad = nullptr;   // gradients (device),
  float* adam_m = nullptr;  // Adam moments
  float* adam_v = nullptr;
  // Granular offload (core/model/offload.h): the master weights and/or the
  // Adam moments may live in the host arena. With a host master the layer
  // computes on `streamed`, a device copy streamed in before use (rounded
  // under bf16/fp16 compute).
  bool adam_on_host = false;
  bool master_on_host = false;
  float* streamed = nullptr;
  // With precision.compute bf16|fp16, the rounded copy of a device-resident
  // param (core/model/mixed_precision.h); null in fp32 and for host masters.
  float* compute = nullptr;

  const ParamTensor& tensor(const std::string& suffix) const;  // by name suffix ("fc1.weight")
  // The fp32 master weights as the device sees them: param, or the streamed
  // copy of a host master.
  float* param_of(const std::string& suffix) const {
    return (master_on_host ? resident_streamed() : param) + tensor(suffix).offset;
  }
  // The weights forward and backward compute with.
  float* weight_of(const std::string& suffix) const {
    return compute ? compute + tensor(suffix).offset : param_of(suffix);
  }
  float* resident_streamed() const;  // `streamed`, checked to be streamed in
  float* grad_of(const std::string& suffix) const { return grad + tensor(suffix).offset; }
};

// Which experts this rank holds (DESIGN.md section 4): EP rank j of ep holds
// experts [j*E/ep, (j+1)*E/ep).
struct ExpertRange {
  int first = 0, count = 0;
};

// The logical layer -> parameter set map of Pseudo-to-Real sharing. With
// sharing.groups = G > 0 the L layers form G groups. A group is made of
// blocks of u consecutive layers: u = moe.every when moe.every >= 2 and
// G < L (a block is every-1 dense layers and one MoE layer, so L must be a
// multiple of every), else u = 1. Block b = l / u belongs to group
// floor(b * G / (L / u)); for u = 1 that is floor(l * G / L).
int sharing_block(const ModelConfig& m);           // u
int layer_group(const ModelConfig& m, int layer);  // the group of layer l (G > 0), else l
// A parameter set is one position of a group's block: layer l uses set
// group(l) * u + l % u, so a set holds layers of one kind. G * u sets in all
// (L without sharing).
int layer_set(const ModelConfig& m, int layer);
int num_layer_sets(const ModelConfig& m);
// The first logical layer that uses a set; the set's tensors carry its name.
int first_layer_of_set(const ModelConfig& m, int set);

// Describes every chunk this rank holds (no memory yet).
std::vector<Chunk> plan_chunks(const ModelConfig& m, ExpertRange experts);

// Visits every tensor under its logical name, in export order: embeddings,
// then for each logical layer l the chunks of its set (dense part, then
// experts) with "layers.{first layer of the set}." renamed "layers.{l}.",
// then ln_f. Shared sets are visited once per logical layer that uses them.
void for_each_logical_tensor(
    const ModelConfig& m, const std::vector<Chunk>& chunks,
    const std::function<void(const Chunk&, const ParamTensor&, const std::string&)>& visit);

// Total parameters of the full model: unique (stored once) and logical (every
// logical layer counted, as the export lists them).
struct ParamCounts {
  int64_t unique = 0, logical = 0, active_per_token = 0;
};
ParamCounts count_params(const ModelConfig& m);

// Fills `host` (numel floats) with the chunk's initial values: N(0, std)
// from a counter-based generator keyed by (seed, tensor name, element index),
// so a tensor's values never depend on the rank or layout that creates it.
void init_chunk_host(const Chunk& c, uint64_t seed, float* host);

}  // namespace m6
