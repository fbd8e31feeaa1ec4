"""PNG plots for the reports, drawn with matplotlib's Agg backend (no display needed, safe on servers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .results import BenchReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def similarity_plot(reference: np.ndarray, test: np.ndarray, path: Path, title: str) -> Path:
    """The two similarity matrices side by side, and their difference (test − reference)."""
    plt = _pyplot()
    sim_ref = reference @ reference.T
    sim_test = test @ test.T
    diff = sim_test - sim_ref
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    for ax, matrix, name in ((axes[0], sim_ref, "reference (CPU float32)"), (axes[1], sim_test, "under test")):
        image = ax.imshow(matrix, vmin=-0.2, vmax=1.0, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("text")
        ax.set_ylabel("text")
        fig.colorbar(image, ax=ax, shrink=0.8)
    bound = float(np.abs(diff).max()) or 1e-12
    image = axes[2].imshow(diff, vmin=-bound, vmax=bound, cmap="RdBu_r")
    axes[2].set_title(f"difference (max |Δ| = {bound:.2e})")
    axes[2].set_xlabel("text")
    fig.colorbar(image, ax=axes[2], shrink=0.8)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def error_histogram(reference: np.ndarray, test: np.ndarray, path: Path, title: str) -> Path:
    """Histogram of per-element errors (test − reference), log-scaled counts."""
    plt = _pyplot()
    errors = (np.asarray(test, np.float64) - np.asarray(reference, np.float64)).ravel()
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    if np.all(errors == 0):
        ax.bar([0.0], [errors.size], width=1e-9)
        ax.set_xlim(-1e-8, 1e-8)
        ax.set_title(f"{title}\nall {errors.size} elements identical to the reference")
    else:
        ax.hist(errors, bins=80, color="#4472c4")
        ax.set_yscale("log")
        ax.set_title(f"{title}\nmax |error| = {np.abs(errors).max():.2e}, {errors.size} elements")
    ax.set_xlabel("element error (test − reference)")
    ax.set_ylabel("count")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def bench_plots(report: BenchReport, out_dir: Path) -> list[Path]:
    """Throughput (sentences/s) and mean latency vs batch size, one line per dtype (and CPU / ST if measured)."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    series: list[tuple[str, list[int], list[float], list[float]]] = []
    for result in report.results:
        rows = result.rows
        if not rows:
            continue
        sizes = [r.batch_size for r in rows]
        label = f"{report.environment.device} {result.dtype} ({result.backend})"
        series.append((label, sizes, [r.sentences_per_s for r in rows], [r.mean_ms for r in rows]))
        st_label = f"sentence-transformers {result.st_dtype}"
        if rows[0].st_sentences_per_s is not None and st_label not in [entry[0] for entry in series]:
            st_rates = [r.st_sentences_per_s or 0.0 for r in rows]
            series.append((st_label, sizes, st_rates, [r.st_mean_ms or 0.0 for r in rows]))
    if report.cpu:
        rows = report.cpu.rows
        series.append(
            (
                "CPU baseline, float32",
                [r.batch_size for r in rows],
                [r.sentences_per_s for r in rows],
                [r.mean_ms for r in rows],
            )
        )
    paths = []
    for name, index, ylabel in (
        ("bench_throughput.png", 2, "sentences / s"),
        ("bench_latency.png", 3, "mean latency per call (ms)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
        for entry in series:
            ax.plot(entry[1], entry[index], marker="o", label=entry[0])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sizes = sorted({size for entry in series for size in entry[1]})
        ax.set_xticks(sizes, [str(size) for size in sizes])
        # Ticks at 1, 2, 5 × 10^k, written as plain numbers: readable across the two decades a card spans.
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        ax.set_title(f"{ylabel.split(' (')[0]} vs batch size — {report.environment.device_name}")
        path = out_dir / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
