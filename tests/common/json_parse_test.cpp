#include "dtu/common/json_parse.hpp"

#include <doctest/doctest.h>

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dtu::common {
namespace {

using nlohmann::json;

// What nlohmann's own parser makes of `text`.
json reference(std::string_view text) {
  return json::parse(text, nullptr, /*allow_exceptions=*/false);
}

// The same verdict and the same value, down to the number types (dump writes 1 and 1.0 apart).
void check_same_as_nlohmann(std::string_view text) {
  INFO("text: ", std::string(text));
  const json fast = parse_json(text);
  const json slow = reference(text);
  REQUIRE(fast.is_discarded() == slow.is_discarded());
  if (slow.is_discarded()) return;
  CHECK(fast == slow);
  CHECK(fast.dump() == slow.dump());
  CHECK(fast.type() == slow.type());
}

TEST_CASE("parse_json reads a device record as nlohmann's parser does") {
  const std::string record =
      R"({"dtu":"dtu-0001","port":"1-1.2","unit":0,"vid":1208,"pid":4660,"serial":"A1B2C3",)"
      R"("class":"printer","interfaces":[{"number":0,"class":7,"subclass":1,"protocol":2,)"
      R"("endpoints":[{"address":1,"attributes":2,"max_packet":512},{"address":130,"attributes":2,)"
      R"("max_packet":512}]}],"state":"free","lease":null,"since_us":-1700000000000000,)"
      R"("speed":480.5,"removable":true,"labels":{"room":"B-12","floor":"2"}})";
  check_same_as_nlohmann(record);
  const json j = parse_json(record);
  CHECK(j["vid"].is_number_unsigned());
  CHECK(j["since_us"].is_number_integer());
  CHECK_FALSE(j["since_us"].is_number_unsigned());
  CHECK(j["speed"].is_number_float());
  CHECK(j["interfaces"][0]["endpoints"][1]["address"] == 130);
  CHECK(j["labels"]["room"] == "B-12");
}

TEST_CASE("parse_json types numbers as nlohmann does, at the edges of 64 bits and beyond") {
  for (const char* text : {"0", "-0", "-0.0", "1.0", "1E2", "-1", "1e-400", "9223372036854775807",
                           "9223372036854775808", "18446744073709551615", "-9223372036854775808",
                           // Beyond 64 bits nlohmann reads a double; simdjson refuses, so it falls back.
                           "18446744073709551616", "-9223372036854775809", "123456789012345678901234567890.5",
                           "1e400", "[1, -1, 1.5, 2e0]"}) {
    check_same_as_nlohmann(text);
  }
}

TEST_CASE("parse_json types -0 as nlohmann does, wherever it stands") {
  for (const char* text : {"-0", " -0 ", "[-0]", "[1,-0]", "[1, -0 ,2]", R"({"logical":-0})", R"({"a": -0})",
                           R"({"a":"x,-0","b":-0.5,"c":1e-0,"d":"2026-01-02"})"}) {
    check_same_as_nlohmann(text);
  }
}

TEST_CASE("parse_json keeps the last of a repeated key, as nlohmann does") {
  check_same_as_nlohmann(R"({"a":1,"b":{"c":2,"c":3},"a":"last"})");
  CHECK(parse_json(R"({"a":1,"a":2})")["a"] == 2);
}

TEST_CASE("parse_json refuses what nlohmann refuses, and takes what only nlohmann takes") {
  for (const char* text :
       {"", " ", "{", "{}}", "[1,2] x", "{\"a\":}", "{'a':1}", "\"\\ud800\"", "\"\\udc00x\"", "\"a\tb\"",
        "nul", "01", "+1", "1.", ".5", "\"\xff\"", "\"\xc3\"",
        // A byte-order mark: simdjson refuses it, nlohmann skips it.
        "\xef\xbb\xbf{\"a\":1}", " {\"a\" : [true, false, null]}\n", "\"\\u0000\"", "\"\\ud83d\\ude00\""}) {
    check_same_as_nlohmann(text);
  }
}

TEST_CASE("parse_json reads nesting past simdjson's depth limit and texts past its size limit") {
  const std::string deep = std::string(1500, '[') + std::string(1500, ']');
  check_same_as_nlohmann(deep);
  CHECK_FALSE(parse_json(deep).is_discarded());

  std::string large = "{\"blob\":\"" + std::string(kFastParseMaxBytes, 'x') + "\",\"n\":-5}";
  check_same_as_nlohmann(large);
  CHECK(parse_json(large)["n"] == -5);
  large.back() = ']';  // invalid, and still refused past the limit
  CHECK(parse_json(large).is_discarded());
}

}  // namespace
}  // namespace dtu::common
