"""One `gemma-mtp imatrix` run: read the text, load the models, accumulate chunk by chunk, write.

The file carries no host path: `imatrix.datasets` holds the text file's base name (llama-imatrix
writes the path it was given, often an absolute one, and llama-quantize copies it into every file
it quantizes) or `gemma-mtp:bench-prompts` for the built-in prompt set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..engine.options import LoadOptions
from ..errors import GemmaMTPError, ModelFormatError, UsageError
from ..gguf.atomic import check_output_dir
from ..gguf.formats import GGUF, model_format
from ..gguf.imatrix import ImatrixData, write_imatrix
from ..gguf.keys import DRAFTER_LAYOUTS
from ..gguf.reader import open_gguf, read_metadata
from ..models.assistant import AssistantModel
from .imatrix import Accumulator, compute_imatrix, product_names, split_chunks
from .options import IMATRIX_DEFAULTS, ImatrixOptions

__all__ = ["TextSource", "ImatrixResult", "BENCH_DATASET", "make_imatrix", "bench_text", "read_text"]

BENCH_DATASET = "gemma-mtp:bench-prompts"
_LAYOUT_BY_ARCH = {layout.arch: name for name, layout in DRAFTER_LAYOUTS.items()}


@dataclass(frozen=True)
class TextSource:
    text: str
    dataset: str  # what imatrix.datasets records: a base name, never a path


@dataclass(frozen=True)
class ImatrixResult:
    path: Path
    calibrated: str  # "target" or "drafter"
    n_tokens: int
    n_chunks: int
    n_entries: int


def read_text(path: str | Path) -> TextSource:
    """A calibration text file (-f), one trailing newline dropped as llama.cpp's -f does."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"-f {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"-f {path}: is a directory; give a text file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"-f {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise GemmaMTPError(f"-f {path}: cannot read it ({exc.strerror})") from None
    text = text.removesuffix("\n")
    if not text.strip():
        raise UsageError(f"-f {path}: the file holds no text; give a calibration text")
    return TextSource(text, path.name)


def bench_text() -> TextSource:
    """The bench harness's built-in text prompts, one after another."""
    from ..bench.prompts import BUILTIN

    return TextSource("\n\n".join(p.prompt for p in BUILTIN if p.is_text), BENCH_DATASET)


def _layout(path: str) -> str:
    """The drafter layout whose tensor names a drafter file uses (an HF directory: mainline)."""
    if model_format(path) != GGUF:
        return "mainline"
    arch = read_metadata(path, prefix="general.architecture").get("general.architecture")
    return _LAYOUT_BY_ARCH.get(arch, "mainline")


def _check_names(path: str, names: set[str]) -> None:
    """Every entry must name a tensor of the GGUF file being calibrated (llama-quantize matches them)."""
    if model_format(path) != GGUF:
        return
    missing = sorted(names - set(open_gguf(path).tensors))
    if missing:
        raise ModelFormatError(f"{path}: imatrix entry {missing[0]} names no tensor of the file")


def _data(acc: Accumulator, source: TextSource, n_chunks: int, chunk_size: int) -> ImatrixData:
    entries = {name: (s.numpy(), c.numpy().astype(np.float32)) for name, (s, c) in acc.entries().items()}
    return ImatrixData(
        entries=entries, datasets=[source.dataset], chunk_count=n_chunks, chunk_size=chunk_size
    )


def make_imatrix(
    load: LoadOptions,
    source: TextSource,
    output: str | Path,
    *,
    options: ImatrixOptions = IMATRIX_DEFAULTS,
    parse_special: bool = False,
    progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> ImatrixResult:
    """Calibrate `load.model_draft` with `load.model` in the loop, or `load.model` alone; write the
    importance matrix to `output` (every `options.output_frequency` chunks and at the end)."""
    from .. import api
    from ..tokenizer import load_tokenizer

    if load.model is None:
        what = "the drafter's target" if load.model_draft else "the model to calibrate"
        raise UsageError(f"imatrix needs -m/--model: {what} (a drafter runs on its target's states)")
    output = Path(output)
    check_output_dir(output)
    if output.is_dir():
        raise UsageError(f"-o {output}: is a directory; give the imatrix file to write")
    tokenizer = load_tokenizer(load.model)
    tokens = tokenizer.encode(source.text, parse_special=parse_special)
    chunks = split_chunks(tokens, options.chunk_size, tokenizer.bos_id, options.max_chunks)
    if not chunks:
        raise UsageError(
            f"the text is {len(tokens)} tokens, shorter than one chunk of {options.chunk_size} "
            "(-c/--ctx-size); give a longer text or a smaller -c"
        )
    engine = api.load(options=replace(load, ctx_size=options.chunk_size))
    assistant = engine.drafter
    if load.model_draft is not None and not isinstance(assistant, AssistantModel):
        raise ModelFormatError(
            f"-md {load.model_draft}: not an MTP assistant; imatrix calibrates MTP drafters"
        )
    if assistant is None:
        model, config, path, layout = engine.target, engine.config, load.model, None
    else:
        model, config, path = assistant, assistant.config, load.model_draft
        layout = _layout(path)
    products = product_names(model, config, layout=layout, process_output=options.process_output)
    _check_names(path, {n for p in products.values() for n in p.names})
    if notice is not None:
        notice(
            f"calibrating the {'drafter' if assistant is not None else 'target'} {Path(path).name} on "
            f"{len(tokens)} tokens: {len(chunks)} chunks of {options.chunk_size}"
        )
    acc = None
    for done, acc in enumerate(
        compute_imatrix(engine.target, chunks, products, assistant=assistant, options=options), 1
    ):
        if progress is not None:
            progress(done, len(chunks))
        if done % options.output_frequency == 0 and done < len(chunks):
            write_imatrix(output, _data(acc, source, done, options.chunk_size))
    write_imatrix(output, _data(acc, source, len(chunks), options.chunk_size))
    return ImatrixResult(
        output, "drafter" if assistant is not None else "target", len(tokens), len(chunks), len(acc.sums)
    )
