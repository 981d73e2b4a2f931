#include "core/infer/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "core/util/error.h"
#include "core/util/splitmix.h"

namespace m6 {

double SampleRng::uniform() {
  const uint64_t z = splitmix64(state_);
  state_ += kSplitmixGolden;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t sample_token(const float* logits, int V, const SampleOptions& o, SampleRng& rng) {
  M6_CHECK(V > 0, "sample_token: empty vocabulary");
  if (o.temperature <= 0) {
    int best = 0;
    for (int i = 1; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  // Candidates by descending logit, ties to the lower index.
  std::vector<int> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  const int k = o.top_k > 0 ? std::min(o.top_k, V) : V;
  auto by_logit = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  std::vector<double> p(k);
  const double mx = logits[idx[0]];
  double z = 0;
  for (int i = 0; i < k; ++i) z += p[i] = std::exp((logits[idx[i]] - mx) / o.temperature);
  double u = rng.uniform() * z;
  for (int i = 0; i < k; ++i) {
    if (u < p[i]) return idx[i];
    u -= p[i];
  }
  return idx[k - 1];  // rounding left u just above the total
}

GenerateStats generate(KvModel& model, std::vector<int32_t> prompt, int n, const SampleOptions& o,
                       const std::function<void(int32_t)>& on_token) {
  M6_CHECK(!prompt.empty(), "generate: empty prompt");
  const auto t0 = std::chrono::steady_clock::now();
  GenerateStats st;
  const int cap = model.capacity();
  if (static_cast<int>(prompt.size()) > cap) prompt.erase(prompt.begin(), prompt.end() - cap);
  st.prompt_tokens = static_cast<int>(prompt.size());
  std::vector<int32_t> ctx = prompt;
  std::vector<float> logits = model.prefill(ctx);
  const size_t V = logits.size() / ctx.size();
  logits.erase(logits.begin(), logits.end() - static_cast<std::ptrdiff_t>(V));
  SampleRng rng(o.seed);
  for (int i = 0; i < n; ++i) {
    const int32_t tok = sample_token(logits.data(), static_cast<int>(V), o, rng);
    on_token(tok);
    ++st.generated;
    ctx.push_back(tok);
    if (i + 1 == n) break;
    if (model.length() < cap) {
      logits = model.decode(tok);
    } else {
      // Context shift: keep the newest half (the new token included) and recompute it.
      ctx.erase(ctx.begin(), ctx.end() - std::max(1, cap / 2));
      logits = model.prefill(ctx);
      logits.erase(logits.begin(), logits.end() - static_cast<std::ptrdiff_t>(V));
      ++st.context_shifts;
    }
  }
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace m6
