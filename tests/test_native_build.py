"""The native build's cache (`gemma_mtp.native.build`): one build per content key, shared by every
checkout, never recompiled on load, safe when several processes build at once, loud when it fails.

The concurrency and sharing tests build a tiny C extension through the same machinery as the real
one (a few seconds instead of a minute or two), each in its own cache directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_mtp import native
from gemma_mtp.native.build import BuildError, Extension

TINY = r"""
#include <Python.h>
static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {nullptr, nullptr, 0, nullptr}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "gemma_mtp_tiny_ext", nullptr, -1, methods};
PyMODINIT_FUNC PyInit_gemma_mtp_tiny_ext(void) { return PyModule_Create(&def); }
"""

# Builds the tiny extension from the sources in argv[1] and prints what happened as JSON.
SCRIPT = r"""
import json, sys
from pathlib import Path
from gemma_mtp.native.build import Extension
ext = Extension(name="gemma_mtp_tiny_ext", sources=(Path(sys.argv[1]) / "tiny.cpp",), cflags=("-O1",))
built = ext.ensure(lambda line: print(line, file=sys.stderr))
print(json.dumps({"built": built, "answer": ext.load().answer(), "library": str(ext.library())}))
"""


def _checkout(root: Path, text: str = TINY) -> Path:
    root.mkdir(parents=True)
    (root / "tiny.cpp").write_text(text)
    return root


def _start(cache: Path, sources: Path) -> subprocess.Popen:
    env = {**os.environ, "GEMMA_MTP_CACHE": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(sources)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out), err


def test_the_key_covers_contents_not_the_checkout_path(tmp_path):
    a = _checkout(tmp_path / "a")
    b = _checkout(tmp_path / "b")
    c = _checkout(tmp_path / "c", TINY.replace("42", "43"))

    def ext(root: Path) -> Extension:
        return Extension(name="gemma_mtp_tiny_ext", sources=(root / "tiny.cpp",))

    assert ext(a).key() == ext(b).key() and ext(a).directory() == ext(b).directory()
    assert ext(a).key() != ext(c).key()
    # the product's own key does not depend on where the package lives either
    copy = tmp_path / "csrc"
    shutil.copytree(native.CSRC, copy)
    moved = Extension(
        name=native.EXTENSION.name,
        sources=tuple(copy / p.name for p in native.EXTENSION.sources),
        headers=tuple(copy / p.name for p in native.EXTENSION.headers),
        cflags=native.EXTENSION.cflags,
        ldflags=native.EXTENSION.ldflags,
    )
    assert moved.key() == native.EXTENSION.key()


def test_two_processes_at_once_build_once_and_every_checkout_shares_the_build(tmp_path):
    cache = tmp_path / "cache"
    first, second = _checkout(tmp_path / "checkout1"), _checkout(tmp_path / "checkout2")
    procs = [_start(cache, first), _start(cache, second)]  # started together: they race for the lock
    results = [_result(p) for p in procs]
    assert sorted(r["built"] for r, _ in results) == [False, True]  # exactly one compiled
    assert all(r["answer"] == 42 for r, _ in results)
    library = Path(results[0][0]["library"])
    assert library.is_file() and results[1][0]["library"] == str(library)
    stamp = library.stat().st_mtime_ns
    # later loads, from either checkout, take the finished library as it is: no compiler runs
    for sources in (second, first):
        again, err = _result(_start(cache, sources))
        assert again == {"built": False, "answer": 42, "library": str(library)}
        assert "compiling" not in err
    assert library.stat().st_mtime_ns == stamp
    assert [p.name for p in library.parent.iterdir() if p.name.startswith("build-")] == []


def test_a_failed_build_raises_the_compilers_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path / "cache"))
    broken = _checkout(tmp_path / "broken", TINY.replace("return PyModule_Create(&def);", "return nope;"))
    ext = Extension(name="gemma_mtp_tiny_ext", sources=(broken / "tiny.cpp",), cflags=("-O1",))
    with pytest.raises(BuildError, match="nope"):
        ext.ensure()
    assert not ext.is_built()


def test_an_unavailable_module_is_announced_once_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path / "cache"))
    broken = _checkout(tmp_path / "broken", TINY.replace("return PyModule_Create(&def);", "return nope;"))
    monkeypatch.setattr(
        native, "EXTENSION", Extension(name="gemma_mtp_tiny_ext", sources=(broken / "tiny.cpp",))
    )
    native.reset()
    try:
        assert native.module() is None and native.module() is None
        assert native.why_unavailable() == "the build failed"
    finally:
        native.reset()
    err = capsys.readouterr().err
    assert "nope" in err  # the compiler's own words
    assert err.count("using torch's kernels instead") == 1


def test_ci_turns_a_missing_build_into_a_failure(monkeypatch):
    from native_required import native_or_skip

    monkeypatch.setenv("GEMMA_MTP_NATIVE", "0")
    native.reset()
    try:
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="CI=true"):
            native_or_skip()
        monkeypatch.setenv("CI", "false")
        with pytest.raises(pytest.skip.Exception, match="GEMMA_MTP_NATIVE=0"):
            native_or_skip()
    finally:
        monkeypatch.delenv("GEMMA_MTP_NATIVE")
        native.reset()


def test_build_kernels_command_reports_the_existing_build(capsys):
    from gemma_mtp.cli.main import main

    native_required = native.EXTENSION.is_built()
    if not native_required:
        pytest.skip("the native kernels are not built yet (make test runs build-kernels first)")
    assert main(["build-kernels"]) == 0
    assert str(native.EXTENSION.library()) in capsys.readouterr().err


def test_load_builds_the_kernels_before_any_forward(reference_models, monkeypatch):
    """A first build belongs to loading (`load_s`), never to the first forward (`prompt_ms`)."""
    import gemma_mtp

    calls: list[str] = []
    real = native.EXTENSION.load

    def recording(progress=None):
        calls.append("build-or-load")
        return real(progress)

    monkeypatch.setattr(type(native.EXTENSION), "load", lambda self, progress=None: recording(progress))
    native.reset()
    try:
        engine = gemma_mtp.load(reference_models.target("gemma3").path, dtype="float32", device="cpu")
        assert calls == ["build-or-load"]
        engine.generate([2, 5, 7], n_predict=3)
        assert calls == ["build-or-load"]  # the forward found the module already there
    finally:
        native.reset()


def test_a_builder_killed_mid_build_leaves_no_lock_behind(tmp_path, monkeypatch):
    """torch's own build lock is a file that outlives a killed process (every later load then waits
    forever); ours is an flock, which the kernel drops with its holder."""
    import fcntl
    import signal

    cache = tmp_path / "cache"
    sources = _checkout(tmp_path / "checkout")
    monkeypatch.setenv("GEMMA_MTP_CACHE", str(cache))
    ext = Extension(name="gemma_mtp_tiny_ext", sources=(sources / "tiny.cpp",), cflags=("-O1",))
    ext.directory().mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom gemma_mtp.native.build import _exclusive\n"
            "with _exclusive(Path(sys.argv[1]), None):\n    print('held', flush=True)\n    time.sleep(600)\n",
            str(ext.directory() / "build.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with open(ext.directory() / "build.lock", "a+") as handle:  # free at once: nothing waits on the dead
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(handle, fcntl.LOCK_UN)
    assert ext.ensure() is True and ext.load().answer() == 42
