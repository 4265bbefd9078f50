"""Loads as an operator runs them: ``salesflow load`` in a process of its own, configured
by the environment alone, and that process killed (SIGKILL) while it extracts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loaders.replica import settings
from tests.support import ROOT


def extract_started(pipelines_dir: Path) -> bool:
    """Whether a load has begun extracting: dlt opened a package of extracted data."""
    extracted = pipelines_dir / settings.PIPELINE_NAME / "normalize" / "extracted"
    return extracted.is_dir() and any(extracted.iterdir())


def kill_a_load_while_it_extracts(
    pipelines_dir: Path, after: float = 0.5, timeout: float = 60.0
) -> int:
    """Start ``salesflow load`` (the environment as it is), SIGKILL it ``after`` seconds
    into its extract, and return its exit status (``-SIGKILL`` when it was killed; a
    load that ended first returns its own, for the caller to fail on)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "loaders.cli", "load"], cwd=ROOT, env=dict(os.environ),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not extract_started(pipelines_dir):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the load did not start extracting in {timeout:g} s")
            time.sleep(0.02)
        time.sleep(after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
