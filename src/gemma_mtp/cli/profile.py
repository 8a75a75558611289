"""Measured settings: ``gemma-mtp bench --recommend FILE`` writes a profile, ``--profile FILE`` in
``run``, ``chat`` and ``serve`` applies it.

A profile is the fastest configuration a local bench measured for one target on this machine (its
drafter, strategy, n_max and p_min, with the tokens/s and speedup that made it win, and every row
it was chosen from as the evidence). Applying it fills only what the flags leave open: an explicit
``-m``, ``-md``, ``--spec-type``, ``--spec-draft-n-max`` or ``--spec-draft-p-min`` wins.

``bench --recommend`` without FILE writes per-pair defaults under ``profile_dir()``
(``$GEMMA_MTP_PROFILES``, else ``$GEMMA_MTP_CACHE/profiles``, else ``~/.cache/gemma-mtp/profiles``):
for each target and each drafter benched with it, the best of that drafter's rows, plain decoding
and n-gram lookup (what ``run -m T -md D`` should use), and for the target alone the best of all its
rows (what ``run -m T`` should use). A file's identity in the key is its name, size and modification
time (hashing gigabytes at every start would cost more than it saves), so a rewritten file is a new
pair. ``run``, ``chat`` and ``serve`` without ``--profile`` apply the default profile of what they
load, saying so on stderr; ``--no-profile`` ignores it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_mtp.cli.spec_args import SpecFlags
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.errors import GemmaMTPError, UsageError
from gemma_mtp.gguf.atomic import atomic_write

__all__ = [
    "Profile",
    "recommend",
    "write_profile",
    "read_profile",
    "apply_profile",
    "add_profile_argument",
    "profile_dir",
    "default_profile_path",
    "write_default_profiles",
    "find_default_profile",
]

PROFILE_FORMAT = "gemma-mtp-profile/1"
PROFILES_ENV = "GEMMA_MTP_PROFILES"
_EVIDENCE = ("drafter", "strategy", "n_max", "p_min", "temperature", "tokens_per_s", "speedup", "acceptance")


@dataclass(frozen=True, kw_only=True)
class Profile:
    target: str
    drafter: str | None  # None: plain decoding or n-gram won
    strategy: str  # none | mtp | ngram | draft
    n_max: int | None
    p_min: float | None
    tokens_per_s: float
    speedup: float | None
    temperature: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        how = "plain decoding" if self.strategy == "none" else f"{self.strategy} n_max {self.n_max}"
        if self.strategy not in ("none", "ngram") and self.p_min:
            how += f" p_min {self.p_min:g}"
        if self.drafter:
            how += f" with {Path(self.drafter).name}"
        speed = f"{self.tokens_per_s:.1f} tok/s"
        if self.speedup:
            speed += f", {self.speedup:.2f}x plain"
        return f"{how} ({speed} when measured)"


def recommend(rows: list[dict[str, Any]]) -> Profile:
    """The fastest configuration of a local bench's rows (overall category), plain decoding included."""
    candidates = [r for r in rows if r.get("category") == "all" and r.get("mode") == "local"]
    candidates = [r for r in candidates if r.get("n_max") != "auto"]  # a fixed setting to hand over
    if not candidates:
        raise UsageError("--recommend needs a local bench (with -m): there are no local rows to choose from")
    best = max(candidates, key=lambda r: r["tokens_per_s"])
    speculative = best["n_max"] != 0
    return Profile(
        target=str(best["model"]),
        drafter=best.get("drafter_path") if speculative else None,
        strategy=best["strategy"] if speculative else "none",
        n_max=best["n_max"] if speculative else None,
        p_min=best.get("p_min") if speculative else None,
        tokens_per_s=best["tokens_per_s"],
        speedup=best.get("speedup"),
        temperature=best.get("temperature"),
        machine={
            k: best.get(k) for k in ("cpu", "device", "threads", "git_commit", "timestamp") if k in best
        },
        evidence=[{k: r.get(k) for k in _EVIDENCE} for r in candidates],
    )


def write_profile(path: str | Path, profile: Profile) -> Path:
    """Write the profile as JSON through `gguf.atomic.atomic_write` (a temporary file beside it, then
    a rename; the umask's mode; a missing folder is an error naming it)."""
    data = {"format": PROFILE_FORMAT, **dataclasses.asdict(profile)}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)


def read_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GemmaMTPError(
            f"--profile {path}: no such file; make one with gemma-mtp bench --recommend"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GemmaMTPError(f"--profile {path}: not a readable profile ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise GemmaMTPError(
            f"--profile {path}: not a gemma-mtp profile (expected format {PROFILE_FORMAT!r}); "
            "make one with gemma-mtp bench --recommend FILE"
        )
    names = {f.name for f in dataclasses.fields(Profile)}
    try:
        return Profile(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise GemmaMTPError(f"--profile {path}: incomplete profile ({exc})") from None


def profile_dir() -> Path:
    """``$GEMMA_MTP_PROFILES``, else ``profiles`` under the cache (``$GEMMA_MTP_CACHE``)."""
    if os.environ.get(PROFILES_ENV):
        return Path(os.environ[PROFILES_ENV]).expanduser()
    from gemma_mtp.assets import cache_dir

    return cache_dir() / "profiles"


def _identity(path: str | Path) -> str:
    """Name, size and mtime of a file; of each file directly inside an HF directory."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    parts = [path.name]
    for f in files:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def default_profile_path(target: str | Path, drafter: str | Path | None) -> Path:
    """``<target stem>--<drafter stem or any>-<12 hex of both files' identity>.json`` in `profile_dir`."""
    key = _identity(target) + "||" + (_identity(drafter) if drafter else "any")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = f"{Path(target).stem}--{Path(drafter).stem if drafter else 'any'}-{digest}"
    return profile_dir() / f"{stem}.json"


def write_default_profiles(rows: list[dict[str, Any]]) -> list[tuple[Path, Profile]]:
    """Per target of a local bench: a profile for each drafter benched with it (its rows, plain
    decoding and n-gram lookup) and one for the target alone (all its rows)."""
    local = [r for r in rows if r.get("mode") == "local"]
    if not local:
        raise UsageError("--recommend needs a local bench (with -m): there are no local rows to choose from")
    written = []
    profile_dir().mkdir(parents=True, exist_ok=True)
    for target in dict.fromkeys(r["model"] for r in local):
        mine = [r for r in local if r["model"] == target]
        drafters = dict.fromkeys(r["drafter_path"] for r in mine if r.get("drafter_path"))
        for drafter in [*drafters, None]:
            chosen = [r for r in mine if drafter is None or r.get("drafter_path") in (None, drafter)]
            profile = recommend(chosen)
            written.append((write_profile(default_profile_path(target, drafter), profile), profile))
    return written


def find_default_profile(load: LoadOptions, spec: SpecFlags) -> Path | None:
    """The default profile of what would be loaded: ``-m`` (else the demo target, if it is cached:
    looking never downloads) with ``-md`` (else the demo drafter when the demo pair is implied)."""
    model, drafter = load.model, load.model_draft
    if model is None:
        from gemma_mtp import assets, demo

        cached = assets.cache_dir() / assets.GEMMA3_FILE
        if not cached.is_file():
            return None
        model = str(cached)
        if drafter is None and spec.type in (None, "mtp"):
            try:
                drafter = str(demo.demo_drafter())
            except GemmaMTPError:
                return None
    if not spec.wants_drafter:
        drafter = None  # ngram or none: the drafter would not be loaded
    try:
        path = default_profile_path(model, drafter)
    except OSError:  # a missing model file: loading it will say so
        return None
    return path if path.is_file() else None


def apply_profile(
    load: LoadOptions,
    spec: SpecFlags,
    path: str | None,
    *,
    quiet: bool = False,
    no_profile: bool = False,
) -> tuple[LoadOptions, SpecFlags]:
    """Fill what the flags leave open from the profile at ``path``; without one, from the default
    profile of the pair (`find_default_profile`) unless ``no_profile``."""
    if path is not None and no_profile:
        raise UsageError("--profile and --no-profile contradict each other; give one")
    if path is None and not no_profile:
        found = find_default_profile(load, spec)
        if found is not None:
            profile = read_profile(found)
            if not quiet:
                machine = profile.machine or {}
                where = machine.get("device") or "this machine"
                when = f" on {machine['timestamp']}" if machine.get("timestamp") else ""
                print(
                    f"using profile {found} measured with {where}{when}: {profile.summary()}; "
                    "--no-profile to ignore",
                    file=sys.stderr,
                )
            return _fill(load, spec, profile, str(found), quiet=True)
    if path is None:
        return load, spec
    return _fill(load, spec, read_profile(path), path, quiet=quiet)


def _fill(
    load: LoadOptions, spec: SpecFlags, profile: Profile, path: str, *, quiet: bool
) -> tuple[LoadOptions, SpecFlags]:
    if load.model is not None and Path(load.model).name != Path(profile.target).name:
        print(
            f"warning: --profile {path} was measured for {Path(profile.target).name}, not "
            f"{Path(load.model).name}: its settings may not suit this model",
            file=sys.stderr,
        )
    model = load.model or profile.target
    drafter = load.model_draft
    if drafter is None and spec.type in (None, profile.strategy) and profile.drafter:
        drafter = profile.drafter
    kind = spec.type
    if kind is None and not (load.model_draft and profile.strategy == "none"):  # an own -md still drafts
        kind = profile.strategy
    spec = dataclasses.replace(
        spec,
        type=kind,
        n_max=spec.n_max if spec.n_max is not None else profile.n_max,
        p_min=spec.p_min if spec.p_min is not None else profile.p_min,
    )
    if not quiet:
        print(f"--profile {path}: {profile.summary()}", file=sys.stderr)
    return dataclasses.replace(load, model=model, model_draft=drafter), spec


def add_profile_argument(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("measured settings")
    group.add_argument(
        "--profile",
        metavar="FILE",
        help="settings measured by gemma-mtp bench --recommend FILE (explicit flags win); default: the "
        "pair's profile written by bench --recommend without FILE, when there is one",
    )
    group.add_argument(
        "--no-profile",
        dest="no_profile",
        action="store_true",
        help="ignore the pair's default profile",
    )
