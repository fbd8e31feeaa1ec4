"""Ascend settings that change an NPU's results or speed, each read and explained in one line.

Everything here works without torch_npu (then only the environment variables are read), so the doctor can show
a user why their card is invisible or why float32 numbers drift before they have a working install.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

VISIBLE_DEVICES_VAR = "ASCEND_RT_VISIBLE_DEVICES"

# Atlas training series (Ascend 910 / 910 Pro / Premium) default to allow_fp32_to_fp16, i.e. fp16 matmuls inside a
# float32 model; Atlas A2/A3 (910B*, 910_93*) default to must_keep_origin_dtype.
_OLD_TRAINING_CHIP = re.compile(r"^Ascend910(A|ProA|ProB|PremiumA)?$", re.IGNORECASE)
_A2_A3_CHIP = re.compile(r"^Ascend910(B\d*|_93\d*|C\d*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Setting:
    """One setting: its name, its value as in effect, and what that means for results or speed."""

    name: str
    value: str
    meaning: str
    warning: bool = False

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def parse_visible_devices(value: str | None) -> tuple[list[int] | None, str]:
    """``ASCEND_RT_VISIBLE_DEVICES`` as the runtime really parses it.

    The runtime reads comma-separated card indices and stops at the first character it does not expect, keeping
    only the indices before it: ``"1, 2,3"`` makes card 1 visible and nothing else (the space stops it).

    Args:
        value: The variable's value, or None when unset.

    Returns:
        ``(cards, ignored)``: the visible card indices (None when unset: every card is visible) and the part of the
        value that was ignored ("" when all of it was used).
    """
    if value is None:
        return None, ""
    cards: list[int] = []
    position = 0
    while position < len(value):
        match = re.match(r"\d+", value[position:])
        if not match:
            break
        end = position + match.end()
        if end < len(value) and value[end] != ",":
            break  # "2x": the entry holding the bad character is dropped with everything after it
        index = int(match.group())
        if index in cards:
            break  # a repeated card stops the list too
        cards.append(index)
        position = end + 1 if end < len(value) else end
    ignored = value[position:] if position < len(value) else ""
    return cards, ignored


def visible_devices_setting(environ: dict[str, str] | None = None) -> Setting:
    """The ``ASCEND_RT_VISIBLE_DEVICES`` line of the doctor's report."""
    environ = os.environ if environ is None else environ
    raw = environ.get(VISIBLE_DEVICES_VAR)
    cards, ignored = parse_visible_devices(raw)
    if cards is None:
        return Setting(VISIBLE_DEVICES_VAR, "(unset)", "every card on the host is visible; npu:0 is card 0")
    shown = ", ".join(str(c) for c in cards) or "none"
    if not raw.strip():
        return Setting(
            VISIBLE_DEVICES_VAR,
            repr(raw),
            "set but empty: CANN versions differ (all cards or none); unset it or list the cards, e.g. 0,1",
            warning=True,
        )
    if ignored:
        return Setting(
            VISIBLE_DEVICES_VAR,
            repr(raw),
            f"parsed as cards [{shown}] only: parsing stops at {ignored!r} (write indices with commas "
            "and no spaces, e.g. 1,2,3)",
            warning=True,
        )
    mapping = ", ".join(f"npu:{i} = card {c}" for i, c in enumerate(cards))
    return Setting(VISIBLE_DEVICES_VAR, repr(raw), f"cards [{shown}] visible, renumbered from 0: {mapping}")


def _default_precision_mode(chip: str | None) -> tuple[str, str]:
    if chip and _OLD_TRAINING_CHIP.match(chip):
        return "allow_fp32_to_fp16", f"{chip} (Atlas training series) default"
    if chip and _A2_A3_CHIP.match(chip):
        return "must_keep_origin_dtype", f"{chip} (Atlas A2/A3) default"
    return "chip default", "chip default"


def precision_mode_setting(configured: str | None, chip: str | None) -> Setting:
    """The operator precision mode line: what is in effect and whether float32 stays float32."""
    source = "set by the process"
    mode = configured
    if not mode:
        mode, source = _default_precision_mode(chip)
    if mode == "allow_fp32_to_fp16":
        return Setting(
            "precision mode",
            f"{mode} ({source})",
            "matmuls run in fp16 inside a float32 model: expect cosine ~0.9999, not exact; set "
            "torch_npu.npu.set_option({'ACL_PRECISION_MODE': 'must_keep_origin_dtype'}) for float32",
            warning=True,
        )
    if mode == "must_keep_origin_dtype":
        return Setting("precision mode", f"{mode} ({source})", "float32 stays float32: results comparable to CPU")
    if mode == "chip default":
        return Setting(
            "precision mode",
            "not set (chip default)",
            "allow_fp32_to_fp16 (fp16 matmuls inside a "
            "float32 model) on Atlas training 910/910 Pro; must_keep_origin_dtype (exact) on A2/A3",
        )
    return Setting(
        "precision mode",
        f"{mode} ({source})",
        "reduced precision may be used inside float32 models",
        warning=mode.startswith(("force_fp16", "allow_mix", "allow_fp32_to")),
    )


def jit_compile_setting(jit_compile_false: object = None) -> Setting:
    """The compile-mode line: binary kernels or online compile per new shape, and who chose it.

    Args:
        jit_compile_false: torch_npu's ``is_jit_compile_false()`` as read from the runtime (None: not read).
    """
    from ..devices import JIT_COMPILE_ENV, compile_mode

    mode = compile_mode()
    jit = None if jit_compile_false is None else not jit_compile_false
    if jit is None and mode is not None:
        jit = mode.jit_compile
    chosen = f"; chosen by: {mode.source}" if mode is not None else ""
    if jit is None:
        return Setting(
            "jit compile",
            "unknown (no NPU runtime)" if mode is None else "unknown",
            "on an NPU the engine runs CANN's binary kernels (jit_compile=False) unless "
            f"{JIT_COMPILE_ENV}=1 or the process chose otherwise{chosen}",
        )
    if not jit:
        return Setting("jit compile", "False", f"binary kernels, no online compile per new shape{chosen}")
    return Setting(
        "jit compile",
        "True",
        "operators compiled online for each new shape: the first calls at each batch size and length take "
        f"seconds; unset {JIT_COMPILE_ENV} (or set it to 0) for binary kernels{chosen}",
        warning=True,
    )


def cpu_fallback_setting(environ: dict[str, str] | None = None) -> Setting:
    """Whether a CPU fallback can be seen: torch_npu reports each one on stderr unless its warnings are off.

    torch_npu prints its warnings only when ``TORCH_NPU_WARNING_DISABLE`` / ``TORCH_NPU_DISABLED_WARNING`` is not 1
    and the process is rank 0 (``RANK_ID`` unset or 0); releases with ``TORCH_NPU_FALLBACK_CPU_DISABLE=1`` fail
    a fallback instead of running it.
    """
    environ = os.environ if environ is None else environ
    name = "CPU fallbacks"
    if environ.get("TORCH_NPU_FALLBACK_CPU_DISABLE", "").strip() == "1":
        return Setting(name, "TORCH_NPU_FALLBACK_CPU_DISABLE=1", "an operator without an NPU kernel is an error")
    for var in ("TORCH_NPU_WARNING_DISABLE", "TORCH_NPU_DISABLED_WARNING"):
        if environ.get(var, "").strip() == "1":
            return Setting(
                name, f"{var}=1", "torch_npu's warnings are off: a fallback to the CPU cannot be seen", warning=True
            )
    rank = environ.get("RANK_ID", "").strip()
    if rank not in ("", "0", "-1"):
        return Setting(name, f"RANK_ID={rank}", "torch_npu warns on rank 0 only: fallbacks cannot be seen here", True)
    return Setting(name, "reported", "each operator that runs on the CPU instead is recorded and fails the report")


def _read_torch_npu_settings() -> dict[str, object]:
    """Best effort reads of runtime switches; every one may be absent in a given torch_npu release."""
    found: dict[str, object] = {}
    try:
        import torch
        import torch_npu  # noqa: F401 - Ascend-specific, only reached when devices.py already imported it
    except Exception:  # noqa: BLE001 - no torch_npu: the caller reports that
        return found
    npu = getattr(torch, "npu", None)
    for key, getter in (
        ("jit_compile_false", lambda: torch_npu.npu.is_jit_compile_false()),
        ("matmul_allow_hf32", lambda: npu.matmul.allow_hf32),
        ("conv_allow_hf32", lambda: npu.conv.allow_hf32),
        ("precision_mode", lambda: torch_npu._C._npu_getOption("ACL_PRECISION_MODE")),
    ):
        try:
            value = getter()
            if isinstance(value, bytes):
                value = value.decode()
            found[key] = value
        except Exception:  # noqa: BLE001 - an API this torch_npu release lacks
            continue
    return found


def ascend_settings(
    npu_available: bool, chip: str | None = None, environ: dict[str, str] | None = None
) -> list[Setting]:
    """Every Ascend setting worth a line in the doctor's report.

    Args:
        npu_available: Whether torch_npu is importable and sees a card (then runtime switches are read too).
        chip: The first card's name (``"Ascend910B3"``), used to tell the default precision mode.
        environ: The environment to read (default: ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    settings = [visible_devices_setting(environ)]
    runtime = _read_torch_npu_settings() if npu_available else {}
    configured = runtime.get("precision_mode") or environ.get("ACL_PRECISION_MODE") or None
    settings.append(precision_mode_setting(str(configured) if configured else None, chip))
    settings.append(jit_compile_setting(runtime.get("jit_compile_false")))
    settings.append(cpu_fallback_setting(environ))
    # BERT has no convolutions, so only the matmul flag can change this model's numbers; conv is shown for context.
    for key, what in (
        ("matmul_allow_hf32", "torch.npu.matmul.allow_hf32"),
        ("conv_allow_hf32", "torch.npu.conv.allow_hf32"),
    ):
        if key in runtime:
            on = bool(runtime[key])
            meaning = "HF32 (reduced-mantissa float32) allowed: faster, not exact" if on else "full float32"
            settings.append(Setting(what, str(on), meaning, warning=on and key == "matmul_allow_hf32"))
    if not npu_available:
        settings.append(
            Setting(
                "HF32 flags",
                "unknown (no NPU runtime)",
                "torch.npu.matmul.allow_hf32=True trades float32 exactness for speed in matmuls",
            )
        )
    return settings
