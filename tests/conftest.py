"""Shared fixtures: tiny transformers reference checkpoints, each built once per test session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import hf_reference as ref
import pytest
import torch

# Every model in the suite is tiny: one intra-op thread is faster, and on a loaded 2-core machine
# OpenMP threads spinning against each other made small matmuls ~20x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _back_to_one_thread():
    """A surface run in-process applies -t (default: the physical cores); the next test gets 1 again,
    so that no test's numerics depend on which tests ran before it."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _no_user_profiles(tmp_path_factory):
    """run, chat and serve apply a pair's default profile from the user's cache (`cli.profile`);
    the suite sees an empty profile directory of its own instead (subprocesses inherit it)."""
    os.environ["GEMMA_MTP_PROFILES"] = str(tmp_path_factory.mktemp("profiles"))


class ReferenceModels:
    """Lazily builds and caches the tiny checkpoints under one session directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, ref.Reference] = {}

    def _get(self, name: str, build: Callable[[Path], ref.Reference]) -> ref.Reference:
        if name not in self._built:
            self._built[name] = build(self.root / name)
        return self._built[name]

    def target(self, name: str) -> ref.Reference:
        builders = ref.TARGET_BUILDERS | ref.EXTRA_BUILDERS
        return self._get(name, builders[name])

    def assistant(self, target: str, *, ordered: bool) -> ref.Reference:
        """The assistant paired to ``target``, with the centroid head when ``ordered``."""
        paired = self.target(target)
        name = f"{target}_assistant_{'centroids' if ordered else 'dense'}"
        return self._get(name, lambda path: ref.build_assistant(path, paired, use_ordered_embeddings=ordered))


@pytest.fixture(scope="session")
def reference_models(tmp_path_factory: pytest.TempPathFactory) -> ReferenceModels:
    pytest.importorskip("transformers")
    return ReferenceModels(tmp_path_factory.mktemp("hf_reference"))
