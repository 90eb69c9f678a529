#!/bin/sh
# downstream.install_and_use: weft as a user's project meets it.
#
#   check.sh SOURCE_DIR BUILD_DIR CMAKE [TLS]
#
# TLS is 1 when BUILD_DIR built weft_tls, 0 when not (tests/CMakeLists.txt
# passes it); without it the install is asked (weft-tls.pc in it or not).
#
# 1. Installs BUILD_DIR (a built release tree) into a temporary prefix and
#    checks what the install holds (header, both libraries with a versioned
#    SONAME, the CMake package, weft.pc; with TLS, weft_tls.h,
#    libweft-tls.a and weft-tls.pc, and without it none of them).
# 2. Builds tests/downstream against it with find_package(weft): C11, C17
#    and C++17 programs in strict ISO mode, shared and static, and runs them;
#    with TLS also hello_tls (tests/downstream/tls.c) against weft::tls.
# 3. Builds README's first program with pkg-config, in strict C11, as
#    README says: with LD_LIBRARY_PATH, and with an rpath; with TLS, tls.c
#    the same way with pkg-config weft-tls.
# 4. Builds tests/downstream with add_subdirectory(weft) while pkg-config
#    cannot see cmocka: the library alone must build, and no test, sample or
#    benchmark with it (with TLS, weft_tls and hello_tls too).
# All along, no program that uses weft alone (weft::weft, weft.pc) may link
# OpenSSL: weft_tls is a library of its own so that they need not.
# Exits 0 when all holds; prints what failed otherwise.
set -u
src=$1 build=$2 cmake=$3 tls=${4:-}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/weft-downstream.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "downstream: $*" >&2
  exit 1
}
say() { echo "-- $*"; }

# expect_lines RE1 RE2 BINARY...: runs BINARY (60 s at most) and checks
# it prints a line matching RE1 and one matching RE2.
expect_lines() {
  re1=$1 re2=$2
  shift 2
  out=$(timeout 60 "$@" 2>&1) || { echo "$out"; fail "$* failed or hung"; }
  echo "$out" | sed 's/^/   | /'
  echo "$out" | grep -q "$re1" && echo "$out" | grep -q "$re2" ||
    fail "$* did not print the expected lines"
}

# expect BINARY: what tests/downstream/main.c prints.
expect() { expect_lines '^hello from weft [0-9]' '^gathered 3 sleeps in [0-9]* ms' "$@"; }

# expect_tls BINARY: what tests/downstream/tls.c prints, whose handshake
# with a plain-text server must fail as TLS (WEFT_ETLS, with a reason).
expect_tls() { expect_lines '^hello from weft_tls [0-9]' '^refused as TLS should be' "$@"; }

# needed FILE: the shared libraries FILE names (DT_NEEDED), one a line.
needed() {
  objdump -p "$1" | sed -n 's/^ *NEEDED *//p'
}

# no_openssl FILE...: weft alone must not bring OpenSSL in.
no_openssl() {
  for f in "$@"; do
    [ -e "$f" ] || fail "no_openssl: no $f"
    if needed "$f" | grep -E '^lib(ssl|crypto)\.'; then
      fail "${f#"$tmp"/} uses weft alone but links OpenSSL"
    fi
  done
}

# has_openssl FILE: a weft_tls program does link it (so no_openssl's
# silence means something).
has_openssl() {
  needed "$1" | grep -q '^libssl\.' || fail "${1#"$tmp"/} does not link libssl"
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
no_openssl "$libdir/libweft.so"
# Was weft built with TLS? The build says (tests/CMakeLists.txt passes it);
# run by hand, the install does.
if [ -z "$tls" ]; then
  if [ -e "$libdir/pkgconfig/weft-tls.pc" ]; then tls=1; else tls=0; fi
fi
tls_files="$prefix/include/weft_tls.h $libdir/libweft-tls.a $libdir/pkgconfig/weft-tls.pc"
if [ "$tls" = 1 ]; then
  for f in $tls_files; do
    [ -e "$f" ] || fail "weft was built with TLS, but the install has no ${f#"$prefix"/}"
  done
  say "weft was built with TLS: weft_tls is checked too"
else
  # An install must not offer what was not built.
  for f in $tls_files; do
    [ ! -e "$f" ] || fail "weft was built without TLS, but the install has ${f#"$prefix"/}"
  done
  say "weft was built without TLS (no OpenSSL 3, or WEFT_TLS=OFF): weft_tls is not checked"
fi
expect_tls_on=OFF
[ "$tls" = 1 ] && expect_tls_on=ON

# 2. find_package(weft).
say "tests/downstream with find_package(weft): C11, C17, C++17, shared and static"
"$cmake" -S "$src/tests/downstream" -B "$tmp/fp" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWEFT_EXPECT_TLS=$expect_tls_on >"$tmp/fp.log" 2>&1 &&
  "$cmake" --build "$tmp/fp" -j 2 >>"$tmp/fp.log" 2>&1 ||
  { cat "$tmp/fp.log"; fail "the find_package(weft) build failed"; }
for exe in hello hello_c17 hello_cxx; do
  LD_LIBRARY_PATH=$libdir expect "$tmp/fp/$exe"
  LD_LIBRARY_PATH=$libdir ldd "$tmp/fp/$exe" | grep -qF "$libdir/libweft.so" ||
    fail "$exe is not linked against the installed libweft.so"
done
expect "$tmp/fp/hello_static"
no_openssl "$tmp/fp/hello" "$tmp/fp/hello_c17" "$tmp/fp/hello_cxx" "$tmp/fp/hello_static"
if [ "$tls" = 1 ]; then
  say "tls.c with find_package(weft): weft::tls alone, and weft::weft with weft::tls"
  expect_tls "$tmp/fp/hello_tls"
  has_openssl "$tmp/fp/hello_tls"
  LD_LIBRARY_PATH=$libdir expect_tls "$tmp/fp/hello_tls_shared"
  has_openssl "$tmp/fp/hello_tls_shared"
  # weft::tls brings libweft.a along: with weft::weft beside it, libweft.so
  # must serve every weft call, and no second copy of weft (its loops, its
  # thread-locals) may come from the archive.
  needed "$tmp/fp/hello_tls_shared" | grep -q '^libweft\.so\.' ||
    fail "hello_tls_shared does not link libweft.so"
  if nm --defined-only "$tmp/fp/hello_tls_shared" | grep -E ' T weft_(run|spawn)$'; then
    fail "hello_tls_shared holds a static copy of weft beside libweft.so"
  fi
fi

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
case " $flags " in
  *' -lssl '* | *' -lcrypto '*) fail "pkg-config --libs weft names OpenSSL: $flags" ;;
esac
no_openssl "$tmp/hello-pc" "$tmp/hello-rpath"
if [ "$tls" = 1 ]; then
  say "tls.c with pkg-config weft-tls (cc -std=c11 -Wpedantic, an rpath)"
  tflags=$(pkg-config --cflags --libs weft-tls) || fail "pkg-config --cflags --libs weft-tls failed"
  echo "   cc -std=c11 tls.c $tflags"
  # shellcheck disable=SC2086
  cc -std=c11 -Wall -Wextra -Wpedantic -Werror "$src/tests/downstream/tls.c" $tflags \
    -Wl,-rpath,"$(pkg-config --variable=libdir weft-tls)" -o "$tmp/hello-tls-pc" ||
    fail "the pkg-config weft-tls build failed"
  expect_tls env -u LD_LIBRARY_PATH "$tmp/hello-tls-pc"
  has_openssl "$tmp/hello-tls-pc"
fi
unset PKG_CONFIG_PATH

# 4. add_subdirectory(weft), with cmocka out of pkg-config's sight. WEFT_TLS
# follows the build under test, so that a build without TLS is checked
# without it here too (weft would otherwise build weft_tls wherever OpenSSL
# 3 is found).
say "tests/downstream with add_subdirectory(weft), no cmocka visible"
uvpc=$(pkg-config --variable=pcfiledir libuv) || fail "pkg-config cannot find libuv"
mkdir -p "$tmp/pc" && cp "$uvpc/libuv.pc" "$tmp/pc/" || fail "cannot copy libuv.pc"
if PKG_CONFIG_LIBDIR=$tmp/pc pkg-config --exists cmocka; then
  fail "cmocka is still visible to pkg-config"
fi
PKG_CONFIG_LIBDIR=$tmp/pc "$cmake" -S "$src/tests/downstream" -B "$tmp/sub" \
  -DWEFT_SOURCE_DIR="$src" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWEFT_EXPECT_TLS=$expect_tls_on \
  -DWEFT_TLS=$expect_tls_on >"$tmp/sub.log" 2>&1 &&
  "$cmake" --build "$tmp/sub" -j 2 >>"$tmp/sub.log" 2>&1 ||
  { cat "$tmp/sub.log"; fail "the add_subdirectory(weft) build failed"; }
expect "$tmp/sub/hello"
expect "$tmp/sub/hello_cxx"
no_openssl "$tmp/sub/hello" "$tmp/sub/hello_cxx"
if [ "$tls" = 1 ]; then
  expect_tls "$tmp/sub/hello_tls"
  has_openssl "$tmp/sub/hello_tls"
fi
extra=$(find "$tmp/sub/weft" -type f -perm -u+x \( -name 'test_*' -o -name echo_server \
  -o -name weft-bench -o -name timeline \) | head -n 3)
[ -z "$extra" ] || fail "add_subdirectory(weft) built more than the library: $extra"
say "all downstream builds passed"
