"""pymesos 0.3.15, unmodified from PyPI, against Keel's Mesos v1 scheduler HTTP API.

The framework is examples/pymesos_framework.py, run as users would run it: it subscribes with a framework
token as its principal and secret (HTTP Basic, as pymesos sends them), launches a batch of tasks, receives
their updates (acknowledged implicitly by the driver), kills one, reconciles it and tears down; it exits 0
only when each step happened. What pymesos does on the wire (pymesos/scheduler.py, process.py): SUBSCRIBE
over a raw socket, parsed with http-parser, needs a 200 that is chunked with a Mesos-Stream-Id header and a
RecordIO body; every other call is a POST that must answer 2xx, else the driver thread dies.
"""

import subprocess
import sys
import time
from pathlib import Path

import requests

from compat_util import unique, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pymesos_framework.py"


def framework_token(keel, name):
    r = requests.post(f"{keel.url}/keel/v1/tokens", headers=keel.headers, timeout=10,
                      json={"name": name, "role": "framework"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_a_pymesos_framework_launches_kills_reconciles_and_tears_down(keel):
    name = unique("pymesos")
    secret = framework_token(keel, name)
    time.sleep(1)  # a new token is seen by every check within a second
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), keel.hostport, "--principal", name, "--secret", secret, "--tasks", "4"],
        capture_output=True, text=True, timeout=180)
    print(run.stdout, run.stderr)
    assert run.returncode == 0, f"the pymesos framework failed:\n{run.stderr[-4000:]}"
    log = run.stderr
    assert "registered as" in log
    for i in range(4):
        assert f"short-{i} is TASK_FINISHED" in log
    assert "long-runner is TASK_KILLED" in log
    assert secret not in log, "the secret must not reach the framework's log"

    # TEARDOWN removed the framework: the master lists it no more.
    def gone():
        state = requests.get(f"{keel.url}/master/state", headers=keel.headers, timeout=10).json()
        return not any(f["name"] == "pymesos-example" for f in state["frameworks"])
    wait_until(gone, timeout=30, what="the pymesos framework to be torn down")


def test_pymesos_with_a_wrong_secret_is_refused(keel):
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), keel.hostport, "--principal", "nobody", "--secret", "keel_wrong",
         "--timeout", "5"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "Failed with HTTP 401" in run.stderr or "401" in run.stderr, run.stderr[-2000:]
