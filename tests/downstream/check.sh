#!/bin/sh
# downstream.install_and_use: weft as a user's project meets it.
#
#   check.sh SOURCE_DIR BUILD_DIR CMAKE
#
# 1. Installs BUILD_DIR (a built release tree) into a temporary prefix and
#    checks what the install holds (header, both libraries with a versioned
#    SONAME, the CMake package, weft.pc).
# 2. Builds tests/downstream against it with find_package(weft): C11, C17
#    and C++17 programs in strict ISO mode, shared and static, and runs them.
# 3. Builds README's first program with pkg-config, in strict C11, as
#    README says: with LD_LIBRARY_PATH, and with an rpath.
# 4. Builds tests/downstream with add_subdirectory(weft) while pkg-config
#    cannot see cmocka: the library alone must build, and no test, sample or
#    benchmark with it.
# Exits 0 when all holds; prints what failed otherwise.
set -u
src=$1 build=$2 cmake=$3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/weft-downstream.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "downstream: $*" >&2
  exit 1
}
say() { echo "-- $*"; }

# expect BINARY: runs BINARY (60 s at most) and checks it prints what
# tests/downstream/main.c prints.
expect() {
  out=$(timeout 60 "$@" 2>&1) || { echo "$out"; fail "$* failed or hung"; }
  echo "$out" | sed 's/^/   | /'
  echo "$out" | grep -q '^hello from weft [0-9]' &&
    echo "$out" | grep -q '^gathered 3 sleeps in [0-9]* ms' ||
    fail "$* did not print the expected lines"
}

# 1. The install.
prefix=$tmp/prefix
say "installing $build into a temporary prefix"
"$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log" ||
  { cat "$tmp/install.log"; fail "cmake --install failed"; }
pc=$(find "$prefix" -path '*/pkgconfig/weft.pc' | head -n 1)
[ -n "$pc" ] || fail "the install has no weft.pc"
libdir=$(dirname "$(dirname "$pc")")
for f in "$prefix/include/weft.h" "$libdir/libweft.a" "$libdir/libweft.so" \
  "$libdir/cmake/weft/weftConfig.cmake" "$libdir/cmake/weft/weftConfigVersion.cmake" \
  "$libdir/cmake/weft/weftTargets.cmake"; do
  [ -e "$f" ] || fail "the install has no ${f#"$prefix"/}"
done
objdump -p "$libdir/libweft.so" >"$tmp/objdump.txt" || fail "objdump failed"
grep -q 'SONAME *libweft\.so\.[0-9]' "$tmp/objdump.txt" || fail "libweft.so has no versioned SONAME"

# 2. find_package(weft).
say "tests/downstream with find_package(weft): C11, C17, C++17, shared and static"
"$cmake" -S "$src/tests/downstream" -B "$tmp/fp" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$tmp/fp.log" 2>&1 &&
  "$cmake" --build "$tmp/fp" -j 2 >>"$tmp/fp.log" 2>&1 ||
  { cat "$tmp/fp.log"; fail "the find_package(weft) build failed"; }
for exe in hello hello_c17 hello_cxx; do
  LD_LIBRARY_PATH=$libdir expect "$tmp/fp/$exe"
  LD_LIBRARY_PATH=$libdir ldd "$tmp/fp/$exe" | grep -qF "$libdir/libweft.so" ||
    fail "$exe is not linked against the installed libweft.so"
done
expect "$tmp/fp/hello_static"

# 3. README's command line through pkg-config, in strict C11.
say "README's first program with pkg-config (cc -std=c11 -Wpedantic)"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
flags=$(pkg-config --cflags --libs weft) || fail "pkg-config --cflags --libs weft failed"
echo "   cc -std=c11 main.c $flags"
# shellcheck disable=SC2086 # the flags are meant to be split
cc -std=c11 -Wall -Wextra -Wpedantic -Werror "$src/tests/downstream/main.c" $flags \
  -o "$tmp/hello-pc" || fail "the pkg-config build failed"
LD_LIBRARY_PATH=$libdir expect "$tmp/hello-pc"
# shellcheck disable=SC2086
cc -std=c11 "$src/tests/downstream/main.c" $flags \
  -Wl,-rpath,"$(pkg-config --variable=libdir weft)" -o "$tmp/hello-rpath" ||
  fail "the pkg-config build with an rpath failed"
env -u LD_LIBRARY_PATH "$tmp/hello-rpath" >/dev/null || fail "the rpath build does not run"
unset PKG_CONFIG_PATH

# 4. add_subdirectory(weft), with cmocka out of pkg-config's sight.
say "tests/downstream with add_subdirectory(weft), no cmocka visible"
uvpc=$(pkg-config --variable=pcfiledir libuv) || fail "pkg-config cannot find libuv"
mkdir -p "$tmp/pc" && cp "$uvpc/libuv.pc" "$tmp/pc/" || fail "cannot copy libuv.pc"
if PKG_CONFIG_LIBDIR=$tmp/pc pkg-config --exists cmocka; then
  fail "cmocka is still visible to pkg-config"
fi
PKG_CONFIG_LIBDIR=$tmp/pc "$cmake" -S "$src/tests/downstream" -B "$tmp/sub" \
  -DWEFT_SOURCE_DIR="$src" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$tmp/sub.log" 2>&1 &&
  "$cmake" --build "$tmp/sub" -j 2 >>"$tmp/sub.log" 2>&1 ||
  { cat "$tmp/sub.log"; fail "the add_subdirectory(weft) build failed"; }
expect "$tmp/sub/hello"
expect "$tmp/sub/hello_cxx"
extra=$(find "$tmp/sub/weft" -type f -perm -u+x \( -name 'test_*' -o -name echo_server \
  -o -name weft-bench -o -name timeline \) | head -n 3)
[ -z "$extra" ] || fail "add_subdirectory(weft) built more than the library: $extra"
say "all downstream builds passed"
