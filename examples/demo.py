"""tracer end to end: a LangChain chain and LiteLLM calls share one task while tracer takes over the easy queries.

`make demo` needs no API key and no network. A local OpenAI-compatible server plays the teacher
LLM: it answers every Banking77 query with its gold intent (a stand-in for a real LLM). The demo
sends a stream of queries drawn from the bundled train file, alternating between a LangChain
chain (`with_tracer`) and `litellm.completion` (`TracerCallback`). tracer records every teacher
answer, refits in the background every `--refit-every` traces and, once the parity gate certifies
a policy (agreement with the teacher >= alpha with probability >= 1 - delta), answers the queries
that policy covers without calling the LLM. It prints a table as it goes, the totals (calls and
dollars saved) and writes the HTML/JSON report.

    HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python examples/demo.py [--queries 4000]

A real model instead of the stand-in: TRACER_DEMO_MODEL=openai/gpt-4o-mini (with OPENAI_API_KEY set),
or any LiteLLM model name with its provider's key; the model is prompted with the label list.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import litellm  # noqa: E402
import torch  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from tqdm import tqdm  # noqa: E402

from demo_parts import table  # noqa: E402
from demo_parts.pricing import teacher_call_cost  # noqa: E402
from demo_parts.teacher import make_teacher, system_prompt  # noqa: E402
from tracer_core import registry_for  # noqa: E402
from tracer_core.identity import describe_identity  # noqa: E402
from tracer_core.report.build import build_report  # noqa: E402
from tracer_core.serving.guarantee import attempt_statement, outcome_statement  # noqa: E402
from tracer_demo import banking77_path, banking77_rows  # noqa: E402
from tracer_langchain import with_tracer  # noqa: E402
from tracer_litellm import TracerCallback  # noqa: E402

TASK = "banking77-intent"


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=int(env("TRACER_DEMO_QUERIES", 4000)),
                        help="queries to send, drawn from the train file in a seeded order (default 4000)")
    parser.add_argument("--refit-every", type=int, default=int(env("TRACER_DEMO_REFIT_EVERY", 450)),
                        help="background refit after this many new teacher traces (default 450)")
    parser.add_argument("--alpha", type=float, default=0.90, help="required agreement with the teacher (default 0.90)")
    parser.add_argument("--delta", type=float, default=0.05, help="allowed probability the certificate is wrong")
    parser.add_argument("--every", type=int, default=int(env("TRACER_DEMO_EVERY", 250)),
                        help="print a table row every N queries (default 250)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="stand-in teacher latency per call (default 20)")
    parser.add_argument("--labels", type=int, default=0,
                        help="keep only the N most frequent intents (default 0: all 77; the tests use a few)")
    parser.add_argument("--seed", type=int, default=0, help="order of the queries (default 0)")
    parser.add_argument("--out", default="demo-out", help="output directory (default demo-out/)")
    args = parser.parse_args()
    if args.queries < 1 or args.refit_every < 1 or args.every < 1:
        parser.error("--queries, --refit-every and --every must be positive")
    return args


class RouteWatcher(BaseCallbackHandler):
    """Reads whether tracer answered a LangChain call from the wrapper run's `tracer_handled` metadata."""

    def __init__(self) -> None:
        self.handled: bool | None = None

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, tags=None, metadata=None, **kwargs):
        if parent_run_id is None and metadata and "tracer_handled" in metadata:
            self.handled = bool(metadata["tracer_handled"])


def fresh_dir(out: Path) -> Path:
    """`out/` with no trace store from an earlier run (the db, its WAL files, spill and lock files)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in out.glob("tracer.db*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return out


def load_rows(seed: int, n_labels: int) -> tuple[list[dict], list[str]]:
    """The train rows in a seeded order (only the `n_labels` most frequent intents, if > 0) and the label list."""
    rows = banking77_rows()
    if n_labels > 0:
        keep = {label for label, _ in Counter(row["label"] for row in rows).most_common(n_labels)}
        rows = [row for row in rows if row["label"] in keep]
    labels = sorted({row["label"] for row in rows})
    random.Random(seed).shuffle(rows)
    return rows, labels


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    litellm.suppress_debug_info = True
    # One intra-op thread per embedding call: the query path embeds one short text at a time while a
    # background refit runs beside it, and on 2 cores two torch threads per call oversubscribe the
    # CPU (measured: a single-text encode went from ~80 ms to ~700 ms with 2 threads on a busy box).
    torch.set_num_threads(int(os.environ.get("TRACER_DEMO_TORCH_THREADS", "1")))
    # scikit-learn's MLP warns when a small fit clips its batch size; harmless, and noisy mid-table
    warnings.filterwarnings("ignore", message="Got `batch_size` less than 1")
    out = fresh_dir(Path(args.out))
    db = out / "tracer.db"
    rows, labels = load_rows(args.seed, args.labels)
    queries = rows[: args.queries]

    teacher = make_teacher({row["input"]: row["label"] for row in rows}, args.latency_ms / 1000.0)
    system = system_prompt(labels)
    print(f"teacher: {teacher.description}")
    for note in teacher.notes:
        print(f"note: {note}")

    # -- the two integrations --------------------------------------------------------------
    callback = TracerCallback(alpha=args.alpha, delta=args.delta, db=str(db), refit_every=args.refit_every)
    litellm.callbacks = [callback]  # the one line a LiteLLM user adds

    def litellm_call(text: str):
        return litellm.completion(
            **teacher.litellm_kwargs,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
            metadata={"tracer_task": TASK},
        )

    # One task version for both integrations, with no sharing code: both compute the version from
    # what the teacher sees (model, parameters, system prompt; tracer_core.identify), and both ask
    # the store's process-wide registry for its Tracer, so they share one Tracer and one trace set.
    probe = [{"role": "system", "content": system}, {"role": "user", "content": "probe"}]
    chain = None
    if teacher.langchain_llm is not None:
        prompt = ChatPromptTemplate([("system", "{labels_prompt}"), ("human", "{text}")]).partial(labels_prompt=system)
        chain = with_tracer(prompt | teacher.langchain_llm | StrOutputParser(), task=TASK, alpha=args.alpha,
                            delta=args.delta, db=db, refit_every=args.refit_every)
    deadline = time.monotonic() + 10
    while True:  # the task's name is confirmed and its version registered off the caller's path: wait for both here
        if chain is not None:
            tracer = chain.tracer_for({"text": "probe"})
        else:
            tracer = callback.tracer_of(**teacher.litellm_kwargs, messages=probe, metadata={"tracer_task": TASK})
        registry_for(db).flush(10)
        if tracer.store.versions(TASK) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(f"task {TASK!r}, version {tracer.fingerprint}: {describe_identity(tracer.store.versions(TASK)[0]['description'])}")
    print(
        f"{len(queries):,} queries over {len(labels)} intents from {banking77_path().name} (seed {args.seed}), "
        f"{'alternating LangChain / LiteLLM' if chain is not None else 'all through LiteLLM'}; "
        f"alpha {args.alpha}, delta {args.delta}, background refit every {args.refit_every} teacher traces\n"
        f"trace store: {db}"
    )

    # -- the stream ------------------------------------------------------------------------
    print("loading the embedding model (all-MiniLM-L6-v2)...", flush=True)
    tracer.embed(["warm-up"])  # the model loads once, before the clock of the stream starts
    total, window = table.Counts.empty(), table.Counts.empty()
    watcher = RouteWatcher()
    seen_versions: set[int] = set()
    print(table.legend(teacher.stand_in))
    print(table.header())
    stream_started = time.perf_counter()
    bar = tqdm(total=len(queries), unit="q", desc="queries", file=sys.stderr, disable=None, dynamic_ncols=True)

    def emit(line: str) -> None:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    last_poll = 0.0
    for i, row in enumerate(queries):
        use_langchain = chain is not None and i % 2 == 0
        if use_langchain and chain is not None:
            watcher.handled = None
            answer = chain.invoke({"text": row["input"]}, {"callbacks": [watcher]})
            hit = bool(watcher.handled)
        else:
            response = litellm_call(row["input"])
            hidden = getattr(response, "_hidden_params", {}) or {}
            hit = bool(hidden.get("cache_hit") or (hidden.get("tracer") or {}).get("handled"))
            answer = response.choices[0].message.content or ""
        agrees = answer.strip() == row["label"]
        for counts in (total, window):
            counts.add("langchain" if use_langchain else "litellm", hit, agrees)
        bar.update(1)
        if (i + 1) % 25 == 0:
            policy = tracer.policy_version
            bar.set_postfix_str(f"policy {'-' if policy is None else f'v{policy}'}, {total.n_hits:,} LLM calls saved",
                                refresh=False)
        now = time.perf_counter()
        if now - last_poll > 0.5:
            last_poll = now
            report_fits(tracer, seen_versions, emit)
        if (i + 1) % args.every == 0 or i + 1 == len(queries):
            tracer.flush()
            report_fits(tracer, seen_versions, emit)
            cert = tracer.certificate
            emit(table.row(
                total=total, window=window, traces=tracer.store.counts(TASK)["teacher"],
                policy=tracer.policy_version, cert_coverage=cert.coverage if cert and cert.deployed else None,
                elapsed_s=now - stream_started,
            ))
            window = table.Counts.empty()
    bar.close()
    stream_s = time.perf_counter() - stream_started

    # -- totals ------------------------------------------------------------------------------
    print("stream done; letting a background refit still running finish...", flush=True)
    tracer.wait_for_refit()
    time.sleep(0.2)  # LiteLLM's logging thread delivers the last traces
    callback.flush()
    report_fits(tracer, seen_versions, print)
    print_versions(tracer)
    print_totals(args, teacher, tracer, total, stream_s)

    # -- report ------------------------------------------------------------------------------
    html, js = out / "report.html", out / "report.json"
    print("building the report...", flush=True)
    facts = build_report(tracer.store, TASK, fingerprint=tracer.fingerprint, out_html=html, out_json=js,
                         embed=tracer.embed, refit_fractions=(0.5,))
    calibration = facts.get("calibration") or {}
    if calibration.get("coverage") is not None:
        agreement = calibration.get("agreement")
        print(f"report: the deployed policy on its held-out calibration traces: coverage {calibration['coverage']:.1%}, "
              f"agreement {'-' if agreement is None else f'{agreement:.1%}'} (n={calibration['n']})")
    print(f"report: {html.resolve()}")
    print(f"report data: {js.resolve()}")
    if chain is not None:
        chain.close()
    callback.close()
    teacher.close()
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def report_fits(tracer, seen: set[int], emit) -> None:
    """Print each new fit (deployed or refused) once, as it lands."""
    for row in sorted(tracer.store.policies(tracer.task, fingerprint=tracer.fingerprint), key=lambda r: r["version"]):
        if row["version"] in seen:
            continue
        seen.add(row["version"])
        cert = row["certificate"]
        if row["status"] == "deployed":
            verdict = f"deployed: {outcome_statement(cert)}; {attempt_statement(cert)}"
        else:
            verdict = f"refused ({cert.get('reason')}); the previous policy stays"
        emit(f"  -> fit v{row['version']} on {cert['n_traces']:,} traces in {cert.get('fit_seconds', 0):.0f} s: {verdict}")


def print_versions(tracer) -> None:
    """Which task versions the stream's calls reached (one: both integrations shared the version)."""
    versions = tracer.store.versions(TASK)
    origins = sorted({v["origin"] for v in versions if v["origin"]})
    if len(versions) == 1:
        print(f"task {TASK!r}: every call, LangChain and LiteLLM, reached one task version ({tracer.fingerprint}); "
              f"registered by {', '.join(origins) or '-'}")
    else:
        print(f"task {TASK!r}: the calls reached {len(versions)} task versions: "
              + ", ".join(f"{v['fingerprint']} ({v['teacher']} teacher traces)" for v in versions))


def print_totals(args, teacher, tracer, total: table.Counts, stream_s: float) -> None:
    cost = teacher_call_cost(tracer.store, tracer.task, tracer.fingerprint, teacher.price,
                             recorded_cost=not teacher.stand_in)
    llm_calls = total.n - total.n_hits
    saved = total.n_hits
    print()
    print(f"{total.n:,} queries in {stream_s:.0f} s ({total.queries['langchain']:,} through LangChain, "
          f"{total.queries['litellm']:,} through LiteLLM)")
    print(f"  answered by the teacher LLM:   {llm_calls:6,} ({llm_calls / total.n:.1%})"
          + (f"  [the stand-in counted {teacher.requests:,} requests]" if teacher.requests is not None else ""))
    agreement = total.agreement()
    print(f"  answered by tracer's surrogate: {saved:5,} ({saved / total.n:.1%}: LangChain "
          f"{total.hits['langchain']:,}, LiteLLM {total.hits['litellm']:,}); agreement with "
          f"{'the teacher' if teacher.stand_in else 'the gold intent'} on them: "
          + ("-" if agreement is None else f"{total.n_agree:,}/{saved:,} = {agreement:.1%}"))
    if cost.calls:
        basis = ("the recorded token usage priced at " + teacher.price.describe()) if teacher.stand_in else \
            "the cost LiteLLM recorded per call (else its tokens at " + teacher.price.describe() + ")"
        print(f"  cost of a teacher call: ${cost.per_call:.7f} on average ({cost.prompt_tokens / cost.calls:.0f} prompt + "
              f"{cost.completion_tokens / cost.calls:.0f} completion tokens), from {basis}")
    spent, saved_usd = llm_calls * cost.per_call, saved * cost.per_call
    print(f"  dollars: spent ${spent:.4f} on the LLM, saved ${saved_usd:.4f} "
          f"({saved_usd / (spent + saved_usd):.1%} of ${spent + saved_usd:.4f})" if spent + saved_usd else "  dollars: -")
    cert = tracer.certificate
    if cert is not None and cert.deployed:
        per_million = 1_000_000 * cert.coverage * cost.per_call
        print(f"  at the final policy v{cert.version}'s certified coverage ({cert.coverage:.1%}), "
              f"1M such queries would save ${per_million:,.2f}")
    print(f"TOTAL: {total.n} queries, {saved} LLM calls saved ({saved / total.n:.1%}), ${saved_usd:.4f} saved, "
          f"surrogate agreement {'-' if agreement is None else f'{agreement:.1%}'}")


if __name__ == "__main__":
    sys.exit(main())
