"""Build the drafter's training data offline: a licensed corpus, then the target's own outputs on it.

    python scripts/make_drafter_corpus.py corpus [--out DIR] [--manifest FILE] [--max-files N]
    python scripts/make_drafter_corpus.py data --out DIR [--target GGUF] [--gen-shards N] [--tf-shards N]

`corpus`: Python sources and docs found on this machine (the virtual environment's site-packages,
the standard library, /usr/share/doc), each file with its package, version and licence; files whose
package states no licence we recognise as permissive (or GPL/LGPL for Debian docs, recorded as such)
are skipped. Split train/held-out by a hash of the file's path (1 in 20 held out). Writes
DIR/{train,heldout}.jsonl (one window of each file) and the manifest (committed:
assets/drafters/corpus-manifest.tsv), so anyone can rebuild the same corpus from the same packages.

`data`: self-distillation shards (see `gemma_mtp.train.shards`) from the corpus windows, at the
runtime's default CPU numerics (the target loaded as `gemma-mtp run` loads it): `--gen-shards` of
the target's greedy / sampled continuations and `--tf-shards` teacher-forced (the target's argmax
at every position of corpus text: one prefill per shard, ~2-3x the tokens per second of
generation). Resumable: finished shards are skipped. Held-out shards come from held-out files.
"""

from __future__ import annotations

import argparse
import email.parser
import gzip
import hashlib
import json
import re
import sys
import sysconfig
from pathlib import Path

DEFAULT_OUT = Path.home() / ".cache" / "gemma-mtp" / "drafter-corpus"
MANIFEST = Path(__file__).resolve().parent.parent / "assets" / "drafters" / "corpus-manifest.tsv"
WINDOW = 3000  # characters of each file kept as prompt material
PERMISSIVE = [  # (pattern, name): first match names the licence
    (r"\bMIT\b", "MIT"),
    (r"BSD", "BSD"),
    (r"Apache", "Apache-2.0"),
    (r"\bISC\b", "ISC"),
    (r"PSF|Python Software Foundation", "PSF-2.0"),
    (r"MPL|Mozilla Public", "MPL-2.0"),
    (r"Unlicense|CC0|Public Domain", "public-domain"),
    (r"zlib|Zlib", "Zlib"),
    (r"HPND", "HPND"),
]
COPYLEFT = [(r"LGPL|Lesser General Public", "LGPL"), (r"GPL|General Public License", "GPL")]
CODE = {".py"}
PROSE = {".md", ".rst", ".txt", ""}
PER_PACKAGE = 60  # files per package at most, so that torch does not crowd out everything else


def _licence(text: str, table) -> str | None:
    for pattern, name in table:
        if re.search(pattern, text):
            return name
    return None


def _held_out(rel: str) -> bool:
    return int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 20 == 0


def site_packages() -> list[dict]:
    out = []
    for dist in sorted(Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info")):
        meta = email.parser.Parser().parsestr(
            (dist / "METADATA").read_text(errors="replace"), headersonly=True
        )
        stated = " ".join(
            [meta.get("License-Expression", ""), (meta.get("License") or "")[:200]]
            + [c for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        )
        licence = _licence(stated, PERMISSIVE)
        if licence is None or not (dist / "RECORD").is_file():
            continue
        root = dist.parent
        files = []
        for line in (dist / "RECORD").read_text(errors="replace").splitlines():
            rel = line.split(",")[0]
            if Path(rel).suffix in CODE | {".md", ".rst"} and ".dist-info" not in rel:
                files.append(root / rel)
        files = [dist / "METADATA", *files]  # its long description: the package's README, prose
        for path in sorted(files)[:: max(1, len(files) // PER_PACKAGE)][:PER_PACKAGE]:
            out.append(
                dict(source="pypi", package=meta["Name"], version=meta["Version"], licence=licence, path=path)
            )
    return out


def stdlib() -> list[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    step = max(1, len(files) // 400)
    return [
        dict(source="python-stdlib", package="python", version=version, licence="PSF-2.0", path=p)
        for p in files[::step]
    ]


def debian_docs() -> list[dict]:
    out = []
    for pkg in sorted(Path("/usr/share/doc").iterdir()):
        copyright_file = pkg / "copyright"
        if not copyright_file.is_file():
            continue
        stated = " ".join(re.findall(r"^License: *(.*)$", copyright_file.read_text(errors="replace"), re.M))
        licence = _licence(stated, PERMISSIVE) or _licence(stated, COPYLEFT)
        if licence is None:
            continue
        files = sorted(
            p
            for p in pkg.rglob("*")
            if p.is_file()
            and not p.name.startswith(("changelog", "copyright", "NEWS.Debian"))
            and p.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
            in {"md", "txt", "rst", "readme", "html"}
            or p.name.removesuffix(".gz").upper().startswith("README")
        )
        for path in files[:4]:
            out.append(dict(source="debian-doc", package=pkg.name, version="", licence=licence, path=path))
    return out


def read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    text = data.decode("utf-8", errors="replace")
    if path.name.removesuffix(".gz").endswith(".html"):
        text = re.sub(r"<[^>]+>", "", text)
    return text


def window(text: str, rel: str) -> str:
    """A WINDOW-character slice starting at a line chosen by the path's hash (deterministic)."""
    lines = text.splitlines(keepends=True)
    offset = int(hashlib.sha1(b"w" + rel.encode()).hexdigest(), 16) % max(1, len(lines) // 2 + 1)
    return "".join(lines[offset:])[:WINDOW]


def make_corpus(out: Path, manifest: Path, max_files: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows, docs = [], {"train": [], "heldout": []}
    for item in site_packages() + stdlib() + debian_docs():
        path = item["path"]
        try:
            text = read_text(path)
        except OSError:
            continue
        if len(text.strip()) < 400 or "\x00" in text:
            continue
        rel = str(path)
        split = "heldout" if _held_out(rel) else "train"
        kind = "code" if path.suffix in CODE else "prose"
        if path.name == "METADATA":
            text = text.partition("\n\n")[2]  # the description after the headers
        body = window(text, rel)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        rows.append(
            [split, item["source"], item["package"], item["version"], item["licence"], kind, digest, rel]
        )
        docs[split].append({"text": body, "kind": kind, "path": rel})
        if len(rows) >= max_files:
            break
    for split, items in docs.items():
        with (out / f"{split}.jsonl").open("w") as f:
            for d in items:
                f.write(json.dumps(d) + "\n")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with manifest.open("w") as f:
        f.write("split\tsource\tpackage\tversion\tlicence\tkind\tsha256_16\tpath\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    counts = {s: len(v) for s, v in docs.items()}
    print(f"{len(rows)} files ({counts}) -> {out}; manifest {manifest}")


def make_data(args: argparse.Namespace) -> None:
    import torch  # noqa: F401 (the data stage needs torch and the runtime; the corpus stage does not)

    from gemma_mtp.assets import gemma3_270m_gguf
    from gemma_mtp.tokenizer import load_tokenizer
    from gemma_mtp.train.loop import load_target
    from gemma_mtp.train.shards import ShardSpec, write_shards

    target_path = Path(args.target) if args.target else gemma3_270m_gguf()
    target, config = load_target(target_path, "cpu")
    tok = load_tokenizer(target_path)
    bos = config.bos_token_id if config.bos_token_id is not None else 2
    out = Path(args.out)
    specs = {}
    for split in ("heldout", "train"):
        lines = (Path(args.corpus) / f"{split}.jsonl").read_text().splitlines()
        docs = [[bos, *tok.encode(json.loads(line)["text"])] for line in lines]
        seed = args.seed + (0 if split == "train" else 1000)
        gen = ShardSpec(
            rows=args.rows, seq_len=args.seq_len, prompt_min=8, prompt_max=args.prompt_max, seed=seed
        )
        tf = ShardSpec(
            **{**gen.__dict__, "rows": args.tf_rows, "prompt_min": args.seq_len, "prompt_max": args.seq_len}
        )
        if split == "heldout":  # held-out rows are greedy: what greedy speculation drafts on
            gen = ShardSpec(**{**gen.__dict__, "sampled_share": 0.0})
            write_shards(target, docs, out / split / "gen", args.heldout_shards, gen)
        else:
            specs = {"gen": (gen, args.gen_shards), "tf": (tf, args.tf_shards)}
    # the training shards in rounds of a few of each kind, so that a run stopped early has both
    for n in range(4, max(args.gen_shards, args.tf_shards) + 4, 4):
        for kind, (spec, total) in specs.items():
            if total:
                write_shards(target, docs, out / "train" / kind, min(n, total), spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--out", default=str(DEFAULT_OUT))
    c.add_argument("--manifest", default=str(MANIFEST))
    c.add_argument("--max-files", type=int, default=4000)
    d = sub.add_parser("data")
    d.add_argument("--corpus", default=str(DEFAULT_OUT))
    d.add_argument("--out", default=str(DEFAULT_OUT / "shards"))
    d.add_argument("--target", help="target GGUF (default: the embedded Gemma 3 270M)")
    d.add_argument("--gen-shards", type=int, default=64)
    d.add_argument("--tf-shards", type=int, default=64)
    d.add_argument("--heldout-shards", type=int, default=4)
    d.add_argument("--rows", type=int, default=16)
    d.add_argument("--tf-rows", type=int, default=4)
    d.add_argument("--seq-len", type=int, default=192)
    d.add_argument("--prompt-max", type=int, default=96)
    d.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.stage == "corpus":
        make_corpus(Path(args.out), Path(args.manifest), args.max_files)
    else:
        make_data(args)


if __name__ == "__main__":
    main()
