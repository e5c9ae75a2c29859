#!/usr/bin/env bash
# A walk through the API with curl: create a customer, record touchpoints and
# orders, and watch the score, segments and stage change, with reasons.
#
#   cargo xtask demo                       # in one terminal: prints URL and token
#   STAGECRAFT_URL=http://127.0.0.1:8080 STAGECRAFT_TOKEN=sc_... examples/walkthrough.sh
#
# Each step prints the request and the server's answer. The demo has the b2b-trade
# pack (owns the stages) and the value-tiers pack (scores and value segments) enabled.
set -euo pipefail
URL="${STAGECRAFT_URL:-http://127.0.0.1:8080}"
TOKEN="${STAGECRAFT_TOKEN:?set STAGECRAFT_TOKEN to the token cargo xtask demo printed}"
ID="walkthrough-$(date +%s)"
DAY=86400000
NOW=$(( $(date +%s) * 1000 ))

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
api() { # api METHOD PATH [JSON [IDEMPOTENCY-KEY]]
  echo "> $1 $2 ${3:-}"
  curl -fsS -X "$1" "$URL$2" -H "Authorization: Bearer $TOKEN" \
       -H 'Content-Type: application/json' ${3:+--data "$3"} ${4:+-H "Idempotency-Key: $4"}
  echo
}

step "1. Create a customer who found us on the web (email is withheld from plugins)"
api POST /v1/customers "{\"id\": \"$ID\", \"name\": \"Hanse Traders\", \"source\": \"web\",
  \"fields\": {\"industry\": \"wholesale\", \"country\": \"DE\", \"email\": \"buyer@hanse.example\"}}"

step "2. They send an inquiry: persona -> prospect, and a follow-up names their question"
api POST "/v1/customers/$ID/events" "{\"kind\": \"inquiry\", \"channel\": \"web\", \"at\": $(( NOW - 40 * DAY )),
  \"fields\": {\"question\": \"Price for 500 units, FOB Hamburg?\"}}"

step "3. First order (300.00): first purchase, scored medium return"
api POST "/v1/customers/$ID/events" "{\"kind\": \"order\", \"amount_cents\": 30000, \"at\": $(( NOW - 30 * DAY ))}"

step "4. Two more orders on other days: repeat purchase, high return"
api POST "/v1/customers/$ID/events" "{\"kind\": \"order\", \"amount_cents\": 20000, \"at\": $(( NOW - 15 * DAY ))}"
ORDER3="{\"kind\": \"order\", \"amount_cents\": 25000, \"at\": $(( NOW - 2 * DAY ))}"
api POST "/v1/customers/$ID/events" "$ORDER3" "$ID-order-3"

step "5. A retry of that order with the same Idempotency-Key is recorded once (replayed: true)"
api POST "/v1/customers/$ID/events" "$ORDER3" "$ID-order-3"

step "6. A complaint lowers the value"
api POST "/v1/customers/$ID/events" "{\"kind\": \"complaint\", \"channel\": \"phone\"}"

step "7. The customer: stage, scores with reasons, segments, metrics, follow-ups"
api GET "/v1/customers/$ID"

step "8. The timeline, newest first: events, stage moves, score changes, follow-ups"
api GET "/v1/customers/$ID/timeline?limit=20"

step "9. The same reasons in Chinese"
api GET "/v1/customers/$ID/timeline?limit=30&lang=zh"

step "10. The tenant's funnel and segment sizes"
api GET /v1/analytics/funnel
api GET /v1/analytics/segments
