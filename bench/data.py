"""Benchmark data sets, read from the shared data folder (never copied into the repository).

The folder is `$TRACER_BENCH_DATA`, else `../shared/data` relative to the repository root,
else `/work/shared/data`.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    env = os.environ.get("TRACER_BENCH_DATA")
    if env:
        return Path(env)
    for candidate in (REPO_ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("benchmark data not found: set TRACER_BENCH_DATA to the shared data folder")


@dataclass(frozen=True)
class Split:
    """Traces to fit on and a test split to evaluate on (labels are the teacher's)."""

    name: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _teacher_file(dataset: str, split: str, teacher: str) -> tuple[list[str], list[str]]:
    rows = _jsonl(data_dir() / "teachers" / f"{dataset}_{split}_{teacher}.jsonl")
    return [r["input"] for r in rows], [r["teacher"] for r in rows]


@functools.cache
def teacher_split(dataset: str, teacher: str) -> Split:
    """Banking77 (train -> test) or CLINC150 (train + val -> test) with teacher T1 or T2 labels."""
    texts, labels = _teacher_file(dataset, "train", teacher)
    if dataset == "clinc150":
        val_texts, val_labels = _teacher_file(dataset, "val", teacher)
        texts, labels = texts + val_texts, labels + val_labels
    test_texts, test_labels = _teacher_file(dataset, "test", teacher)
    return Split(f"{dataset} {teacher}", texts, labels, test_texts, test_labels)


@functools.cache
def train_order(dataset: str) -> np.ndarray:
    return np.load(data_dir() / "teachers" / f"{dataset}_train_order.npy")


def first_n(dataset: str, teacher: str, n: int) -> Split:
    """The first n train traces in the fixed order of `*_train_order.npy` (the same test split)."""
    full = teacher_split(dataset, teacher)
    idx = train_order(dataset)[:n]
    return Split(f"{dataset} {teacher} first {n}", [full.train_texts[i] for i in idx],
                 [full.train_labels[i] for i in idx], full.test_texts, full.test_labels)


@functools.cache
def clinc_oos_test() -> list[str]:
    with open(data_dir() / "clinc150" / "data_full.json", encoding="utf-8") as fh:
        return [text for text, _ in json.load(fh)["oos_test"]]


@functools.cache
def sick(shuffled: bool = False) -> Split:
    """SICK NLI (premise [SEP] hypothesis); `shuffled` permutes the train labels against the texts."""
    train = _jsonl(data_dir() / "sick" / "sick_train.jsonl")
    test = _jsonl(data_dir() / "sick" / "sick_test.jsonl")
    labels = [r["label"] for r in train]
    if shuffled:
        labels = [labels[i] for i in np.random.default_rng(0).permutation(len(labels))]
    return Split("SICK shuffled" if shuffled else "SICK", [r["text"] for r in train], labels,
                 [r["text"] for r in test], [r["label"] for r in test])


def load(key: tuple) -> Split:
    """A split from a hashable key: ("teacher", dataset, T, n|None) or ("sick", shuffled)."""
    if key[0] == "teacher":
        _, dataset, teacher, n = key
        return first_n(dataset, teacher, n) if n else teacher_split(dataset, teacher)
    if key[0] == "sick":
        return sick(key[1])
    raise ValueError(f"unknown data key {key!r}")
