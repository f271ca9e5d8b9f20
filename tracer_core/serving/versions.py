"""Which version of a task a command means: a fingerprint prefix, or the task's only version."""

from __future__ import annotations

from tracer_core.errors import TracerError
from tracer_core.identity import describe_identity, label
from tracer_core.storage.store import TraceStore


class VersionError(TracerError):
    """A task name or fingerprint prefix does not name exactly one task version."""


def resolve_version(store: TraceStore, task: str, prefix: str | None = None) -> str:
    """The fingerprint of `task` that `prefix` names, or its only version when no prefix is given."""
    versions = store.versions(task)
    if not versions:
        known = ", ".join(sorted({repr(v["task"]) for v in store.versions()})) or "none"
        raise VersionError(f"task {task!r} has no traces or policies in {store.name!r} (tasks: {known})")
    if prefix is not None:
        matches = [v for v in versions if v["fingerprint"].startswith(prefix)]
        if len(matches) == 1:
            return matches[0]["fingerprint"]
        if prefix == "" and any(v["fingerprint"] == "" for v in versions):
            return ""
        what = "matches no version" if not matches else f"matches {len(matches)} versions"
        raise VersionError(f"fingerprint {prefix!r} of task {task!r} {what}; versions:\n{listing(versions)}")
    if len(versions) == 1:
        return versions[0]["fingerprint"]
    raise VersionError(f"task {task!r} has {len(versions)} versions; pass --fingerprint PREFIX:\n{listing(versions)}")


def origin(version: dict) -> str:
    """What the version came from, in one line."""
    description = version.get("description")
    text = describe_identity(description) if isinstance(description, dict) else "recorded without a description"
    return f"{version['origin']}: {text}" if version.get("origin") else text


def listing(versions: list[dict]) -> str:
    return "\n".join(
        f"  {label(v)}  {v['teacher']:,} teacher traces  {origin(v)}" for v in versions
    )
