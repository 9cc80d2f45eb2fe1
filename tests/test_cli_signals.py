"""SIGTERM unwinds a riskstream command (riskstream.cli.main): its ``finally`` clean-up runs and it exits 143,
so `timeout` or `kill` never leaves a private broker or Flink cluster behind. A real process and a real
signal; the command is a stand-in that holds a resource until told to stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

SCRIPT = r"""
import argparse, pathlib, sys, time
import riskstream.cli as cli

def hold(a):
    try:
        print("holding", flush=True)
        time.sleep(120)
    finally:
        pathlib.Path(a.marker).write_text("released")
    return 0

def parser():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(required=True)
    h = sub.add_parser("hold")
    h.add_argument("marker")
    h.set_defaults(fn=hold)
    return p

cli.build_parser = parser
sys.exit(cli.main(["hold", sys.argv[1]]))
"""


def test_sigterm_runs_the_clean_up_and_exits_143(tmp_path):
    marker = tmp_path / "released"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(marker)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"  # blocks until the command holds its resource
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 30
        assert marker.read_text() == "released"
    finally:
        if proc.poll() is None:
            proc.kill()
