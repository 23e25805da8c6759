"""What the benchmark ran on: CPU, cores, memory, OS, library versions, command line, date; and RSS probes."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shlex
import sys

from fer_sdk.runtime import usable_cores

#: Distributions whose versions every bench.json records (the first installed name of each group wins).
_VERSIONS = {
    "fer_sdk": ("fer-sdk",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless"),
    "tf2onnx": ("tf2onnx",),
    "onnx": ("onnx",),
    "scikit-learn": ("scikit-learn",),
}
#: CPU flags that decide which ONNX Runtime / oneDNN kernels run (INT8 speed depends on VNNI / AMX).
_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_tile",
    "neon",
    "asimd",
)


def _cpuinfo() -> tuple[str | None, list[str]]:
    model, flags = None, []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and model is None:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = value.split()
    except OSError:
        pass
    return model, flags


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and the flags among ``_FLAGS`` it has (the one place the CPU is described)."""
    model, flags = _cpuinfo()
    if model is None and sys.platform == "darwin":
        import subprocess

        try:
            model = (
                subprocess.run(
                    ["sysctl", "-n", "machdep.cpu.brand_string"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                ).stdout.strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            model = None
    return model or platform.processor() or platform.machine() or "unknown", [f for f in _FLAGS if f in flags]


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, dists in _VERSIONS.items():
        out[key] = None
        for dist in dists:
            try:
                out[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def _memory_total() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


def command_line() -> str:
    """The command as typed, shell-quoted: ``fer-sdk bench ...`` for the console script, else the interpreter's
    own argument list (``sys.orig_argv``: ``python -m ...``, ``python -c ...``, ``pytest ...``)."""
    argv = list(sys.argv)
    if argv and os.path.basename(argv[0]).split(".")[0] == "fer-sdk":
        argv[0] = "fer-sdk"
    else:
        argv = list(getattr(sys, "orig_argv", None) or argv)
        if argv:
            argv[0] = os.path.basename(argv[0])
    return " ".join(shlex.quote(a) for a in argv)


def describe_machine() -> dict:
    """JSON-ready description of this machine and run (see the module docstring)."""
    cpu, flags = cpu_model()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "physical_cores": _physical_cores(),
        "ram_bytes": _memory_total(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": versions(),
        "load_average_at_start": load,
        "command": command_line(),
        "argv": list(getattr(sys, "orig_argv", sys.argv)),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def current_rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int | None:
    """High-water mark of this process's resident memory.

    Linux: ``VmHWM`` of /proc/self/status (``ru_maxrss`` would be wrong here: Linux keeps it across
    ``execve``, so a worker started from a big parent reports the parent's peak). Elsewhere ``ru_maxrss``, or
    psutil's peak working set on Windows.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return int(getattr(psutil.Process().memory_info(), "peak_wset", 0)) or None
        except ImportError:
            return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere
