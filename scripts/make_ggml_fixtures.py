"""Make tests/fixtures/ggml once: float inputs and ggml's own quantized bytes for them.

ggml's reference quantizer is the ground truth for our numpy encoders (gemma_mtp/gguf/codecs.py).
This script calls `ggml_quantize_chunk` from a libggml-base.so built by llama-cpp-python (or by
scripts/build_llama_cpp.sh), so the tests can prove bit-exactness without building llama.cpp in CI:

    pip install llama-cpp-python==0.3.36          # builds llama.cpp from source (~15 min on 2 cores)
    python scripts/make_ggml_fixtures.py \
        --lib .../site-packages/llama_cpp/lib/libggml-base.so --out tests/fixtures/ggml

Writes `inputs.npz` (float32 arrays, one per case), `<TYPE>.npz` (ggml's bytes per case, no
importance matrix), `importance.npz` (a fixed random importance vector per case, one weight per
column, a few of them zero) and `<TYPE>.imatrix.npz` (ggml's bytes with those weights as
`quant_weights`), `imatrix_ref.gguf` (a small importance matrix written by ggml's own
`gguf_write_to_file`, as llama-imatrix's save_imatrix lays it out) and `manifest.json` (the
library, llama.cpp commit, sizes and sha256 of every file). The library is never committed; rerun
only when ggml's block formats change (general.quantization_version).

With `--quantize-source`, it also runs llama-quantize itself (`llama_model_quantize` through the
llama_cpp package of `--llama-python`) on a deterministic tiny Gemma 4 GGUF for every file type
`gemma-mtp quantize` writes, and records each output tensor's type and sha256 in
`llama_quantize.json` (the whole files would be megabytes):

    python tests/test_gguf_tools_helpers.py /tmp/src       # writes /tmp/src/wide.f32.gguf
    python scripts/make_ggml_fixtures.py --lib ... --quantize-source /tmp/src/wide.f32.gguf \
        --llama-python /path/to/venv-with-llama-cpp-python/bin/python \
        --llama-quantize ~/.cache/gemma-mtp/llama.cpp/0.3.36/bin/llama-quantize

`--llama-quantize` adds `wide.imatrix.gguf` (a seeded importance matrix, written by
gemma_mtp.gguf.imatrix) and, in `llama_quantize.json`, `imatrix_file_types`: the tensors of
`llama-quantize --imatrix wide.imatrix.gguf` for IMATRIX_FTYPES.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

T = GGMLQuantizationType
TYPES = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
# the types whose ggml_quantize_chunk reads quant_weights (Q8_0 ignores them)
WEIGHTED_TYPES = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
SEED = 20240607
IMPORTANCE_SEED = 20250115


def make_inputs(seed: int = SEED) -> dict[str, np.ndarray]:
    """Cases that reach every branch of the reference quantizers (rows are multiples of 256)."""
    rng = np.random.default_rng(seed)

    def normal(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    sparse = normal(8, 512) * (rng.random((8, 512)) < 0.05)
    sparse[0, :64] = 0.0  # whole zero sub-blocks and blocks
    sparse[1, :] = 0.0
    sparse[2, 32:64] = 0.75  # a constant sub-block
    sparse[3, :256] = -2.0  # a constant negative block
    mixed = normal(8, 512)
    mixed[:, ::16] *= 1e-3  # sub-blocks spanning orders of magnitude
    mixed[:, 5::32] *= 50.0
    return {
        "normal": normal(32, 512),
        "weights": normal(32, 512, 0.02),  # trained-weight scale
        "heavy_tailed": rng.standard_t(2.0, (16, 512)).astype(np.float32),
        "positive": np.abs(normal(8, 256)) + np.float32(0.1),  # min > 0 branch
        "negative": -np.abs(normal(8, 256)) - np.float32(0.1),
        "sparse": sparse.astype(np.float32),
        "mixed_scales": mixed.astype(np.float32),
        "integers": rng.integers(-8, 9, (8, 256)).astype(np.float32),  # rounding ties
        "halves": (rng.integers(-32, 33, (4, 256)) / 2).astype(np.float32),
        "ramp": np.linspace(-3, 5, 4 * 512, dtype=np.float32).reshape(4, 512),
        "tiny": normal(4, 256, 1e-6),  # fp16 subnormal super-block scales
        "tinier": normal(4, 256, 1e-12),  # scales flush to zero in fp16
        "huge": normal(4, 256, 3e4),
    }


def make_importance(inputs: dict[str, np.ndarray], seed: int = IMPORTANCE_SEED) -> dict[str, np.ndarray]:
    """One importance vector per case (what llama-quantize passes: mean squared activation per
    column), spanning orders of magnitude, with a few exact zeros (columns never activated)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, x in inputs.items():
        n = x.shape[1]
        imp = (rng.lognormal(0.0, 1.5, n) * 1e-2).astype(np.float32)
        imp[rng.random(n) < 0.03] = 0.0
        out[name] = imp
    return out


def ggml_quantize(
    lib: ctypes.CDLL, qtype: GGMLQuantizationType, x: np.ndarray, importance: np.ndarray | None = None
) -> np.ndarray:
    rows, n_per_row = x.shape
    block, type_size = GGML_QUANT_SIZES[qtype]
    out = np.zeros((rows, n_per_row // block * type_size), dtype=np.uint8)
    src = np.ascontiguousarray(x, dtype=np.float32)
    qw = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    qw_ptr = None if qw is None else qw.ctypes.data
    written = lib.ggml_quantize_chunk(
        int(qtype), src.ctypes.data, out.ctypes.data, 0, rows, n_per_row, qw_ptr
    )
    assert written == out.nbytes, (qtype.name, written, out.nbytes)
    return out


class _GGMLInitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def write_reference_imatrix(lib: ctypes.CDLL, path: Path) -> None:
    """A small imatrix (a dense entry, a 4-expert entry with an unused expert, two datasets)
    written by ggml's gguf writer in save_imatrix's order: general.type, imatrix.datasets,
    imatrix.chunk_count, imatrix.chunk_size; per sorted name `<name>.in_sum2` [n_per_row, n_mat]
    then `<name>.counts` [1, n_mat]."""
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    for name, res, argtypes in (
        ("ggml_init", vp, [_GGMLInitParams]),
        ("ggml_free", None, [vp]),
        ("ggml_new_tensor_2d", vp, [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
        ("ggml_set_name", vp, [vp, cp]),
        ("ggml_get_data", vp, [vp]),
        ("gguf_init_empty", vp, []),
        ("gguf_free", None, [vp]),
        ("gguf_set_val_str", None, [vp, cp, cp]),
        ("gguf_set_val_u32", None, [vp, cp, ctypes.c_uint32]),
        ("gguf_set_arr_str", None, [vp, cp, ctypes.POINTER(cp), ctypes.c_size_t]),
        ("gguf_add_tensor", None, [vp, vp]),
        ("gguf_write_to_file", ctypes.c_bool, [vp, cp, ctypes.c_bool]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, argtypes
    rng = np.random.default_rng(IMPORTANCE_SEED + 1)
    entries = {  # name -> (sums [n_mat, n_per_row], counts [n_mat])
        "blk.0.attn_q.weight": (rng.random((1, 256)) * 100, [512.0]),
        "blk.0.ffn_down_exps.weight": (rng.random((4, 128)) * 10, [96.0, 0.0, 300.0, 17.0]),
        "blk.1.ffn_up.weight": (rng.random((1, 512)) * 3, [1024.0]),
    }
    ctx = lib.ggml_init(_GGMLInitParams(1 << 20, None, False))
    gctx = lib.gguf_init_empty()
    lib.gguf_set_val_str(gctx, b"general.type", b"imatrix")
    datasets = (cp * 2)(b"wiki.train.raw", b"code.txt")
    lib.gguf_set_arr_str(gctx, b"imatrix.datasets", datasets, 2)
    lib.gguf_set_val_u32(gctx, b"imatrix.chunk_count", 3)
    lib.gguf_set_val_u32(gctx, b"imatrix.chunk_size", 512)
    for name in sorted(entries):
        sums, counts = np.asarray(entries[name][0], np.float32), np.asarray(entries[name][1], np.float32)
        for suffix, values, ne0 in ((".in_sum2", sums, sums.shape[1]), (".counts", counts, 1)):
            t = lib.ggml_new_tensor_2d(ctx, int(T.F32), ne0, counts.size)
            lib.ggml_set_name(t, (name + suffix).encode())
            ctypes.memmove(lib.ggml_get_data(t), values.tobytes(), values.nbytes)
            lib.gguf_add_tensor(gctx, t)
    assert lib.gguf_write_to_file(gctx, str(path).encode(), False)
    lib.gguf_free(gctx)
    lib.ggml_free(ctx)


# llama_ftype values of the `gemma-mtp quantize` types (llama.h)
LLAMA_FTYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13,
    "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32,
}  # fmt: skip
# file types made again with `llama-quantize --imatrix` (Q4_0 takes Q4_1 for its first ffn_down
# layers then). Not Q2_K_S: it needs an entry for every Q2_K tensor, and llama-quantize exits 1 on
# IMATRIX_LEFT_OUT ("Missing importance matrix for tensor ..."), recorded as `imatrix_refused`.
IMATRIX_FTYPES = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q4_0", "Q6_K")
IMATRIX_REFUSED = ("Q2_K_S",)
IMATRIX_LEFT_OUT = "blk.3.attn_q.weight"  # an entry the imatrix lacks: quantized without weights
LLAMA_QUANTIZE = """
import ctypes, sys
import llama_cpp
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype, params.nthread = int(sys.argv[3]), 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def _digests(path: Path) -> dict[str, list[str]]:
    from gemma_mtp.gguf.reader import open_gguf

    gf = open_gguf(path)
    return {
        t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()]
        for t in gf.tensors.values()
    }


def llama_quantize_digests(
    source: Path, llama_python: str, binary: str | None = None
) -> dict[str, dict[str, list[str]]]:
    """{file type: {tensor: [type, sha256 of its bytes]}} of llama-quantize's outputs: the
    `binary` (llama-quantize SOURCE OUT TYPE 1) where given, else llama_model_quantize through
    the llama_cpp package of `llama_python`."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ftype in LLAMA_FTYPES.items():
            dst = Path(tmp) / f"{name}.gguf"
            if binary:
                cmd = [binary, str(source), str(dst), name, "1"]
            else:
                cmd = [llama_python, "-c", LLAMA_QUANTIZE, str(source), str(dst), str(ftype)]
            subprocess.run(cmd, check=True, capture_output=True)
            out[name] = _digests(dst)
    return out


def fixture_imatrix(source: Path, path: Path) -> None:
    """A seeded importance matrix for every quantizable matrix of `source` but IMATRIX_LEFT_OUT,
    written by gemma_mtp.gguf.imatrix.write_imatrix (so reading our own file is part of the check)."""
    from gemma_mtp.gguf.imatrix import ImatrixData, write_imatrix
    from gemma_mtp.gguf.reader import open_gguf

    rng = np.random.default_rng(IMPORTANCE_SEED + 2)
    entries = {}
    for t in open_gguf(source).tensors.values():
        if len(t.shape) < 2 or not t.name.endswith(".weight") or t.name == IMATRIX_LEFT_OUT:
            continue
        n_mat = t.shape[2] if len(t.shape) > 2 else 1
        counts = rng.integers(100, 2000, n_mat).astype(np.float32)
        sums = (rng.lognormal(0.0, 1.5, (n_mat, t.shape[0])) * counts[:, None]).astype(np.float32)
        entries[t.name] = (sums, counts)
    write_imatrix(path, ImatrixData(entries=entries, datasets=["seeded"], chunk_count=4, chunk_size=512))


def llama_quantize_imatrix_digests(
    source: Path, imatrix: Path, binary: str
) -> dict[str, dict[str, list[str]]]:
    """The same for `llama-quantize --imatrix IMATRIX SOURCE OUT TYPE 1` (the tool itself)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in IMATRIX_FTYPES + IMATRIX_REFUSED:
            dst = Path(tmp) / f"{name}.gguf"
            cmd = [binary, "--imatrix", str(imatrix), str(source), str(dst), name, "1"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if name in IMATRIX_REFUSED:
                assert done.returncode != 0 and "Missing importance matrix" in done.stderr + done.stdout, name
                continue
            done.check_returncode()
            out[name] = _digests(dst)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", required=True, type=Path, help="path to libggml-base.so")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/ggml"))
    parser.add_argument("--llama-cpp-commit", default="0c1e570", help="recorded in the manifest")
    parser.add_argument(
        "--lib-built-by",
        default="scripts/build_llama_cpp.sh (vendor/llama.cpp of llama-cpp-python 0.3.36)",
        help="how --lib was built, recorded in the manifest",
    )
    parser.add_argument("--quantize-source", type=Path, help="GGUF to run llama-quantize on (see above)")
    parser.add_argument("--llama-python", default="python", help="a python with llama_cpp installed")
    parser.add_argument(
        "--llama-quantize",
        help="the llama-quantize binary: with --quantize-source, run it (instead of --llama-python) "
        "and also record its --imatrix outputs",
    )
    args = parser.parse_args()

    lib = ctypes.CDLL(str(args.lib))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]  # fmt: skip
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_version.restype = ctypes.c_char_p

    args.out.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs()
    np.savez_compressed(args.out / "inputs.npz", **inputs)
    files = {"inputs.npz": None}
    requires_imatrix = {}
    for qtype in TYPES:
        requires_imatrix[qtype.name] = bool(lib.ggml_quantize_requires_imatrix(int(qtype)))
        outputs = {name: ggml_quantize(lib, qtype, x) for name, x in inputs.items()}
        np.savez_compressed(args.out / f"{qtype.name}.npz", **outputs)
        files[f"{qtype.name}.npz"] = None
    importance = make_importance(inputs)
    np.savez_compressed(args.out / "importance.npz", **importance)
    files["importance.npz"] = None
    for qtype in WEIGHTED_TYPES:
        outputs = {name: ggml_quantize(lib, qtype, x, importance[name]) for name, x in inputs.items()}
        np.savez_compressed(args.out / f"{qtype.name}.imatrix.npz", **outputs)
        files[f"{qtype.name}.imatrix.npz"] = None
    write_reference_imatrix(lib, args.out / "imatrix_ref.gguf")
    files["imatrix_ref.gguf"] = None
    if args.quantize_source:
        digests = llama_quantize_digests(args.quantize_source, args.llama_python, args.llama_quantize)
        payload = {"source_sha256": _sha256(args.quantize_source), "file_types": digests}
        if args.llama_quantize:
            imatrix = args.out / "wide.imatrix.gguf"
            fixture_imatrix(args.quantize_source, imatrix)
            files["wide.imatrix.gguf"] = None
            payload["imatrix"] = {
                "file": imatrix.name,
                "sha256": _sha256(imatrix),
                "left_out": IMATRIX_LEFT_OUT,
            }
            payload["imatrix_file_types"] = llama_quantize_imatrix_digests(
                args.quantize_source, imatrix, args.llama_quantize
            )
            payload["imatrix_refused"] = list(IMATRIX_REFUSED)
        (args.out / "llama_quantize.json").write_text(json.dumps(payload, indent=1) + "\n")
        files["llama_quantize.json"] = None
    elif (args.out / "llama_quantize.json").exists():  # kept from an earlier run
        files["llama_quantize.json"] = None
    manifest = {
        "made_by": "scripts/make_ggml_fixtures.py",
        "function": "ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix): NULL for "
        "<TYPE>.npz, importance.npz[case] for <TYPE>.imatrix.npz",
        "imatrix_ref": "imatrix_ref.gguf: gguf_init_empty / gguf_set_* / gguf_add_tensor / "
        "gguf_write_to_file, keys and tensors as tools/imatrix/imatrix.cpp save_imatrix",
        "library": args.lib.name,
        "library_built_by": args.lib_built_by,
        "ggml_version": lib.ggml_version().decode(),
        "llama_cpp_python": "0.3.36",
        "llama_cpp_commit": args.llama_cpp_commit,
        "machine": f"{platform.system()} {platform.machine()}",
        "seed": SEED,
        "importance_seed": IMPORTANCE_SEED,
        "weighted_types": [t.name for t in WEIGHTED_TYPES],
        "requires_imatrix": requires_imatrix,
        "cases": {name: list(x.shape) for name, x in inputs.items()},
        "sha256": {name: _sha256(args.out / name) for name in files},
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(files)} files to {args.out}")


if __name__ == "__main__":
    main()
