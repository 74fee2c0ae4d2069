"""The CPU's instruction-set features, and whether bf16/int8 pay off on them.

Omni's image network in bf16 is fast only where the CPU has bf16 instructions
(AVX512-BF16 or AMX on x86): elsewhere torch emulates them, and the flow runs
slower than fp32 -- 1.4 against 13.1 alerts/s on an AVX-only core (issue 27), and
on this repository's Zen 5 core with oneDNN held to an older instruction set
(`ONEDNN_MAX_CPU_ISA`, bf16/fp32 in one run each): AVX2 0.08-0.09x, AVX-512
without BF16 0.4-1.0x, with BF16 2.7-3.8x. int8 (dynamic quantization, fbgemm)
needs AVX2; with AVX2 or AVX-512 it was 1.2-2.5x fp32.

`precision_refusal(precision, flags, arch)` is a pure function of the flags
string (`/proc/cpuinfo`'s `flags`, or `Features` on ARM); `read_cpu()` is the thin
reader; `describe(cpu)` is the one line the benchmarks print beside their figures.
With no flags to read (not Linux) nothing is refused on them alone: torch's own
kernel level (`torch.backends.cpu.get_cpu_capability()`) says only whether AVX2
or AVX-512 is there, which refuses bf16 below AVX-512.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

X86 = ("x86_64", "amd64", "i386", "i686", "x86")
# (what the benchmark line calls it, the /proc/cpuinfo flags any of which mean it is there)
X86_FEATURES = (
    ("AVX", ("avx",)),
    ("AVX2", ("avx2",)),
    ("AVX-512", ("avx512f",)),
    ("AVX512-VNNI", ("avx512_vnni",)),
    ("AVX-VNNI", ("avx_vnni",)),
    ("AVX512-BF16", ("avx512_bf16",)),
    ("AMX-BF16", ("amx_bf16",)),
    ("AMX-INT8", ("amx_int8",)),
)
ARM_FEATURES = (("NEON", ("asimd",)), ("DOTPROD", ("asimddp",)), ("I8MM", ("i8mm",)), ("BF16", ("bf16",)),
                ("SVE", ("sve",)))
NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}
FIX = "unset ORACLE_PRECISION (fp32)"


@dataclass(frozen=True)
class Cpu:
    arch: str  # platform.machine(), lower case
    flags: frozenset  # empty when unknown
    capability: str = ""  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    model: str = ""


def parse_flags(cpuinfo: str) -> frozenset:
    """The first `flags` (x86) or `Features` (ARM) line of a /proc/cpuinfo text, as a set."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def _has(flags: frozenset, names) -> bool:
    return any(n in flags for n in names)


def features(cpu: Cpu) -> list[str]:
    """The named features present, in the order of the table above."""
    table = X86_FEATURES if cpu.arch in X86 else ARM_FEATURES
    return [name for name, flags in table if _has(cpu.flags, flags)]


def describe(cpu: Cpu) -> str:
    """`x86_64 AMD EPYC: AVX AVX2 AVX-512 AVX512-VNNI AVX512-BF16 (torch kernels AVX512)`."""
    names = " ".join(features(cpu)) if cpu.flags else "features unknown (no /proc/cpuinfo)"
    model = f" {cpu.model}" if cpu.model else ""
    torch_level = f" (torch kernels {cpu.capability})" if cpu.capability else ""
    return f"{cpu.arch}{model}: {names}{torch_level}"


def precision_refusal(precision: str, flags: str | frozenset, arch: str = "x86_64",
                      capability: str = "") -> Optional[str]:
    """Why `precision` would be slower than fp32 on a CPU with these `flags`, or None.
    `flags`: /proc/cpuinfo's flags (a string or a set); empty when unknown."""
    flags = frozenset(flags.split()) if isinstance(flags, str) else frozenset(flags)
    arch = arch.lower()
    if precision not in ("bf16", "int8") or arch not in X86:
        return None  # ARM: bf16 and int8 run on NEON/SVE paths torch ships; not measured here
    cpu = Cpu(arch, flags, capability)
    has = ", ".join(features(cpu)) or "none of AVX2/AVX-512"
    if not flags:  # no /proc/cpuinfo: torch's kernel level is all we know
        if precision == "bf16" and capability.upper() in ("DEFAULT", "NO AVX", "AVX2"):
            return (f"this CPU has no AVX-512 (torch kernels {capability}), so no bf16 instructions: torch "
                    f"emulates bf16, ~10x slower than fp32")
        return None
    if precision == "bf16" and not flags & NATIVE_BF16:
        if "avx512f" in flags:
            return (f"this CPU has no bf16 instructions (AVX512-BF16 or AMX; it has {has}): torch emulates bf16 "
                    "with AVX-512, measured 0.4-1.0x the fp32 alerts/s")
        return (f"this CPU has no bf16 instructions (AVX512-BF16 or AMX; it has {has}): torch emulates bf16, "
                "~10x slower than fp32")
    if precision == "int8" and "avx2" not in flags:
        return (f"this CPU has no AVX2 (it has {has}), which torch's int8 kernels (fbgemm) need: int8 would be "
                "slower than fp32")
    return None


def read_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> Cpu:
    """This machine's CPU: /proc/cpuinfo on Linux, torch's kernel level everywhere."""
    text = ""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        pass
    model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "CPU part") and value.strip():
            model = value.strip()
            break
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - an old torch or none: the flags still say what is there
        capability = ""
    return Cpu(platform.machine().lower(), parse_flags(text), capability, model)


def refusal_here(precision: str) -> Optional[str]:
    """`precision_refusal` for this machine's CPU."""
    cpu = read_cpu()
    return precision_refusal(precision, cpu.flags, cpu.arch, cpu.capability)
