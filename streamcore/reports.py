"""Provenance every benchmark/evaluation report carries (SPEC "Reports"), and writing it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha() -> str:
    """The checked-out commit, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, torch version, device, and the 1-minute load average (machines here are shared)."""
    try:
        import torch

        torch_version: str | None = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            device = f"{device} ({torch.cuda.get_device_name()})"
    except ImportError:
        torch_version = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch_version, "device": device,
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def report_meta(command: str, *, device: str = "cpu") -> dict[str, Any]:
    """``generated_at``, ``git_sha``, ``machine`` and the exact ``command``."""
    return {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "git_sha": git_sha(),
            "machine": machine(device), "command": command}


def write_report(path: Path, body: dict[str, Any], *, command: str, device: str = "cpu") -> dict[str, Any]:
    """Write ``body`` plus provenance as indented JSON; returns what was written."""
    report = {**body, **report_meta(command, device=device)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report
