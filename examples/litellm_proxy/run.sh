#!/usr/bin/env bash
# Start a local teacher (Banking77 labels) and the LiteLLM proxy with tracer, then send queries
# through the openai SDK and watch calls move from the LLM to the surrogate.
# Needs the proxy packages (see README: LiteLLM proxy). Run from the repository root:
#   bash examples/litellm_proxy/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
LITELLM=${LITELLM:-$(dirname "$PY")/litellm}
WORK=$(mktemp -d)
TEACHER_PORT=${TEACHER_PORT:-8011}
PROXY_PORT=${PROXY_PORT:-4000}

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false LITELLM_LOCAL_MODEL_COST_MAP=True
export TEACHER_API_BASE="http://127.0.0.1:${TEACHER_PORT}/v1" TEACHER_API_KEY=sk-local
export LITELLM_MASTER_KEY=${LITELLM_MASTER_KEY:-sk-$("$PY" -c 'import secrets; print(secrets.token_hex(32))')}
export TRACER_DB="$WORK/tracer.db" TRACER_ALPHA=${TRACER_ALPHA:-0.9} TRACER_REFIT_EVERY=${TRACER_REFIT_EVERY:-200}

"$PY" -m tracer_demo.local_teacher --port "$TEACHER_PORT" &
TEACHER_PID=$!
"$LITELLM" --config examples/litellm_proxy/config.yaml --host 127.0.0.1 --port "$PROXY_PORT" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
trap 'kill $PROXY_PID $TEACHER_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:${PROXY_PORT}/health/readiness" >/dev/null && break
  sleep 1
done

"$PY" - <<PY
import random
from openai import OpenAI
from tracer_demo import banking77_rows

client = OpenAI(base_url="http://127.0.0.1:${PROXY_PORT}/v1", api_key="${LITELLM_MASTER_KEY}")
rows = banking77_rows()
random.Random(0).shuffle(rows)
rows = rows[: ${QUERIES:-1500}]
system = {"role": "system", "content": "Classify the banking query into its intent. Answer with the label only."}
surrogate = 0
for i, row in enumerate(rows, 1):
    raw = client.chat.completions.with_raw_response.create(model="teacher", messages=[system, {"role": "user", "content": row["input"]}])
    surrogate += raw.headers.get("x-tracer-decision") == "handled"
    if i % 100 == 0:
        print(f"{i:5d} calls: {i - surrogate:5d} went to the LLM, {surrogate:5d} answered by the surrogate "
              f"(last: {raw.headers.get('x-tracer-reason')}, policy v{raw.headers.get('x-tracer-policy-version', '-')})")
PY
echo "traces and policies: $TRACER_DB (proxy log: $WORK/proxy.log)"
