"""Compute cost of scoring: FLOPs per component of the whole path, the machine's peak FLOP/s, achieved FLOP/s.

**FLOPs** are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real modules: it counts
matrix multiplications, convolutions and attention, 2 FLOPs per multiply-add (a ``Linear(i, o)`` on
``n`` rows: ``2·n·i·o``; a ``Conv3d(ci, co, k)`` with output ``(n, co, d, h, w)``: ``2·n·co·d·h·w·ci·k³``).
Elementwise work (activations, normalisations, the sampler's update, MSE, MAE maps) is not in its
count; :func:`elementwise_flops` counts the similarity's MSE and the MAE maps by hand.

The components of paper 000's path (``OODScorer.measure``) are the methods :class:`ComponentMeter` watches:

* ``encode``: the first stage's encoder (``first_stage.encode``), once per scan;
* ``codebook``: the nearest-codebook search (``first_stage.quantize``): after encoding, and before each
  decode when ``score.requantize``;
* ``unet``: every ε call (``unet.forward``); per scan, ``reconstruct.unet_evaluations`` latents;
* ``decode``: the first stage's decoder (``first_stage.decode``), once per needed chain;
* ``lpips``: the LPIPS trunk (``lpips_model.features``) on the 2D slices of the input and the reconstructions.

A :class:`ComponentMeter` times each watched call, counts the items (the batch size of its first
argument) and the FLOPs per item of each input shape (counted once per shape, on the first call
with it: run a warm-up through the meter before timing). Time outside the watched methods is
``other`` (sampler updates, MSE, maps, copies).

**Peak**: :func:`measure_peak` times a large matmul and a 3D convolution in fp32 and bf16 at 1 thread and
at ``N`` threads; the peak of a precision and thread count is the faster of the two. "% of peak" of a
component compares its achieved FLOP/s with the peak of its precision at the thread count it ran with.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

#: the component of each watched ``(network, method)`` of ``ScoringModels`` (module docstring)
PATH_COMPONENTS: dict[str, tuple[str, str]] = {
    "encode": ("first_stage", "encode"),
    "codebook": ("first_stage", "quantize"),
    "unet": ("unet", "forward"),
    "decode": ("first_stage", "decode"),
    "lpips": ("lpips_model", "features"),
}


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """``(FLOPs, result)`` of ``fn(*args, **kwargs)`` under ``FlopCounterMode`` (module docstring)."""
    with FlopCounterMode(display=False) as mode:
        out = fn(*args, **kwargs)
    return int(mode.get_total_flops()), out


def _items(args: tuple[Any, ...]) -> tuple[int, tuple[Any, ...]]:
    """Batch size of the first tensor argument and the key of its per-item shape and dtype."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return (int(a.shape[0]) if a.ndim else 1), (tuple(a.shape[1:]), str(a.dtype))
    return 1, ((), "")


@dataclass
class ComponentUsage:
    """One component's use: ``calls``, ``items`` (sum of batch sizes), ``seconds``, ``flops``."""

    calls: int = 0
    items: int = 0
    seconds: float = 0.0
    flops: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "items": self.items, "seconds": self.seconds, "flops": self.flops}


@dataclass
class ComponentMeter:
    """Times and counts the watched methods of a ``ScoringModels`` while active (``with meter.watch(models)``).

    ``flops_per_item[(component, shape, dtype)]`` is counted on the first call with that per-item input
    shape and reused after; :meth:`reset` clears the usage (not that cache).
    """

    usage: dict[str, ComponentUsage] = field(default_factory=dict)
    flops_per_item: dict[tuple[str, tuple[Any, ...]], float] = field(default_factory=dict)

    def reset(self) -> None:
        self.usage = {}

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            n, shape = _items(args)
            key = (name, shape)
            t0 = time.perf_counter()
            if key in self.flops_per_item:
                out = method(*args, **kwargs)
            else:
                flops, out = count_flops(method, *args, **kwargs)
                self.flops_per_item[key] = flops / n
            dt = time.perf_counter() - t0
            u = self.usage.setdefault(name, ComponentUsage())
            u.calls += 1
            u.items += n
            u.seconds += dt
            u.flops += round(self.flops_per_item[key] * n)
            return out

        return watched

    @contextmanager
    def watch(self, models: Any) -> Iterator["ComponentMeter"]:
        """Watch the :data:`PATH_COMPONENTS` of ``models`` (a ``ScoringModels``; a missing network is skipped)."""
        patched: list[tuple[torch.nn.Module, str, Any]] = []  # (network, method, its own instance attribute)
        try:
            for name, (net_attr, method_name) in PATH_COMPONENTS.items():
                net = getattr(models, net_attr, None)
                if net is None or not hasattr(net, method_name):
                    continue
                patched.append((net, method_name, net.__dict__.get(method_name)))
                setattr(net, method_name, self._wrap(name, getattr(net, method_name)))  # instance attribute
            yield self
        finally:
            for net, method_name, own in patched:
                net.__dict__.pop(method_name, None)  # the class's method again
                if own is not None:
                    net.__dict__[method_name] = own

    def totals(self) -> tuple[float, int]:
        """``(seconds, FLOPs)`` over all watched components."""
        return sum(u.seconds for u in self.usage.values()), sum(u.flops for u in self.usage.values())


def elementwise_flops(voxels: int, channels: int, n_mse: int, n_maps: int) -> int:
    """Hand count of the similarity's elementwise work per scan: MSE of ``n_mse`` reconstructions
    (subtract, square, sum: 3 per voxel and channel) and ``n_maps`` MAE maps (subtract, abs, channel
    mean: 3 per voxel and channel)."""
    return 3 * voxels * channels * (n_mse + n_maps)


# ----------------------------------------------------------------------------- peak FLOP/s


def _rate(fn: Callable[[], Any], flops: int, min_seconds: float) -> float:
    """FLOP/s of ``fn`` (``flops`` each call): best of repeated timings lasting ``min_seconds`` in all."""
    fn()  # warm-up (allocations, kernel selection)
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return flops / best


@torch.no_grad()
def measure_peak(threads: tuple[int, ...] = (1,), dtypes: tuple[str, ...] = ("fp32", "bf16"), matmul_n: int = 1024,
                 conv_shape: tuple[int, int, int] = (2, 64, 24), min_seconds: float = 0.5) -> dict[str, Any]:
    """Measured peak FLOP/s of this machine (CPU): ``{dtype: {"matmul": {threads: FLOP/s}, "conv3d": {...},
    "peak": {threads: max of the two}}}`` with threads as strings.

    ``matmul_n``: an ``(n, n) @ (n, n)`` product (``2n³`` FLOPs); ``conv_shape = (batch, channels, size)``:
    a 3×3×3 ``Conv3d(channels, channels)`` with padding 1 on ``(batch, channels, size³)`` (channels-last);
    FLOPs of both by :func:`count_flops`. The thread count is restored afterwards.
    """
    before = torch.get_num_threads()
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    try:
        for name in dtypes:
            a = torch.randn(matmul_n, matmul_n, generator=g).to(dt[name])
            b = torch.randn(matmul_n, matmul_n, generator=g).to(dt[name])
            n, c, s = conv_shape
            conv = torch.nn.Conv3d(c, c, 3, padding=1).to(dt[name]).to(memory_format=torch.channels_last_3d)
            x = torch.randn(n, c, s, s, s, generator=g).to(dt[name]).contiguous(memory_format=torch.channels_last_3d)
            mm_flops, _ = count_flops(torch.mm, a, b)
            conv_flops, _ = count_flops(conv, x)
            row: dict[str, dict[str, float]] = {"matmul": {}, "conv3d": {}, "peak": {}}
            for t in threads:
                torch.set_num_threads(t)
                row["matmul"][str(t)] = _rate(lambda: torch.mm(a, b), mm_flops, min_seconds)
                row["conv3d"][str(t)] = _rate(lambda: conv(x), conv_flops, min_seconds)
                row["peak"][str(t)] = max(row["matmul"][str(t)], row["conv3d"][str(t)])
            out[name] = row
    finally:
        torch.set_num_threads(before)
    return out


def achieved(usage: Mapping[str, ComponentUsage], dtype_of: Mapping[str, str], peak: Mapping[str, Any],
             threads: int, scans: int, total_seconds: float | None = None) -> dict[str, Any]:
    """Per component and for the whole path: FLOPs per scan, seconds per scan, achieved FLOP/s and % of
    peak (``peak[dtype_of[component]]["peak"][str(threads)]``; the whole path against the fp32 peak unless
    every component ran in bf16). ``total_seconds``: the path's measured time (default: the sum of the
    components'); the gap is ``other_seconds_per_scan``."""
    rows: dict[str, Any] = {}
    for name, u in usage.items():
        dtype = dtype_of.get(name, "fp32")
        p = peak.get(dtype, {}).get("peak", {}).get(str(threads))
        rate = u.flops / u.seconds if u.seconds > 0 else None
        rows[name] = {"dtype": dtype, "flops_per_scan": u.flops / scans, "seconds_per_scan": u.seconds / scans,
                      "calls_per_scan": u.calls / scans, "items_per_scan": u.items / scans,
                      "achieved_flops_per_s": rate, "percent_of_peak": 100 * rate / p if rate and p else None}
    seconds = sum(u.seconds for u in usage.values())
    flops = sum(u.flops for u in usage.values())
    total = total_seconds if total_seconds is not None else seconds
    dtypes = {rows[k]["dtype"] for k in rows}
    whole_dtype = "bf16" if dtypes == {"bf16"} else "fp32"
    p = peak.get(whole_dtype, {}).get("peak", {}).get(str(threads))
    rate = flops / total if total > 0 else None
    return {"components": rows, "whole_path": {
        "flops_per_scan": flops / scans, "seconds_per_scan": total / scans,
        "other_seconds_per_scan": (total - seconds) / scans, "achieved_flops_per_s": rate, "peak_dtype": whole_dtype,
        "percent_of_peak": 100 * rate / p if rate and p else None}}


def best_peak(*peaks: Mapping[str, Any]) -> dict[str, Any]:
    """Entry-wise maximum of several :func:`measure_peak` results (e.g. measured before and after a
    benchmark on a shared machine: the peak is the best the machine was seen to do)."""
    out: dict[str, Any] = {}
    for p in peaks:
        for dtype, kinds in p.items():
            for kind, by_threads in kinds.items():
                row = out.setdefault(dtype, {}).setdefault(kind, {})
                for t, v in by_threads.items():
                    row[t] = max(row.get(t, 0.0), v)
    return out
