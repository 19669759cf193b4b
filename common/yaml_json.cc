#include "common/yaml_json.h"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/exceptions.h"
#include "yaml-cpp/mark.h"
#include "yaml-cpp/parser.h"

namespace shunt {
namespace {

using Json = nlohmann::json;

bool IsIdentifier(absl::string_view s) {
  if (s.empty() || absl::ascii_isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

// YAML 1.2 core schema resolution of a plain scalar (nulls are resolved by yaml-cpp already).
Json ResolvePlain(const std::string& s) {
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  if (s.empty()) return s;
  static const std::regex kInt("[-+]?[0-9]+");
  static const std::regex kFloat("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
  if (s.size() <= 64 && std::regex_match(s, kInt)) {
    int64_t i;
    if (absl::SimpleAtoi(s, &i)) return i;
    uint64_t u;
    if (absl::SimpleAtoi(s, &u)) return u;
  }
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
    const int base = s[1] == 'x' ? 16 : 8;
    bool digits = true;
    for (size_t i = 2; i < s.size(); ++i) {
      const char c = s[i];
      digits = digits && (base == 16 ? absl::ascii_isxdigit(static_cast<unsigned char>(c))
                                     : (c >= '0' && c <= '7'));
    }
    if (digits && s.size() <= 24) {
      errno = 0;
      const unsigned long long v = std::strtoull(s.c_str() + 2, nullptr, base);
      if (errno == 0) return static_cast<uint64_t>(v);
    }
  }
  if (s.size() <= 64 && std::regex_match(s, kFloat)) {
    errno = 0;
    const double d = std::strtod(s.c_str(), nullptr);
    if (errno == 0 && std::isfinite(d)) return d;
  }
  return s;  // .inf/.nan have no JSON form: left as text
}

// Builds one document from yaml-cpp's parser events. Every check happens while parsing, so a
// hostile document costs at most its budget.
class DocumentBuilder : public YAML::EventHandler {
 public:
  DocumentBuilder(size_t& budget, const YamlLimits& limits) : budget_(budget), limits_(limits) {}

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    Put(mark, Json(nullptr), anchor, 1);
  }
  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& value) override {
    if (!status_.ok()) return;
    if (!IsValidUtf8(value)) {
      std::optional<JsonPathScope> scope;
      EnterNext(scope);
      Fail(path_.Error("invalid UTF-8"));
      return;
    }
    // Keys stay strings whatever they look like ("80": ..., true: ... are keys, not values).
    const bool is_key =
        !frames_.empty() && frames_.back().node->is_object() && frames_.back().want_key;
    Json v = limits_.typed_scalars && tag == "?" && !is_key ? ResolvePlain(value) : Json(value);
    Put(mark, std::move(v), anchor, 1 + value.size());
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (!status_.ok()) return;
    auto it = anchors_.find(anchor);
    if (it == anchors_.end()) {
      std::optional<JsonPathScope> scope;
      EnterNext(scope);
      Fail(path_.Error("an alias may not refer to a node that contains it"));
      return;
    }
    Put(mark, Json(it->second.first), YAML::NullAnchor, it->second.second);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    Open(mark, Json::array(), anchor);
  }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    Open(mark, Json::object(), anchor);
  }
  void OnSequenceEnd() override { Close(); }
  void OnMapEnd() override { Close(); }

  const absl::Status& status() const { return status_; }
  Json& root() { return root_; }
  // Where the document's root node starts (null before any event).
  const YAML::Mark& root_mark() const { return root_mark_; }

 private:
  struct Frame {
    Json* node;
    YAML::anchor_t anchor;
    size_t budget_at_open;
    size_t next_index = 0;  // arrays
    bool want_key = true;   // objects: the next node is a key, else a value
    std::string key;        // objects: the key of the value being read
  };

  // Enters the path of the node the next event places (used for errors only); nothing for a key.
  void EnterNext(std::optional<JsonPathScope>& scope) {
    if (frames_.empty()) return;
    const Frame& top = frames_.back();
    if (top.node->is_array()) {
      scope.emplace(path_, top.next_index);
    } else if (!top.want_key) {
      scope.emplace(path_, top.key);
    }
  }

  bool Charge(size_t cost) {
    if (cost > budget_) {
      Fail(path_.Error(limits_.max_expanded == 0
                           ? "YAML aliases expand to more than twice the size of the input"
                           : absl::StrCat("YAML aliases expand to more than ", limits_.max_expanded,
                                          " nodes and bytes")));
      return false;
    }
    budget_ -= cost;
    return true;
  }

  // Stores `v` where the parser is; returns where it went, or nullptr if it was a key or failed.
  Json* Place(const YAML::Mark& mark, Json&& v) {
    if (frames_.empty()) {
      root_ = std::move(v);
      root_mark_ = mark;
      return &root_;
    }
    Frame& top = frames_.back();
    if (top.node->is_array()) {
      ++top.next_index;
      top.node->push_back(std::move(v));
      return &top.node->back();
    }
    if (top.want_key) {
      if (!v.is_string()) {
        Fail(path_.Error("a mapping key must be a plain string"));
        return nullptr;
      }
      top.key = std::move(v.get_ref<std::string&>());
      if (top.node->contains(top.key)) {
        JsonPathScope scope(path_, absl::string_view(top.key));
        Fail(path_.Error("duplicate key"));
        return nullptr;
      }
      top.want_key = false;
      return nullptr;
    }
    top.want_key = true;
    Json& slot = (*top.node)[top.key];
    slot = std::move(v);
    return &slot;
  }

  void Put(const YAML::Mark& mark, Json&& v, YAML::anchor_t anchor, size_t cost) {
    if (!status_.ok() || !Charge(cost)) return;
    if (anchor != YAML::NullAnchor) anchors_[anchor] = {v, cost};
    Place(mark, std::move(v));
  }

  void Open(const YAML::Mark& mark, Json&& container, YAML::anchor_t anchor) {
    if (!status_.ok()) return;
    if (frames_.size() >= limits_.max_depth) {
      Fail(path_.Error(absl::StrCat("nested deeper than ", limits_.max_depth, " levels")));
      return;
    }
    const size_t budget_at_open = budget_;
    if (!Charge(1)) return;
    if (!frames_.empty()) {
      Frame& top = frames_.back();
      if (top.node->is_array()) {
        path_.PushIndex(top.next_index);
      } else if (!top.want_key) {
        path_.PushKey(top.key);  // stable: `top` stays in the deque until after this one closes
      } else {
        Fail(path_.Error("a mapping key must be a plain string"));
        return;
      }
    }
    Json* node = Place(mark, std::move(container));
    frames_.push_back(Frame{node, anchor, budget_at_open, 0, true, {}});
  }

  void Close() {
    if (!status_.ok()) return;
    Frame& done = frames_.back();
    if (done.anchor != YAML::NullAnchor) {
      anchors_[done.anchor] = {*done.node, done.budget_at_open - budget_};
    }
    frames_.pop_back();
    if (!frames_.empty()) path_.Pop();
  }

  void Fail(absl::Status s) {
    if (status_.ok()) status_ = std::move(s);
  }

  size_t& budget_;  // nodes + scalar bytes still allowed, shared by the documents of one text
  const YamlLimits& limits_;
  Json root_;
  YAML::Mark root_mark_ = YAML::Mark::null_mark();
  std::deque<Frame> frames_;  // open containers (deque: references stay valid)
  std::map<YAML::anchor_t, std::pair<Json, size_t>> anchors_;  // finished anchored nodes, cost
  JsonPath path_{""};
  absl::Status status_;
};

absl::Status YamlSyntaxError(const YAML::Mark& mark, absl::string_view what) {
  if (mark.is_null()) return absl::InvalidArgumentError(absl::StrCat("YAML syntax error: ", what));
  return absl::InvalidArgumentError(absl::StrCat("YAML syntax error at line ", mark.line + 1,
                                                 ", column ", mark.column + 1, ": ", what));
}

absl::StatusOr<std::vector<Json>> Convert(absl::string_view text, const YamlLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "YAML text is ", text.size(), " bytes; at most ", limits.max_bytes, " are allowed"));
  }
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // UTF-8 byte order mark
  size_t budget = limits.max_expanded != 0 ? limits.max_expanded : 2 * text.size() + 1024;
  std::istringstream in{std::string(text)};
  YAML::Parser parser(in);
  std::vector<Json> docs;
  std::optional<int> previous_pos;  // where the previous document's root started
  for (size_t index = 0;; ++index) {
    DocumentBuilder doc(budget, limits);
    try {
      if (!parser.HandleNextDocument(doc)) break;
    } catch (const YAML::Exception& e) {
      return YamlSyntaxError(e.mark, e.msg);  // yaml-cpp's what() repeats the mark
    }
    // yaml-cpp 0.7 hands back a document at the same position again on a stray token (the
    // LoadAll bug): that is a syntax error, not another document.
    if (!doc.root_mark().is_null()) {
      if (previous_pos && *previous_pos == doc.root_mark().pos) {
        return YamlSyntaxError(doc.root_mark(), "unexpected character");
      }
      previous_pos = doc.root_mark().pos;
    }
    if (index >= limits.max_documents) {
      return absl::OutOfRangeError(
          absl::StrCat("more than ", limits.max_documents, " YAML documents"));
    }
    if (!doc.status().ok()) {
      if (limits.max_documents == 1) return doc.status();
      return absl::InvalidArgumentError(
          absl::StrCat("document ", docs.size() + 1, ": ", doc.status().message()));
    }
    if (!doc.root().is_null()) docs.push_back(std::move(doc.root()));
  }
  return docs;
}

}  // namespace

std::string JsonPath::ToString() const {
  std::string out;
  for (const auto& part : parts_) {
    if (const size_t* index = std::get_if<size_t>(&part)) {
      absl::StrAppend(&out, "[", *index, "]");
    } else {
      absl::string_view key = std::get<absl::string_view>(part);
      if (IsIdentifier(key)) {
        absl::StrAppend(&out, out.empty() ? "" : ".", key);
      } else {
        absl::StrAppend(&out, "[\"", absl::Utf8SafeCHexEscape(Truncate(key)), "\"]");
      }
    }
  }
  return out.empty() ? root_ : out;
}

absl::Status JsonPath::Error(absl::string_view what) const {
  const std::string where = ToString();
  if (where.empty()) return absl::InvalidArgumentError(what);
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

absl::StatusOr<std::vector<Json>> YamlDocumentsToJson(absl::string_view text,
                                                      const YamlLimits& limits) {
  try {
    return Convert(text, limits);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("YAML could not be parsed: ", e.what()));
  } catch (...) {
    return absl::InvalidArgumentError("YAML could not be parsed");
  }
}

}  // namespace shunt
