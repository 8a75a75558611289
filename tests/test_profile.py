"""`bench --recommend` profiles and `--profile` in run/serve: the fastest row wins, explicit flags win
over the profile, a bad file is one clear error."""

from __future__ import annotations

import json

import pytest
from test_cli_args import RUN, FakeApi, one_line_error  # noqa: F401 (the api fixture's fake)

import gemma_mtp
from gemma_mtp.cli.main import main
from gemma_mtp.cli.profile import apply_profile, read_profile, recommend, write_profile
from gemma_mtp.cli.spec_args import SpecFlags
from gemma_mtp.engine.options import LoadOptions
from gemma_mtp.errors import GemmaMTPError, UsageError


def _row(n_max, tokens_per_s, *, p_min=0.0, drafter="d.gguf", category="all", strategy="mtp"):
    return {
        "mode": "local",
        "category": category,
        "model": "/models/target.gguf",
        "drafter": "none" if n_max == 0 else drafter,
        "drafter_path": None if n_max == 0 else f"/models/{drafter}",
        "strategy": "none" if n_max == 0 else strategy,
        "n_max": n_max,
        "p_min": None if n_max == 0 else p_min,
        "temperature": 0.0,
        "tokens_per_s": tokens_per_s,
        "speedup": tokens_per_s / 50.0,
        "acceptance": 0.5,
    }


ROWS = [
    _row(0, 50.0),
    _row(1, 61.0),
    _row(3, 75.0, p_min=0.6),
    _row(3, 99.0, category="code"),  # a category row never wins on its own
    _row("auto", 120.0),  # autotune is not a fixed setting to hand over
    _row(2, 70.0),
]


def test_recommend_picks_the_fastest_fixed_overall_row():
    profile = recommend(ROWS)
    assert (profile.strategy, profile.n_max, profile.p_min) == ("mtp", 3, 0.6)
    assert profile.drafter == "/models/d.gguf" and profile.tokens_per_s == 75.0
    assert len(profile.evidence) == 4


def test_plain_decoding_can_win():
    profile = recommend([_row(0, 80.0), _row(2, 70.0)])
    assert (profile.strategy, profile.drafter, profile.n_max) == ("none", None, None)


def test_recommend_needs_local_rows():
    with pytest.raises(UsageError, match="local bench"):
        recommend([{**_row(2, 70.0), "mode": "endpoint"}])


def test_profile_round_trip_and_bad_files(tmp_path):
    path = write_profile(tmp_path / "p.json", recommend(ROWS))
    assert read_profile(path) == recommend(ROWS)
    (tmp_path / "bad.json").write_text(json.dumps({"n_max": 3}))
    with pytest.raises(GemmaMTPError, match="not a gemma-mtp profile"):
        read_profile(tmp_path / "bad.json")
    with pytest.raises(GemmaMTPError, match="no such file; make one with gemma-mtp bench --recommend"):
        read_profile(tmp_path / "missing.json")
    with pytest.raises(GemmaMTPError, match="does not exist"):
        write_profile(tmp_path / "nope" / "p.json", recommend(ROWS))


def test_the_profile_fills_only_what_the_flags_leave_open(tmp_path, capsys):
    path = str(write_profile(tmp_path / "p.json", recommend(ROWS)))
    load, spec = apply_profile(LoadOptions(), SpecFlags(), path)
    assert (load.model, load.model_draft) == ("/models/target.gguf", "/models/d.gguf")
    assert (spec.type, spec.n_max, spec.p_min) == ("mtp", 3, 0.6)
    assert "mtp n_max 3 p_min 0.6 with d.gguf" in capsys.readouterr().err
    mine = LoadOptions(model="/models/target.gguf", model_draft="mine.gguf")
    load, spec = apply_profile(mine, SpecFlags(n_max=1, p_min=0.0), path, quiet=True)
    assert (load.model_draft, spec.n_max, spec.p_min) == ("mine.gguf", 1, 0.0)
    load, spec = apply_profile(LoadOptions(model="other.gguf"), SpecFlags(type="ngram"), path)
    assert (load.model_draft, spec.type) == (None, "ngram")  # ngram: the profile's drafter stays out
    assert "measured for target.gguf, not other.gguf" in capsys.readouterr().err


@pytest.fixture
def api(monkeypatch) -> FakeApi:
    import sys

    fake = FakeApi()
    monkeypatch.setitem(sys.modules, "gemma_mtp.api", fake)
    monkeypatch.setattr(gemma_mtp, "api", fake, raising=False)
    return fake


def test_run_with_a_profile_loads_its_pair_and_speculates_with_its_settings(api, tmp_path):
    path = str(write_profile(tmp_path / "p.json", recommend(ROWS)))
    assert main(["run", "--profile", path, "--prompt-ids", "2,105,7"]) == 0
    assert api.load_calls[0][:2] == ("/models/target.gguf", "/models/d.gguf")
    spec = api.generate_calls[0][3]
    assert (spec.type, spec.n_max, spec.p_min) == ("mtp", 3, 0.6)
    assert main([*RUN, "--profile", path, "--draft-max", "2"]) == 0  # an explicit flag wins
    assert api.generate_calls[1][3].n_max == 2


def test_serve_takes_the_profile_too(tmp_path):
    from gemma_mtp.cli.main import build_parser
    from gemma_mtp.server.cli import settings_from_args

    path = str(write_profile(tmp_path / "p.json", recommend(ROWS)))
    settings = settings_from_args(build_parser().parse_args(["serve", "--profile", path]))
    assert settings.load.model_draft == "/models/d.gguf"
    assert (settings.spec.n_max, settings.spec.p_min) == (3, 0.6)


# --------------------------------------------------------------------------- default profile per pair


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """A target and two drafter files (their identity is what keys the default profiles), a
    profile directory of its own, and bench rows over them."""
    monkeypatch.setenv("GEMMA_MTP_PROFILES", str(tmp_path / "profiles"))
    files = {}
    for name in ("target.gguf", "d.gguf", "e.gguf"):
        files[name] = tmp_path / name
        files[name].write_bytes(name.encode())
    rows = [{**r, "model": str(files["target.gguf"])} for r in ROWS]
    for r in rows:
        if r["drafter_path"]:
            r["drafter_path"] = str(files["d.gguf"])
    other = {**_row(2, 90.0, drafter="e.gguf"), "model": str(files["target.gguf"])}
    rows.append({**other, "drafter_path": str(files["e.gguf"])})
    return files, rows


def test_default_profile_key_is_the_pairs_identity(pair, tmp_path, monkeypatch):
    import os

    from gemma_mtp.cli.profile import default_profile_path, profile_dir

    files, _ = pair
    path = default_profile_path(files["target.gguf"], files["d.gguf"])
    assert path.parent == profile_dir() == tmp_path / "profiles"
    assert path.name.startswith("target--d-") and path == default_profile_path(
        files["target.gguf"], files["d.gguf"]
    )
    assert path != default_profile_path(files["target.gguf"], files["e.gguf"])
    assert default_profile_path(files["target.gguf"], None).name.startswith("target--any-")
    st = files["d.gguf"].stat()
    os.utime(files["d.gguf"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten file: a new pair
    assert path != default_profile_path(files["target.gguf"], files["d.gguf"])
    monkeypatch.delenv("GEMMA_MTP_PROFILES")
    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path / "cache"))
    assert profile_dir() == tmp_path / "cache" / "profiles"


def test_recommend_without_file_writes_a_profile_per_benched_pair_and_one_for_the_target(pair):
    from gemma_mtp.cli.profile import default_profile_path, write_default_profiles

    files, rows = pair
    written = dict(write_default_profiles(rows))
    target = files["target.gguf"]
    assert set(written) == {default_profile_path(target, d) for d in (files["d.gguf"], files["e.gguf"], None)}
    by_d = read_profile(default_profile_path(target, files["d.gguf"]))
    assert (by_d.drafter, by_d.n_max, by_d.tokens_per_s) == (str(files["d.gguf"]), 3, 75.0)
    best = read_profile(default_profile_path(target, None))  # the target alone: the fastest of all
    assert (best.drafter, best.n_max, best.tokens_per_s) == (str(files["e.gguf"]), 2, 90.0)


def test_run_applies_the_pairs_default_profile_and_says_so(api, pair, capsys):
    from gemma_mtp.cli.profile import write_default_profiles

    files, rows = pair
    write_default_profiles(rows)
    target, d = str(files["target.gguf"]), str(files["d.gguf"])
    assert main(["run", "-m", target, "-md", d, "--prompt-ids", "2,105,7"]) == 0
    spec = api.generate_calls[0][3]
    assert api.load_calls[0][:2] == (target, d)
    assert (spec.type, spec.n_max, spec.p_min) == ("mtp", 3, 0.6)
    err = capsys.readouterr().err
    assert "using profile " in err and "target--d-" in err and "--no-profile to ignore" in err
    # -m alone: the target's own profile brings its best drafter
    assert main(["run", "-m", target, "--prompt-ids", "2,105,7"]) == 0
    assert api.load_calls[1][:2] == (target, str(files["e.gguf"]))
    assert api.generate_calls[1][3].n_max == 2


def test_explicit_flags_still_override_the_default_profile(api, pair):
    from gemma_mtp.cli.profile import write_default_profiles

    files, rows = pair
    write_default_profiles(rows)
    target, d = str(files["target.gguf"]), str(files["d.gguf"])
    argv = ["run", "-m", target, "-md", d, "--prompt-ids", "2,105,7"]
    assert main([*argv, "--draft-max", "1", "--spec-draft-p-min", "0.2"]) == 0
    spec = api.generate_calls[0][3]
    assert (spec.type, spec.n_max, spec.p_min) == ("mtp", 1, 0.2)
    assert main([*argv, "--no-profile"]) == 0
    spec = api.generate_calls[1][3]
    assert (spec.n_max, spec.p_min) == (3, 0.0)  # SpecOptions' own defaults: the profile is ignored
    assert main([*argv, "--no-profile", "--profile", "x.json"]) == 2


def test_serve_picks_up_the_default_profile_too(pair):
    from gemma_mtp.cli.main import build_parser
    from gemma_mtp.cli.profile import write_default_profiles
    from gemma_mtp.server.cli import settings_from_args

    files, rows = pair
    write_default_profiles(rows)
    target, d = str(files["target.gguf"]), str(files["d.gguf"])
    settings = settings_from_args(build_parser().parse_args(["serve", "-m", target, "-md", d]))
    assert (settings.spec.n_max, settings.spec.p_min) == (3, 0.6)
    ignored = settings_from_args(build_parser().parse_args(["serve", "-m", target, "-md", d, "--no-profile"]))
    assert (ignored.spec.n_max, ignored.spec.p_min) == (None, None)


def test_recommend_takes_an_optional_file():
    from gemma_mtp.bench.cli import DEFAULT_PROFILES
    from gemma_mtp.cli.main import build_parser

    assert build_parser().parse_args(["bench", "--recommend"]).recommend == DEFAULT_PROFILES
    assert build_parser().parse_args(["bench", "--recommend", "p.json"]).recommend == "p.json"


def test_recommend_into_a_missing_folder_fails_before_the_benchmark_runs(tmp_path, monkeypatch):
    from gemma_mtp.bench import cli as bench_cli
    from gemma_mtp.cli.main import build_parser

    def no_run(args):
        raise AssertionError("benchmarked before checking where the profile goes")

    monkeypatch.setattr(bench_cli, "_run_local", no_run)
    args = build_parser().parse_args(
        ["bench", "-m", "t.gguf", "--recommend", str(tmp_path / "nope" / "p.json")]
    )
    with pytest.raises(UsageError, match="does not exist; create it first"):
        bench_cli.bench_command(args)
