/*
 * sim_metrics: GET /metrics of obleth-sim, in vLLM's Prometheus names, types
 * and label (model_name), text format 0.0.4 as prometheus_client writes it:
 * one # HELP and one # TYPE line per family, counters named with their
 * _total. It owns the time to first token histogram; the pool gauges come
 * from one sim_pool_stat() snapshot and the token counters from sim_stats,
 * so the numbers are the ones /sim/stats shows. It touches no connection.
 *
 * Families (what the capacity controller of issue 17 reads, and what a
 * vLLM dashboard would show):
 *   vllm:num_requests_running     gauge    sequences holding a slot
 *   vllm:num_requests_waiting     gauge    waiting, preempted ones included
 *   vllm:kv_cache_usage_perc      gauge    kv_tokens_used / kv_tokens_total,
 *                                          0..1; 0 with an unlimited cache
 *   vllm:gpu_cache_usage_perc     gauge    the same value, vLLM's older name
 *   vllm:num_preemptions_total    counter
 *   vllm:prompt_tokens_total      counter  each sequence's prompt, once
 *   vllm:generation_tokens_total  counter  every generated token
 *   vllm:time_to_first_token_seconds histogram, vLLM's buckets; from the
 *                                          request's arrival (after
 *                                          x-sim-delay-ms) to its first
 *                                          token, queueing included
 * Counters restart from zero on /sim/reset, as after a process restart.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "sim.h"

/* vLLM's buckets for vllm:time_to_first_token_seconds, as written in "le". */
static const char *const le_text[] = {
  "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75",
  "1.0", "2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "160.0", "640.0", "2560.0",
};
static const uint64_t le_us[] = {
  1000, 5000, 10000, 20000, 40000, 60000, 80000, 100000, 250000, 500000, 750000,
  1000000, 2500000, 5000000, 7500000, 10000000, 20000000, 40000000, 80000000, 160000000,
  640000000, 2560000000ULL,
};
#define N_LE (sizeof le_us / sizeof le_us[0])

/* Under one mutex so that a scrape sees the buckets, the sum and the count
 * of the same set of observations. */
static struct {
  pthread_mutex_t mu;
  uint64_t bucket[N_LE]; /* not cumulative; summed when rendered */
  uint64_t count;
  uint64_t sum_us;
} ttft = {.mu = PTHREAD_MUTEX_INITIALIZER};

void sim_metrics_ttft(uint64_t us) {
  size_t i = 0;
  while (i < N_LE && us > le_us[i]) i++;
  pthread_mutex_lock(&ttft.mu);
  if (i < N_LE) ttft.bucket[i]++;
  ttft.count++;
  ttft.sum_us += us;
  pthread_mutex_unlock(&ttft.mu);
}

void sim_metrics_reset(void) {
  pthread_mutex_lock(&ttft.mu);
  memset(ttft.bucket, 0, sizeof ttft.bucket);
  ttft.count = 0;
  ttft.sum_us = 0;
  pthread_mutex_unlock(&ttft.mu);
}

/* A label value: backslash, double quote and newline escaped. */
static void label_value(ob_buf_t *b, const char *s) {
  ob_buf_append(b, "\"", 1);
  for (; *s; s++) {
    if (*s == '\\') ob_buf_append(b, "\\\\", 2);
    else if (*s == '"') ob_buf_append(b, "\\\"", 2);
    else if (*s == '\n') ob_buf_append(b, "\\n", 2);
    else ob_buf_append(b, s, 1);
  }
  ob_buf_append(b, "\"", 1);
}

static void family(ob_buf_t *b, const char *name, const char *type, const char *help) {
  ob_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample: name{model_name="..."} value. */
static void sample(ob_buf_t *b, const char *name, const char *value) {
  ob_buf_printf(b, "%s{model_name=", name);
  label_value(b, sim_cfg.model);
  ob_buf_printf(b, "} %s\n", value);
}

static void sample_u64(ob_buf_t *b, const char *name, uint64_t v) {
  char num[32];
  snprintf(num, sizeof num, "%llu", (unsigned long long)v);
  sample(b, name, num);
}

void sim_metrics_render(ob_buf_t *b) {
  sim_pool_stat_t ps;
  sim_pool_stat(&ps);
  double usage = ps.kv_total > 0 ? (double)ps.kv_used / (double)ps.kv_total : 0.0;
  if (usage > 1.0) usage = 1.0; /* cannot happen; the gauge is 0..1 */
  char num[64];
  snprintf(num, sizeof num, "%.17g", usage);

  family(b, "vllm:num_requests_running", "gauge",
         "Number of requests in model execution batches.");
  sample_u64(b, "vllm:num_requests_running", (uint64_t)ps.running);
  family(b, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.");
  sample_u64(b, "vllm:num_requests_waiting", (uint64_t)ps.waiting);
  family(b, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.");
  sample(b, "vllm:kv_cache_usage_perc", num);
  family(b, "vllm:gpu_cache_usage_perc", "gauge",
         "GPU KV-cache usage. 1 means 100 percent usage.");
  sample(b, "vllm:gpu_cache_usage_perc", num);
  family(b, "vllm:num_preemptions_total", "counter",
         "Cumulative number of preemption from the engine.");
  sample_u64(b, "vllm:num_preemptions_total", ps.preemptions);
  family(b, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.");
  sample_u64(b, "vllm:prompt_tokens_total", atomic_load(&sim_stats.prompt_tokens));
  family(b, "vllm:generation_tokens_total", "counter", "Number of generation tokens processed.");
  sample_u64(b, "vllm:generation_tokens_total", atomic_load(&sim_stats.generation_tokens));

  uint64_t bucket[N_LE], count, sum_us;
  pthread_mutex_lock(&ttft.mu);
  memcpy(bucket, ttft.bucket, sizeof bucket);
  count = ttft.count;
  sum_us = ttft.sum_us;
  pthread_mutex_unlock(&ttft.mu);
  const char *h = "vllm:time_to_first_token_seconds";
  family(b, h, "histogram", "Histogram of time to first token in seconds.");
  uint64_t cum = 0;
  for (size_t i = 0; i <= N_LE; i++) {
    cum += i < N_LE ? bucket[i] : 0;
    ob_buf_printf(b, "%s_bucket{model_name=", h);
    label_value(b, sim_cfg.model);
    ob_buf_printf(b, ",le=\"%s\"} %llu\n", i < N_LE ? le_text[i] : "+Inf",
                  (unsigned long long)(i < N_LE ? cum : count));
  }
  snprintf(num, sizeof num, "%llu.%06llu", (unsigned long long)(sum_us / 1000000),
           (unsigned long long)(sum_us % 1000000));
  ob_buf_printf(b, "%s_sum{model_name=", h);
  label_value(b, sim_cfg.model);
  ob_buf_printf(b, "} %s\n", num);
  ob_buf_printf(b, "%s_count{model_name=", h);
  label_value(b, sim_cfg.model);
  ob_buf_printf(b, "} %llu\n", (unsigned long long)count);
}
