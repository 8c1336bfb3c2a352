#!/usr/bin/env bash
# The compose stack, for real: builds the images (from Debian packages, see
# offline/build-images.sh; existing images are kept), starts the stack under its own project
# name and throwaway secrets, and walks one user's path through it:
#
#   up -d -> healthy -> first API key -> contexts -> train (wait=true) -> predict -> feedback
#   -> Prometheus: API and worker targets up, psp_ series with samples
#   -> the worker is killed (SIGKILL) while batches are queued: it comes back, and every
#      accepted example is learned exactly once
#   -> down -v
#
# Prints each step's time. Exits non-zero at the first failed check, with the logs of the
# stack, which is removed in every case (SMOKE_KEEP=1 keeps it for a look).
#
# Needs docker (with debootstrap for the first build), docker compose v2 or docker-compose 1.29,
# curl and python3 on the host. Environment:
#   SMOKE_PROJECT     compose project name (default psp-smoke; never your own `psp`)
#   SMOKE_IMAGES      `offline` (default): the images of offline/build-images.sh; `upstream`:
#                     the registry's images, and the psp image built by compose
#   SMOKE_SCREENSHOT  a .png path: Prometheus's targets page, rendered by headless Chromium
#   SMOKE_KEEP=1      leave the stack running
set -euo pipefail

DEPLOY=$(cd "$(dirname "$0")" && pwd)
PROJECT=${SMOKE_PROJECT:-psp-smoke}
IMAGES=${SMOKE_IMAGES:-offline}
case "$IMAGES" in
  offline | upstream) ;;
  *) echo "smoke: SMOKE_IMAGES is '$IMAGES'; set it to offline (the default) or upstream" >&2; exit 2 ;;
esac
WORK=$(mktemp -d /tmp/psp-smoke.XXXXXX)
ENV_FILE=$WORK/smoke.env
CONTEXTS=(smoke-a smoke-b smoke-c)
ROWS_PER_BATCH=32
QUEUED_BATCHES=24
START=$(date +%s.%N)
STEP_START=$START

# --- output ------------------------------------------------------------------------------------

elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):6.1f}')" "$1" "$(date +%s.%N)"; }
step() { STEP_START=$(date +%s.%N); printf '%s ... ' "$1"; }
done_step() { printf 'ok (%s s, total %s s)%s\n' "$(elapsed "$STEP_START")" "$(elapsed "$START")" "${1:+  $1}"; }
fail() { printf 'FAILED\n%s\n' "$*" >&2; exit 1; }

# The value of a Python expression over the JSON document on stdin, bound to `d`.
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

# --- compose -----------------------------------------------------------------------------------

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  echo "smoke: neither \`docker compose\` nor docker-compose is installed" >&2
  exit 2
fi
compose() { "${COMPOSE[@]}" --project-name "$PROJECT" --env-file "$ENV_FILE" -f "$DEPLOY/compose.yaml" "$@"; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
secret() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }

write_env_file() {
  HTTP_PORT=$(free_port)
  PROMETHEUS_PORT=$(free_port)
  WORKER_METRICS_PORT=$(free_port)
  {
    if [ "$IMAGES" = offline ]; then
      grep -v '^#' "$DEPLOY/offline/images.env"
    else
      echo "COMPOSE_PROFILES=cpu,grafana"
    fi
    echo "POSTGRES_PASSWORD=$(secret)"
    echo "GRAFANA_ADMIN_PASSWORD=$(secret)"
    echo "PSP_CHECKPOINT__FETCH_TOKEN=$(secret)"
    echo "HTTP_PORT=$HTTP_PORT"
    echo "PROMETHEUS_PORT=$PROMETHEUS_PORT"
    echo "WORKER_METRICS_PORT=$WORKER_METRICS_PORT"
    echo "GRAFANA_PORT=$(free_port)"
  } > "$ENV_FILE"
}

cleanup() {
  local status=$?
  if [ "$status" != 0 ] && [ -f "$ENV_FILE" ]; then
    echo "--- logs of the stack (last 40 lines each) ---" >&2
    compose logs --no-color --tail 40 >&2 2>&1 || true
  fi
  if [ "${SMOKE_KEEP:-0}" = 1 ] && [ -f "$ENV_FILE" ]; then
    echo "kept: ${COMPOSE[*]} --project-name $PROJECT --env-file $ENV_FILE -f $DEPLOY/compose.yaml down -v"
  else
    if [ -f "$ENV_FILE" ]; then compose down -v --remove-orphans >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT

# --- HTTP --------------------------------------------------------------------------------------

API=
KEY=
# `api METHOD PATH [JSON]`: the response body; the status code goes to $WORK/status.
api() {
  local args=(-sS -o "$WORK/body" -w '%{http_code}' -X "$1" "$API$2" -H 'content-type: application/json')
  [ -n "$KEY" ] && args+=(-H "X-API-Key: $KEY")
  [ $# -ge 3 ] && args+=(--data-binary "$3")
  : > "$WORK/body"
  curl "${args[@]}" > "$WORK/status" || echo 000 > "$WORK/status"
  cat "$WORK/body"
}
status() { cat "$WORK/status"; }
expect() {  # expect CODE... : the last request answered one of these codes
  local code; code=$(status)
  for wanted in "$@"; do [ "$code" = "$wanted" ] && return 0; done
  fail "expected HTTP $*, got $code: $(head -c 600 "$WORK/body")"
}

# `batch SEED ROWS [labels]`: a train body of ROWS rows of the model's 64 inputs.
batch() {
  python3 -c "
import json, random, sys
rng = random.Random(int(sys.argv[1])); rows = int(sys.argv[2])
labels = [rng.randrange(10) for _ in range(rows)]
inputs = [[round((label + rng.random()) / 10, 3)] * 64 for label in labels]
print(json.dumps({'inputs': inputs, 'labels': labels}))" "$1" "$2"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds
  local deadline=$(( $(date +%s) + $1 )) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$deadline" ] && fail "timed out waiting for $what"
    sleep 1
  done
}

# --- checks ------------------------------------------------------------------------------------

container_health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(compose ps -q "$1")"; }
healthy() { for service in "$@"; do [ "$(container_health "$service")" = healthy ] || return 1; done; }
ready() { api GET /readyz >/dev/null; [ "$(status)" = 200 ]; }
key_accepted() { api GET /contexts >/dev/null; [ "$(status)" = 200 ]; }

prometheus() {  # prometheus PATH: the JSON of Prometheus's HTTP API
  curl -sS "http://127.0.0.1:$PROMETHEUS_PORT$1"
}
targets_up() {
  prometheus /api/v1/targets | json "
sorted({t['labels']['job'] for t in d['data']['activeTargets'] if t['health'] == 'up'} & {'psp-api', 'psp-worker'}) == ['psp-api', 'psp-worker'] or sys.exit(1)"
}
series_with_samples() {
  prometheus '/api/v1/query?query=psp_trainer_examples_total' \
    | json "sum(float(r['value'][1]) for r in d['data']['result']) > 0 or sys.exit(1)"
}

learned_examples() {  # examples_seen + refused over the smoke contexts
  api GET '/contexts?prefix=smoke-' | json "sum(c['examples_seen'] + (c.get('refused') or 0) for c in d['items'])"
}
all_learned() { [ "$(learned_examples)" = "$ACCEPTED" ]; }

# Examples accepted but not yet in a durable checkpoint, from the worker's own /metrics.
not_checkpointed() {
  curl -sf "http://127.0.0.1:$WORKER_METRICS_PORT/metrics" \
    | awk '/^psp_queue_depth_examples[{ ]/ { total += $NF } END { print total + 0 }'
}

worker_restarts() { docker inspect -f '{{.RestartCount}}' "$(compose ps -q worker)"; }
worker_back() {
  [ "$(worker_restarts)" -gt "$1" ] \
    && curl -sf "http://127.0.0.1:$WORKER_METRICS_PORT/healthz" >/dev/null
}

# --- the run -----------------------------------------------------------------------------------

if [ "$IMAGES" = offline ]; then
  step "images (offline/build-images.sh)"
  "$DEPLOY/offline/build-images.sh" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; fail "image build"; }
  done_step "$(grep -c ': present' "$WORK/build.log") of 6 base images kept; the psp image built on its layer cache"
fi

write_env_file
API=http://127.0.0.1:$HTTP_PORT

if [ "$IMAGES" = upstream ]; then
  step "images (compose pull and build)"
  { compose pull --ignore-pull-failures && compose build; } > "$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log" >&2; fail "image pull or build"; }
  done_step
fi

step "compose up -d"
compose up -d > "$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "compose up"; }
done_step

step "healthy (postgres, redis, api, worker; /readyz through nginx)"
wait_for 180 "healthy containers" healthy postgres redis api worker
wait_for 60 "/readyz" ready
done_step

step "first API key (psp keys create in the api container)"
api GET /contexts >/dev/null
expect 401
KEY=$(compose exec -T api psp keys create --scope admin --scope train --scope predict --name smoke \
  | sed -n 's/^key (shown only now): //p')
[ -n "$KEY" ] || fail "psp keys create printed no key"
wait_for 30 "the key to be accepted" key_accepted
done_step

step "register ${#CONTEXTS[@]} contexts"
for context in "${CONTEXTS[@]}"; do
  api POST /contexts "{\"key\": \"$context\"}" >/dev/null
  expect 201
done
done_step

step "train with wait=true"
answer=$(api POST "/train/smoke-a?wait=true" "$(batch 1 $ROWS_PER_BATCH)")
expect 200
[ "$(echo "$answer" | json "d['applied']")" = True ] || fail "not applied: $answer"
ACCEPTED=$ROWS_PER_BATCH
done_step "model version $(echo "$answer" | json "d['model_version']")"

step "predict (remembered)"
predicted=$(api POST "/predict/smoke-a?remember=true" "$(batch 2 4 | json "json.dumps({'inputs': d['inputs']})")")
expect 200
done_step "predictions $(echo "$predicted" | json "d['predictions']")"

step "feedback"
feedback=$(echo "$predicted" | json "json.dumps({'prediction_ids': d['prediction_ids'], 'labels': [1] * len(d['prediction_ids'])})")
api POST "/feedback/smoke-a" "$feedback" >/dev/null
expect 200 202
ACCEPTED=$((ACCEPTED + 4))
done_step

step "Prometheus: psp-api and psp-worker targets up, psp_ samples"
wait_for 90 "both targets up" targets_up
wait_for 60 "psp_trainer_examples_total samples" series_with_samples
done_step

if [ -n "${SMOKE_SCREENSHOT:-}" ]; then
  step "screenshot of Prometheus's targets page"
  # /targets upstream; Debian's build keeps the server-rendered UI under /classic.
  page=/targets
  curl -sf -o /dev/null "http://127.0.0.1:$PROMETHEUS_PORT$page" || page=/classic/targets
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$WORK/chromium" --window-size=1280,520 \
    --screenshot="$SMOKE_SCREENSHOT" "http://127.0.0.1:$PROMETHEUS_PORT$page" \
    > "$WORK/chromium.log" 2>&1 || { cat "$WORK/chromium.log" >&2; fail "chromium"; }
  done_step "$SMOKE_SCREENSHOT"
fi

step "kill -9 the worker with $QUEUED_BATCHES batches queued"
for i in $(seq "$QUEUED_BATCHES"); do
  context=${CONTEXTS[$((i % ${#CONTEXTS[@]}))]}
  api POST "/train/$context" "$(batch $((100 + i)) $ROWS_PER_BATCH)" >/dev/null
  expect 202
  ACCEPTED=$((ACCEPTED + ROWS_PER_BATCH))
done
restarts=$(worker_restarts)
pending=$(not_checkpointed)
# SIGKILL to every process of the worker but the container's init, which then exits: a crash,
# so the restart policy applies (`docker kill` would count as a deliberate stop).
compose exec -T worker sh -c 'kill -KILL -1' || true
wait_for 120 "the worker to restart" worker_back "$restarts"
done_step "restarts $restarts -> $(worker_restarts); $pending examples were not yet checkpointed"

step "every accepted example learned once ($ACCEPTED)"
wait_for 120 "examples_seen + refused to reach $ACCEPTED" all_learned
done_step

COLUMNS=160 compose ps
step "compose down -v"
compose down -v --remove-orphans > "$WORK/down.log" 2>&1 || { cat "$WORK/down.log" >&2; fail "compose down"; }
rm -f "$ENV_FILE"
done_step

echo "smoke: passed in $(elapsed "$START") s"
