// weft from C++17: the same program as main.c, to show that weft.h compiles
// as C++ (its declarations are extern "C") and that its calls work from a
// C++ program. A task body must not let an exception escape: weft cannot
// unwind a C++ exception across a task switch, so one that escapes a task
// ends the process (std::terminate).
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <weft.h>

namespace {

void *nap(void *arg) {
  auto ms = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(arg));
  int err = weft_sleep(ms);
  if (err != 0) {
    weft_task_fail(err);
    return nullptr;
  }
  std::printf("  slept %" PRIu64 " ms\n", ms);
  return arg;
}

void *hello(void *) {
  static const std::uint64_t naps[3] = {300, 100, 200};
  weft_task_t *tasks[3] = {};
  std::size_t n = 0;
  int err = 0;

  std::printf("hello from weft %s\n", weft_version_string());
  std::uint64_t start = uv_hrtime();
  for (; n < 3; n++) {
    err = weft_spawn(nullptr, nap, reinterpret_cast<void *>(static_cast<std::uintptr_t>(naps[n])),
                     &tasks[n]);
    if (err != 0)
      break;
  }
  if (err == 0)
    err = weft_gather(tasks, n, nullptr, nullptr);
  std::uint64_t ms = (uv_hrtime() - start) / 1000000;
  while (n > 0)
    weft_task_release(tasks[--n]);
  if (err != 0) {
    weft_task_fail(err);
    return nullptr;
  }
  std::printf("gathered 3 sleeps in %" PRIu64 " ms (the longest is 300 ms, the sum 600 ms)\n", ms);
  return nullptr;
}

} // namespace

int main() {
  int err = weft_run(hello, nullptr, nullptr);
  if (err != 0) {
    std::fprintf(stderr, "weft_run: %s\n", weft_strerror(err));
    return 1;
  }
  return 0;
}
