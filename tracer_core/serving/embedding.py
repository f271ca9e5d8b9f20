"""A tracer's embedder: the one it was given (or the default, loaded on first use), its identity, and
whether a policy can answer with it."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from tracer_core.learning.embedder import get_default_embedder
from tracer_core.learning.embedder_identity import identify, mismatch
from tracer_core.learning.policy import Policy

log = logging.getLogger("tracer")


class TracerEmbedder:
    """The embedder of one tracer; a policy fitted with another one never answers."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray] | None, task: str) -> None:
        self._embed = embed
        self.task = task
        self._identity: dict | None = None  # the embedder's identity, computed once
        self._checked: tuple[Policy | None, str | None] = (None, None)  # (policy, why it cannot answer)

    @property
    def embed(self) -> Callable[[list[str]], np.ndarray]:
        if self._embed is None:
            self._embed = get_default_embedder()
        return self._embed

    @property
    def identity(self) -> dict:
        if self._identity is None:
            self._identity = identify(self.embed)
        return self._identity

    def mismatch(self, policy: Policy | None) -> str | None:
        """Why `policy` cannot answer with this embedder, or None; checked once per loaded policy, and logged then."""
        if policy is None:
            return None
        checked, problem = self._checked
        if checked is not policy:
            problem = mismatch(policy, self.identity)
            if problem is not None:
                log.error("tracer task %r: the policy does not answer in this process (every call goes to the LLM): %s",
                          self.task, problem)
            self._checked = (policy, problem)
        return problem
