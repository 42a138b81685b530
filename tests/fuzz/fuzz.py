#!/usr/bin/env python3
"""Fuzzes every REST operation Keel describes, against a running `keel dev`, with schemathesis.

Run by `.ci/fuzz` (which provisions schemathesis in target/fuzz-venv). Two runs, bounded in examples and
time: one with an admin token, one with no credential. It fails when
- any answer is a 5xx, or does not conform to the description (schema or content type);
- the log of `keel dev` shows a panic;
- a write without a credential is answered anything but 401;
- an app and a job created before the fuzz are changed, gone, or no longer running afterwards.
It prints how many requests were sent and how they were answered.
"""

import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEEL = Path(os.environ.get("KEEL_BIN", REPO / "target" / "debug" / "keel"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXAMPLES = int(os.environ.get("KEEL_FUZZ_EXAMPLES", "10"))
# Seconds for the run with a token (writes make it slower: apps and jobs are created) and without one.
MAX_TIME = int(os.environ.get("KEEL_FUZZ_MAX_TIME", "300"))
MAX_TIME_WITHOUT = min(MAX_TIME, 90)
PUBLIC = {"/health", "/ping", "/openapi.json", "/keel/v1/whoami", "/", "/login", "/logout"}
UNSAFE = {"post", "put", "patch", "delete"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(what, f, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = f()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"fuzz: timed out waiting for {what}")


def schemathesis(base, report, max_time, extra):
    args = [
        str(SCHEMATHESIS), "run", f"{base}/openapi.json",
        "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples", str(EXAMPLES), "--max-time", str(max_time),
        "--phases", "examples,coverage,fuzzing", "--workers", "2", "--request-timeout", "20",
        "--seed", "20261130", "--no-color", "--report", "ndjson", "--report-ndjson-path", str(report),
        "--generation-database", "none", "--warnings", "off",
        # Event streams answer for as long as the client listens; their own tests cover them (Mesos's
        # scheduler API: tests/mesos_v1.rs).
        "--exclude-path-regex", "(/events|/api/v1/scheduler)$",
        *extra,
    ]
    print("fuzz: " + " ".join(a if "Bearer" not in a else "Authorization: Bearer ***" for a in args), flush=True)
    return subprocess.run(args, cwd=report.parent).returncode


def outcomes(report):
    """Status codes of every response in a schemathesis NDJSON report."""
    counts = collections.Counter()
    for line in report.read_text().splitlines():
        for status in _statuses(json.loads(line)):
            counts[status] += 1
    return counts


def _statuses(node):
    if isinstance(node, dict):
        resp = node.get("response")
        if isinstance(resp, dict) and isinstance(resp.get("status_code"), int):
            yield resp["status_code"]
        for v in node.values():
            yield from _statuses(v)
    elif isinstance(node, list):
        for v in node:
            yield from _statuses(v)


def summary(name, counts):
    total = sum(counts.values())
    classes = collections.Counter(f"{s // 100}xx" for s in counts.elements())
    detail = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))
    return f"{name}: {total} requests; {dict(sorted(classes.items()))}; by status {detail}"


def main():
    work = Path(tempfile.mkdtemp(prefix="keel-fuzz-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = work / "keel.log"
    dev = subprocess.Popen(
        [str(KEEL), "dev", "--listen", f"127.0.0.1:{port}", "--data-dir", str(work / "data"), "--no-docker",
         "--resources", "cpus:4;mem:8192;disk:10000;ports:[31000-31999]"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "KEEL_LOG": "info"},
    )
    failures = []
    try:
        wait_for("keel dev", lambda: call(base, "GET", "/health")[0] == 200)
        admin = (work / "data" / "admin.token").read_text().strip()

        # What must survive the fuzz: an app and a job, running.
        app = {"id": "/fuzz-keeper", "cmd": "exec sleep 100000", "cpus": 0.01, "mem": 16, "instances": 1}
        assert call(base, "POST", "/v2/apps", admin, app)[0] == 201
        job = {"id": "fuzz-keeper-job", "run": {"cmd": "exec sleep 100000", "cpus": 0.01, "mem": 16},
               "schedules": [{"id": "yearly", "cron": "0 0 1 1 *"}]}
        assert call(base, "POST", "/v1/jobs", admin, job)[0] == 201
        assert call(base, "POST", "/v1/jobs/fuzz-keeper-job/runs", admin)[0] == 201

        def app_running():
            s, a = call(base, "GET", "/v2/apps/fuzz-keeper?embed=app.tasks", admin)
            return a["app"] if s == 200 and a["app"]["tasksRunning"] == 1 else None

        def run_active():
            s, runs = call(base, "GET", "/v1/jobs/fuzz-keeper-job/runs", admin)
            return runs[0]["id"] if s == 200 and runs and runs[0]["status"] == "ACTIVE" else None

        app_before = wait_for("the keeper app to run", app_running)
        run_before = wait_for("the keeper job's run", run_active)
        job_before = call(base, "GET", "/v1/jobs/fuzz-keeper-job", admin)[1]

        # A token of its own for the fuzzer: whatever it revokes, it cannot name this one.
        s, made = call(base, "POST", "/keel/v1/tokens", admin,
                       {"name": f"fuzz-{os.urandom(8).hex()}", "role": "admin"})
        assert s == 201, made
        fuzz_token = made["token"]
        wait_for("the fuzz token", lambda: call(base, "GET", "/keel/v1/whoami", fuzz_token)[0] == 200)

        with_token = work / "with-token.ndjson"
        if schemathesis(base, with_token, MAX_TIME, ["--header", f"Authorization: Bearer {fuzz_token}"]) != 0:
            failures.append("schemathesis found failures with an admin token (see above)")
        without = work / "without-token.ndjson"
        if schemathesis(base, without, MAX_TIME_WITHOUT, ["--generation-with-security-parameters", "false"]) != 0:
            failures.append("schemathesis found failures without a credential (see above)")

        # Every write without a credential is answered 401.
        _, doc = call(base, "GET", "/openapi.json")
        for path, item in doc["paths"].items():
            for method in item:
                if method in UNSAFE and path not in PUBLIC:
                    concrete = path.replace("{", "x").replace("}", "")
                    status, body = call(base, method.upper(), concrete, None, {})
                    if status != 401:
                        failures.append(f"{method.upper()} {path} without a credential answered {status}: {body}")

        text = log.read_text(errors="replace")
        if "panicked" in text:
            failures.append("keel dev's log shows a panic:\n" + "\n".join(
                line for line in text.splitlines() if "panicked" in line))

        app_after = app_running()
        if not app_after:
            failures.append("the keeper app no longer runs")
        else:
            for field in ("cmd", "instances", "version", "cpus", "mem"):
                if app_after[field] != app_before[field]:
                    failures.append(f"the keeper app's {field} changed: {app_before[field]} -> {app_after[field]}")
            if [t["id"] for t in app_after["tasks"]] != [t["id"] for t in app_before["tasks"]]:
                failures.append("the keeper app's task was replaced")
        if call(base, "GET", "/v1/jobs/fuzz-keeper-job", admin)[1] != job_before:
            failures.append("the keeper job changed or is gone")
        if run_active() != run_before:
            failures.append("the keeper job's run is no longer active")

        print()
        print(summary("with an admin token", outcomes(with_token)))
        print(summary("without a credential", outcomes(without)))
    finally:
        dev.terminate()
        try:
            dev.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dev.kill()
    if failures:
        print("\nfuzz FAILED:\n- " + "\n- ".join(failures))
        print(f"(keel dev's log: {log})")
        sys.exit(1)
    print("fuzz passed: no 5xx, no panic, every answer as described, writes without a credential refused, "
          "the app and the job untouched")


if __name__ == "__main__":
    main()
