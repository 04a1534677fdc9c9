#!/usr/bin/env bash
# libkmem.so under LD_PRELOAD: the C contract test, then real programs (python3, sqlite3,
# redis-server with redis-benchmark, git), each with a checked result and a check that kmem
# served its allocations (KMEM_SHOW_STATS=1). Part of scripts/test.sh.
#
#   bash scripts/preload.sh
#
# Installs the Debian packages it needs (apt-get update once, then apt-get install -y of the
# missing ones) and says which. A package that cannot be had skips its part with a loud
# SKIPPED line locally, and fails the script under CI=true. Servers listen on 127.0.0.1 only,
# requests are bounded, and everything started here is stopped by the trap.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LIB=$TARGET_DIR/release/libkmem.so
WORK=$(mktemp -d /tmp/kmem-preload.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
t0=$SECONDS
say() { printf '  [preload] %s\n' "$*"; }
fail() { printf '  [preload] FAILED: %s\n' "$*" >&2; exit 1; }
skip() {
  if [ "${CI:-}" = "true" ]; then fail "$* (a skip is a failure under CI=true)"; fi
  printf '\n  [preload] *** SKIPPED: %s ***\n\n' "$*"
}

# ---- packages ---------------------------------------------------------------------------
# package -> the file that proves it is installed
declare -A NEED=(
  [gcc]=/usr/bin/gcc [python3]=/usr/bin/python3 [sqlite3]=/usr/bin/sqlite3
  [redis-server]=/usr/bin/redis-server [redis-tools]=/usr/bin/redis-benchmark [git]=/usr/bin/git
)
missing=()
for p in "${!NEED[@]}"; do [ -e "${NEED[$p]}" ] || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]} (apt-get update, apt-get install -y)"
  if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed"
    for p in "${missing[@]}"; do
      if apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1; then
        say "installed $p"
      else
        say "could not install $p"
      fi
    done
  fi
else
  say "packages present: ${!NEED[*]}"
fi
have() { [ -e "${NEED[$1]}" ]; }

# ---- the library ------------------------------------------------------------------------
say "cargo build --release -p kmem-preload"
cargo build --release -p kmem-preload
[ -f "$LIB" ] || fail "$LIB was not built"
for sym in malloc free calloc realloc reallocarray posix_memalign aligned_alloc memalign \
  valloc pvalloc malloc_usable_size free_sized free_aligned_sized; do
  nm -D --defined-only "$LIB" | grep -qw "T $sym" || fail "libkmem.so does not export $sym"
done
say "libkmem.so exports the 13 functions"

# The largest "kmem: served: N kmalloc objects" count in a stats file (0 if none).
served() { grep -o 'kmem: served: [0-9]*' "$1" | awk '{ if ($3 > m) m = $3 } END { print m + 0 }'; }
# Fails unless kmem served at least $2 objects in the run whose stderr is $1.
check_served() {
  local n
  n=$(served "$1")
  [ "$n" -ge "$2" ] || { tail -20 "$1" >&2; fail "$3: kmem served $n kmalloc objects, expected >= $2"; }
  grep -q '^slabinfo - version' "$1" || fail "$3: no slabinfo table in the KMEM_SHOW_STATS output"
  grep -q '^kmem: pages: mapped' "$1" || fail "$3: no page statistics in the KMEM_SHOW_STATS output"
  say "$3: ok (kmem served $n kmalloc objects)"
}
KMEM=(env LD_PRELOAD="$LIB" KMEM_SHOW_STATS=1)

# ---- the C contract ---------------------------------------------------------------------
if have gcc; then
  C=kmem-preload/tests/c
  gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$WORK/libearly.so" "$C/early.c"
  gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$WORK/libplugin.so" "$C/plugin.c"
  gcc -O2 -Wall -Wextra -Werror -DPLUGIN_PATH="\"$WORK/libplugin.so\"" -o "$WORK/contract_test" \
    "$C/contract_test.c" -L"$WORK" -learly -Wl,-rpath,"$WORK" -pthread -ldl
  say "contract_test without kmem (the same contract holds for glibc)"
  KMEM_EXPECT_OTHER=1 "$WORK/contract_test" | tail -1
  say "contract_test under LD_PRELOAD=libkmem.so (with the bootstrap self-test)"
  "${KMEM[@]}" KMEM_BOOTSTRAP_SELFTEST=1 "$WORK/contract_test" 2>"$WORK/c.err" | tee "$WORK/c.out" | tail -1 \
    || { cat "$WORK/c.out" "$WORK/c.err" | grep -v '^kmalloc-' >&2; fail "contract_test"; }
  grep -q 'bootstrap self-test passed' "$WORK/c.err" || fail "the bootstrap self-test did not run"
  grep -Eq 'bootstrap arena: 4 allocations' "$WORK/c.err" || fail "the bootstrap arena count"
  grep -Eq 'routed to the next allocator: ([5-9][0-9]|[1-9][0-9]{2,}) frees' "$WORK/c.err" \
    || fail "contract_test: the foreign frees were not counted"
  check_served "$WORK/c.err" 10000 "contract_test"
  gcc -O2 -Wall -Wextra -Werror -Wno-free-nonheap-object -o "$WORK/bad_free" "$C/bad_free.c"
  for case in "interior:an interior pointer of a kmalloc object" "block:a free kmem page" \
    "slab:double free"; do
    name=${case%%:*}
    # (The braces' 2>/dev/null silences the shell's own "Aborted" report: the abort is expected.)
    if { LD_PRELOAD="$LIB" "$WORK/bad_free" "$name" >"$WORK/bad.out" 2>&1; } 2>/dev/null; then
      fail "bad_free $name: not caught ($(cat "$WORK/bad.out"))"
    fi
    grep -q "${case#*:}" "$WORK/bad.out" || fail "bad_free $name: no message: $(cat "$WORK/bad.out")"
  done
  say "bad frees (interior pointer, page-block and slab double free) abort with a message"
  # slub_debug (KMEM_DEBUG, issue 15): corruption that only the debug checks see.
  for case in "overflow:Right Redzone overwritten" "underflow:Left Redzone overwritten" \
    "uaf:Poison overwritten" "deep:Object already free"; do
    name=${case%%:*}
    if { KMEM_DEBUG=FZPU LD_PRELOAD="$LIB" "$WORK/bad_free" "$name" >"$WORK/bad.out" 2>&1; } 2>/dev/null; then
      fail "KMEM_DEBUG bad_free $name: not caught ($(cat "$WORK/bad.out"))"
    fi
    grep -q "BUG kmalloc-112 (kmem): ${case#*:}" "$WORK/bad.out" \
      || fail "KMEM_DEBUG bad_free $name: no report: $(cat "$WORK/bad.out")"
  done
  say "KMEM_DEBUG=FZPU: overflow, underflow, write after free, deep double free reported and aborted"
  if { KMEM_DEBUG=FZQ LD_PRELOAD="$LIB" "$WORK/bad_free" none >"$WORK/bad.out" 2>&1; } 2>/dev/null; then
    fail "KMEM_DEBUG=FZQ was accepted"
  fi
  grep -q 'KMEM_DEBUG="FZQ": "Q" at byte 2: unknown flag' "$WORK/bad.out" \
    || fail "KMEM_DEBUG=FZQ: no message: $(cat "$WORK/bad.out")"
  say "contract_test under KMEM_DEBUG=FZPU (every kmalloc cache on the debug paths)"
  KMEM_DEBUG=FZPU LD_PRELOAD="$LIB" "$WORK/contract_test" >"$WORK/cd.out" 2>&1 \
    || { tail -20 "$WORK/cd.out" >&2; fail "contract_test under KMEM_DEBUG=FZPU"; }
  tail -1 "$WORK/cd.out"
  say "contract_test on a debug libkmem.so with kmem's re-entrancy guard (aborts if kmem re-enters itself)"
  cargo build -q -p kmem-preload --features debug-reentrancy
  LD_PRELOAD="$TARGET_DIR/debug/libkmem.so" "$WORK/contract_test" >"$WORK/cg.out" 2>&1 \
    || { tail -20 "$WORK/cg.out" >&2; fail "contract_test with the re-entrancy guard"; }
  tail -1 "$WORK/cg.out"
else
  skip "gcc is missing: no C contract test"
fi

# ---- python3: a threaded dict/list/str workload with a checked result --------------------
if have python3; then
  cat >"$WORK/work.py" <<'EOF'
import threading
N, T = 60000, 4
out = [None] * T
def work(t):
    d, l = {}, []
    for i in range(N):
        s = "k%d-%d" % (t, i)
        d[s] = [s * 2, i]
        l.append(s.upper())
        if i % 3 == 0:
            d.pop("k%d-%d" % (t, i // 2), None)
    out[t] = (len(d), sum(v[1] for v in d.values()), len("".join(l)))
ts = [threading.Thread(target=work, args=(t,)) for t in range(T)]
for t in ts: t.start()
for t in ts: t.join()
print(out)
EOF
  # PYTHONMALLOC=malloc: every object through malloc (else pymalloc's arenas hide them).
  want=$(PYTHONMALLOC=malloc python3 "$WORK/work.py")
  got=$(PYTHONMALLOC=malloc "${KMEM[@]}" python3 "$WORK/work.py" 2>"$WORK/py.err")
  [ "$got" = "$want" ] || fail "python3: result $got, expected $want"
  check_served "$WORK/py.err" 500000 "python3 threaded dict/list/str"
else
  skip "python3 is missing"
fi

# ---- sqlite3: build and query a generated database --------------------------------------
if have sqlite3; then
  cat >"$WORK/db.sql" <<'EOF'
CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
INSERT INTO t SELECT x, x % 97, printf('name-%08d', x * 7919 % 200000), x * 0.5 FROM c;
CREATE INDEX t_grp ON t(grp);
CREATE INDEX t_name ON t(name);
SELECT count(*), sum(grp), count(DISTINCT name) FROM t;
SELECT grp, count(*), printf('%.1f', sum(val)) FROM t WHERE grp IN (3, 50) GROUP BY grp;
SELECT name FROM t ORDER BY name DESC LIMIT 1;
EOF
  want=$(sqlite3 "$WORK/plain.db" <"$WORK/db.sql")
  got=$("${KMEM[@]}" sqlite3 "$WORK/kmem.db" <"$WORK/db.sql" 2>"$WORK/sql.err")
  [ "$got" = "$want" ] || fail "sqlite3: result '$got', expected '$want'"
  echo "$got" | head -1 | grep -q '^200000|' || fail "sqlite3: unexpected row count: $got"
  check_served "$WORK/sql.err" 10000 "sqlite3 generated database"
else
  skip "sqlite3 is missing"
fi

# ---- redis-server + redis-benchmark -----------------------------------------------------
if have redis-server && have redis-tools; then
  port=$((20000 + RANDOM % 20000))
  "${KMEM[@]}" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --daemonize no --loglevel warning >"$WORK/redis.out" 2>"$WORK/redis.err" &
  rpid=$!
  PIDS+=("$rpid")
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$port" ping | grep -q PONG || fail "redis-server did not start: $(cat "$WORK/redis.err")"
  redis-benchmark -h 127.0.0.1 -p "$port" -t set,get,lpush,lpop -n 100000 -c 50 -P 16 -r 10000 \
    -q >"$WORK/bench.out" 2>&1 || fail "redis-benchmark: $(cat "$WORK/bench.out")"
  tr '\r' '\n' <"$WORK/bench.out" | grep -E 'requests per second' | sed 's/^/    /'
  [ "$(tr '\r' '\n' <"$WORK/bench.out" | grep -c 'requests per second')" -eq 4 ] \
    || fail "redis-benchmark: not 4 results: $(cat "$WORK/bench.out")"
  if grep -Eqi 'error|refused' "$WORK/bench.out"; then fail "redis-benchmark reported errors"; fi
  redis-cli -p "$port" set kmem:check hello >/dev/null
  [ "$(redis-cli -p "$port" get kmem:check)" = hello ] || fail "redis GET after the benchmark"
  [ "$(redis-cli -p "$port" dbsize)" -gt 1000 ] || fail "redis: fewer keys than the benchmark set"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait "$rpid" || fail "redis-server exited with an error: $(tail -5 "$WORK/redis.err")"
  check_served "$WORK/redis.err" 200000 "redis-server under redis-benchmark"
else
  skip "redis-server/redis-tools are missing"
fi

# ---- git: commit a generated tree -------------------------------------------------------
if have git; then
  repo=$WORK/repo
  mkdir -p "$repo"
  for d in $(seq 0 19); do
    mkdir -p "$repo/dir$d"
    for f in $(seq 0 49); do printf 'file %d/%d\n%s\n' "$d" "$f" "$(seq "$f" $((f + d)))" >"$repo/dir$d/f$f.txt"; done
  done
  (
    cd "$repo"
    export GIT_AUTHOR_NAME=kmem GIT_AUTHOR_EMAIL=kmem@localhost GIT_COMMITTER_NAME=kmem \
      GIT_COMMITTER_EMAIL=kmem@localhost GIT_AUTHOR_DATE='2026-01-01T00:00:00Z' \
      GIT_COMMITTER_DATE='2026-01-01T00:00:00Z'
    "${KMEM[@]}" git init -q -b main . 2>>"$WORK/git.err"
    "${KMEM[@]}" git add -A 2>>"$WORK/git.err"
    "${KMEM[@]}" git commit -q -m "generated tree" 2>>"$WORK/git.err"
    "${KMEM[@]}" git fsck --strict 2>>"$WORK/git.err" >/dev/null
    [ "$("${KMEM[@]}" git ls-files 2>>"$WORK/git.err" | wc -l)" -eq 1000 ] || exit 1
    # The tree id is a pure function of the contents: compare with git without kmem.
    [ "$("${KMEM[@]}" git rev-parse 'HEAD^{tree}' 2>>"$WORK/git.err")" = "$(git write-tree)" ] || exit 1
  ) || { tail -20 "$WORK/git.err" >&2; fail "git commit of a generated tree"; }
  check_served "$WORK/git.err" 2000 "git commit of a generated tree (1000 files)"
else
  skip "git is missing"
fi

say "done in $((SECONDS - t0)) s"
