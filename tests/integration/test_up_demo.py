"""README's main command, ``stylestream up --demo``, as a user runs it: labels print, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

#: A demo label: a real photo's post id, then its categories with probabilities (or "no garment").
LABEL_LINE = re.compile(r"^photo\S+ ((\w+ [01]\.\d\d )+· |no garment )")


@pytest.mark.integration
def test_up_demo_prints_labels_and_stops_cleanly_on_ctrl_c(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLESTREAM_")}
    env.update(STYLESTREAM_METRICS_PORT="0", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "up", "--demo", "--rate", "10"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while sum(bool(LABEL_LINE.match(line)) for line in list(lines)) < 5:
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no 5 labels printed in 240 s:\n" + "".join(lines)[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    output = "".join(lines)
    assert "stopping…" in output
    assert "Traceback" not in output and " ERROR " not in output, output[-3000:]
    # The embedded broker it started is gone with it.
    port = int(re.search(r"embedded broker 127\.0\.0\.1:(\d+)", output).group(1))
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(2)
        probe.connect(("127.0.0.1", port))
