"""Resumable stages for the experiment scripts in this folder (replicate_small.py, reproduce_paper.py).

Each stage is a subprocess of one of the project's command-line programs.  Its command and
output go to ``OUTPUT_DIR/logs/<name>.log``; a finished stage leaves
``OUTPUT_DIR/stages/<name>.done`` and is not redone when the script is run again, and the
wall time of every stage is kept in ``OUTPUT_DIR/stages/wall_times.json``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Runner:
    """Runs named stages once: a stage whose marker exists is skipped.

    ``prog`` names the script in the one-line error that stops the run when a stage fails.
    """

    def __init__(self, out: Path, prog: str = "replicate_small"):
        self.out = out
        self.prog = prog
        self.times: dict[str, float] = {}
        (out / "stages").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(parents=True, exist_ok=True)
        times = out / "stages" / "wall_times.json"
        if times.exists():
            self.times = json.loads(times.read_text())

    def done(self, name: str) -> bool:
        return (self.out / "stages" / f"{name}.done").exists()

    def run(self, name: str, command: list[str]) -> None:
        if self.done(name):
            print(f"[{time.strftime('%H:%M:%S')}] {name}: done before, skipped", flush=True)
            return
        log = self.out / "logs" / f"{name}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {shlex.join(command)}\n    log: {log}", flush=True)
        start = time.perf_counter()
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {shlex.join(command)}\n")
            f.flush()
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
            code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        elapsed = time.perf_counter() - start
        if code != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            sys.exit(f"{self.prog}: stage {name} failed (exit {code}); see {log}:\n  " + "\n  ".join(tail))
        self.times[name] = elapsed  # a stage run again (its .done removed) replaces its earlier time
        (self.out / "stages" / "wall_times.json").write_text(json.dumps(self.times, indent=1))
        (self.out / "stages" / f"{name}.done").write_text(f"{elapsed:.1f}\n")
        print(f"[{time.strftime('%H:%M:%S')}] {name}: finished in {elapsed / 60:.1f} min", flush=True)
