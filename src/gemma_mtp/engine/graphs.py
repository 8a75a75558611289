"""Decode and verify forwards without Python in the way: the target and its head over static
buffers, captured once per shape in a CUDA graph and replayed.

`StaticTargetStep.run(tokens, positions, rows)` is `target(tokens, positions, cache, rows)` and
`target.logits(hidden)` for R rows of T <= `max_positions` positions (a plain decode step: T = 1;
verifying n drafts: T = n + 1). Each shape (R, T, the KV span its queries can reach, rounded up to
a power of two, and whether the rows are the cache's first R) gets input buffers of fixed shape and
address; the forward runs inside `KVCache.static_shapes`, so its plan reads nothing back to the
host and the KV is written in place, where the cache keeps it. On CUDA the first call of a shape
warms it up (twice, on a side stream, with every position padding: a forward that changes nothing
in the cache) and captures it in a `torch.cuda.CUDAGraph`, all graphs sharing one memory pool and
one pair of output buffers ([batch, max_positions, D] hidden, [.., V] logits); later calls copy the
inputs in and replay. Elsewhere (`graphs=False`) the same buffers go through the same forward
eagerly, which is what the CPU tests compare with the plain forward, bit for bit.

What cannot be captured is refused by name before any capture: the second warm-up of each shape
is watched (`capture_hazards`) for reads of device values on the host (`.item()`, `.tolist()`,
`int(tensor)`, `nonzero`, `unique`, boolean indexing) and for tensors made from host data on the
device (`torch.tensor(..., device=...)`), and a model with any part on the CPU is refused (a
graph replays only GPU work). Nothing here has run on a GPU yet.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

from ..cache import KVCache
from ..errors import UsageError
from .options import GRAPHS_EAGER_ENV as EAGER_ENV

__all__ = [
    "EAGER_ENV",
    "GraphCaptureError",
    "StaticTargetStep",
    "StepOutput",
    "capture_hazards",
    "check_graphs_device",
]

MIN_SPAN = 256  # the smallest KV span a full layer's queries get (spans: powers of two from here)

T = torch.Tensor
_SYNCS = {
    T.item: "Tensor.item",
    T.tolist: "Tensor.tolist",
    T.__bool__: "bool(tensor)",
    T.__int__: "int(tensor)",
    T.__float__: "float(tensor)",
    T.__index__: "a tensor used as an index",
    T.cpu: "Tensor.cpu",
    T.numpy: "Tensor.numpy",
    T.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    torch.argwhere: "argwhere",
    T.unique: "unique",
    torch.unique: "unique",
    torch.unique_consecutive: "unique_consecutive",
    T.masked_select: "masked_select",
    torch.masked_select: "masked_select",
}
_FROM_HOST = {torch.tensor: "torch.tensor", torch.as_tensor: "torch.as_tensor"}


class GraphCaptureError(UsageError):
    """`--cuda-graphs` asked for a forward that cannot be captured; the message says where."""


def check_graphs_device(device: torch.device | str) -> bool:
    """Whether `--cuda-graphs` captures graphs on `device` (CUDA: True); elsewhere a UsageError,
    unless `GEMMA_MTP_GRAPHS_EAGER=1` asks for the same static path run eagerly (tests: False)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if os.environ.get(EAGER_ENV) == "1":
        return False
    raise UsageError(
        f"--cuda-graphs needs a CUDA device (the model is on {device.type}); drop --cuda-graphs, or "
        f"set {EAGER_ENV}=1 to run its static path eagerly (for tests: no speed-up)"
    )


def _caller() -> str:
    """The innermost frame of this package's code outside this module: where a hazard is."""
    for frame in reversed(traceback.extract_stack()):
        if "gemma_mtp" in frame.filename and not frame.filename.endswith("engine/graphs.py"):
            where = frame.filename.split("gemma_mtp/", 1)[-1]
            return f"{where}:{frame.lineno} ({frame.name}: {(frame.line or '').strip()})"
    return "outside gemma_mtp"


def _index_syncs(index) -> bool:
    """Whether indexing by `index` reads the device: a boolean mask, or a tensor inside a slice."""
    parts = index if isinstance(index, tuple) else (index,)
    for part in parts:
        if isinstance(part, torch.Tensor) and part.dtype == torch.bool:
            return True
        if isinstance(part, slice) and any(isinstance(v, torch.Tensor) for v in (part.start, part.stop)):
            return True
    return False


class _Watch(TorchFunctionMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = _SYNCS.get(func)
        if func is torch.where and len(args) + len(kwargs) == 1:
            what = "torch.where(condition)"
        elif func in (T.__getitem__, T.__setitem__) and len(args) > 1 and _index_syncs(args[1]):
            what = "boolean or tensor-bounded indexing"
        elif (
            func in _FROM_HOST and kwargs.get("device") is not None and not isinstance(args[0], torch.Tensor)
        ):
            what = f"{_FROM_HOST[func]}(..., device=...) copies host data to the device"
        if what is not None:
            self.found.append(f"{what} at {_caller()}")
        return func(*args, **kwargs)


@contextmanager
def capture_hazards() -> Iterator[list[str]]:
    """Within: every op that a CUDA graph cannot capture (a read of a device value on the host,
    a tensor made from host data on the device) is recorded, with where it is, in the list."""
    found: list[str] = []
    with _Watch(found):
        yield found


@dataclass(frozen=True)
class StepOutput:
    hidden: torch.Tensor  # [R, T, D] final hidden states
    logits: torch.Tensor | None  # [R, T, V] float32 (None: the step was built without the head)


@dataclass
class _Shape:
    """One captured (or eager) shape: its input buffers, and on CUDA its graph and outputs."""

    tokens: torch.Tensor  # [R, T] long, on the device
    positions: torch.Tensor  # [R, T] long
    rows: torch.Tensor | list[int] | None  # what the forward passes as `rows`
    row_index: torch.Tensor | None  # [R] the rows' buffer when they are not the cache's first R
    span: int
    graph: object | None = None  # torch.cuda.CUDAGraph
    output: StepOutput | None = None
    hazards: list[str] = field(default_factory=list)


def _check_all_on_cuda(target: torch.nn.Module, cache: KVCache) -> None:
    """A graph replays only CUDA work: a layer or expert stack left on the CPU (-ngl N, --n-cpu-moe)
    would be skipped on replay, so it is refused here."""
    tensors = [*target.parameters(), *target.buffers(), *cache.keys.values(), cache.lengths]
    on_cpu = [t for t in tensors if t.device.type != "cuda"]
    if on_cpu:
        raise UsageError(
            f"--cuda-graphs: {len(on_cpu)} of the target's tensors are on the CPU (-ngl below all "
            "layers, or --n-cpu-moe); a graph replays only GPU work: use -ngl all and --n-cpu-moe 0, "
            "or drop --cuda-graphs"
        )


class StaticTargetStep:
    """The target forward (+ its head) over static buffers; one CUDA graph per shape."""

    def __init__(
        self,
        target: torch.nn.Module,
        cache: KVCache,
        *,
        max_positions: int,
        graphs: bool,
        with_logits: bool = True,
        min_span: int = MIN_SPAN,
    ) -> None:
        if graphs and not torch.cuda.is_available():
            raise UsageError("--cuda-graphs: no CUDA device is available")
        if graphs:
            _check_all_on_cuda(target, cache)
        self.target = target
        self.cache = cache
        self.max_positions = max_positions
        self.graphs = graphs
        self.with_logits = with_logits
        self.min_span = min_span
        self.shapes: dict[tuple, _Shape] = {}
        self.device = cache.device
        self._pool = torch.cuda.graph_pool_handle() if graphs else None
        self._stream = torch.cuda.Stream(self.device) if graphs else None
        self._out: StepOutput | None = None  # [batch, max_positions, ...]: every shape writes here

    def fits(self, width: int) -> bool:
        """Whether a forward of `width` positions per row takes this step (else the plain one)."""
        return 1 <= width <= self.max_positions

    def span_for(self, end: int) -> int:
        """The full layers' KV span for queries below position `end`: a power of two (at least
        `min_span`), at most the cache size, so a few graphs cover every context length."""
        span = self.min_span
        while span < end:
            span *= 2
        return min(span, self.cache.max_context)

    @property
    def hazards(self) -> dict[tuple, list[str]]:
        """Per shape, what its first run did that a CUDA graph cannot capture (empty: nothing)."""
        return {key: shape.hazards for key, shape in self.shapes.items()}

    @torch.inference_mode()
    def run(self, tokens: torch.Tensor, positions: torch.Tensor, rows: list[int] | None = None) -> StepOutput:
        """tokens/positions [R, T] on the CPU (-1 = padding) for the cache rows `rows` (None: all).
        The outputs are views of buffers every shape writes: read them before the next run."""
        n_rows, width = tokens.shape
        if not self.fits(width):
            raise ValueError(f"static step: {width} positions per row; it takes 1..{self.max_positions}")
        end = int(positions.max()) + 1  # host tensors: no device read
        if end > self.cache.max_context:
            raise ValueError(f"position {end - 1} is past the cache size {self.cache.max_context}")
        rows = None if rows is None or rows == list(range(self.cache.batch_size)) else list(rows)
        first = rows is None or rows == list(range(len(rows)))
        key = (n_rows, width, self.span_for(end), first)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = self._build(key, rows)
        shape.tokens.copy_(tokens, non_blocking=True)
        shape.positions.copy_(positions, non_blocking=True)
        if shape.row_index is not None:
            shape.row_index.copy_(torch.tensor(rows, dtype=torch.long), non_blocking=True)
        if shape.graph is not None:
            shape.graph.replay()
            return shape.output
        return self._forward(shape)

    def _forward(self, shape: _Shape) -> StepOutput:
        """The forward (+ head), its results copied into the output buffers all shapes share (so
        the graphs' own memory, one pool, holds only what a step needs while it runs)."""
        with self.cache.static_shapes(shape.span):
            hidden = self.target(shape.tokens, shape.positions, self.cache, rows=shape.rows).hidden
            logits = self.target.logits(hidden) if self.with_logits else None
        if self._out is None:  # made by the first warm-up, outside any capture
            b, t = self.cache.batch_size, self.max_positions
            self._out = StepOutput(
                hidden.new_empty(b, t, hidden.shape[-1]),
                None if logits is None else logits.new_empty(b, t, logits.shape[-1]),
            )
        n_rows, width = shape.tokens.shape
        out = StepOutput(
            self._out.hidden[:n_rows, :width],
            None if logits is None else self._out.logits[:n_rows, :width],
        )
        out.hidden.copy_(hidden)
        if logits is not None:
            out.logits.copy_(logits)
        return out

    def _warm_up(self, shape: _Shape) -> None:
        self._forward(shape)
        with capture_hazards() as shape.hazards:
            self._forward(shape)
        if shape.hazards and self.graphs:
            more = f" (and {len(shape.hazards) - 1} more)" if len(shape.hazards) > 1 else ""
            raise GraphCaptureError(
                f"--cuda-graphs: the target's forward cannot be captured: {shape.hazards[0]}{more}; "
                "drop --cuda-graphs"
            )

    def _build(self, key: tuple, rows: list[int] | None) -> _Shape:
        n_rows, width, span, first = key
        dev = self.device
        row_index = None if first else torch.zeros(n_rows, dtype=torch.long, device=dev)
        shape = _Shape(
            tokens=torch.zeros(n_rows, width, dtype=torch.long, device=dev),
            positions=torch.full((n_rows, width), -1, dtype=torch.long, device=dev),
            rows=row_index if row_index is not None else rows,
            row_index=row_index,
            span=span,
        )
        if row_index is not None:
            row_index.copy_(torch.tensor(rows, dtype=torch.long))
        # Two warm-ups, every position padding (they write only trash slots, lengths stay): the
        # first makes what is made once (row indexes, tables, compiled kernels), the second is
        # watched for what a graph cannot capture, which on CUDA is refused before capturing.
        if not self.graphs:
            self._warm_up(shape)
            return shape
        self._stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(self._stream):
            self._warm_up(shape)
        torch.cuda.current_stream(dev).wait_stream(self._stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
            shape.output = self._forward(shape)
        shape.graph = graph
        return shape
