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
