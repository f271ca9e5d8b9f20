"""tracer in front of litellm.completion: one line, and calls move from the LLM to the surrogate.

A local OpenAI-compatible teacher answers Banking77 intents over HTTP. Every answer
becomes a trace; every `refit_every` traces the Tracer refits in the background, and
once a policy is certified, queries it covers never reach the teacher.

    .venv/bin/python examples/litellm_sdk.py [--queries 2000] [--db /tmp/litellm-demo.db]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402

from tracer_demo import banking77_rows  # noqa: E402
from tracer_demo.local_teacher import LocalTeacher  # noqa: E402
from tracer_litellm import TracerCallback  # noqa: E402

SYSTEM = {"role": "system", "content": "Classify the banking query into its intent. Answer with the label only."}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--db", default=str(Path(tempfile.mkdtemp()) / "tracer.db"))
    args = parser.parse_args()

    rows = banking77_rows()
    random.Random(0).shuffle(rows)
    rows = rows[: args.queries]

    callback = TracerCallback(alpha=0.9, db=args.db, refit_every=250)
    litellm.callbacks = [callback]  # the one line a user adds

    with LocalTeacher({r["input"]: r["label"] for r in rows}) as teacher:
        agree = surrogate = 0
        started = time.perf_counter()
        for i, row in enumerate(rows, 1):
            response = litellm.completion(
                model="openai/teacher",
                api_base=teacher.base_url,
                api_key="sk-local",
                messages=[SYSTEM, {"role": "user", "content": row["input"]}],
            )
            decision = response._hidden_params["tracer"]  # handled, reason, policy_version, task, fingerprint
            answered_by_surrogate = decision["handled"]
            surrogate += answered_by_surrogate
            agree += answered_by_surrogate and response.choices[0].message.content == row["label"]
            if i % 250 == 0 or i == len(rows):
                print(
                    f"{i:5d} calls | to the LLM: {teacher.request_count:5d} | surrogate: {surrogate:5d} "
                    f"(agrees with the LLM label on {agree}/{surrogate}) | policy v{decision['policy_version'] or '-'} "
                    f"| last call: {decision['reason']} | {time.perf_counter() - started:6.1f} s"
                )
    callback.close()
    tracer = callback.tracer_of(model="openai/teacher", messages=[SYSTEM, {"role": "user", "content": "any query"}])
    print(f"task {tracer.task} (version {tracer.fingerprint}): {tracer.status()['last_fit']}")
    print(f"traces and policies: {args.db}")


if __name__ == "__main__":
    main()
