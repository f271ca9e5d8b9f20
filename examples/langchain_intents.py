"""A LangChain intent classifier wrapped with tracer: watch the LLM calls drop as traces accumulate.

A local OpenAI-compatible server plays the teacher LLM (it answers Banking77 labels), the
chain is an ordinary `prompt | ChatOpenAI | StrOutputParser`, and `with_tracer` is the only
change. Each round sends a batch of queries; tracer refits between rounds and answers the
inputs its certified policy covers. All the calls have one task version: the same system
prompt, model and parameters (only the routed text differs).

    HF_HUB_OFFLINE=1 .venv/bin/python examples/langchain_intents.py --labels 10 --rounds 6 --per-round 200
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter
from pathlib import Path

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from tracer_core.identity import describe_identity
from tracer_demo import banking77_rows
from tracer_demo.local_teacher import LocalTeacher
from tracer_langchain import with_tracer


def load_rows(n_labels: int) -> list[tuple[str, str]]:
    """(query, intent) rows of the `n_labels` most frequent intents (all intents if 0), shuffled."""
    rows = banking77_rows()
    counts = Counter(row["label"] for row in rows)
    keep = {label for label, _ in counts.most_common(n_labels or None)}
    pairs = [(row["input"], row["label"]) for row in rows if row["label"] in keep]
    random.Random(0).shuffle(pairs)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=10, help="use the N most frequent intents (0: all 77)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.95)
    parser.add_argument("--db", default=None, help="trace store (default: a temporary file)")
    args = parser.parse_args()

    rows = load_rows(args.labels)
    db = args.db or str(Path(tempfile.mkdtemp()) / "langchain-demo.db")

    with LocalTeacher(dict(rows)) as server:
        prompt = ChatPromptTemplate(
            [("system", "Classify the banking query into one Banking77 intent. Answer with the intent only."),
             ("human", "{text}")]
        )
        llm = ChatOpenAI(base_url=server.base_url, api_key=SecretStr("sk-local"), model="teacher", max_retries=0)
        chain = with_tracer(prompt | llm | StrOutputParser(), task="banking-intents", alpha=args.alpha, db=db,
                            auto_refit=False)

        version = chain.tracer_for({"text": rows[0][0]})
        print(f"trace store: {db}; task version {version.fingerprint}: "
              f"{describe_identity(version.store.versions('banking-intents')[0]['description'])}")
        print(f"{'round':>5} {'queries':>8} {'LLM calls':>10} {'surrogate':>10} {'agree':>7} {'policy':>7} {'coverage':>9}")
        for round_no in range(args.rounds):
            batch = rows[round_no * args.per_round:(round_no + 1) * args.per_round]
            if not batch:
                break
            before = server.request_count
            answers = chain.batch([{"text": text} for text, _ in batch], {"max_concurrency": 8})
            llm_calls = server.request_count - before
            agree = sum(answer == label for answer, (_, label) in zip(answers, batch)) / len(batch)
            chain.tracer.flush()
            certificate = chain.tracer.fit()
            policy = chain.tracer.policy_version
            print(f"{round_no + 1:>5} {len(batch):>8} {llm_calls:>10} {len(batch) - llm_calls:>10} {agree:>7.1%} "
                  f"{policy if policy is not None else '-':>7} {certificate.coverage:>9.1%}")
        chain.close()


if __name__ == "__main__":
    main()
