#include "dtu/common/config.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <system_error>

#include "dtu/common/check.hpp"

namespace dtu::common {
namespace {

// Longest rendering of an offending value in an error message, in characters.
constexpr size_t kMaxShownValue = 60;

constexpr std::string_view kDurationExpected =
    "a duration (integer milliseconds or a string like \"250ms\", \"1s\", \"2m\")";

std::string show(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > kMaxShownValue) text = text.substr(0, kMaxShownValue) + "...";
  return text;
}

// A JSON integer that fits int64_t; nullopt for anything else (floats included).
std::optional<int64_t> as_int64(const nlohmann::json& value) {
  if (value.is_number_unsigned()) {
    const auto u = value.get<uint64_t>();
    if (u > uint64_t{std::numeric_limits<int64_t>::max()}) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  return std::nullopt;
}

// "<digits><unit>" with unit ms, s, m or h; nullopt when malformed or beyond milliseconds' range.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text) {
  int64_t count = 0;
  const char* const end = text.data() + text.size();
  const auto [unit_begin, ec] = std::from_chars(text.data(), end, count);
  if (ec != std::errc{} || unit_begin == text.data() || count < 0) return std::nullopt;
  const std::string_view unit(unit_begin, static_cast<size_t>(end - unit_begin));
  int64_t factor = 0;
  if (unit == "ms")
    factor = 1;
  else if (unit == "s")
    factor = 1000;
  else if (unit == "m")
    factor = 60 * 1000;
  else if (unit == "h")
    factor = 60 * 60 * 1000;
  else
    return std::nullopt;
  if (count > std::numeric_limits<int64_t>::max() / factor) return std::nullopt;
  return std::chrono::milliseconds(count * factor);
}

// The line and column (both from 1) of the character at `offset`; offset == text.size() is the
// end of input.
std::pair<size_t, size_t> line_and_column(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  const std::string_view before = text.substr(0, offset);
  const size_t line = 1 + static_cast<size_t>(std::count(before.begin(), before.end(), '\n'));
  const size_t last_newline = before.rfind('\n');
  const size_t column = last_newline == std::string_view::npos ? offset + 1 : offset - last_newline;
  return {line, column};
}

}  // namespace

ConfigReader::ConfigReader(nlohmann::json doc, std::string origin)
    : doc_(std::move(doc)), origin_(std::move(origin)) {
  if (!doc_.is_object()) {
    errors_.push_back(origin_ + ": top level must be a JSON object, got " + std::string(doc_.type_name()));
  }
}

Result<nlohmann::json> load_json_file(const std::string& path) {
  const auto cannot_read = [&path](int err) {
    return Error{Errc::config_error, path + ": cannot read: " + std::generic_category().message(err)};
  };
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) return cannot_read(errno);
  std::string text;
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, file.get())) > 0) text.append(buf, n);
  if (std::ferror(file.get())) return cannot_read(errno);

  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte counts the characters read, the offending one included.
    const auto [line, column] = line_and_column(text, e.byte > 0 ? e.byte - 1 : 0);
    // what() is "[json.exception.parse_error.N] parse error at line L, column C: <why>".
    const std::string_view what = e.what();
    const size_t colon = what.find(": ");
    const std::string_view why = colon == std::string_view::npos ? what : what.substr(colon + 2);
    return Error{Errc::config_error, path + ":" + std::to_string(line) + ":" + std::to_string(column) +
                                         ": invalid JSON: " + std::string(why)};
  } catch (const nlohmann::json::exception& e) {
    // A number beyond double ("1e500") throws out_of_range.406, not parse_error, and has no position.
    const std::string_view what = e.what();
    const size_t bracket = what.find("] ");
    const std::string_view why = bracket == std::string_view::npos ? what : what.substr(bracket + 2);
    return Error{Errc::config_error, path + ": invalid JSON: " + std::string(why)};
  }
}

Result<ConfigReader> ConfigReader::load(const std::string& path) {
  auto doc = load_json_file(path);
  if (!doc.ok()) return doc.error();
  ConfigReader reader(std::move(doc.value()), path);
  if (!reader.ok()) return reader.error();
  return reader;
}

const nlohmann::json* ConfigReader::find(std::string_view key) {
  DTU_CHECK(!key.empty());
  read_keys_.emplace(key);
  const nlohmann::json* node = &doc_;
  size_t begin = 0;
  while (true) {
    const size_t dot = key.find('.', begin);
    const std::string_view part = key.substr(begin, dot == std::string_view::npos ? dot : dot - begin);
    DTU_CHECK(!part.empty());
    if (!node->is_object()) {
      // A top level that is not an object was reported by the constructor.
      if (begin > 0) add_type_error(key.substr(0, begin - 1), "an object", *node);
      return nullptr;
    }
    const auto it = node->find(part);
    if (it == node->end()) return nullptr;
    node = &*it;
    if (dot == std::string_view::npos) return node;
    begin = dot + 1;
  }
}

void ConfigReader::add_type_error(std::string_view key, std::string_view expected,
                                  const nlohmann::json& got) {
  std::string text =
      origin_ + ": key '" + std::string(key) + "': expected " + std::string(expected) + ", got " + show(got);
  // Several dotted keys below one misplaced value would report it once each.
  if (std::find(errors_.begin(), errors_.end(), text) == errors_.end()) errors_.push_back(std::move(text));
}

void ConfigReader::read(std::string_view key, bool& out) {
  const nlohmann::json* value = find(key);
  if (!value) return;
  if (!value->is_boolean()) return add_type_error(key, "true or false", *value);
  out = value->get<bool>();
}

void ConfigReader::read(std::string_view key, std::string& out) {
  const nlohmann::json* value = find(key);
  if (!value) return;
  if (!value->is_string()) return add_type_error(key, "a string", *value);
  out = value->get<std::string>();
}

void ConfigReader::read(std::string_view key, std::vector<std::string>& out) {
  const nlohmann::json* value = find(key);
  if (!value) return;
  if (!value->is_array()) return add_type_error(key, "an array of strings", *value);
  std::vector<std::string> items;
  for (size_t i = 0; i < value->size(); ++i) {
    const nlohmann::json& item = (*value)[i];
    if (!item.is_string()) {
      return add_type_error(std::string(key) + "[" + std::to_string(i) + "]", "a string", item);
    }
    items.push_back(item.get<std::string>());
  }
  out = std::move(items);
}

void ConfigReader::read(std::string_view key, double& out) {
  const nlohmann::json* value = find(key);
  if (!value) return;
  if (!value->is_number()) return add_type_error(key, "a number", *value);
  out = value->get<double>();
}

void ConfigReader::read(std::string_view key, std::chrono::milliseconds& out) {
  const nlohmann::json* value = find(key);
  if (!value) return;
  if (value->is_string()) {
    if (const auto parsed = parse_duration(value->get_ref<const std::string&>())) {
      out = *parsed;
      return;
    }
  } else if (const auto ms = as_int64(*value); ms && *ms >= 0) {
    out = std::chrono::milliseconds(*ms);
    return;
  }
  add_type_error(key, kDurationExpected, *value);
}

void ConfigReader::read_int(std::string_view key, int64_t& out, int64_t min, int64_t max) {
  DTU_CHECK(min <= max);
  const nlohmann::json* value = find(key);
  if (!value) return;
  const auto number = as_int64(*value);
  if (!number || *number < min || *number > max) {
    return add_type_error(key, "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]",
                          *value);
  }
  out = *number;
}

void ConfigReader::read_int(std::string_view key, uint16_t& out, uint16_t min, uint16_t max) {
  int64_t wide = out;
  read_int(key, wide, min, max);
  out = static_cast<uint16_t>(wide);
}

void ConfigReader::reject_unknown_keys() {
  if (doc_.is_object()) collect_unknown(doc_, "");
}

void ConfigReader::collect_unknown(const nlohmann::json& object, const std::string& prefix) {
  for (const auto& [name, value] : object.items()) {
    const std::string key = prefix.empty() ? name : prefix + "." + name;
    // A name with a '.' is never read: a dotted key walks nested objects, so {"tls.key_file": …}
    // only spells the key tls.key_file, and its value would be dropped without a word.
    if (name.find('.') != std::string::npos) {
      std::string text =
          origin_ + ": key '" + key + "': a name with '.' is never read (nest objects instead)";
      if (std::find(errors_.begin(), errors_.end(), text) == errors_.end())
        errors_.push_back(std::move(text));
      continue;
    }
    if (read_keys_.contains(key)) continue;
    const std::string below = key + ".";
    const auto next = read_keys_.lower_bound(below);
    const bool read_below = next != read_keys_.end() && next->starts_with(below);
    if (!read_below) {
      std::string text = origin_ + ": unknown key '" + key + "'";
      if (std::find(errors_.begin(), errors_.end(), text) == errors_.end())
        errors_.push_back(std::move(text));
    } else if (value.is_object()) {
      collect_unknown(value, key);
    }
  }
}

Error ConfigReader::error() const {
  DTU_CHECK(!ok());
  std::string text;
  for (const std::string& e : errors_) {
    if (!text.empty()) text += "; ";
    text += e;
  }
  return Error{Errc::config_error, std::move(text)};
}

std::string Endpoint::to_string() const {
  const std::string port_text = std::to_string(port);
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + port_text;
  return host + ":" + port_text;
}

Result<Endpoint> parse_endpoint(std::string_view text) {
  const auto fail = [text](std::string_view why) {
    return Error{Errc::invalid_argument, "endpoint \"" + std::string(text) + "\": " + std::string(why)};
  };
  std::string_view host;
  std::string_view port;
  if (text.starts_with('[')) {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return fail("missing ']' after the IPv6 address");
    host = text.substr(1, close - 1);
    if (host.empty()) return fail("empty IPv6 address");
    if (text.substr(close + 1, 1) != ":") return fail("expected ':' and a port after ']'");
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return fail("expected host:port or [v6addr]:port");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.empty()) return fail("missing host before ':'");
    if (host.find(':') != std::string_view::npos) {
      return fail("an IPv6 address must be in brackets: [v6addr]:port");
    }
  }
  // A NUL too: every C API that takes the host (inet_pton, getaddrinfo) stops at it, so
  // "10.0.0.1\0x" would reach 10.0.0.1 yet compare unequal to it (a duplicate address unnoticed).
  constexpr std::string_view kBadHostCharacters("[] \t\r\n/\0", 8);
  if (host.find_first_of(kBadHostCharacters) != std::string_view::npos)
    return fail("invalid character in host");
  if (port.empty()) return fail("missing port after ':'");
  uint32_t number = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
  if (ec != std::errc{} || end != port.data() + port.size() || number > 65535) {
    return fail("port must be an integer in [0, 65535]");
  }
  return Endpoint{std::string(host), static_cast<uint16_t>(number)};
}

}  // namespace dtu::common
