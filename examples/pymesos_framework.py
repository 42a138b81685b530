#!/usr/bin/env python3
"""A Mesos framework in one file, on the unmodified `pymesos` package from PyPI, run on Keel's v1 scheduler
HTTP API exactly as it would run on Apache Mesos.

It runs a small batch: N short tasks that each print a line, plus one long task that it kills once the
batch is done. Then it reconciles the long task, checks that the master agrees it was killed, and tears
itself down. It exits 0 only if every step happened as expected, so CI runs it as a compatibility test
(tests/compat/test_pymesos.py).

    pip install pymesos==0.3.15   # see .ci/compat: its http-parser dependency is rebuilt for Python 3.11
    python3 examples/pymesos_framework.py 127.0.0.1:5050 --principal NAME --secret TOKEN

The principal and secret are a Keel token's name and the token (`keel token create --role framework
--name NAME`), sent as HTTP Basic, as pymesos sends Mesos credentials.
"""

import argparse
import logging
import sys
import threading
import time

from addict import Dict
from pymesos import MesosSchedulerDriver, Scheduler

TASK_CPUS = 0.1
TASK_MEM = 32.0
LONG_TASK = "long-runner"
log = logging.getLogger("pymesos-example")


def scalar(offer, name):
    return sum(r.scalar.value for r in offer.resources if r.name == name and r.type == "SCALAR")


class Batch(Scheduler):
    def __init__(self, short_tasks):
        self.to_launch = [f"short-{i}" for i in range(short_tasks)] + [LONG_TASK]
        self.finished = set()
        self.short_tasks = short_tasks
        self.states = {}
        self.killed = False
        self.reconciled = False
        self.failures = []
        self.done = threading.Event()

    def registered(self, driver, framework_id, master_info):
        log.info("registered as %s with master %s (version %s)", framework_id.value, master_info.hostname,
                 master_info.get("version", "?"))

    def reregistered(self, driver, master_info):
        log.info("re-registered with master %s", master_info.hostname)

    def resourceOffers(self, driver, offers):
        for offer in offers:
            cpus, mem = scalar(offer, "cpus"), scalar(offer, "mem")
            tasks = []
            while self.to_launch and cpus >= TASK_CPUS and mem >= TASK_MEM:
                task_id = self.to_launch.pop(0)
                command = "exec sleep 300" if task_id == LONG_TASK else f"echo hello from {task_id}"
                task = Dict()
                task.task_id.value = task_id
                task.agent_id.value = offer.agent_id.value
                task.name = task_id
                task.command.value = command
                task.resources = [
                    dict(name="cpus", type="SCALAR", scalar={"value": TASK_CPUS}),
                    dict(name="mem", type="SCALAR", scalar={"value": TASK_MEM}),
                ]
                tasks.append(task)
                cpus -= TASK_CPUS
                mem -= TASK_MEM
            if tasks:
                log.info("launching %s on %s", [t.task_id.value for t in tasks], offer.hostname)
                driver.launchTasks(offer.id, tasks)
            else:
                driver.declineOffer(offer.id, Dict(refuse_seconds=60))

    def statusUpdate(self, driver, update):
        task_id, state = update.task_id.value, update.state
        self.states[task_id] = state
        log.info("%s is %s %s", task_id, state, update.get("message", ""))
        if update.get("reason") == "REASON_RECONCILIATION":
            if task_id == LONG_TASK and state == "TASK_KILLED":
                self.reconciled = True
                self.done.set()
            return
        if state in ("TASK_FAILED", "TASK_LOST", "TASK_ERROR", "TASK_DROPPED") or (
                state == "TASK_KILLED" and task_id != LONG_TASK):
            self.failures.append(f"{task_id}: {state} {update.get('message', '')}")
            self.done.set()
            return
        if state == "TASK_FINISHED":
            self.finished.add(task_id)
        if len(self.finished) == self.short_tasks and self.states.get(LONG_TASK) == "TASK_RUNNING" \
                and not self.killed:
            log.info("the batch is done: killing %s", LONG_TASK)
            self.killed = True
            driver.killTask(Dict(value=LONG_TASK))
        if task_id == LONG_TASK and state == "TASK_KILLED":
            log.info("reconciling %s", LONG_TASK)
            driver.reconcileTasks([dict(task_id=dict(value=LONG_TASK))])

    def error(self, driver, message):
        self.failures.append(f"error event: {message}")
        self.done.set()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("master", help="the master's HOST:PORT")
    parser.add_argument("--principal", help="the framework token's name")
    parser.add_argument("--secret", help="the framework token")
    parser.add_argument("--tasks", type=int, default=5, help="how many short tasks (default 5)")
    parser.add_argument("--timeout", type=float, default=90, help="give up after this many seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    framework = Dict(user="", name="pymesos-example", hostname="localhost", failover_timeout=60)
    batch = Batch(args.tasks)
    driver = MesosSchedulerDriver(batch, framework, args.master, use_addict=True,
                                  principal=args.principal, secret=args.secret)
    driver.start()
    finished_in_time = batch.done.wait(args.timeout)
    # stop() without failover sends TEARDOWN: the master forgets the framework and its tasks.
    driver.stop()
    driver.join()
    if not finished_in_time:
        batch.failures.append(f"not done within {args.timeout:.0f}s; task states: {batch.states}")
    if not batch.reconciled and not batch.failures:
        batch.failures.append("the long task was not reconciled as killed")
    if batch.failures:
        for f in batch.failures:
            log.error("FAILED: %s", f)
        return 1
    log.info("all %d tasks finished, %s killed and reconciled; torn down", args.tasks, LONG_TASK)
    return 0


if __name__ == "__main__":
    start = time.monotonic()
    code = main()
    log.info("took %.1fs", time.monotonic() - start)
    sys.exit(code)
