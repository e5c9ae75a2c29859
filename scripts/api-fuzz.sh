#!/usr/bin/env bash
# API fuzz: schemathesis (PyPI) against /openapi.json of a demo server on loopback.
#
# Starts `stagecraft demo` (SQLite, every pack enabled, a CDNOW sample, an admin
# token) in a temporary directory, then lets schemathesis generate requests for
# every documented operation. Passes when no response is a 5xx, every status and
# content type is one the document declares, every body matches its declared
# schema, and the server is still healthy at the end. Usage: scripts/api-fuzz.sh [MAX_EXAMPLES]   (default 50 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
max_examples="${1:-50}"

cargo xtask plugins >/dev/null
cargo build --quiet -p stagecraft
command -v schemathesis >/dev/null || python3 -m pip install --quiet 'schemathesis>=4,<5'

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
packs=()
for p in target/wasm32-wasip2/release/{b2b_trade,value_tiers,clv,fitness_studio,o2o_engagement}.wasm; do
  packs+=(--pack "$p")
done
./target/debug/stagecraft demo --data-dir "$work" --listen "127.0.0.1:$port" "${packs[@]}" \
  --cdnow examples/data/cdnow/CDNOW_master.txt --cdnow-lines 300 >"$work/demo.out" 2>"$work/demo.err" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do
  grep -q 'token:' "$work/demo.out" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$work/demo.err"; exit 1; }
  sleep 0.5
done
token="$(awk '/token:/ {print $2; exit}' "$work/demo.out")"
[ -n "$token" ] || { echo "the demo printed no token" >&2; cat "$work/demo.err" >&2; exit 1; }

# Fuzzing the upload with random bytes is worthwhile (each is rejected with a
# reason); activation and rollback run too, so the packs change under the run.
status=0
schemathesis --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "$max_examples" \
  --workers 2 \
  --request-timeout 30 \
  --suppress-health-check all \
  --report junit --report-dir "${API_FUZZ_REPORT_DIR:-target/api-fuzz}" || status=$?

curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || { echo "the server is not healthy after the run" >&2; status=1; }
kill -0 $server || { echo "the server died" >&2; status=1; }
grep -E 'panicked|internal error' "$work/demo.err" && { echo "the server log shows a panic or an internal error" >&2; status=1; }
exit $status
