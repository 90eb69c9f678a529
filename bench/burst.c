/* burst: a cold burst of tasks in a fresh process, the figure a server's
 * first wave of connections sees. N tasks (argv[1], default 100000) are
 * spawned on one loop, task i sleeps (i % 1000) ms, and all are gathered.
 * Prints `burst_ms N <wall ms>` (first spawn to gather's return) and
 * `burst_rss_per_task N <bytes>` (peak resident memory, VmHWM, less the
 * resident memory before the first spawn, per task). bench/burst.sh runs
 * it beside bench/go/burst.go, the same program with goroutines, each in a
 * process of its own; `./run bench` calls that. Default loop options: the
 * point is what an application that sets nothing gets. */
#define _GNU_SOURCE

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "weft.h"

static size_t g_n;
static weft_task_t **g_tasks;
static double g_ms;
static long g_rss_before;

/* A field of /proc/self/status in kB ("VmRSS:", "VmHWM:"), or -1. */
static long status_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  size_t len = strlen(field);

  if (!f)
    return -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, len) == 0) {
      kb = strtol(line + len, NULL, 10);
      break;
    }
  fclose(f);
  return kb;
}

static void *sleeper(void *arg) {
  weft_sleep((uint64_t)(uintptr_t)arg);
  return NULL;
}

static void *burst_main(void *arg) {
  (void)arg;
  int err;

  g_rss_before = status_kb("VmRSS:");
  uint64_t t0 = uv_hrtime();
  for (size_t i = 0; i < g_n; i++)
    if ((err = weft_spawn(NULL, sleeper, (void *)(uintptr_t)(i % 1000), &g_tasks[i])) != 0) {
      fprintf(stderr, "burst: weft_spawn of task %zu: %s\n", i, weft_strerror(err));
      exit(1);
    }
  if ((err = weft_gather(g_tasks, g_n, NULL, NULL)) != 0) {
    fprintf(stderr, "burst: weft_gather: %s\n", weft_strerror(err));
    exit(1);
  }
  g_ms = (double)(uv_hrtime() - t0) / 1e6;
  for (size_t i = 0; i < g_n; i++)
    weft_task_release(g_tasks[i]);
  return NULL;
}

int main(int argc, char **argv) {
  int err;

  g_n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
  if (g_n == 0) {
    fprintf(stderr, "usage: burst [N]\n");
    return 2;
  }
  g_tasks = calloc(g_n, sizeof *g_tasks);
  if (!g_tasks) {
    perror("burst: calloc");
    return 1;
  }
  if ((err = weft_run(burst_main, NULL, NULL)) != 0) {
    fprintf(stderr, "burst: weft_run: %s\n", weft_strerror(err));
    return 1;
  }
  long hwm = status_kb("VmHWM:");
  printf("burst_ms %zu %.0f ms\n", g_n, g_ms);
  printf("burst_rss_per_task %zu %.0f bytes\n", g_n,
         (double)(hwm - g_rss_before) * 1024.0 / (double)g_n);
  free(g_tasks);
  return 0;
}
