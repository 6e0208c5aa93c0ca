/*
 * json_cases.h: the RFC 8259 conformance cases for core's tokenizer
 * (tests/core/test_core.c asserts its verdict on each) and its walkers
 * (tests/routes/test_routes.c asserts that ob_json_check, the member
 * finder, the inference scan, the canonical form and cJSON agree on each,
 * alone and as a member value). One rule of the RFC a group; V valid, I
 * invalid; the implementation-defined cases (RFC 8259 sections 4, 8, 9)
 * carry a flag saying what the gateway does with them.
 */
#ifndef OB_TEST_JSON_CASES_H
#define OB_TEST_JSON_CASES_H

#include <stddef.h>
#include <string.h>

enum { JC_V = 1, JC_I = 0 };
#define JC_NUL 2 /* a string with \u0000: valid; ambiguous where the gateway reads it */
#define JC_DUP 4 /* an object with keys equal decoded: valid; no canonical form */

typedef struct {
  const char *json;
  size_t len; /* 0: strlen (for cases with a raw 0 byte, the length) */
  int want;   /* JC_V or JC_I, | JC_NUL, JC_DUP */
  const char *name;
} json_case_t;

static const json_case_t json_cases[] = {
    /* Section 2: the text is one value with white space around it. */
    {"1", 0, JC_V, "a bare number is a JSON text"},
    {"\"a\"", 0, JC_V, "a bare string is a JSON text"},
    {" \t\n\r1 \t\n\r", 0, JC_V, "the four white-space characters, before and after"},
    {"\f1", 0, JC_I, "form feed is no white space"},
    {"\v1", 0, JC_I, "vertical tab is no white space"},
    {"\xc2\xa0" "1", 0, JC_I, "no-break space is no white space"},
    {"", 0, JC_I, "empty text"},
    {" \n", 0, JC_I, "only white space"},
    {"1 2", 0, JC_I, "two values"},
    {"{}{}", 0, JC_I, "two objects"},
    {"{} x", 0, JC_I, "trailing bytes"},
    {"1\0", 2, JC_I, "a trailing 0 byte"},
    {"\xef\xbb\xbf{}", 0, JC_I, "a byte order mark is not JSON text"},
    {"/*c*/1", 0, JC_I, "no comments"},
    {"[1]//c", 0, JC_I, "no line comments"},
    /* Section 3: literals, exactly and in lower case. */
    {"[true,false,null]", 0, JC_V, "the three literals"},
    {"tru", 0, JC_I, "tru"},
    {"[nul]", 0, JC_I, "nul"},
    {"fals", 0, JC_I, "fals"},
    {"truex", 0, JC_I, "truex"},
    {"nulll", 0, JC_I, "nulll"},
    {"True", 0, JC_I, "True"},
    {"NULL", 0, JC_I, "NULL"},
    {"undefined", 0, JC_I, "undefined"},
    /* Section 4: objects. */
    {"{}", 0, JC_V, "empty object"},
    {"{ \"a\" : 1 , \"b\" : [ ] }", 0, JC_V, "object with white space everywhere allowed"},
    {"{\"a\":1,}", 0, JC_I, "trailing comma in an object"},
    {"{,}", 0, JC_I, "lone comma in an object"},
    {"{\"a\" 1}", 0, JC_I, "missing colon"},
    {"{\"a\"::1}", 0, JC_I, "double colon"},
    {"{\"a\":}", 0, JC_I, "missing member value"},
    {"{a:1}", 0, JC_I, "unquoted key"},
    {"{'a':1}", 0, JC_I, "single-quoted key"},
    {"{1:1}", 0, JC_I, "number key"},
    {"{\"a\":1 \"b\":2}", 0, JC_I, "missing comma between members"},
    {"{\"a\":1", 0, JC_I, "unclosed object"},
    {"{]", 0, JC_I, "object closed by ]"},
    {"{\"a\":1,\"a\":2}", 0, JC_V | JC_DUP, "duplicate keys (section 4: SHOULD be unique)"},
    {"{\"a\":1,\"\\u0061\":2}", 0, JC_V | JC_DUP, "duplicate keys once decoded"},
    /* Section 5: arrays. */
    {"[]", 0, JC_V, "empty array"},
    {"[1,[2,[3]],{}]", 0, JC_V, "nested arrays"},
    {"[1,]", 0, JC_I, "trailing comma in an array"},
    {"[,1]", 0, JC_I, "leading comma in an array"},
    {"[1,,2]", 0, JC_I, "double comma"},
    {"[1 2]", 0, JC_I, "missing comma between elements"},
    {"[}", 0, JC_I, "array closed by }"},
    {"[[]", 0, JC_I, "unclosed array"},
    {"]", 0, JC_I, "a lone closing bracket"},
    {"[\"a\":1]", 0, JC_I, "a member in an array"},
    /* Section 6: numbers. */
    {"[0,-0,1,-1,10,1.5,-1.5,0.5,1e5,1E5,1e+5,1e-5,1.5e10,-0.0e-0]", 0, JC_V, "the number grammar"},
    {"01", 0, JC_I, "leading zero"},
    {"-01", 0, JC_I, "leading zero after minus"},
    {"00", 0, JC_I, "double zero"},
    {"+1", 0, JC_I, "plus sign"},
    {".5", 0, JC_I, "no integer part"},
    {"1.", 0, JC_I, "no fraction digits"},
    {"1.e5", 0, JC_I, "no fraction digits before the exponent"},
    {"-", 0, JC_I, "a lone minus"},
    {"--1", 0, JC_I, "double minus"},
    {"1e", 0, JC_I, "exponent without digits"},
    {"1e+", 0, JC_I, "signed exponent without digits"},
    {"1.5.5", 0, JC_I, "two fractions"},
    {"0x10", 0, JC_I, "hexadecimal"},
    {"1_000", 0, JC_I, "digit separator"},
    {"[NaN]", 0, JC_I, "NaN"},
    {"[Infinity]", 0, JC_I, "Infinity"},
    {"[-Infinity]", 0, JC_I, "-Infinity"},
    {"[1e400,-1e400,1e-400,123456789012345678901234567890]", 0, JC_V,
     "numbers beyond a double (section 6: implementations may limit range; readers decide)"},
    /* Section 7: strings. */
    {"\"\"", 0, JC_V, "empty string"},
    {"\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"", 0, JC_V, "the eight two-character escapes"},
    {"\"\\u0041\\u00e9\\u20AC\\uD83D\\uDE00\\ud83d\\ude00\"", 0, JC_V, "\\u escapes, a surrogate pair, either case"},
    {"\"\\uFFFF\\uFDD0\"", 0, JC_V, "noncharacters are characters"},
    {"\"\x7f\"", 0, JC_V, "DEL raw is allowed"},
    {"\"\\x41\"", 0, JC_I, "unknown escape \\x"},
    {"\"\\'\"", 0, JC_I, "unknown escape \\'"},
    {"\"\\0\"", 0, JC_I, "unknown escape \\0"},
    {"\"\\U0041\"", 0, JC_I, "upper-case \\U"},
    {"\"\\u12\"", 0, JC_I, "short \\u"},
    {"\"\\u12G4\"", 0, JC_I, "\\u with a non-hex digit"},
    {"\"\\", 0, JC_I, "backslash at the end"},
    {"\"abc", 0, JC_I, "unterminated string"},
    {"'a'", 0, JC_I, "single quotes"},
    {"\"a\x01" "b\"", 0, JC_I, "raw U+0001"},
    {"\"a\x1f" "b\"", 0, JC_I, "raw U+001F"},
    {"\"a\nb\"", 0, JC_I, "raw line feed"},
    {"\"a\tb\"", 0, JC_I, "raw tab"},
    {"\"a\0b\"", 5, JC_I, "raw 0 byte"},
    {"\"\\uD83D\"", 0, JC_I, "lone high surrogate"},
    {"\"\\uDE00\"", 0, JC_I, "lone low surrogate"},
    {"\"\\uDE00\\uD83D\"", 0, JC_I, "misordered surrogates"},
    {"\"\\uD83D\\u0041\"", 0, JC_I, "high surrogate before a non-surrogate"},
    {"\"\\uD83D\\uD83D\"", 0, JC_I, "two high surrogates"},
    {"\"\\uD83Dx\"", 0, JC_I, "high surrogate before a plain character"},
    {"\"\\u0000\"", 0, JC_V | JC_NUL, "\\u0000 is valid (policy: flagged, refused where read, core.h)"},
    /* Section 8.1: UTF-8. */
    {"\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\"", 0, JC_V, "two-, three- and four-byte UTF-8 up to U+10FFFF"},
    {"\"\x80\"", 0, JC_I, "a lone continuation byte"},
    {"\"\xc0\xaf\"", 0, JC_I, "overlong two-byte form"},
    {"\"\xc1\xbf\"", 0, JC_I, "overlong two-byte form (C1)"},
    {"\"\xe0\x80\xaf\"", 0, JC_I, "overlong three-byte form"},
    {"\"\xf0\x80\x80\xaf\"", 0, JC_I, "overlong four-byte form"},
    {"\"\xed\xa0\x80\"", 0, JC_I, "an encoded surrogate"},
    {"\"\xf4\x90\x80\x80\"", 0, JC_I, "above U+10FFFF"},
    {"\"\xf5\x80\x80\x80\"", 0, JC_I, "F5 lead byte"},
    {"\"\xe2\x82\"", 0, JC_I, "a truncated sequence"},
    {"\"\xe2\x82" "a\"", 0, JC_I, "a sequence cut by ASCII"},
    {"\"\xff\"", 0, JC_I, "FF"},
    {"\xc3\xa9", 0, JC_I, "UTF-8 outside a string"},
};

#define JSON_CASES (sizeof json_cases / sizeof json_cases[0])

static inline size_t json_case_len(const json_case_t *c) { return c->len ? c->len : strlen(c->json); }

#endif
