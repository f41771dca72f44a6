# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run Molecule scenarios side by side: `run_scenarios.py [--workers N] SCENARIO...`.

Each scenario boots its own lab instances (`molecule/<name>`, instances named after it), so
several can run at once. N workers (default 2) take the scenarios in the order given: put the
longest first. A guest spends much of its time on one virtual CPU (booting, one Python module at a
time), so two scenarios on two cores finish well before one after the other.

Each scenario's output goes to `.build/molecule/<name>.log` and is printed whole when the scenario
ends, so the logs do not interleave. The exit status is 1 when any scenario failed; every scenario
still runs. On SIGTERM or Ctrl-C the running scenarios are stopped and their lab instances with them.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import queue
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LOG_DIR = os.path.join(REPO, ".build", "molecule")

_lock = threading.Lock()
_running = {}


def say(message):
    with _lock:
        print(f"molecule: {message}", flush=True)


def run(name, molecule):
    log_path = os.path.join(LOG_DIR, f"{name}.log")
    start = time.monotonic()
    say(f"{name} started at {time.strftime('%H:%M:%S')}")
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [molecule, "test", "-s", name], cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        _running[name] = proc
        returncode = proc.wait()
        _running.pop(name, None)
    seconds = time.monotonic() - start
    with open(log_path, encoding="utf-8", errors="replace") as log:
        text = log.read()
    verdict = "passed" if returncode == 0 else f"FAILED (exit {returncode})"
    with _lock:
        print(f"===== molecule scenario {name}: {verdict} in {seconds:.0f} s; its log =====", flush=True)
        sys.stdout.write(text)
        print(f"===== end of {name}: {verdict} in {seconds:.0f} s =====", flush=True)
    return returncode == 0


def stop_everything(*_args):
    for proc in list(_running.values()):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in list(_running.values()):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    lab = os.path.join(HERE, "lab.py")
    for folder in sorted(glob.glob(os.path.join(REPO, ".lab", "molecule-*"))):
        subprocess.run([sys.executable, lab, "down", "--name", os.path.basename(folder)], check=False)
    say("interrupted: scenarios and their lab instances stopped")
    os._exit(130)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--molecule", default="molecule", help="the molecule program")
    parser.add_argument("scenarios", nargs="+")
    args = parser.parse_args()
    for name in args.scenarios:
        if not os.path.isfile(os.path.join(REPO, "molecule", name, "molecule.yml")):
            parser.error(f"no scenario molecule/{name}")
    os.makedirs(LOG_DIR, exist_ok=True)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop_everything)

    todo = queue.Queue()
    for name in args.scenarios:
        todo.put(name)
    results = {}

    def worker():
        while True:
            try:
                name = todo.get_nowait()
            except queue.Empty:
                return
            results[name] = run(name, args.molecule)

    start = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, args.workers))]
    for thread in threads:  # a second `lab.py up` waits for the first one's image build
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(1)
    failed = [name for name in args.scenarios if not results.get(name)]
    summary = ", ".join(f"{name} {'passed' if results.get(name) else 'FAILED'}" for name in args.scenarios)
    say(f"{summary}; {time.monotonic() - start:.0f} s with {args.workers} workers")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
