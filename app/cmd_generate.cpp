// `m6train generate`: sample text from the latest checkpoint of a run with the
// KV-cache inference path (core/infer). The prompt's bytes are the first
// tokens (byte-level vocabulary); the prompt and the sample go to stdout as
// UTF-8, invalid sequences replaced by U+FFFD; a summary goes to stderr.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "app/commands.h"
#include "core/infer/generate.h"
#include "core/infer/kv_model.h"
#include "core/infer/run_checkpoint.h"
#include "core/infer/utf8.h"
#include "core/util/error.h"

namespace m6 {

CLI::App* add_generate_command(CLI::App& app, GenerateArgs& a) {
  auto* c = app.add_subcommand("generate", "sample text from a run's latest checkpoint");
  c->add_option("--run-dir", a.run_dir, "the run directory")->required();
  c->add_option("--prompt", a.prompt, "text the sample continues (UTF-8; default: a newline)");
  c->add_option("--tokens", a.tokens, "tokens (bytes) to generate (default 200)")
      ->check(non_negative());
  c->add_option("--temperature", a.temperature, "softmax temperature; 0 = greedy (default 0.8)")
      ->check(non_negative());
  c->add_option("--top-k", a.top_k, "sample among the K most likely tokens; 0 = all (default)")
      ->check(non_negative());
  c->add_option("--seed", a.seed, "sampling seed (default: from the clock, printed)")
      ->check(non_negative());
  c->add_option("--threads", a.threads, "CPU threads (default 1: a decode step is many small ops; more pay off for wide "
                  "models)")
      ->check(non_negative());
  return c;
}

int run_generate(const GenerateArgs& a) {
  // Checked before anything is loaded: a bad prompt is a usage error.
  const size_t bad = invalid_utf8_offset(a.prompt);
  if (bad != std::string::npos)
    throw Error(fmt("--prompt: invalid UTF-8 at byte ", bad, " (0x", std::hex,
                    static_cast<int>(static_cast<unsigned char>(a.prompt[bad])), std::dec,
                    "); pass the prompt as UTF-8 text"),
                ExitCode::Usage);
  if (a.prompt.empty())
    throw Error("--prompt: empty; give at least one character (the default is a newline)",
                ExitCode::Usage);
  RunCheckpoint probe = open_run_checkpoint(a.run_dir);
  if (probe.cfg.model.vocab_size != 256)
    throw ConfigError(fmt(probe.dir, ": model.vocab_size is ", probe.cfg.model.vocab_size,
                          "; generate decodes byte-level models (vocab_size 256) only"));
  auto w = load_run_weights(a.run_dir, a.threads);
  KvModel model(w->ckpt.cfg.model, *w->be, w->chunks);

  SampleOptions o;
  o.temperature = a.temperature;
  o.top_k = a.top_k;
  o.seed = a.seed >= 0 ? static_cast<uint64_t>(a.seed)
                       : static_cast<uint64_t>(
                             std::chrono::system_clock::now().time_since_epoch().count());
  std::vector<int32_t> prompt(a.prompt.begin(), a.prompt.end());
  for (int32_t& t : prompt) t = static_cast<unsigned char>(t);

  std::fwrite(a.prompt.data(), 1, a.prompt.size(), stdout);
  std::fflush(stdout);
  Utf8Sanitizer text;
  std::string out;
  const GenerateStats st = generate(model, prompt, a.tokens, o, [&](int32_t tok) {
    out.clear();
    text.feed(static_cast<uint8_t>(tok), out);
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
  });
  out.clear();
  text.finish(out);
  out += "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  std::fprintf(stderr,
               "generate: %s (step %lld), seed %llu, temperature %g, top-k %d: %d prompt tokens, "
               "%d generated in %.2f s (%.0f tokens/s)%s\n",
               w->ckpt.dir.c_str(), static_cast<long long>(w->ckpt.step),
               static_cast<unsigned long long>(o.seed), o.temperature, o.top_k, st.prompt_tokens,
               st.generated, st.seconds, st.seconds > 0 ? (st.prompt_tokens + st.generated) / st.seconds : 0.0,
               st.context_shifts ? fmt(", context shifted ", st.context_shifts, " time(s)").c_str() : "");
  return 0;
}

}  // namespace m6
