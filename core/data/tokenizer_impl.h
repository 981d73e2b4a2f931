// Internal to core/data: the tokenizer implementations behind make_tokenizer.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "core/data/tokenizer.h"

namespace m6::detail {

// The split point of GPT-2 text: after the last newline that has a non-space
// character on both sides (0 if there is none).
size_t line_split_point(std::string_view text);

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(const std::string& dir);
std::unique_ptr<Tokenizer> make_spm_tokenizer(const std::string& model_path);

}  // namespace m6::detail
