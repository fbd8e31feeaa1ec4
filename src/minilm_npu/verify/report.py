"""Reports: JSON for machines, Markdown tables shaped like the port report's, PNG plots, and an index.

Each ``write_*`` function writes one command's files into a directory and returns their paths; ``index.md``
(:func:`index_markdown`) links the three (:func:`minilm_npu.verify.suite.run_report` runs and writes them all).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .accuracy import AccuracyRun
from .results import AccuracyReport, BenchReport, BenchResult, CheckReport, Environment, to_dict

CHECK_FILES = ("check.json", "check.md")
ACCURACY_FILES = ("accuracy.json", "accuracy.md")


# -- helpers -----------------------------------------------------------------------------------------------------
def _clean(value):
    """JSON-safe: NaN/inf become None (strict JSON has neither), numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(report: Any) -> str:
    """A report (or any result, or plain data) as strict JSON text."""
    return json.dumps(_clean(to_dict(report)), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def out_dir(out: str | Path) -> Path:
    """``out`` as a directory, created if missing; InputError when it cannot be one."""
    from ..errors import InputError

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output directory {path}: {err.strerror}") from None
    return path


def _num(value, digits: int = 6, sci: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if sci:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _environment_lines(env: Environment) -> list[str]:
    shown = ", ".join(f"{k} {v}" for k, v in env.versions.items() if v)
    machine = env.machine
    return [
        f"- Date: {env.date}",
        f"- Device: {env.device} ({env.device_name}), dtype {env.dtype}, backend {env.backend}",
        f"- Model: {env.model}",
        f"- Machine: {machine.cpu}, {machine.cpu_count} cores, {machine.os}; torch threads {env.torch_threads}",
        f"- Versions: {shown}",
    ]


def _fallback_lines(fallbacks) -> list[str]:
    """The "CPU fallbacks" section of an NPU report (nothing for other devices, whose reports have no list)."""
    if fallbacks is None:
        return []
    lines = ["", "## CPU fallbacks", ""]
    if not fallbacks:
        return lines + ["None: torch_npu reported no operator of the forward running on the CPU."]
    lines += [
        f"**FAIL**: {len(fallbacks)} operator(s) ran on the CPU instead of the NPU (torch_npu reports each "
        "once per process, in the run that met it first).",
        "",
    ]
    return lines + _table(["Operator", "First met in"], [[f"`{f.op}`", f.during] for f in fallbacks])


def _memory(nbytes) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes else "—"


# -- check -------------------------------------------------------------------------------------------------------
def check_markdown(report: CheckReport) -> str:
    """The doctor's report as Markdown."""
    lines = [f"# Device check: {report.status.upper()}", ""] + _environment_lines(report.environment)
    lines += ["", "## Devices", ""]
    lines += _table(
        ["Device", "Name", "Memory", "Status", "Min cosine vs CPU", "Max abs error", "Load + encode (s)", "Note"],
        [
            [
                c.device,
                c.name or "—",
                _memory(c.total_memory_bytes),
                c.status,
                _num(c.min_cosine),
                _num(c.max_abs_error, sci=True),
                _num(c.first_encode_s, 2),
                c.message.replace("|", "\\|"),
            ]
            for c in report.checks
        ],
    )
    engines = [c for c in report.checks if c.engine]
    if engines:
        lines += ["", "## Engine choices", ""]
        keys = list(dict.fromkeys(k for c in engines for k in c.engine))
        names = {"gelu": "GELU", "torch_npu": "torch_npu / op-plugin"}
        lines += _table(
            ["Device"] + [names.get(k, k.replace("_", " ").capitalize()) for k in keys],
            [[c.device] + [c.engine.get(k, "—").replace("|", "\\|") for k in keys] for c in engines],
        )
    lines += _fallback_lines(report.cpu_fallbacks)
    lines += ["", f"NPU: {report.npu.summary}.", ""]
    if report.cpu_kernels:
        kernels = report.cpu_kernels
        lines += [
            "## CPU kernels",
            "",
            f"ISA: {kernels.isa}" + (f"; oneDNN runs {kernels.onednn}" if kernels.onednn else ""),
        ]
        lines += ["", f"Capped: {kernels.cap}.", ""] if kernels.cap else [""]
        lines += _table(
            ["dtype", "Linear-layer kernel the packed engine picks on this CPU"],
            [[dtype, kernel] for dtype, kernel in report.cpu_kernels.kernels.items()],
        )
        lines += [""]
    lines += ["## Ascend settings", ""]
    lines += _table(
        ["Setting", "Value", "What it means"],
        [[("⚠ " if s.warning else "") + s.name, f"`{s.value}`", s.meaning] for s in report.ascend_settings],
    )
    lines += ["", "## Versions", ""]
    lines += _table(["Component", "Version"], [[k, v or "not found"] for k, v in report.environment.versions.items()])
    return "\n".join(lines) + "\n"


def write_check(report: CheckReport, out: str | Path) -> list[Path]:
    """check.json and check.md."""
    out = out_dir(out)
    (out / "check.json").write_text(to_json(report), encoding="utf-8")
    (out / "check.md").write_text(check_markdown(report), encoding="utf-8")
    return [out / name for name in CHECK_FILES]


# -- accuracy ----------------------------------------------------------------------------------------------------
_ACCURACY_ROWS = (
    ("Mean cosine similarity", "mean_cosine", 6, False),
    ("Min cosine similarity", "min_cosine", 6, False),
    ("Error rate (%)", "error_rate_pct", 4, False),
    ("Max abs error", "max_abs_error", 0, True),
    ("MSE", "mse", 0, True),
    ("Similarity matrix Pearson r", "similarity_pearson_r", 6, False),
    ("Batch invariance (min cosine, alone vs batched)", "batch_invariance_min_cosine", 6, False),
    ("Batch invariance (max abs)", "batch_invariance_max_abs", 0, True),
    ("Determinism (min cosine, repeat)", "determinism_min_cosine", 6, False),
    ("STS Spearman (under test)", "sts_spearman", 4, False),
    ("STS Spearman drop vs reference", "sts_spearman_drop", 4, False),
)
_THRESHOLD_TEXT = {
    "error_rate_pct": "< {error_rate_pct} %",
    "min_cosine": "≥ {min_cosine}",
    "batch_invariance_min_cosine": "≥ {self_cosine}",
    "determinism_min_cosine": "≥ {self_cosine}",
    "sts_spearman_drop": "≤ {sts_drop}",
}


def accuracy_markdown(report: AccuracyReport, plots: dict[str, list[str]] | None = None) -> str:
    """The accuracy report as Markdown: one column per dtype, thresholds last, then the plots."""
    texts, ref, under = report.texts, report.reference, report.under_test
    lines = [
        f"# Accuracy: {under.device} ({under.device_name}) vs CPU float32 reference — {report.status}",
        "",
    ] + _environment_lines(report.environment)
    lines += [
        f"- Reference: {ref.backend} on cpu, float32, {ref.model} (official weights: "
        f"{'yes' if ref.official_weights else 'no'})"
    ]
    if under.weights_sha256 is not None:
        lines += [
            f"- Under test: {under.backend} on {under.device}, weights sha256 "
            f"{under.weights_sha256[:16]}… (official: {'yes' if under.official_weights else 'no'})"
        ]
    lines += [
        f"- Texts: {texts.count} ({texts.builtin} built-in mixed + {texts.user} user), "
        f"{texts.tokens_min}–{texts.tokens_max} tokens, {texts.over_128_tokens} over 128, "
        f"{texts.truncated_at_max_seq_length} truncated at the model's limit"
    ]
    if report.sts:
        lines += [
            f"- STS: {report.sts.file}, {report.sts.pairs} pairs, reference Spearman "
            f"{_num(report.sts.spearman_reference, 4)}"
        ]
    ran = [(r, r.metrics) for r in report.results if r.metrics is not None]
    thresholds = dataclasses.asdict(report.thresholds)
    lines += ["", "## Results", ""]
    rows = []
    for label, key, digits, sci in _ACCURACY_ROWS:
        if all(getattr(metrics, key) is None for _, metrics in ran):
            continue
        limit = _THRESHOLD_TEXT.get(key, "")
        rows.append(
            [label]
            + [_num(getattr(metrics, key), digits, sci) for _, metrics in ran]
            + [limit.format(**thresholds) if limit else ""]
        )
    rows.append(["**Verdict**"] + [f"**{r.status}**" for r, _ in ran] + [""])
    lines += _table(["Metric"] + [r.dtype for r, _ in ran] + ["Threshold"], rows)
    for result in report.results:
        if result.metrics is None:
            lines += ["", f"- {result.dtype}: {result.status} — {result.reason}"]
        else:
            failed = [c.name for c in result.checks or [] if not c.passed]
            if failed:
                lines += ["", f"- {result.dtype} failed: {', '.join(failed)}"]
    lines += _fallback_lines(report.cpu_fallbacks)
    if plots:
        lines += ["", "## Plots", ""]
        for dtype, names in plots.items():
            lines += [f"### {dtype}", ""] + [f"![{name}]({name})" for name in names] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_accuracy(run: AccuracyRun, out: str | Path) -> list[Path]:
    """accuracy.json, accuracy.md, and per dtype the similarity-matrix plot and the error histogram."""
    from .plots import error_histogram, similarity_plot

    out = out_dir(out)
    written, plots = [], {}
    device = run.report.under_test.device
    for dtype, arrays in run.arrays.items():
        sim = similarity_plot(
            arrays["reference"],
            arrays["test"],
            out / f"accuracy_similarity_{dtype}.png",
            f"cosine similarity matrices: cpu float32 reference vs {device} {dtype}",
        )
        hist = error_histogram(
            arrays["reference"],
            arrays["test"],
            out / f"accuracy_errors_{dtype}.png",
            f"per-element error, {device} {dtype}",
        )
        plots[dtype] = [sim.name, hist.name]
        written += [sim, hist]
    (out / "accuracy.json").write_text(to_json(run.report), encoding="utf-8")
    (out / "accuracy.md").write_text(accuracy_markdown(run.report, plots), encoding="utf-8")
    return [out / name for name in ACCURACY_FILES] + written


# -- bench -------------------------------------------------------------------------------------------------------
def bench_markdown(report: BenchReport, plots: Sequence[str] = ()) -> str:
    """The benchmark report as Markdown: one table per dtype, a row per batch size."""
    env, protocol = report.environment, report.protocol
    lines = [f"# Performance: {env.device} ({env.device_name}), backend {env.backend}", ""]
    lines += _environment_lines(env)
    lines += [
        f"- Protocol: {protocol.texts} texts, batch sizes {', '.join(map(str, protocol.batch_sizes))}, "
        f"{protocol.warmup} warm-up call(s), mean of {protocol.rounds}; {protocol.timing}"
    ]
    for result in report.results:
        lines += ["", f"## {result.dtype}", ""]
        if result.rows is None:
            lines += [f"{result.status}: {result.reason}"]
            continue
        lines += [f"Model load: {result.load_s:.2f} s.", ""]
        lines += _bench_table(result)
    lines += _fallback_lines(report.cpu_fallbacks)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines).rstrip() + "\n"


def _bench_table(result: BenchResult) -> list[str]:
    rows = result.rows or []
    header = ["Batch size", "Mean latency (ms)", "p50 (ms)", "p95 (ms)", "First call (ms)", "Sentences/s", "Tokens/s"]
    extra = [
        ("cpu_sentences_per_s", "CPU sentences/s", 2),
        ("speedup_vs_cpu", "Speedup vs CPU", 2),
        ("st_sentences_per_s", f"sentence-transformers {result.st_dtype or ''} sentences/s", 2),
        ("ratio_vs_st", "Ratio vs ST", 2),
    ]
    extra = [e for e in extra if rows and getattr(rows[0], e[0]) is not None]
    table = [
        [
            r.batch_size,
            _num(r.mean_ms, 2),
            _num(r.p50_ms, 2),
            _num(r.p95_ms, 2),
            _num(r.first_call_ms, 2),
            _num(r.sentences_per_s, 2),
            _num(r.tokens_per_s, 0),
        ]
        + [
            _num(getattr(r, key), digits) + ("×" if key in ("speedup_vs_cpu", "ratio_vs_st") else "")
            for key, _, digits in extra
        ]
        for r in rows
    ]
    return _table(header + [e[1] for e in extra], table)


def write_bench(report: BenchReport, out: str | Path) -> list[Path]:
    """bench.json, bench.md, bench_throughput.png and bench_latency.png."""
    from .plots import bench_plots

    out = out_dir(out)
    pngs = bench_plots(report, out) if report.ran() else []
    (out / "bench.json").write_text(to_json(report), encoding="utf-8")
    (out / "bench.md").write_text(bench_markdown(report, [p.name for p in pngs]), encoding="utf-8")
    return [out / "bench.json", out / "bench.md"] + pngs


# -- everything --------------------------------------------------------------------------------------------------
def index_markdown(check: CheckReport, accuracy: AccuracyReport, bench: BenchReport) -> str:
    """index.md: one line per report, with its verdict, and the environment once."""
    lines = [f"# Port verification: {bench.environment.device} ({bench.environment.device_name})", ""]
    lines += _environment_lines(accuracy.environment)
    best = max((r for res in bench.ran() for r in res.rows or []), key=lambda r: r.sentences_per_s, default=None)
    performance = f"best {best.sentences_per_s:.1f} sentences/s at batch {best.batch_size}" if best else bench.status
    lines += [""] + _table(
        ["Report", "Result", "Files"],
        [
            ["Device check", check.status, "[check.md](check.md), [check.json](check.json)"],
            ["Accuracy", accuracy.status, "[accuracy.md](accuracy.md), [accuracy.json](accuracy.json)"],
            ["Performance", performance, "[bench.md](bench.md), [bench.json](bench.json)"],
        ],
    )
    fallbacks = next((r.cpu_fallbacks for r in (bench, accuracy, check) if r.cpu_fallbacks is not None), None)
    lines += _fallback_lines(fallbacks)  # the last report holds every fallback of the process
    # The two plots a reader looks at first; the rest are linked from the reports themselves.
    plots = (["bench_throughput.png"] if best else []) + [f"accuracy_similarity_{r.dtype}.png" for r in accuracy.ran()][
        :1
    ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"
