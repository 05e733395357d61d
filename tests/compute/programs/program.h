// What the end-to-end programs share: "name value" report lines and raw binary files in and
// out (the test writes the inputs with numpy and checks the outputs against numpy).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

// report a runtime call's result as "name code"
#define REPORT(name, call) std::printf("%s %d\n", name, (int)(call))

static void *read_file(const char *path, size_t bytes) {
  void *data = std::malloc(bytes);
  FILE *file = std::fopen(path, "rb");
  if (!file || std::fread(data, 1, bytes, file) != bytes) {
    std::printf("read_failed %s\n", path);
    std::exit(2);
  }
  std::fclose(file);
  return data;
}

static void write_file(const char *path, const void *data, size_t bytes) {
  FILE *file = std::fopen(path, "wb");
  if (!file || std::fwrite(data, 1, bytes, file) != bytes) {
    std::printf("write_failed %s\n", path);
    std::exit(2);
  }
  std::fclose(file);
}
