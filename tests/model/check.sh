#!/bin/sh
# check.sh: runs one SPIN model check for ctest (tests/model/CMakeLists.txt).
#
#   check.sh SPIN CC WORKDIR EXPECT MODE MODEL [SPIN_OPTION...]
#
# SPIN is the spin program (if it is not executable, spin is looked up in
# PATH), CC the C compiler for SPIN's verifier. WORKDIR is emptied and
# receives copies of the models beside MODEL, the verifier (pan) and, when
# an error is found, its trail, so that the error can be replayed there with
#   spin SPIN_OPTION... [-DLIVENESS] -t -p -g -l MODEL_NAME
# MODE is safety (assertions, the never claim's invariant and invalid end
# states) or liveness (the model's LTL property, with -DLIVENESS). EXPECT is
# holds (passes if the search was complete and found no error) or violated
# (passes if it found an error of the kind MODE checks). SPIN_OPTION... go
# to spin, e.g. -DNPROD=3.
#
# Exits 0 on a pass, 1 on a failure, and 77 (ctest's SKIP_RETURN_CODE) when
# spin is not installed.

if [ $# -lt 6 ]; then
  echo "usage: check.sh SPIN CC WORKDIR EXPECT MODE MODEL [SPIN_OPTION...]" >&2
  exit 1
fi
spin=$1 cc=$2 work=$3 expect=$4 mode=$5 model=$6
shift 6

if [ ! -x "$spin" ]; then
  spin=$(command -v spin) || {
    echo "SKIP: spin is not installed (Debian: apt-get install spin), so this model check did not run"
    exit 77
  }
fi

case $expect in
  holds | violated) ;;
  *) echo "check.sh: EXPECT must be holds or violated, not '$expect'" >&2; exit 1 ;;
esac
case $mode in
  safety) cflags=-DSAFETY panflags='' kind='assertion violated' ;;
  liveness) cflags='' panflags=-a kind='acceptance cycle'; set -- "$@" -DLIVENESS ;;
  *) echo "check.sh: MODE must be safety or liveness, not '$mode'" >&2; exit 1 ;;
esac

name=$(basename "$model")
rm -rf "$work" && mkdir -p "$work" && cp "$(dirname "$model")"/*.pml "$work"/ || exit 1
cd "$work" || exit 1

echo "== $mode check of $name $*, expected to be $expect"
echo "$ spin $* -a $name"
"$spin" "$@" -a "$name" || { echo "FAIL: spin could not generate the verifier"; exit 1; }
# MEMLIM (MB) makes pan stop, and say so, rather than swap.
echo "$ $cc -O2 -w $cflags -DMEMLIM=2048 -o pan pan.c"
"$cc" -O2 -w $cflags -DMEMLIM=2048 -o pan pan.c || { echo "FAIL: the verifier did not compile"; exit 1; }
echo "$ ./pan -m100000 $panflags"
./pan -m100000 $panflags >pan.out 2>&1
cat pan.out

# A search that stopped short proves nothing either way.
if grep -q 'max search depth too small' pan.out; then
  echo "FAIL: the search was cut off at its depth limit (raise -m)"
  exit 1
fi
if grep -q -e 'MEMLIM' -e 'out of memory' pan.out; then
  echo "FAIL: the verifier ran out of memory (make the model smaller)"
  exit 1
fi
errors=$(sed -n 's/.*errors: \([0-9][0-9]*\).*/\1/p' pan.out)
if [ -z "$errors" ]; then
  echo "FAIL: the verifier did not finish (no 'errors:' line)"
  exit 1
fi

replay() {
  echo "== the end of the counterexample (spin $* -t -p -g -l $name, in $work)"
  "$spin" "$@" -t -p -g -l "$name" 2>&1 | tail -n 60
}

if [ "$expect" = holds ]; then
  if [ "$errors" != 0 ]; then
    replay "$@"
    echo "FAIL: SPIN found $errors error(s) in a model that must hold"
    exit 1
  fi
  # Guard against a vacuous pass: in the safety model every statement of
  # every process, the final assertion included, must be reachable. (The
  # never claim's end is unreachable by design, and the liveness model
  # leaves the final assertion out.)
  if [ "$mode" = safety ]; then
    unreached=$(awk '/^unreached in proctype/ { p = 1; next }
                     /^unreached in/ { p = 0; next }
                     p && /\([0-9]+ of [0-9]+ states\)/ {
                       sub(/^[^(]*\(/, ""); if ($1 != 0) n += $1 }
                     END { print n + 0 }' pan.out)
    if [ "$unreached" != 0 ]; then
      echo "FAIL: $unreached statement(s) of the model are unreachable, so the check may be vacuous"
      exit 1
    fi
  fi
  echo "PASS: no error in the complete search"
  exit 0
fi

if [ "$errors" = 0 ]; then
  echo "FAIL: SPIN found no error in a model with a known bug: the check cannot see it"
  exit 1
fi
if ! grep -q "$kind" pan.out; then
  echo "FAIL: SPIN found an error, but not an $kind"
  exit 1
fi
replay "$@"
echo "PASS: SPIN found the injected bug ($kind)"
exit 0
