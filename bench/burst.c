/* burst: a cold burst of tasks in a fresh process, the figure a server's
 * first wave of connections sees. N tasks (argv[1], default 100000) are
 * spawned on one loop, task i sleeps (i % 1000) ms, and all are gathered.
 * Prints `burst_ms N <wall ms>` (first spawn to gather's return) and
 * `burst_rss_per_task N <bytes>` (peak resident memory, VmHWM, less the
 * resident memory before the first spawn, per task). bench/burst.sh runs
 * it beside bench/go/burst.go, the same program with goroutines, each in a
 * process of its own; `./run bench` calls that. Default loop options: the
 * point is what an application that sets nothing gets. By hand,
 * `burst N KIB` runs the same with KIB KiB stacks (weft_loop_opts_t), to
 * weigh the default stack size.
 *
 * Also `burst_pte_per_task N <bytes>`: the page tables the process had
 * (VmPTE) at the most, sampled as each 65536th task first runs, less
 * those before the first spawn, per task. They are not in the RSS, and
 * they grow with the address space the stacks and their guards span. */
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
static long g_pte_before, g_pte_max;

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
  uintptr_t i = (uintptr_t)arg;
  if (i % 65536 == 0) {
    long pte = status_kb("VmPTE:");
    if (pte > g_pte_max)
      g_pte_max = pte;
  }
  weft_sleep(i % 1000);
  return NULL;
}

static void *burst_main(void *arg) {
  (void)arg;
  int err;

  g_rss_before = status_kb("VmRSS:");
  g_pte_before = status_kb("VmPTE:");
  uint64_t t0 = uv_hrtime();
  for (size_t i = 0; i < g_n; i++)
    if ((err = weft_spawn(NULL, sleeper, (void *)(uintptr_t)i, &g_tasks[i])) != 0) {
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
  size_t stack_kib = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
  if (g_n == 0 || argc > 3) {
    fprintf(stderr, "usage: burst [N [STACK_KIB]]\n");
    return 2;
  }
  g_tasks = calloc(g_n, sizeof *g_tasks);
  if (!g_tasks) {
    perror("burst: calloc");
    return 1;
  }
  if (stack_kib == 0) {
    err = weft_run(burst_main, NULL, NULL);
  } else {
    weft_loop_opts_t opts = {.stack_size = stack_kib * 1024};
    weft_loop_t *loop;
    weft_task_t *t;
    if ((err = weft_loop_new(&loop, &opts)) == 0) {
      if ((err = weft_spawn(loop, burst_main, NULL, &t)) == 0) {
        err = weft_loop_run_until_complete(loop, t, NULL);
        weft_task_release(t);
      }
      weft_loop_close(loop);
    }
  }
  if (err != 0) {
    fprintf(stderr, "burst: %s\n", weft_strerror(err));
    return 1;
  }
  long hwm = status_kb("VmHWM:");
  printf("burst_ms %zu %.0f ms\n", g_n, g_ms);
  printf("burst_rss_per_task %zu %.0f bytes\n", g_n,
         (double)(hwm - g_rss_before) * 1024.0 / (double)g_n);
  printf("burst_pte_per_task %zu %.0f bytes\n", g_n,
         (double)(g_pte_max - g_pte_before) * 1024.0 / (double)g_n);
  free(g_tasks);
  return 0;
}
