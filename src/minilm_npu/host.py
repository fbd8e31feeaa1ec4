"""This machine's CPU as the engines see it, for reports: its ISA flags and the kernel each CPU dtype gets.

``minilm-npu check`` prints it and benchmark tables name the machine with it, so a reader can tell which kernels a
CPU number came from. It sits beside the encoder (both read the engine package), so ``verify`` asks here instead of
reaching into an engine's internals.
"""

from __future__ import annotations


def isa_summary() -> str:
    """The CPU's ISA flags that the kernels care about, space-separated."""
    from .engine.cpu_kernels import isa_summary as summary  # reads /proc/cpuinfo only; nothing heavy

    return summary()


def onednn_isa() -> str:
    """The instruction-set level oneDNN runs here: the CPU's best within ``ONEDNN_MAX_CPU_ISA``."""
    from .engine.cpu_kernels import onednn_isa as level

    return level()


def cap_summary() -> str | None:
    """One line on the caps in force (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``), or None without any."""
    from .engine.cpu_kernels import cap_summary as summary

    return summary()


def kernel_plan() -> dict[str, str]:
    """Per CPU dtype, the linear-layer kernel the packed engine picks on this CPU with this torch build (what the
    build lacks is said instead)."""
    from .engine.cpu_kernels import kernel_plan as plan_for_this_cpu
    from .engine.cpu_linears import int8_linear_supported, onednn_linear_supported

    plan = plan_for_this_cpu()
    if not onednn_linear_supported():
        plan["float32"] = "F.linear (this torch build has no oneDNN linear)"
    if not int8_linear_supported():
        plan["int8"] = "unavailable (this torch build has no oneDNN int8 kernels)"
    return plan
