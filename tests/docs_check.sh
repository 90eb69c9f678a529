#!/bin/sh
# docs.readme_agrees: README.md says what the code does.
#
#   docs_check.sh SOURCE_DIR
#
# 1. README's first program (the C block after <!-- first-program -->) is
#    tests/downstream/main.c word for word, which the downstream check builds
#    and runs.
# 2. Every weft_ function README's asyncio table names is declared in
#    include/weft.h, unless its row says "planned"; and a row that says
#    "planned" names at least one function weft.h does not declare yet. In
#    the table a name that starts with `_` takes the noun of the full name
#    before it (`weft_sem_try_acquire` / `_post` is weft_sem_post), and
#    `weft_chan_*` stands for at least one weft_chan_ function.
set -u
src=$1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/weft-docs.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
status=0

awk '/<!-- first-program -->/ { armed = 1; next }
     armed && /^```c$/ { inside = 1; next }
     inside && /^```$/ { exit }
     inside { print }' "$src/README.md" >"$tmp/first.c"
if ! cmp -s "$tmp/first.c" "$src/tests/downstream/main.c"; then
  echo "README.md's first program differs from tests/downstream/main.c:"
  diff -u "$src/tests/downstream/main.c" "$tmp/first.c" | head -n 40
  status=1
fi

# The functions weft.h declares, one per line.
grep '^WEFT_API' "$src/include/weft.h" | grep -o 'weft_[a-z0-9_]*(' | tr -d '(' |
  sort -u >"$tmp/declared"
[ -s "$tmp/declared" ] || { echo "no WEFT_API declarations found in weft.h"; exit 1; }

# Each table row as: ROW-NUMBER PLANNED NAME..., the names expanded.
awk -F'|' '
  /^## asyncio and weft, side by side/ { on = 1; next }
  on && /^## / { exit }
  on && /^\| / {
    row++
    planned = ($4 ~ /planned/) ? 1 : 0
    line = $3; out = ""; prev = ""
    while (match(line, /`[^`]*`/)) {
      code = substr(line, RSTART + 1, RLENGTH - 2)
      line = substr(line, RSTART + RLENGTH)
      while (match(code, /(weft_[a-z0-9_]*[a-z0-9*]|^_[a-z0-9_]*[a-z0-9])/)) {
        name = substr(code, RSTART, RLENGTH)
        code = substr(code, RSTART + RLENGTH)
        if (name ~ /^_/ && prev != "") {
          match(prev, /^weft_[a-z0-9]+/); name = substr(prev, 1, RLENGTH) name
        }
        if (name !~ /^_/) { out = out " " name; prev = name }
      }
    }
    if (out != "") print row, planned out
  }' "$src/README.md" >"$tmp/rows"
[ -s "$tmp/rows" ] || { echo "README.md's asyncio table was not found"; exit 1; }

while read -r row planned names; do
  missing="" present=""
  for name in $names; do
    case $name in
      *\*) found=$(grep -c "^${name%\*}" "$tmp/declared") ;;
      *) found=$(grep -cx "$name" "$tmp/declared") ;;
    esac
    if [ "$found" -gt 0 ]; then present="$present $name"; else missing="$missing $name"; fi
  done
  if [ "$planned" = 0 ] && [ -n "$missing" ]; then
    echo "README.md's table, row $row: weft.h declares no$missing"
    status=1
  fi
  if [ "$planned" = 1 ] && [ -z "$missing" ]; then
    echo "README.md's table, row $row: marked planned, but weft.h declares$present"
    status=1
  fi
done <"$tmp/rows"
[ "$status" = 0 ] && echo "README.md agrees with weft.h and tests/downstream/main.c ($(wc -l <"$tmp/rows") table rows)"
exit "$status"
