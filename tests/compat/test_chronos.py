"""chronos-python 1.2.1 (module `chronos`) against Keel's Chronos API.

Every test runs twice: with the client's default `scheduler_api_version='v1'` (paths under /v1/scheduler/...)
and with `scheduler_api_version=None` (the legacy /scheduler/... paths; `update` then uses PUT instead of POST,
chronos/__init__.py:124-138). The client treats any status >= 400, and any empty answer that is not 204, as a
failed server (chronos/__init__.py:214-243) and then raises ChronosAPIError('No remaining Chronos servers to try').

Authentication: the client's only way to send a credential is `username`/`password`, which it gives to
httplib2 with `add_credentials` (chronos/__init__.py:186-187). httplib2 sends them only after a 401 whose
WWW-Authenticate offers a scheme it knows, so every call is a 401 challenge (Keel offers Basic first) and a
retry with `Authorization: Basic admin:<token>`. A 401 makes `_check` raise UnauthorizedError
(chronos/__init__.py:219-220), which `_call` counts as a failed server (it is a ChronosAPIError).
"""

import pytest
import chronos
import httplib2

from compat_util import unique, wait_until

TIMEOUT = 60.0
# A repeating schedule that starts far in the future: the job only runs when a test runs it.
LATER = "R/2099-01-01T00:00:00Z/PT24H"


def connect(keel, **kwargs):
    """A client with keel dev's admin credentials: user `admin`, password the token."""
    return chronos.connect(keel.hostport, username=keel.user, password=keel.token, **kwargs)


@pytest.fixture(params=["v1", None], ids=["v1-scheduler", "legacy-scheduler"])
def chronos_client(request, keel):
    return connect(keel, scheduler_api_version=request.param)


@pytest.fixture
def jobs(keel):
    """Names of the jobs a test made; deleted afterwards (children first), whatever the outcome."""
    made = []
    yield made
    cleaner = connect(keel)
    for name in reversed(made):
        try:
            cleaner.delete_tasks(name)
        except Exception:
            pass
        try:
            cleaner.delete(name)
        except Exception:
            pass


def job_def(name, **overrides):
    """A job as chronos-python requires it (command, name, owner, disabled, and async for the legacy API:
    chronos/__init__.py:245-282) with one of schedule or parents."""
    job = {
        "name": name,
        "command": "true",
        "owner": "compat@example.com",
        "disabled": False,
        "async": False,
        "schedule": LATER,
        "epsilon": "PT30M",
        "cpus": 0.01,
        "mem": 16,
        "disk": 16,
    }
    job.update(overrides)
    return job


def add(client, jobs, name, **overrides):
    job = job_def(name, **overrides)
    if "parents" in job:
        del job["schedule"]
    jobs.append(name)
    assert client.add(job) is None, "Chronos answers 204 No Content to a new job"
    return job


def listed(client, name):
    found = [j for j in client.list() if j["name"] == name]
    assert len(found) <= 1, f"{name} listed {len(found)} times"
    return found[0] if found else None


def graph_rows(client):
    """graph/csv: `node,NAME,LAST_STATUS,STATE` and `link,PARENT,CHILD` lines."""
    text = client.scheduler_graph()
    assert isinstance(text, str), f"graph/csv must be text, got {text!r}"
    return [line.split(",") for line in text.splitlines() if line]


def node_state(client, name):
    rows = [r for r in graph_rows(client) if r[0] == "node" and r[1] == name]
    return tuple(rows[0][2:4]) if rows else None


def test_add_and_list(chronos_client, jobs):
    name = unique("chr-add")
    add(chronos_client, jobs, name, command="echo compat", description="made by the compat suite")
    job = listed(chronos_client, name)
    assert job is not None, f"{name} not in list()"
    assert job["command"] == "echo compat"
    assert job["owner"] == "compat@example.com"
    assert job["schedule"] == LATER
    assert job["epsilon"] == "PT30M"
    assert job["description"] == "made by the compat suite"
    assert job["cpus"] == 0.01 and job["mem"] == 16 and job["disk"] == 16
    assert job["disabled"] is False
    assert job["async"] is False
    assert job["successCount"] == 0 and job["errorCount"] == 0
    assert job["lastSuccess"] == "" and job["lastError"] == ""


def test_search(chronos_client, jobs):
    name = unique("chr-search")
    marker = unique("marker")
    add(chronos_client, jobs, name, command=f"echo {marker}")
    assert [j["name"] for j in chronos_client.search(name=name)] == [name]
    assert [j["name"] for j in chronos_client.search(command=marker)] == [name]
    assert chronos_client.search(name=unique("no-such-job")) == []


def test_update(chronos_client, jobs):
    name = unique("chr-update")
    add(chronos_client, jobs, name)
    updated = job_def(name, command="echo updated", schedule="R/2098-06-01T12:00:00Z/PT12H", mem=32)
    assert chronos_client.update(updated) is None
    job = listed(chronos_client, name)
    assert job["command"] == "echo updated"
    assert job["schedule"] == "R/2098-06-01T12:00:00Z/PT12H"
    assert job["mem"] == 32
    assert len(chronos_client.search(name=name)) == 1


def test_run_and_job_stat(chronos_client, jobs):
    name = unique("chr-run")
    add(chronos_client, jobs, name, command="true")
    assert chronos_client.run(name) is None, "Chronos answers 204 No Content to a manual start"
    job = wait_until(
        lambda: (j := listed(chronos_client, name)) and j["successCount"] >= 1 and j,
        f"{name} to succeed once",
        timeout=TIMEOUT,
    )
    assert job["successCount"] == 1 and job["errorCount"] == 0
    assert job["lastSuccess"], "lastSuccess holds the time of the success"
    assert node_state(chronos_client, name) == ("success", "idle")
    stat = chronos_client.job_stat(name)
    assert isinstance(stat, dict)
    assert isinstance(stat["histogram"], dict)
    history = stat["taskStatHistory"]
    assert history and all(h["jobName"] == name for h in history)
    assert all(h["taskId"] for h in history)


def test_dependent_job(chronos_client, jobs):
    parent = unique("chr-parent")
    child = unique("chr-child")
    add(chronos_client, jobs, parent, command="true")
    add(chronos_client, jobs, child, command="true", parents=[parent])
    listed_child = listed(chronos_client, child)
    assert listed_child is not None, f"{child} not in list()"
    assert listed_child["parents"] == [parent]
    assert ["link", parent, child] in graph_rows(chronos_client)
    assert node_state(chronos_client, child) == ("fresh", "idle")
    chronos_client.run(parent)
    wait_until(
        lambda: listed(chronos_client, child)["successCount"] >= 1,
        f"{child} to run after {parent} succeeded",
        timeout=TIMEOUT,
    )
    assert listed(chronos_client, parent)["successCount"] == 1


def test_delete_tasks(chronos_client, jobs):
    name = unique("chr-kill")
    add(chronos_client, jobs, name, command="sleep 1000", retries=0)
    chronos_client.run(name)
    wait_until(lambda: node_state(chronos_client, name) == ("fresh", "running"), f"{name} running")
    assert chronos_client.delete_tasks(name) is None, "Chronos answers 204 No Content to task/kill"
    wait_until(lambda: (node_state(chronos_client, name) or ("", ""))[1] == "idle", f"{name} idle after the kill")
    assert listed(chronos_client, name) is not None, "killing a job's tasks keeps the job"


def test_delete(chronos_client, jobs):
    name = unique("chr-delete")
    add(chronos_client, jobs, name)
    assert listed(chronos_client, name) is not None
    assert chronos_client.delete(name) is None, "Chronos answers 204 No Content to a delete"
    assert listed(chronos_client, name) is None
    assert chronos_client.search(name=name) == []
    with pytest.raises(chronos.ChronosAPIError):
        chronos_client.run(name)


def test_job_stat_of_missing_job_fails(chronos_client):
    with pytest.raises(chronos.ChronosAPIError):
        chronos_client.job_stat(unique("chr-missing"))


def test_metrics(keel):
    # chronos/__init__.py:169-171: GET /metrics (never prefixed), no Accept header; Chronos answers its
    # Dropwizard metrics as JSON, which _check parses into a dict
    metrics = connect(keel).metrics()
    assert isinstance(metrics, dict), f"/metrics must answer JSON, got {str(metrics)[:200]!r}"
    for section in ("gauges", "counters", "histograms", "meters", "timers"):
        assert isinstance(metrics.get(section), dict), f"metrics lack the {section!r} object"


@pytest.fixture
def statuses(monkeypatch):
    """The HTTP status of every answer the client checks, and what its _check made of it: a spy around
    ChronosClient._check that changes nothing (the client itself hides a 401 behind 'No remaining Chronos
    servers to try', chronos/__init__.py:207-212)."""
    seen = []
    check = chronos.ChronosClient._check

    def spy(self, resp, content):
        try:
            payload = check(self, resp, content)
        except Exception as e:
            seen.append((resp.status, type(e)))
            raise
        seen.append((resp.status, None))
        return payload

    monkeypatch.setattr(chronos.ChronosClient, "_check", spy)
    return seen


@pytest.mark.parametrize(
    "user,password",
    [(None, None), ("admin", "keel_not-a-token"), ("someone-else", "TOKEN")],
    ids=["none", "wrong-token", "wrong-user"],
)
def test_unauthenticated_calls_are_refused(keel, jobs, statuses, user, password):
    # Without valid credentials the first call fails: the 401 raises the client's UnauthorizedError in _check,
    # and the call ends with ChronosAPIError. With wrong credentials httplib2 answers the challenge once and
    # gets a second 401 (and with the right token under another user name too: Basic must name its principal).
    if password == "TOKEN":
        password = keel.token
    client = chronos.connect(keel.hostport, username=user, password=password)
    with pytest.raises(chronos.ChronosAPIError, match="No remaining Chronos servers"):
        client.list()
    assert statuses == [(401, chronos.UnauthorizedError)]
    statuses.clear()
    name = unique("chr-refused")
    jobs.append(name)
    with pytest.raises(chronos.ChronosAPIError):
        client.add(job_def(name))
    assert statuses == [(401, chronos.UnauthorizedError)]


def test_unauthenticated_challenge_offers_basic(keel):
    # What httplib2 needs to send the client's credentials: a 401 that offers Basic
    response, content = httplib2.Http().request(f"{keel.url}/v1/scheduler/jobs", "GET")
    assert response.status == 401
    assert "basic" in response.get("www-authenticate", "").lower(), dict(response)

