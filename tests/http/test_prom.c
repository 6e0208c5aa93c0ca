/* Unit tests for src/http prom.c: the Prometheus text format reader against
 * /metrics as vLLM (v1 and the older v0 names) and SGLang serve them, the
 * label filter, the NaN / Inf policy, every kind of malformed line, and the
 * bounds. */
#include "http.h"
#include "tap.h"

#include <locale.h>
#include <math.h>
#include <stdlib.h>

static const char *why;
static size_t err_line;

/* A vLLM v1 server (0.8 to 0.10 shape), data-parallel with two engines, so
 * every vllm: gauge has two series. Cut down, but every line kind is from a
 * real scrape: Python's process collectors, counters with _created,
 * histograms, an info metric with empty label values, exponents. */
static const char vllm_v1[] =
    "# HELP python_gc_objects_collected_total Objects collected during gc\n"
    "# TYPE python_gc_objects_collected_total counter\n"
    "python_gc_objects_collected_total{generation=\"0\"} 12345.0\n"
    "python_gc_objects_collected_total{generation=\"1\"} 2345.0\n"
    "python_gc_objects_collected_total{generation=\"2\"} 345.0\n"
    "# HELP python_info Python platform information\n"
    "# TYPE python_info gauge\n"
    "python_info{implementation=\"CPython\",major=\"3\",minor=\"12\",patchlevel=\"3\",version=\"3.12.3\"} 1.0\n"
    "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
    "# TYPE process_virtual_memory_bytes gauge\n"
    "process_virtual_memory_bytes 1.4368825344e+011\n"
    "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
    "# TYPE process_start_time_seconds gauge\n"
    "process_start_time_seconds 1.71876543211e+09\n"
    "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
    "# TYPE vllm:cache_config_info gauge\n"
    "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",calculate_kv_scales=\"False\","
    "cpu_offload_gb=\"0\",enable_prefix_caching=\"True\",engine=\"0\",gpu_memory_utilization=\"0.9\","
    "num_cpu_blocks=\"None\",num_gpu_blocks=\"27310\",prefix_caching_hash_algo=\"builtin\"} 1.0\n"
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 3.0\n"
    "vllm:num_requests_running{engine=\"1\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 4.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "vllm:num_requests_waiting{engine=\"1\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 2.0\n"
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.25\n"
    "vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.5\n"
    "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
    "# TYPE vllm:lora_requests_info gauge\n"
    "vllm:lora_requests_info{max_lora=\"0\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 1.7187654e+09\n"
    "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
    "# TYPE vllm:prompt_tokens_total counter\n"
    "vllm:prompt_tokens_total{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 120435.0\n"
    "vllm:prompt_tokens_total{engine=\"1\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 98765.0\n"
    "# HELP vllm:prompt_tokens_created Number of prefill tokens processed.\n"
    "# TYPE vllm:prompt_tokens_created gauge\n"
    "vllm:prompt_tokens_created{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1.7187654321e+09\n"
    "# HELP vllm:request_success_total Count of successfully processed requests.\n"
    "# TYPE vllm:request_success_total counter\n"
    "vllm:request_success_total{engine=\"0\",finished_reason=\"stop\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 90.0\n"
    "vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 7.0\n"
    "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n"
    "# TYPE vllm:time_to_first_token_seconds histogram\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.001\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.005\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.02\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 12.0\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.1\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 80.0\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"1.0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 96.0\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 97.0\n"
    "vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 97.0\n"
    "vllm:time_to_first_token_seconds_sum{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 4.85\n"
    "# HELP vllm:time_to_first_token_seconds_created Histogram of time to first token in seconds.\n"
    "# TYPE vllm:time_to_first_token_seconds_created gauge\n"
    "vllm:time_to_first_token_seconds_created{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1.7187654321e+09\n";

/* vLLM v0 (before 0.8): gpu_cache_usage_perc, one series per model_name,
 * and the server behind a proxy that serves two models (the label filter
 * picks one). */
static const char vllm_v0[] =
    "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{model_name=\"llama\"} 5.0\n"
    "vllm:num_requests_running{model_name=\"qwen\"} 11.0\n"
    "# HELP vllm:num_requests_swapped Number of requests swapped to CPU.\n"
    "# TYPE vllm:num_requests_swapped gauge\n"
    "vllm:num_requests_swapped{model_name=\"llama\"} 0.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{model_name=\"llama\"} 1.0\n"
    "vllm:num_requests_waiting{model_name=\"qwen\"} 6.0\n"
    "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:gpu_cache_usage_perc gauge\n"
    "vllm:gpu_cache_usage_perc{model_name=\"llama\"} 0.9712\n"
    "vllm:gpu_cache_usage_perc{model_name=\"qwen\"} 0.31\n"
    "# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:cpu_cache_usage_perc gauge\n"
    "vllm:cpu_cache_usage_perc{model_name=\"llama\"} 0.0\n";

/* SGLang (0.4 shape): its own names, model_name plus rank labels, a
 * histogram, and no final newline (the body may be cut right there). */
static const char sglang[] =
    "# HELP sglang:num_running_reqs The number of running requests.\n"
    "# TYPE sglang:num_running_reqs gauge\n"
    "sglang:num_running_reqs{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 17.0\n"
    "# HELP sglang:num_used_tokens The number of used tokens.\n"
    "# TYPE sglang:num_used_tokens gauge\n"
    "sglang:num_used_tokens{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 48213.0\n"
    "# HELP sglang:token_usage The token usage.\n"
    "# TYPE sglang:token_usage gauge\n"
    "sglang:token_usage{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 0.73\n"
    "# HELP sglang:gen_throughput The generation throughput (token/s).\n"
    "# TYPE sglang:gen_throughput gauge\n"
    "sglang:gen_throughput{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 1534.2793103448276\n"
    "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.\n"
    "# TYPE sglang:num_queue_reqs gauge\n"
    "sglang:num_queue_reqs{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 3.0\n"
    "# HELP sglang:cache_hit_rate The prefix cache hit rate.\n"
    "# TYPE sglang:cache_hit_rate gauge\n"
    "sglang:cache_hit_rate{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} NaN\n"
    "# HELP sglang:e2e_request_latency_seconds Histogram of End-to-end request latency in seconds\n"
    "# TYPE sglang:e2e_request_latency_seconds histogram\n"
    "sglang:e2e_request_latency_seconds_sum{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 2154.6\n"
    "sglang:e2e_request_latency_seconds_bucket{le=\"0.1\",model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 0.0\n"
    "sglang:e2e_request_latency_seconds_bucket{le=\"+Inf\",model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 1021.0\n"
    "sglang:e2e_request_latency_seconds_count{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 1021.0";

#define PARSE(text, opts, want) \
  ob_prom_parse((text), sizeof(text) - 1, (opts), (want), sizeof(want) / sizeof((want)[0]), &err_line, &why)

static double absd(double a) { return a < 0 ? -a : a; }
static bool near(double a, double b) { return absd(a - b) <= 1e-12 * (absd(a) + absd(b) + 1); }

static void test_vllm(void) {
  ob_prom_want_t w[] = {
      {.name = "vllm:num_requests_running"},
      {.name = "vllm:num_requests_waiting"},
      {.name = "vllm:kv_cache_usage_perc"},
      {.name = "vllm:gpu_cache_usage_perc"},
      {.name = "vllm:time_to_first_token_seconds_sum"},
      {.name = "vllm:time_to_first_token_seconds_count"},
      {.name = "vllm:time_to_first_token_seconds"},
      {.name = "vllm:num_requests"}, /* a prefix of real names matches none */
  };
  TAP_EQ_INT(PARSE(vllm_v1, NULL, w), 0, "vLLM v1: parses");
  TAP_CHECK(w[0].found && w[0].samples == 2 && w[0].value == 7.0 && w[0].max == 4.0,
            "vLLM v1: running summed over both engines (7, max 4)");
  TAP_CHECK(w[1].found && w[1].value == 2.0, "vLLM v1: waiting 0 + 2");
  TAP_CHECK(w[2].found && w[2].value == 0.75 && w[2].max == 0.5 && w[2].samples == 2,
            "vLLM v1: kv usage: max 0.5 is the fullest engine, value / samples the mean");
  TAP_CHECK(!w[3].found && w[3].samples == 0 && !w[3].nonfinite && w[3].value == 0,
            "vLLM v1: the old gpu_cache_usage_perc is not there");
  TAP_CHECK(w[4].found && w[5].found && near(w[4].value / w[5].value, 0.05), "histogram: _sum / _count is the mean TTFT");
  TAP_CHECK(!w[6].found, "histogram: the family name itself has no samples");
  TAP_CHECK(!w[7].found, "names match exactly, not by prefix");

  ob_prom_opts_t o = {.label_name = "le", .label_value = "+Inf"};
  ob_prom_want_t b[] = {{.name = "vllm:time_to_first_token_seconds_bucket"}};
  TAP_CHECK(PARSE(vllm_v1, &o, b) == 0 && b[0].found && b[0].samples == 1 && b[0].value == 97.0,
            "histogram: the +Inf bucket through the label filter");
  o.label_value = "0.1";
  TAP_CHECK(PARSE(vllm_v1, &o, b) == 0 && b[0].value == 80.0, "histogram: the le=\"0.1\" bucket");

  ob_prom_opts_t m = {.label_name = "model_name", .label_value = "meta-llama/Llama-3.1-8B-Instruct"};
  TAP_CHECK(PARSE(vllm_v1, &m, w) == 0 && w[0].value == 7.0 && w[2].max == 0.5, "vLLM v1: filter on its model");
  m.label_value = "meta-llama/Llama-3.1-70B-Instruct";
  TAP_CHECK(PARSE(vllm_v1, &m, w) == 0 && !w[0].found && w[0].samples == 0, "vLLM v1: another model matches nothing");
  m.label_value = "meta-llama/Llama-3.1-8B-Instruc";
  TAP_CHECK(PARSE(vllm_v1, &m, w) == 0 && !w[0].found, "filter: a prefix of the value is another value");
  ob_prom_opts_t e = {.label_name = "engine", .label_value = "1"};
  TAP_CHECK(PARSE(vllm_v1, &e, w) == 0 && w[1].value == 2.0 && w[1].samples == 1, "filter on engine=\"1\"");
  ob_prom_opts_t bad = {.label_name = "model-name", .label_value = "x"};
  TAP_CHECK(PARSE(vllm_v1, &bad, w) == 0 && !w[0].found, "filter: a label name no label can have matches nothing");
  ob_prom_opts_t lora = {.label_name = "running_lora_adapters", .label_value = ""};
  ob_prom_want_t l[] = {{.name = "vllm:lora_requests_info"}};
  TAP_CHECK(PARSE(vllm_v1, &lora, l) == 0 && l[0].found && near(l[0].value, 1.7187654e9), "filter: an empty label value");
  ob_prom_want_t p[] = {{.name = "process_virtual_memory_bytes"}};
  TAP_CHECK(PARSE(vllm_v1, NULL, p) == 0 && p[0].value == 143688253440.0, "a value with a three-digit exponent");
  ob_prom_opts_t none = {.label_name = "model_name", .label_value = "x"};
  TAP_CHECK(PARSE(vllm_v1, &none, p) == 0 && !p[0].found && p[0].samples == 0,
            "filter: a series without the label does not match");
}

static void test_vllm_v0(void) {
  ob_prom_want_t w[] = {
      {.name = "vllm:num_requests_running"},
      {.name = "vllm:num_requests_waiting"},
      {.name = "vllm:kv_cache_usage_perc"},
      {.name = "vllm:gpu_cache_usage_perc"},
  };
  TAP_EQ_INT(PARSE(vllm_v0, NULL, w), 0, "vLLM v0: parses");
  TAP_CHECK(w[0].value == 16.0 && w[1].value == 7.0 && w[0].samples == 2, "vLLM v0: both models summed");
  TAP_CHECK(!w[2].found && w[3].found && w[3].max == 0.9712, "vLLM v0: gpu_cache_usage_perc instead of kv_cache_usage_perc");
  ob_prom_opts_t o = {.label_name = "model_name", .label_value = "qwen"};
  TAP_CHECK(PARSE(vllm_v0, &o, w) == 0 && w[0].value == 11.0 && w[1].value == 6.0 && w[3].value == 0.31,
            "vLLM v0: the model_name filter picks one model");
  o.label_value = "llama";
  TAP_CHECK(PARSE(vllm_v0, &o, w) == 0 && w[0].value == 5.0 && w[1].value == 1.0 && w[3].value == 0.9712,
            "vLLM v0: and the other");
}

static void test_sglang(void) {
  ob_prom_want_t w[] = {
      {.name = "sglang:num_running_reqs"},
      {.name = "sglang:num_queue_reqs"},
      {.name = "sglang:token_usage"},
      {.name = "sglang:cache_hit_rate"},
      {.name = "sglang:e2e_request_latency_seconds_count"},
  };
  TAP_EQ_INT(PARSE(sglang, NULL, w), 0, "SGLang: parses (no final newline)");
  TAP_CHECK(w[0].found && w[0].value == 17.0, "SGLang: running");
  TAP_CHECK(w[1].found && w[1].value == 3.0, "SGLang: queue");
  TAP_CHECK(w[2].found && w[2].value == 0.73, "SGLang: token usage");
  TAP_CHECK(!w[3].found && w[3].nonfinite && w[3].samples == 1 && w[3].value == 0,
            "SGLang: a NaN gauge is not found, and flagged");
  TAP_CHECK(w[4].found && w[4].value == 1021.0, "SGLang: the last line, without its LF");
  ob_prom_opts_t o = {.label_name = "tp_rank", .label_value = "0"};
  TAP_CHECK(PARSE(sglang, &o, w) == 0 && w[0].value == 17.0 && !w[4].found, "SGLang: filter on tp_rank");
}

/* One line that must parse, and the value of want "a". */
static bool value_of(const char *text, double *v) {
  ob_prom_want_t w[] = {{.name = "a"}};
  int rc = ob_prom_parse(text, strlen(text), NULL, w, 1, &err_line, &why);
  if (rc != 0) printf("#   %s: %s\n", text, why);
  *v = w[0].value;
  return rc == 0 && w[0].samples == 1;
}

static bool same(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static void test_values(void) {
  static const struct {
    const char *line;
    double v;
  } ok[] = {
      {"a 1", 1},
      {"a -1", -1},
      {"a +1", 1},
      {"a 1.", 1},
      {"a .5", 0.5},
      {"a -.5", -0.5},
      {"a 1e3", 1000},
      {"a 1E-3", 0.001},
      {"a 1.5e+2", 150},
      {"a 00012.500", 12.5},
      {"a 0", 0},
      {"a 0.0e0", 0},
      {"a 0.1", 0.1},
      {"a 0.30000000000000004", 0.30000000000000004},
      {"a 1.7976931348623157e308", 1.7976931348623157e308},
      {"a 4.9e-324", 4.9e-324},
      {"a 1e-400", 0},
      {"a 123456789012345678901234567890", 123456789012345678901234567890.0},
      {"a 0.000000000000000000000000000001", 1e-30},
      {"a 1e000000000000000000000000000001", 10},
      {"a 9007199254740993", 9007199254740993.0}, /* rounds to even, as strtod does */
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    double v = -99;
    bool parsed = value_of(ok[i].line, &v);
    TAP_CHECK(parsed && same(v, ok[i].v), "value \"%s\"", ok[i].line + 2);
    if (parsed && !same(v, ok[i].v)) printf("#   got %.17g\n", v);
  }
  double v;
  TAP_CHECK(value_of("a -0", &v) && v == 0, "value -0");
  ob_prom_want_t z[] = {{.name = "b"}};
  static const char zeros[] = "b{}0\nb{}-0\n";
  TAP_CHECK(PARSE(zeros, NULL, z) == 0 && z[0].found && z[0].value == 0 && z[0].max == 0, "0 and -0: sum and max 0");
  TAP_CHECK(value_of("a 1 1712345678901", &v) && v == 1, "a timestamp is checked and ignored");
  TAP_CHECK(value_of("a 1 9223372036854775807", &v), "the largest int64 timestamp");
  TAP_CHECK(value_of("a 1 0", &v), "timestamp 0");

  /* The specials are legal values: they parse, but a want holding one is not found. */
  static const char *const special[] = {"NaN", "nan", "NAN", "+Inf", "-Inf", "Inf", "inf", "+inf", "Infinity",
                                        "-infinity", "+INFINITY"};
  for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
    char line[64];
    snprintf(line, sizeof line, "b 1\na %s\n", special[i]);
    ob_prom_want_t w[] = {{.name = "a"}, {.name = "b"}};
    int rc = ob_prom_parse(line, strlen(line), NULL, w, 2, &err_line, &why);
    TAP_CHECK(rc == 0 && !w[0].found && w[0].nonfinite && w[0].samples == 1 && w[1].found && w[1].value == 1,
              "value %s: legal, wanted gauge not found and flagged, others unaffected", special[i]);
  }
  ob_prom_want_t w[] = {{.name = "a"}};
  static const char two_nan[] = "a{x=\"1\"} 1\na{x=\"2\"} NaN\na{x=\"3\"} 2\n";
  TAP_CHECK(PARSE(two_nan, NULL, w) == 0 && !w[0].found && w[0].nonfinite && w[0].samples == 3 && w[0].value == 0,
            "one NaN series among finite ones: not found (no partial sum)");
  static const char overflow[] = "a{x=\"1\"} 1.7e308\na{x=\"2\"} 1.7e308\n";
  TAP_CHECK(PARSE(overflow, NULL, w) == 0 && !w[0].found && w[0].nonfinite, "a sum that overflows: not found, flagged");
  static const char filtered_nan[] = "a{m=\"x\"} NaN\na{m=\"y\"} 4\n";
  ob_prom_opts_t o = {.label_name = "m", .label_value = "y"};
  TAP_CHECK(PARSE(filtered_nan, &o, w) == 0 && w[0].found && w[0].value == 4 && !w[0].nonfinite,
            "a NaN in a series the filter leaves out does not count");
}

/* Lines that must be refused with err (OB_ERR_BAD_RESPONSE unless said). */
#define REJECT_ERR(lit, err, at, title)                                                     \
  do {                                                                                     \
    ob_prom_want_t w_[] = {{.name = "a"}};                                                 \
    why = NULL;                                                                            \
    err_line = 0;                                                                          \
    int r_ = PARSE(lit, NULL, w_);                                                         \
    TAP_CHECK(r_ == (err) && err_line == (at) && why && !w_[0].found && w_[0].value == 0 && \
                  w_[0].samples == 0,                                                      \
              "%s", title);                                                                \
    if (r_ != (err) || err_line != (at))                                                   \
      printf("#   got %d at line %zu (%s)\n", r_, err_line, why ? why : "no why");        \
  } while (0)
#define REJECT(lit, at, title) REJECT_ERR(lit, OB_ERR_BAD_RESPONSE, at, title)

static void test_malformed(void) {
  /* names */
  REJECT("a 1\nvllm-x 1\n", 2, "'-' in a metric name");
  REJECT("1abc 1\n", 1, "a metric name starting with a digit");
  REJECT("caf\xc3\xa9 1\n", 1, "non-ASCII in a metric name");
  REJECT("{\"a\"} 1\n", 1, "a quoted metric name (not 0.0.4)");
  REJECT("{a=\"b\"} 1\n", 1, "labels without a metric name");
  REJECT("a.b 1\n", 1, "'.' in a metric name");
  /* labels */
  REJECT("a{b=\"c} 1\n", 1, "unterminated label value");
  REJECT("a{b=\"c\\\"} 1\n", 1, "unterminated label value (the quote escaped)");
  REJECT("a{b=\"c\\", 1, "unterminated label value at the end of the text");
  REJECT("a{b=\"\\t\"} 1\n", 1, "bad escape \\t in a label value");
  REJECT("a{b=\"\\u00e9\"} 1\n", 1, "bad escape \\u in a label value");
  REJECT("a{b=c} 1\n", 1, "unquoted label value");
  REJECT("a{b='c'} 1\n", 1, "single-quoted label value");
  REJECT("a{b} 1\n", 1, "label without a value");
  REJECT("a{b=\"c\" 1\n", 1, "no closing brace");
  REJECT("a{b=\"c\",\n", 1, "label set cut at the end of the line");
  REJECT("a{b=\"c\" d=\"e\"} 1\n", 1, "no comma between label pairs");
  REJECT("a{,} 1\n", 1, "a lone comma in the label set");
  REJECT("a{b=\"c\",,} 1\n", 1, "two commas");
  REJECT("a{=\"c\"} 1\n", 1, "empty label name");
  REJECT("a{1b=\"c\"} 1\n", 1, "label name starting with a digit");
  REJECT("a{b:c=\"d\"} 1\n", 1, "':' in a label name");
  REJECT("a{b-c=\"d\"} 1\n", 1, "'-' in a label name");
  REJECT("a{b=\"1\",c=\"2\",b=\"3\"} 1\n", 1, "duplicate label name in one sample");
  REJECT("a{b=\"\xff\"} 1\n", 1, "label value not UTF-8 (0xFF)");
  REJECT("a{b=\"\xc0\xaf\"} 1\n", 1, "label value with an overlong UTF-8 form");
  REJECT("a{b=\"\xed\xa0\x80\"} 1\n", 1, "label value with a UTF-16 surrogate");
  REJECT("a{b=\"\xf4\x90\x80\x80\"} 1\n", 1, "label value above U+10FFFF");
  REJECT("a{b=\"\xe2\x82\"} 1\n", 1, "label value with a truncated UTF-8 sequence");
  /* values */
  REJECT("a\n", 1, "missing value");
  REJECT("a   \n", 1, "missing value, trailing blanks");
  REJECT("a{b=\"c\"}\n", 1, "missing value after labels");
  REJECT("a{b=\"c\"}  \n", 1, "missing value after labels and blanks");
  REJECT("a 1.2.3\n", 1, "value 1.2.3");
  REJECT("a 1e\n", 1, "value 1e");
  REJECT("a 1e+\n", 1, "value 1e+");
  REJECT("a e1\n", 1, "value e1");
  REJECT("a .\n", 1, "value .");
  REJECT("a -\n", 1, "value -");
  REJECT("a --1\n", 1, "value --1");
  REJECT("a 0x10\n", 1, "hex value");
  REJECT("a 0x1p-2\n", 1, "hex float (refused by Prometheus too)");
  REJECT("a 1_000\n", 1, "underscores in a value");
  REJECT("a +NaN\n", 1, "signed NaN");
  REJECT("a nan1\n", 1, "value nan1");
  REJECT("a Infx\n", 1, "value Infx");
  REJECT("a 1,5\n", 1, "decimal comma");
  REJECT("a 1e400\n", 1, "value beyond a double (as Go's ParseFloat says)");
  REJECT("a -1e309\n", 1, "negative value beyond a double");
  REJECT("a 1{\n", 1, "a brace after the value");
  /* timestamps */
  REJECT("a 1 123 x\n", 1, "garbage after the timestamp");
  REJECT("a 1 123 456\n", 1, "two timestamps");
  REJECT("a 1 12x\n", 1, "timestamp with a letter");
  REJECT("a 1 -5\n", 1, "negative timestamp");
  REJECT("a 1 1.5\n", 1, "fractional timestamp");
  REJECT("a 1 9223372036854775808\n", 1, "timestamp above int64");
  REJECT("a 1 99999999999999999999999\n", 1, "timestamp above uint64");
  REJECT("a 1 # comment\n", 1, "a comment after a sample");
  /* metadata */
  REJECT("# HELP\n", 1, "HELP without a name");
  REJECT("# HELP 1a text\n", 1, "HELP with a bad name");
  REJECT("# HELP a{b} text\n", 1, "HELP with braces after the name");
  REJECT("# HELP a bad \\t escape\n", 1, "HELP text with an escape other than \\\\ and \\n");
  REJECT("# HELP a ends in \\\n", 1, "HELP text ending in a backslash");
  REJECT("# HELP a \xff\n", 1, "HELP text not UTF-8");
  REJECT("# TYPE a\n", 1, "TYPE without a type");
  REJECT("# TYPE a gauges\n", 1, "TYPE with an unknown type");
  REJECT("# TYPE a Gauge\n", 1, "TYPE is case-sensitive");
  REJECT("# TYPE a gauge counter\n", 1, "TYPE with two types");
  REJECT("# TYPE 1a gauge\n", 1, "TYPE with a bad name");
  REJECT("# TYPE\n", 1, "TYPE alone");
  /* lines */
  REJECT("a 1\r\n", 1, "CR LF line ending");
  REJECT("# HELP a text\r\nb 1\n", 1, "CR LF on a comment line too");
  REJECT("\r\n", 1, "a CR LF blank line");
  REJECT("a 1\rb 2\n", 1, "bare CR");
  REJECT("a 1\n\nb\x00 2\n", 3, "NUL byte in a sample");
  REJECT("# comment \x00\n", 1, "NUL byte in a comment");
  REJECT("a 1\n# ok\n  \n\tb 2\nc\n", 5, "the line number counts comments and blank lines");
  REJECT("a\x0b 1\n", 1, "a vertical tab is not a blank");
}

static void test_accepted(void) {
  ob_prom_want_t w[] = {{.name = "a"}, {.name = "b"}};
  TAP_CHECK(ob_prom_parse(NULL, 0, NULL, w, 2, &err_line, &why) == 0 && !w[0].found, "empty text (NULL, 0)");
  TAP_CHECK(ob_prom_parse("", 0, NULL, NULL, 0, NULL, NULL) == 0, "empty text, no wants, no outputs");
  static const char blanks[] = "\n\n  \n\t\n \t \n";
  TAP_CHECK(PARSE(blanks, NULL, w) == 0 && !w[0].found, "blank lines and lines of blanks");
  static const char comments[] = "#\n# \n#HELP not metadata \\x\n# a plain comment \\x \xff\n"
                                 "# HELPX a b\n# TYPEs\n  # indented comment\n";
  TAP_CHECK(PARSE(comments, NULL, w) == 0, "comments of every kind (plain comments are not checked)");
  static const char meta[] = "# HELP a\n# HELP a \n# HELP a line\\nbreak and \\\\ backslash, caf\xc3\xa9\n"
                             "#\tTYPE\ta\tgauge\t\n# TYPE b counter\n# TYPE c histogram\n# TYPE d summary\n"
                             "# TYPE e untyped\n";
  TAP_CHECK(PARSE(meta, NULL, w) == 0, "HELP (empty, escaped, UTF-8) and TYPE of every type, tabs");
  static const char spaced[] = "  a  { b = \"1\" ,\tc=\"2\", }  3  \n\tb{}4\t 1712345678901 \n";
  TAP_CHECK(PARSE(spaced, NULL, w) == 0 && w[0].value == 3 && w[1].value == 4,
            "blanks between tokens, trailing comma, empty braces, value right after '}'");
  static const char escaped[] = "a{p=\"C:\\\\models\\\\\\\"x\\\"\\nnext\",q=\"}{,=\"} 5\n";
  ob_prom_opts_t o = {.label_name = "p", .label_value = "C:\\models\\\"x\"\nnext"};
  TAP_CHECK(PARSE(escaped, &o, w) == 0 && w[0].found && w[0].value == 5, "label value escapes \\\\ \\\" \\n, unescaped for the filter");
  o.label_name = "q";
  o.label_value = "}{,=";
  TAP_CHECK(PARSE(escaped, &o, w) == 0 && w[0].found, "braces, commas and '=' inside a label value");
  static const char utf8[] = "a{m=\"\xe6\xa8\xa1\xe5\x9e\x8b \xf0\x9f\xa6\x99 caf\xc3\xa9\"} 1\n";
  o.label_name = "m";
  o.label_value = "\xe6\xa8\xa1\xe5\x9e\x8b \xf0\x9f\xa6\x99 caf\xc3\xa9";
  TAP_CHECK(PARSE(utf8, &o, w) == 0 && w[0].found, "UTF-8 label values (2, 3 and 4 bytes)");
  static const char names[] = "_a 1\n:b 2\na_b:c_9 3\nA 4\n__name__ 5\nx{__reserved=\"1\",_u=\"2\"} 6\n";
  TAP_CHECK(PARSE(names, NULL, w) == 0, "names with '_' and ':', reserved-looking label names");

  /* The text is not NUL-terminated: nothing past len is read. */
  char *buf = malloc(5);
  memcpy(buf, "a 12", 4);
  buf[4] = '3';
  TAP_CHECK(ob_prom_parse(buf, 3, NULL, w, 2, &err_line, &why) == 0 && w[0].value == 1, "the value ends at len");
  TAP_CHECK(ob_prom_parse(buf, 4, NULL, w, 2, &err_line, &why) == 0 && w[0].value == 12, "a value right up to len");
  memcpy(buf, "a{b=\"", 5);
  TAP_EQ_INT(ob_prom_parse(buf, 5, NULL, w, 2, &err_line, &why), OB_ERR_BAD_RESPONSE, "a label value cut at len");
  free(buf);

  /* Reset first, and left reset after an error: the scrape is ignored. */
  ob_prom_want_t r[] = {{.name = "a", .value = 99, .max = 99, .samples = 9, .found = true, .nonfinite = true}};
  static const char one[] = "b 1\n";
  TAP_CHECK(PARSE(one, NULL, r) == 0 && r[0].value == 0 && r[0].samples == 0 && !r[0].found && !r[0].nonfinite,
            "outputs are reset at the start");
  static const char good_then_bad[] = "a 5\na 6\nb{x=\"1} 1\n";
  err_line = 77;
  TAP_CHECK(PARSE(good_then_bad, NULL, r) == OB_ERR_BAD_RESPONSE && err_line == 3 && !r[0].found && r[0].value == 0 &&
                r[0].samples == 0,
            "an error after wanted samples leaves nothing found");
  static const char fine[] = "a 5\n";
  err_line = 77;
  why = "untouched";
  TAP_CHECK(PARSE(fine, NULL, r) == 0 && err_line == 77 && strcmp(why, "untouched") == 0,
            "err_line and why are left alone on success");
  TAP_CHECK(ob_prom_parse(good_then_bad, sizeof good_then_bad - 1, NULL, r, 1, NULL, NULL) == OB_ERR_BAD_RESPONSE,
            "err_line and why may be NULL");
  ob_prom_want_t twice[] = {{.name = "a"}, {.name = NULL}, {.name = "a"}};
  TAP_CHECK(PARSE(fine, NULL, twice) == 0 && twice[0].value == 5 && twice[2].value == 5 && !twice[1].found,
            "a name wanted twice fills both; a NULL name matches nothing");
}

/* Builds texts in a heap buffer of exactly the text's size. */
static char *repeat(char c, size_t n) {
  char *s = malloc(n ? n : 1);
  memset(s, c, n);
  return s;
}

static void test_bounds(void) {
  ob_prom_want_t w[] = {{.name = "a"}};
  size_t n = OB_PROM_MAX_LINE;
  /* A comment line of exactly the limit, then one byte more. */
  char *s = repeat('x', n + 2);
  s[0] = '#';
  s[1] = ' ';
  s[n] = '\n';
  TAP_EQ_INT(ob_prom_parse(s, n + 1, NULL, w, 1, &err_line, &why), 0, "a line of OB_PROM_MAX_LINE bytes");
  TAP_EQ_INT(ob_prom_parse(s, n, NULL, w, 1, &err_line, &why), 0, "the last line at the limit, without LF");
  s[n] = 'x';
  s[n + 1] = '\n';
  TAP_EQ_INT(ob_prom_parse(s, n + 2, NULL, w, 1, &err_line, &why), OB_ERR_TOO_LARGE, "a line one byte longer");
  TAP_EQ_INT(ob_prom_parse(s, n + 1, NULL, w, 1, &err_line, &why), OB_ERR_TOO_LARGE,
             "the last line one byte longer, without LF");
  free(s);
  /* A sample whose label value makes the line exactly the limit. */
  s = repeat('v', n);
  memcpy(s, "a{b=\"", 5);
  memcpy(s + n - 5, "\"} 7\n", 5);
  TAP_CHECK(ob_prom_parse(s, n, NULL, w, 1, &err_line, &why) == 0 && w[0].value == 7, "a sample line at the limit");
  free(s);
  /* The limit holds on the second line too, where err_line is 2. */
  s = repeat(' ', n + 10);
  memcpy(s, "a 1\n", 4);
  s[4] = 'a';
  err_line = 0;
  TAP_CHECK(ob_prom_parse(s, n + 10, NULL, w, 1, &err_line, &why) == OB_ERR_TOO_LARGE && err_line == 2,
            "an over-long second line is line 2");
  free(s);

  /* Labels: 64 fine, 65 too many. */
  char line[2048];
  for (int k = 64; k <= 65; k++) {
    size_t len = (size_t)snprintf(line, sizeof line, "a{");
    for (int i = 0; i < k; i++) len += (size_t)snprintf(line + len, sizeof line - len, "l%d=\"%d\",", i, i);
    len += (size_t)snprintf(line + len, sizeof line - len, "} 1\n");
    int rc = ob_prom_parse(line, len, NULL, w, 1, &err_line, &why);
    if (k == 64) TAP_CHECK(rc == 0 && w[0].found, "64 labels");
    else TAP_EQ_INT(rc, OB_ERR_TOO_LARGE, "65 labels");
  }

  /* Value tokens: OB_PROM_MAX_VALUE bytes fine, one more too large. */
  for (size_t k = OB_PROM_MAX_VALUE; k <= OB_PROM_MAX_VALUE + 1; k++) {
    size_t len = 0;
    line[len++] = 'a';
    line[len++] = ' ';
    line[len++] = '0';
    line[len++] = '.';
    while (len < 2 + k - 1) line[len++] = '0';
    line[len++] = '5';
    int rc = ob_prom_parse(line, len, NULL, w, 1, &err_line, &why);
    if (k == OB_PROM_MAX_VALUE) TAP_CHECK(rc == 0 && w[0].value == 5e-126, "a value token of OB_PROM_MAX_VALUE bytes");
    else TAP_EQ_INT(rc, OB_ERR_TOO_LARGE, "a value token one byte longer");
  }

  /* Samples: max_samples counts every sample line, wanted or not. */
  static const char three[] = "# c\nx 1\n\ny 2\na 3\n";
  ob_prom_opts_t o = {.max_samples = 3};
  TAP_CHECK(PARSE(three, &o, w) == 0 && w[0].value == 3, "max_samples 3: three samples");
  o.max_samples = 2;
  err_line = 0;
  TAP_CHECK(PARSE(three, &o, w) == OB_ERR_TOO_LARGE && err_line == 5 && !w[0].found, "max_samples 2: the third refused");
  /* The default: OB_PROM_MAX_SAMPLES. */
  size_t many = OB_PROM_MAX_SAMPLES + 1;
  s = malloc(many * 4);
  for (size_t i = 0; i < many; i++) memcpy(s + 4 * i, "a 1\n", 4);
  TAP_CHECK(ob_prom_parse(s, (many - 1) * 4, NULL, w, 1, &err_line, &why) == 0 && w[0].value == (double)(many - 1),
            "OB_PROM_MAX_SAMPLES samples by default");
  TAP_EQ_INT(ob_prom_parse(s, many * 4, NULL, w, 1, &err_line, &why), OB_ERR_TOO_LARGE, "and no more");
  free(s);
}

/* The C library's decimal point does not matter. Only checked where a
 * locale with a decimal comma is installed. */
static void test_locale(void) {
  static const char *const locales[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8", "ru_RU.UTF-8"};
  const char *got = NULL;
  for (size_t i = 0; i < sizeof locales / sizeof locales[0] && !got; i++) got = setlocale(LC_NUMERIC, locales[i]);
  if (!got || strcmp(localeconv()->decimal_point, ",") != 0) {
    printf("ok %d - decimal comma locale # SKIP none installed\n", ++tap_n);
    setlocale(LC_NUMERIC, "C");
    return;
  }
  ob_prom_want_t w[] = {{.name = "a"}};
  static const char t[] = "a 1.5e1\na 0.25\na 2,5\n";
  TAP_CHECK(ob_prom_parse(t, 15, NULL, w, 1, &err_line, &why) == 0 && w[0].value == 15.25,
            "values under %s (decimal comma) read as in C", got);
  TAP_EQ_INT(PARSE(t, NULL, w), OB_ERR_BAD_RESPONSE, "and a decimal comma is still malformed");
  setlocale(LC_NUMERIC, "C");
}

int main(void) {
  test_vllm();
  test_vllm_v0();
  test_sglang();
  test_values();
  test_malformed();
  test_accepted();
  test_bounds();
  test_locale();
  return tap_done();
}
