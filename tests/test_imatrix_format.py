"""The imatrix file formats: GGUF as llama-imatrix writes it, legacy .dat as it used to."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.gguf.imatrix import ImatrixData, read_imatrix, write_imatrix

FIXTURE = Path(__file__).parent / "fixtures" / "ggml" / "imatrix_ref.gguf"


def _data() -> ImatrixData:
    rng = np.random.default_rng(7)
    return ImatrixData(
        entries={
            "blk.0.ffn_up.weight": (rng.random((1, 64), dtype=np.float32) * 50, np.array([40.0], np.float32)),
            "blk.0.ffn_down_exps.weight": (
                rng.random((4, 32), dtype=np.float32),
                np.array([10.0, 0.0, 3.0, 1.0], np.float32),
            ),
            "blk.0.attn_q.weight": (rng.random((1, 64), dtype=np.float32), np.array([7.0], np.float32)),
        },
        datasets=["wiki.train.raw"],
        chunk_count=5,
        chunk_size=512,
    )


def test_gguf_roundtrip_keeps_every_entry_and_key(tmp_path):
    data = _data()
    write_imatrix(tmp_path / "m.gguf", data)
    back = read_imatrix(tmp_path / "m.gguf")
    assert (back.datasets, back.chunk_count, back.chunk_size, back.legacy) == (
        ["wiki.train.raw"],
        5,
        512,
        False,
    )
    assert sorted(back.entries) == sorted(data.entries)
    for name, (sums, counts) in data.entries.items():
        np.testing.assert_array_equal(back.entries[name][0], sums)
        np.testing.assert_array_equal(back.entries[name][1], counts)


def test_gguf_layout_is_llama_imatrix_s(tmp_path):
    """Keys in save_imatrix's order, no general.architecture, tensors sorted, in_sum2 [n_per_row, n_mat]."""
    from gguf import GGUFReader

    write_imatrix(tmp_path / "m.gguf", _data())
    reader = GGUFReader(tmp_path / "m.gguf")
    keys = [f.name for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    assert keys == ["general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"]
    names = [t.name for t in reader.tensors]
    assert names[0::2] == sorted(n for n in names if n.endswith(".in_sum2"))
    shapes = {t.name: list(map(int, t.shape)) for t in reader.tensors}
    assert shapes["blk.0.ffn_down_exps.weight.in_sum2"] == [32, 4]
    assert shapes["blk.0.ffn_down_exps.weight.counts"] == [1, 4]
    assert shapes["blk.0.ffn_up.weight.counts"] == [1]  # ggml_n_dims drops trailing 1s


@pytest.mark.skipif(not FIXTURE.exists(), reason="reference file not made")
def test_gguf_bytes_match_ggml_gguf_writer(tmp_path):
    """imatrix_ref.gguf was written by libggml-base's gguf_write_to_file (scripts/make_ggml_fixtures.py)."""
    ref = read_imatrix(FIXTURE)
    write_imatrix(tmp_path / "m.gguf", ref)
    assert (tmp_path / "m.gguf").read_bytes() == FIXTURE.read_bytes()


def test_importance_divides_by_counts_and_is_one_where_no_rows(tmp_path):
    data = _data()
    imp = data.importance("blk.0.ffn_down_exps.weight")
    sums = data.entries["blk.0.ffn_down_exps.weight"][0]
    assert imp.dtype == np.float32 and imp.shape == (4, 32)
    np.testing.assert_array_equal(imp[0], sums[0] / np.float32(10))
    np.testing.assert_array_equal(imp[1], np.ones(32, np.float32))
    np.testing.assert_array_equal(imp[2], sums[2] / np.float32(3))
    assert data.importance("output.weight") is None


def test_importance_rounds_counts_like_lround():
    data = ImatrixData(entries={"w": (np.full((1, 4), 6.0, np.float32), np.array([2.5], np.float32))})
    np.testing.assert_array_equal(data.importance("w"), np.full((1, 4), 2.0, np.float32))  # 6 / 3


def _legacy(entries, trailer=(3, "calib.txt")) -> bytes:
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values))
        out += np.asarray(values, "<f4").tobytes()
    if trailer:
        out += struct.pack("<i", trailer[0]) + struct.pack("<i", len(trailer[1])) + trailer[1].encode()
    return out


def test_legacy_dat_is_read_with_its_trailer(tmp_path):
    (tmp_path / "m.dat").write_bytes(_legacy([("blk.0.attn_q.weight", 4, [8.0, 2.0, 4.0])]))
    data = read_imatrix(tmp_path / "m.dat")
    assert (data.legacy, data.chunk_count, data.datasets) == (True, 3, ["calib.txt"])
    np.testing.assert_array_equal(data.importance("blk.0.attn_q.weight"), [[2.0, 0.5, 1.0]])


def test_legacy_dat_without_trailer_and_zero_ncall_keeps_values(tmp_path):
    (tmp_path / "m.dat").write_bytes(_legacy([("w", 0, [8.0, 2.0])], trailer=None))
    data = read_imatrix(tmp_path / "m.dat")
    assert (data.chunk_count, data.datasets) == (0, [])
    np.testing.assert_array_equal(data.importance("w"), [[8.0, 2.0]])


def test_truncated_legacy_dat_names_the_entry(tmp_path):
    raw = _legacy([("a.weight", 1, [1.0] * 8), ("b.weight", 1, [1.0] * 8)], trailer=None)
    (tmp_path / "m.dat").write_bytes(raw[:-5])
    with pytest.raises(GemmaMTPError, match=r"m\.dat.*entry 2 of 2 \(b\.weight\).*truncated"):
        read_imatrix(tmp_path / "m.dat")


def test_truncated_gguf_says_truncated(tmp_path):
    write_imatrix(tmp_path / "m.gguf", _data())
    raw = (tmp_path / "m.gguf").read_bytes()
    for cut in (40, len(raw) - 40):
        (tmp_path / "t.gguf").write_bytes(raw[:cut])
        with pytest.raises(GemmaMTPError, match=r"t\.gguf.*truncated"):
            read_imatrix(tmp_path / "t.gguf")


def test_sums_without_counts_is_an_error_naming_the_entry(tmp_path):
    from gguf import GGUFWriter

    writer = GGUFWriter(tmp_path / "m.gguf", "x")
    writer.add_string("imatrix.datasets", "d")
    writer.add_uint32("imatrix.chunk_count", 1)
    writer.add_uint32("imatrix.chunk_size", 1)
    writer.add_tensor("w.in_sum2", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GemmaMTPError, match=r"m\.gguf: entry w has w\.in_sum2 but no w\.counts"):
        read_imatrix(tmp_path / "m.gguf")


def test_model_gguf_is_refused_as_an_imatrix(tmp_path):
    from gguf import GGUFWriter

    writer = GGUFWriter(tmp_path / "model.gguf", "gemma4")
    writer.add_tensor("token_embd.weight", np.ones((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        GemmaMTPError, match=r"model\.gguf.*a model file \(gemma4\), not an importance matrix"
    ):
        read_imatrix(tmp_path / "model.gguf")


def test_counts_that_do_not_split_the_sums_is_an_error(tmp_path):
    from gguf import GGUFWriter

    writer = GGUFWriter(tmp_path / "bad.gguf", "x")
    for key in ("imatrix.chunk_count", "imatrix.chunk_size"):
        writer.add_uint32(key, 1)
    writer.add_array("imatrix.datasets", ["d"])
    writer.add_tensor("w.in_sum2", np.ones(10, np.float32))
    writer.add_tensor("w.counts", np.ones((3, 1), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GemmaMTPError, match=r"bad\.gguf: entry w: 10 sums do not split into 3 matrices"):
        read_imatrix(tmp_path / "bad.gguf")


def test_missing_file_and_garbage_are_clear_errors(tmp_path):
    with pytest.raises(GemmaMTPError, match="no such imatrix file"):
        read_imatrix(tmp_path / "nope.gguf")
    (tmp_path / "junk.dat").write_bytes(b"\xff\xff\xff\x7fhello")
    with pytest.raises(GemmaMTPError, match=r"junk\.dat: neither a GGUF nor a legacy \.dat imatrix"):
        read_imatrix(tmp_path / "junk.dat")


def test_empty_datasets_are_written_as_an_empty_array(tmp_path):
    data = _data()
    data.datasets = []
    write_imatrix(tmp_path / "m.gguf", data)
    assert read_imatrix(tmp_path / "m.gguf").datasets == []
