"""Turn pytest-benchmark JSON from ``benchmarks/`` into a Markdown table and a log-log plot.

    python -m benchmarks.summarize results/bench.json --markdown results/benchmarks.md \\
        --plot results/benchmarks.png [--kernels results/kernels.json]

Per case (device, dtype, D, N) and implementation: forward+backward time (the median of the
rounds, or ``--stat``), peak extra memory, the ratio to the matrix-multiply floor measured in
the same run, and the ratio to the best peer (the fastest of the dense reference and
pytorch-metric-learning). Out-of-memory cases appear as "OOM". Then the issue's targets, each
PASS/FAIL from these numbers or "not measured" when the run did not cover it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

GiB = 1024**3
MiB = 1024**2


@dataclass
class Row:
    impl: str
    kind: str
    device_type: str
    device_name: str
    dtype: str
    n: int
    d: int
    time_s: float | None  # None: out of memory
    rounds: int
    peak_bytes: int | None
    torch_version: str
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.device_name, self.dtype, self.d, self.n)


def load_rows(paths: Iterable[Path], stat: str = "median") -> tuple[list[Row], list[str]]:
    """Rows from every file, and the run dates (pytest-benchmark's ``datetime``)."""
    rows, dates = [], []
    for path in paths:
        data = json.loads(Path(path).read_text())
        dates.append(str(data.get("datetime", "?")))
        for bench in data.get("benchmarks", []):
            rows.append(_row(bench["extra_info"], bench["stats"][stat], bench["stats"]["rounds"]))
        for entry in data.get("unfinished", []):
            rows.append(_row(entry["extra_info"], None, 0))
    return rows, dates


def _row(info: dict, time_s: float | None, rounds: int) -> Row:
    return Row(
        impl=info["impl"],
        kind=info["kind"],
        device_type=info["device_type"],
        device_name=info["device_name"],
        dtype=info["dtype"],
        n=int(info["n"]),
        d=int(info["d"]),
        time_s=time_s,
        rounds=rounds,
        peak_bytes=info.get("peak_extra_bytes"),
        torch_version=info["torch_version"],
        extra=info,
    )


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "OOM"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(num: int | None) -> str:
    if num is None:
        return "–"
    if num >= GiB:
        return f"{num / GiB:.2f} GiB"
    return f"{num / MiB:.1f} MiB"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _ratio(row: Row, base: float | None) -> float | None:
    if row.time_s is None or base is None or base <= 0:
        return None
    return row.time_s / base


def _floor_time(group: list[Row]) -> float | None:
    return next((r.time_s for r in group if r.kind == "floor" and r.time_s is not None), None)


def _best_peer_time(group: list[Row]) -> float | None:
    times = [r.time_s for r in group if r.kind == "peer" and r.time_s is not None]
    return min(times) if times else None


def _groups(rows: list[Row]) -> dict[tuple[str, str, int, int], list[Row]]:
    groups: dict[tuple[str, str, int, int], list[Row]] = {}
    for row in rows:
        groups.setdefault(row.key, []).append(row)
    return dict(sorted(groups.items()))


KIND_ORDER = {"library": 0, "user": 1, "peer": 2, "floor": 3}


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| device | dtype | N | D | implementation | fwd+bwd time | peak extra memory "
        "| × floor | × best peer |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for (device, dtype, d, n), group in _groups(rows).items():
        floor, peer = _floor_time(group), _best_peer_time(group)
        for row in sorted(group, key=lambda r: (KIND_ORDER.get(r.kind, 9), r.impl)):
            ratios = f"{fmt_ratio(_ratio(row, floor))} | {fmt_ratio(_ratio(row, peer))}"
            lines.append(
                f"| {device} | {dtype} | {n:,} | {d} | {row.impl} | {fmt_time(row.time_s)} | "
                f"{fmt_bytes(row.peak_bytes)} | {ratios} |"
            )
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: where it applies, what it asks, how to read it off the rows."""

    text: str
    device_type: str
    dtype: str
    n: int
    d: int
    check: Callable[[list[Row], dict], tuple[str, bool] | None]


def _lib(group: list[Row]) -> Row | None:
    return next((r for r in group if r.impl == "default"), None)


def _faster_than_peer(factor: float) -> Callable[[list[Row], dict], tuple[str, bool] | None]:
    def check(group: list[Row], _: dict) -> tuple[str, bool] | None:
        lib, peer = _lib(group), _best_peer_time(group)
        if lib is None or peer is None or lib.time_s is None:
            return None
        ratio = lib.time_s / peer
        return f"{ratio:.2f}× best peer", ratio <= factor

    return check


def _vs_floor(factor: float) -> Callable[[list[Row], dict], tuple[str, bool] | None]:
    def check(group: list[Row], _: dict) -> tuple[str, bool] | None:
        lib, floor = _lib(group), _floor_time(group)
        if lib is None or floor is None or lib.time_s is None:
            return None
        ratio = lib.time_s / floor
        return f"{ratio:.2f}× floor", ratio <= factor

    return check


def _memory_at_most(limit: int) -> Callable[[list[Row], dict], tuple[str, bool] | None]:
    def check(group: list[Row], _: dict) -> tuple[str, bool] | None:
        lib = _lib(group)
        if lib is None:
            return None
        if lib.time_s is None:
            return "OOM", False
        if lib.peak_bytes is None:
            return None
        return fmt_bytes(lib.peak_bytes), lib.peak_bytes <= limit

    return check


def _memory_vs_dense(factor: float) -> Callable[[list[Row], dict], tuple[str, bool] | None]:
    def check(group: list[Row], _: dict) -> tuple[str, bool] | None:
        lib = _lib(group)
        dense = next((r for r in group if r.impl == "reference_dense"), None)
        if lib is None or dense is None or lib.peak_bytes is None:
            return None
        if dense.peak_bytes is None:  # the dense reference ran out of memory: any finish is better
            return f"{fmt_bytes(lib.peak_bytes)} (dense: OOM)", True
        ratio = lib.peak_bytes / dense.peak_bytes
        return f"{ratio:.2f}× dense reference", ratio <= factor

    return check


def _time_at_most(seconds: float) -> Callable[[list[Row], dict], tuple[str, bool] | None]:
    def check(group: list[Row], _: dict) -> tuple[str, bool] | None:
        lib = _lib(group)
        if lib is None or lib.time_s is None:
            return None
        return fmt_time(lib.time_s), lib.time_s <= seconds

    return check


def _kernels_at_most(limit: int) -> Callable[[list[Row], dict], tuple[str, bool] | None]:
    def check(_: list[Row], kernels: dict) -> tuple[str, bool] | None:
        count = kernels.get("default", {}).get("cuda_kernels")
        if count is None:
            return None
        return f"{count} kernels", count <= limit

    return check


TARGETS = (
    Target(
        "CPU fp32 N=2,048 D=768: default not slower than the best peer",
        "cpu",
        "float32",
        2048,
        768,
        _faster_than_peer(1.0),
    ),
    Target(
        "CPU fp32 N=8,192 D=768: peak memory ≤ 0.25× the dense reference's",
        "cpu",
        "float32",
        8192,
        768,
        _memory_vs_dense(0.25),
    ),
    Target(
        "GPU bf16 N=32,768 D=1024: ≤ 0.5× the best peer's time",
        "cuda",
        "bfloat16",
        32768,
        1024,
        _faster_than_peer(0.5),
    ),
    Target(
        "GPU bf16 N=32,768 D=1024: ≤ 1.5 GiB peak extra memory",
        "cuda",
        "bfloat16",
        32768,
        1024,
        _memory_at_most(int(1.5 * GiB)),
    ),
    Target(
        "GPU bf16 N=262,144 D=1024: completes within 8 GiB",
        "cuda",
        "bfloat16",
        262144,
        1024,
        _memory_at_most(8 * GiB),
    ),
    Target(
        "GPU fp32 N=32,768 D=1024: ≤ 1.25× the three-product floor",
        "cuda",
        "float32",
        32768,
        1024,
        _vs_floor(1.25),
    ),
    Target("GPU N=16: ≤ 1 ms forward+backward (bf16)", "cuda", "bfloat16", 16, 1024, _time_at_most(1e-3)),
    Target("GPU N=16: ≤ 1 ms forward+backward (fp32)", "cuda", "float32", 16, 1024, _time_at_most(1e-3)),
    Target(
        "GPU N=16: ≤ 40 CUDA kernels per forward+backward", "cuda", "float32", 16, 1024, _kernels_at_most(40)
    ),
)


def targets_table(rows: list[Row], kernels: dict) -> str:
    lines = ["| target | measured | result |", "|---|---|---|"]
    for target in TARGETS:
        group = [
            r
            for r in rows
            if r.device_type == target.device_type
            and r.dtype == target.dtype
            and r.n == target.n
            and r.d == target.d
        ]
        kernels_here = kernels if kernels.get("device_type") == target.device_type else {}
        result = target.check(group, kernels_here) if (group or kernels_here) else None
        if result is None:
            lines.append(f"| {target.text} | not measured | – |")
        else:
            lines.append(f"| {target.text} | {result[0]} | {'PASS' if result[1] else 'FAIL'} |")
    return "\n".join(lines)


def kernels_table(kernels: dict) -> str:
    per_impl = {k: v for k, v in kernels.items() if isinstance(v, dict)}
    if not per_impl:
        return ""
    unit = "CUDA kernels" if kernels.get("device_type") == "cuda" else "aten ops (CPU smoke run, not kernels)"
    lines = [f"| implementation | {unit} in one forward+backward at N={kernels.get('n')} |", "|---|---:|"]
    for name, entry in per_impl.items():
        count = entry.get("cuda_kernels", entry.get("aten_ops"))
        lines.append(f"| {name} | {count} |")
    return "\n".join(lines)


def render(rows: list[Row], dates: list[str], kernels: dict, stat: str) -> str:
    devices = sorted({(r.device_name, r.torch_version, r.extra.get("threads")) for r in rows}, key=str)
    header = ["# SupCon forward+backward benchmarks", ""]
    for name, version, threads in devices:
        threads_text = f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
        header.append(f"- device: **{name}**{threads_text}; torch {version}")
    loads = [r.extra["loadavg_1m"] for r in rows if r.extra.get("loadavg_1m") is not None]
    if loads:
        threads = max((r.extra.get("threads") or 0 for r in rows), default=0)
        shared = " (above the thread count: other processes shared the cores)" if max(loads) > threads else ""
        header.append(f"- 1-minute load average while measuring: {min(loads):.1f}–{max(loads):.1f}{shared}")
    header.append(
        f"- run: {', '.join(dates)}; time = {stat} over rounds; memory = peak extra over the inputs"
    )
    header.append(
        "- × floor: time / the three N×N×D matmuls alone; × best peer: time / fastest peer "
        "(dense reference, pytorch-metric-learning)"
    )
    parts = ["\n".join(header), markdown_table(rows), "## Targets (issue 6)", targets_table(rows, kernels)]
    if kernels:
        parts += ["## Kernel count", kernels_table(kernels)]
    return "\n\n".join(parts) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        series.setdefault((row.impl, row.dtype), []).append(row)
    styles = {"float32": "-", "bfloat16": "--", "float16": ":", "float64": "-."}
    for (impl, dtype), points in sorted(series.items()):
        points.sort(key=lambda r: r.n)
        label = f"{impl} ({dtype})"
        timed = [r for r in points if r.time_s is not None]
        measured = [r for r in points if r.peak_bytes]
        style = styles.get(dtype, "-")
        if timed:
            ax_time.plot([r.n for r in timed], [r.time_s for r in timed], style, marker="o", label=label)
        if measured:
            ax_mem.plot(
                [r.n for r in measured],
                [r.peak_bytes / MiB for r in measured],
                style,
                marker="o",
                label=label,
            )
    for ax, ylabel in ((ax_time, "forward+backward time [s]"), (ax_mem, "peak extra memory [MiB]")):
        ax.set_xlabel("N (batch size)")
        ax.set_ylabel(ylabel)
        if not ax.has_data():  # e.g. a run with --bench-no-memory
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=7, loc="upper left")
    devices = ", ".join(sorted({r.device_name for r in rows}))
    fig.suptitle(f"SupCon forward+backward on {devices}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.summarize", description=__doc__.split("\n")[0]
    )
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON file(s) from benchmarks/")
    parser.add_argument("--markdown", type=Path, default=None, help="write the Markdown report here")
    parser.add_argument("--plot", type=Path, default=None, help="write the log-log PNG plot here")
    parser.add_argument(
        "--kernels", type=Path, default=None, help="kernel-count JSON from benchmarks.gpu_check"
    )
    parser.add_argument("--stat", default="median", choices=("median", "min", "mean"), help="time statistic")
    args = parser.parse_args(argv)
    rows, dates = load_rows(args.json, args.stat)
    if not rows:
        parser.error("no benchmark results in the given files")
    kernels = json.loads(args.kernels.read_text()) if args.kernels else {}
    report = render(rows, dates, kernels, args.stat)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report)
    if args.plot:
        plot(rows, args.plot)
        report += f"\nplot: {args.plot}\n"
    print(report)
    return report


if __name__ == "__main__":
    main()
