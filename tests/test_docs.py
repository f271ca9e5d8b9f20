"""Every code block of the documentation runs: the README's and each docs page's Python and shell
blocks in order in one folder per page, against a local stand-in teacher; `make` lines as dry runs
(the proxy's start line is run by tests/test_litellm_proxy.py);
the YAML block must match the proxy example. Fast checks: each page has the blocks it promises,
every page is in the site's navigation, every exported name is in the API reference, and the README
stays a short front page whose links resolve (`mkdocs build --strict` checks the site's own links)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tracer_core import TraceStore
from tracer_demo.local_teacher import LocalTeacher

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
KINDS = {"python", "bash", "yaml", "text"}  # `text` blocks are fragments or output and never run
RUNS = KINDS - {"text"}
Check = Callable[[Path, LocalTeacher], None]


def stored_traces(db: Path, task: str) -> int:
    with TraceStore(db) as store:
        return sum(store.counts(task).values())


def teacher_asked(times: int) -> Check:
    def check(folder: Path, teacher: LocalTeacher) -> None:
        assert teacher.request_count >= times, f"the examples asked the teacher {teacher.request_count} times"

    return check


def python_api_left_its_traces(folder: Path, teacher: LocalTeacher) -> None:
    # the single record(), the 1,500 record_many() traces and the routed call recorded with its decision
    assert stored_traces(folder / "tracer.db", "intents") == 1502


def operating_left_its_files(folder: Path, teacher: LocalTeacher) -> None:
    assert (folder / "report.html").stat().st_size > 10_000
    assert (folder / "traces.jsonl").read_text().count("\n") == 2001  # exported before the later traces came
    assert stored_traces(folder / "tracer.db", "intents") == 4002
    assert stored_traces(folder / "tracer-copy.db", "intents") == 4002


@dataclass(frozen=True)
class Page:
    blocks: dict[str, int]  # the code blocks the page promises, by kind
    check: Check | None = None  # what its examples must have done, after they all ran

    @property
    def runs(self) -> bool:
        """Whether the page has a block a test runs (text blocks never run)."""
        return bool(set(self.blocks) & RUNS)


PAGES: dict[str, Page] = {
    "README.md": Page({"text": 1, "bash": 1, "python": 2}, teacher_asked(2)),
    "docs/index.md": Page({}),
    "docs/getting-started.md": Page({"python": 1}, python_api_left_its_traces),
    "docs/langchain.md": Page({}),
    "docs/litellm.md": Page({"python": 1, "yaml": 1, "bash": 1}, teacher_asked(1)),
    "docs/guarantee.md": Page({}),
    "docs/lifetime-guarantee.md": Page({}),
    "docs/operating.md": Page({"bash": 8, "text": 2}, operating_left_its_files),
    "docs/operations-metrics.md": Page({"python": 1, "text": 4}),
    "docs/configuration.md": Page({"python": 1}),
    "docs/api.md": Page({}),
    "docs/cli.md": Page({}),
    "docs/benchmarks.md": Page({"bash": 1}),
    "docs/benchmark-results.md": Page({}),
    "docs/architecture.md": Page({"bash": 1}),
}


def page_blocks(page: str) -> list[tuple[str, str]]:
    """(kind, code) of every fenced block of `page` (a path from the repository root), in order."""
    return BLOCK.findall((ROOT / page).read_text(encoding="utf-8"))


def nav_pages(nav: list) -> list[str]:
    """Every page file of the site's navigation, depth first."""
    found: list[str] = []
    for entry in nav:
        value = entry if isinstance(entry, str) else next(iter(entry.values()))
        found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def test_every_page_has_the_blocks_it_promises():
    for page, promised in PAGES.items():
        kinds = Counter(kind for kind, _ in page_blocks(page))
        assert set(kinds) <= KINDS, f"{page}: unknown block kinds {set(kinds) - KINDS}"
        assert kinds == Counter(promised.blocks), f"{page} has {dict(kinds)}, promises {promised.blocks}"


def test_every_docs_page_is_in_the_navigation_and_listed_here():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    on_disk = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(nav_pages(config["nav"])) == on_disk
    assert sorted(f"docs/{p}" for p in on_disk) == sorted(p for p in PAGES if p.startswith("docs/"))


def test_the_readme_is_a_short_front_page_whose_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("\n") <= 150
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert "docs/getting-started.md" in targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


def exported_names(package: str) -> list[str]:
    """The `__all__` of a package, read from its source (importing the integrations takes seconds)."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8"))
    (names,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
    return ast.literal_eval(names)


def test_every_exported_name_is_in_the_api_reference():
    documented = set(re.findall(r"^::: ([\w.]+)$", (ROOT / "docs/api.md").read_text(encoding="utf-8"), re.M))
    packages = ("tracer_core", "tracer_langchain", "tracer_litellm")
    assert documented == {f"{package}.{name}" for package in packages for name in exported_names(package)}


def run_block(page: str, kind: str, code: str, folder: Path, env: dict[str, str]) -> None:
    """Run one block of `page` in `folder`: Python and shell for real, `make` lines as dry runs."""
    if kind == "python":
        done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{page}: python block failed:\n{code}\n{done.stderr[-3000:]}"
    elif kind == "bash" and code.lstrip().startswith("make"):
        for line in code.splitlines():
            target = line.split("#")[0].split()[1]
            dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
            assert dry.returncode == 0, f"{page}: make -n {target}: {dry.stderr}"
    elif kind == "bash" and "litellm --config" in code:
        return  # a server that runs until stopped: tests/test_litellm_proxy.py starts it as the page says
    elif kind == "bash":
        done = subprocess.run(["bash", "-ec", code], cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{page}: shell block failed:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    elif kind == "yaml":
        example = yaml.safe_load((ROOT / "examples/litellm_proxy/config.yaml").read_text())
        assert yaml.safe_load(code)["litellm_settings"] == example["litellm_settings"]


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page, promised in PAGES.items() if promised.runs])
def test_every_block_of_the_page_runs(page, tmp_path, banking_subset):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("TRACER_DB", None)
    with LocalTeacher(dict(banking_subset)) as teacher:
        env |= {"OPENAI_BASE_URL": teacher.base_url, "OPENAI_API_BASE": teacher.base_url, "OPENAI_API_KEY": "sk-test"}
        for kind, code in page_blocks(page):
            run_block(page, kind, code, tmp_path, env)
        check = PAGES[page].check
        if check is not None:
            check(tmp_path, teacher)
