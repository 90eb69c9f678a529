# Toolchain file of the aarch64 preset: builds for 64-bit Arm Linux and runs
# the result under qemu-user, so the aarch64 assembly switch is tested on
# every run, not only on aarch64 machines. The preset builds only
# tests/test_switch.c (WEFT_ARCH_TEST_ONLY): it needs nothing but a C
# library, so it is linked statically and no aarch64 libuv is needed.
#
# Debian packages: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross (the C
# library's headers and static archive, only a Recommends of the compiler)
# and qemu-user. On an aarch64 host the native compiler runs it directly.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
if(NOT CMAKE_HOST_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
  set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
  set(CMAKE_ASM_COMPILER aarch64-linux-gnu-gcc)
  set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
  set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
  set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
  set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
  set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
endif()
set(CMAKE_EXE_LINKER_FLAGS_INIT -static)
