// What an LLM API response says it used, read as its bytes pass: never a body buffered whole.
//
// JsonScanner is a streaming JSON tokenizer (RFC 8259) that keeps only the path to the current
// value (object keys up to kMaxKey bytes; deeper than kMaxDepth is an error) and hands each
// scalar to a callback. UsageReader understands, on top of it, the usage objects of
// OpenAI-compatible APIs (chat/completions, completions, embeddings: `usage.prompt_tokens`,
// `prompt_tokens_details.cached_tokens`, `completion_tokens`,
// `completion_tokens_details.reasoning_tokens`; the Responses API: `response.usage` /
// `usage.input_tokens`, `input_tokens_details.cached_tokens`, `output_tokens`,
// `output_tokens_details.reasoning_tokens`) and of Anthropic's messages API (`usage` or
// `message.usage`: `input_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens`,
// `output_tokens`), in a plain JSON body or in the `data:` lines of a server-sent event stream
// (each event one JSON document). Every usage object seen sets the fields it has, in order:
// the last value of a field wins (an OpenAI stream's final chunk, with or without `choices`;
// Anthropic's cumulative `message_delta` replaces `message_start`'s output count, never adds to
// it). A document that does not parse to its end (cut, malformed, over a cap) contributes
// nothing and is counted.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shunt::agent::cost {

class JsonScanner {
 public:
  static constexpr size_t kMaxDepth = 64;  // deeper containers are skipped, not read
  static constexpr size_t kMaxKey = 64;      // longer keys are kept as "overlong" (match nothing)
  static constexpr size_t kMaxString = 128;  // string values handed over: longer ones are cut
  enum class Kind { kString, kNumber, kTrue, kFalse, kNull };
  struct Level {
    bool array = false;
    std::string key;  // of the value being read in this object ("" in an array)
    bool overlong = false;
  };
  // path: the containers from the root down to the value's ("usage", then "cached_tokens"...);
  // text: a string's decoded bytes (cut at kMaxString: `cut` set), a number's text.
  using OnScalar = std::function<void(const std::vector<Level>& path, Kind kind,
                                      std::string_view text, bool cut)>;

  // `report_depth`: scalars deeper than this many containers are not handed over, and their
  // strings (and the keys at those depths) not kept: read at the speed of skipping them.
  explicit JsonScanner(OnScalar on_scalar, size_t report_depth = kMaxDepth)
      : on_scalar_(std::move(on_scalar)), report_depth_(report_depth) {
    path_.reserve(8);
  }
  // Bytes of the document, in any slices. After an error the rest is ignored.
  void Feed(std::string_view data);
  // The document ended (the body, or the event): whether it was one whole JSON value.
  bool Finish();
  // Ready for another document (its buffers kept).
  void Reset();
  bool failed() const { return state_ == State::kError; }
  bool complete() const { return state_ == State::kDone; }

 private:
  enum class State {
    kValue,          // a value is expected (the root, after ':' or ',' in an array, after '[')
    kFirstKey,       // after '{': a key or '}'
    kKey,            // after ',' in an object: a key
    kColon,
    kAfterValue,     // ',' or the container's end
    kString,
    kEscape,
    kUnicode,
    kNumber,
    kLiteral,
    kDone,           // the root value ended: only whitespace may follow
    kSkip,           // inside a container deeper than kMaxDepth: brackets and strings matched
    kSkipString,
    kSkipEscape,
    kError,
  };
  // Where in a number's grammar the last byte left it.
  enum class Number { kMinus, kZero, kInt, kDot, kFrac, kE, kESign, kExp, kEnd, kBad };
  void Fail() { state_ = State::kError; }
  // What of the string being read is kept: nothing deeper than report_depth_.
  size_t Cap() const {
    return path_.size() > report_depth_ ? 0 : in_key_ ? kMaxKey : kMaxString;
  }
  void BeginValue(char c);
  void EndScalar(Kind kind);
  void EndValue();  // a value (scalar or container) ended at the current level

  OnScalar on_scalar_;
  size_t report_depth_;
  State state_ = State::kValue;
  std::vector<Level> path_;
  bool in_key_ = false;      // the string being read is a key
  bool array_open_ = false;  // just after '[': ']' may end it
  std::string text_;     // the string, number or literal being read (capped)
  bool cut_ = false;
  int unicode_left_ = 0;
  uint32_t unicode_ = 0;
  std::string_view literal_;  // "true", "false", "null": the one being read
  size_t literal_at_ = 0;
  Number number_ = Number::kInt;
  uint64_t skip_depth_ = 0;
};

// Token counts as an API reported them: unset when the response never said.
struct Usage {
  std::optional<uint64_t> input;           // prompt_tokens / input_tokens (Anthropic: uncached)
  std::optional<uint64_t> input_cached;    // *_tokens_details.cached_tokens: part of `input`
  std::optional<uint64_t> cache_read;      // Anthropic cache_read_input_tokens: not in `input`
  std::optional<uint64_t> cache_creation;  // Anthropic cache_creation_input_tokens
  std::optional<uint64_t> output;          // completion_tokens / output_tokens (with reasoning)
  std::optional<uint64_t> reasoning;       // *_tokens_details.reasoning_tokens: part of `output`
  bool any() const {
    return input || input_cached || cache_read || cache_creation || output || reasoning;
  }
  // What is billed, each token once: input not read from cache, input read from cache, cache
  // writes, output (without reasoning when `reasoning_apart`), reasoning.
  struct Billable {
    uint64_t input = 0, cached_input = 0, cache_creation = 0, output = 0, reasoning = 0;
  };
  Billable Bill(bool reasoning_apart) const;
};

class UsageReader {
 public:
  enum class Format { kJson, kEventStream };
  explicit UsageReader(Format format);
  UsageReader(const UsageReader&) = delete;
  UsageReader& operator=(const UsageReader&) = delete;

  void Feed(std::string_view body);
  void Finish();  // the body ended (a stream's last event without its blank line counts too)

  const Usage& usage() const { return usage_; }
  // The model the response names (`model`, `message.model`, `response.model`; "" none).
  const std::string& model() const { return model_; }
  // JSON documents read whole (events without a usage object, looked through, included).
  uint64_t documents() const { return documents_; }
  uint64_t bad_documents() const { return bad_; }        // cut, malformed or over a cap
  bool done() const { return done_; }                    // the stream said [DONE]

 private:
  void StartDocument();
  void StartScanner();
  void EndDocument();
  bool MayCarryUsage(std::string_view event) const;
  void OnScalar(const std::vector<JsonScanner::Level>& path, JsonScanner::Kind kind,
                std::string_view text, bool cut);
  void FeedEventBytes(std::string_view data);

  const Format format_;
  std::optional<JsonScanner> doc_;
  Usage usage_, pending_;  // pending_: of the document being read (applied once it is whole)
  std::string model_, pending_model_;
  bool doc_has_bytes_ = false;
  bool in_doc_ = false;  // a document is being read
  // Event stream: an event's data is kept (up to kEventBuffer) and parsed only if it may carry
  // usage; a larger one is parsed as it comes.
  static constexpr size_t kEventBuffer = 8 << 10;
  std::string event_;
  bool event_streaming_ = false;
  uint64_t documents_ = 0, bad_ = 0;
  bool done_ = false;
  // Event stream: where in a line we are.
  enum class Line { kStart, kField, kData, kSkip } line_ = Line::kStart;
  std::string field_;  // the field name read so far (capped: "data" is all that matters)
  bool after_cr_ = false;
  bool data_lines_ = false;  // the event has had a data line (a second one adds a "\n")
  bool data_space_ = false;  // skipping the one space after "data:"
  std::string data_start_;   // the first bytes of the event's data, to see "[DONE]"
  int bom_ = 0;              // bytes of a byte order mark skipped at the start (3: done)
};

// What a request body says (OpenAI-compatible and Anthropic APIs alike): its top-level `model`
// and whether it asks for a stream.
class RequestReader {
 public:
  RequestReader();
  void Feed(std::string_view body) { scanner_.Feed(body); }
  void Finish() { whole_ = scanner_.Finish(); }
  const std::string& model() const { return model_; }  // "" none, or the body was not JSON
  bool stream() const { return stream_; }
  bool whole() const { return whole_; }

 private:
  JsonScanner scanner_;
  std::string model_;
  bool stream_ = false;
  bool whole_ = false;
};

}  // namespace shunt::agent::cost
