#!/usr/bin/env bash
# Installs the dependencies, builds idemproxy and runs the quick-start demo:
# a legacy payment API that charges on every POST, made idempotent by idemproxy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target idemproxy
BIN=build/release/idemproxy
rm -rf /tmp/idemproxy-demo && mkdir -p /tmp/idemproxy-demo

python3 examples/legacy_payments.py --port 9000 --delay-ms 300 &
backend=$!
"$BIN" run --config examples/quickstart.yaml 2>/tmp/idemproxy-demo/idemproxy.log &
proxy=$!
trap 'kill $proxy $backend 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 100); do
  curl -s -o /dev/null http://127.0.0.1:9000/charges && curl -s -o /dev/null http://127.0.0.1:8080/charges && break
  sleep 0.1
done

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
post() {  # key, body
  curl -s -i -X POST http://127.0.0.1:8080/v1/payments \
    -H "Idempotency-Key: $1" -H 'Authorization: Bearer demo-tenant' \
    -H 'Content-Type: application/json' --data "$2" | tr -d '\r' | grep -Ev '^(Date|Content-Length|Connection):'
}

say "1. First request with Idempotency-Key: order-1001 (forwarded, the card is charged)"
post order-1001 '{"amount": 4200, "currency": "EUR"}'
say "2. The client retries the same request (replayed; no second charge)"
post order-1001 '{"amount": 4200, "currency": "EUR"}'
say "3. Same key, different amount (refused: 422)"
post order-1001 '{"amount": 9999, "currency": "EUR"}'
say "4. Ten concurrent duplicates of a new key order-1002 (one charge, ten identical answers)"
pids=()
for i in $(seq 10); do
  curl -s -X POST http://127.0.0.1:8080/v1/payments -H 'Idempotency-Key: order-1002' \
    -H 'Authorization: Bearer demo-tenant' --data '{"amount": 100, "currency": "EUR"}' \
    -o /tmp/idemproxy-demo/answer-$i.json &
  pids+=($!)
done
wait "${pids[@]}"
sort /tmp/idemproxy-demo/answer-*.json | uniq -c
say "5. The backend counted these charges (expected 2: order-1001 and order-1002)"
curl -s http://127.0.0.1:9000/charges; echo
say "6. Without idempotency (straight to the backend), a request and its retry charge twice: 2 -> 4"
curl -s -X POST http://127.0.0.1:9000/v1/payments --data '{"amount": 1}' >/dev/null
curl -s -X POST http://127.0.0.1:9000/v1/payments --data '{"amount": 1}' >/dev/null
curl -s http://127.0.0.1:9000/charges; echo
