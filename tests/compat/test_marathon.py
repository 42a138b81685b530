"""marathon-python 0.13.0 (module `marathon`) against Keel's Marathon API, as a real Marathon would answer it.

Every model is built with `cls(**json)` (marathon/models/base.py:43), so an unknown key in an answer fails the
call with a TypeError; 404 raises NotFoundError, 409 ConflictError, other >= 400 MarathonHttpError
(marathon/client.py:102-114).

Authentication: Keel needs a credential on every API but /ping. The client has two ways to send one
(client.py:25-62): `auth_token=T`, sent as `Authorization: token=T` (DC/OS's form) by _do_request
(client.py:82-83), and `username`/`password`, handed to requests as HTTP Basic (`auth=self.auth`,
client.py:91-93, 132-140). Most tests use auth_token. The event stream is the exception: _do_sse_request
(client.py:124-150) sends only `auth=self.auth`, never the token, so an auth_token client cannot read
/v2/events; the SSE tests use Basic credentials (user `admin`, password the token), which both paths send.
"""

import datetime
import http.server
import json
import queue
import threading
import time

import pytest
import requests
from marathon import MarathonClient, MarathonApp, NotFoundError
from marathon.exceptions import ConflictError, MarathonError, MarathonHttpError
from marathon.models import MarathonDeployment, MarathonGroup, MarathonInfo, MarathonQueueItem, MarathonTask
from marathon.models.app import (
    MarathonTaskFailure,
    MarathonTaskStats,
    MarathonUpgradeStrategy,
    PortDefinition,
)
from marathon.models.events import (
    MarathonApiPostEvent,
    MarathonDeploymentSuccess,
    MarathonStatusUpdateEvent,
)
from marathon.models.info import MarathonHttpConfig, MarathonConfig, MarathonZooKeeperConfig

from compat_util import unique, wait_until

TIMEOUT = 60.0


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def marathon(base_url, token):
    # client.py:82-83: Authorization: token=<token> on every request but the event stream
    return MarathonClient(base_url, timeout=30, auth_token=token)


@pytest.fixture
def cleanup(marathon):
    """Ids of apps and groups a test made; removed (forced) afterwards, whatever the test's outcome."""
    made = {"apps": [], "groups": []}
    yield made
    for app_id in made["apps"]:
        try:
            marathon.delete_app(app_id, force=True)
        except Exception:
            pass
    for group_id in made["groups"]:
        try:
            marathon.delete_group(group_id, force=True)
        except Exception:
            pass


def app_id(name):
    return "/" + unique(f"compat-{name}")


def small_app(**overrides):
    """A cheap app: many fit on the dev agent."""
    fields = dict(cmd="sleep 1000", cpus=0.01, mem=16, instances=1)
    fields.update(overrides)
    return MarathonApp(**fields)


def create(marathon, cleanup, name, **overrides):
    """Creates an app through the client and returns (id, the app the client parsed from the answer)."""
    aid = app_id(name)
    cleanup["apps"].append(aid)
    created = marathon.create_app(aid, small_app(**overrides))
    assert isinstance(created, MarathonApp), f"create_app answered {created!r} (it needs 201 and the app)"
    return aid, created


def running_tasks(marathon, aid, count, timeout=TIMEOUT, exclude=()):
    """Waits until the app has exactly `count` TASK_RUNNING tasks (none of them in `exclude`) and returns them."""

    def probe():
        tasks = marathon.list_tasks(aid)
        running = [t for t in tasks if t.state == "TASK_RUNNING" and t.id not in exclude]
        if len(running) == count and len(tasks) == count:
            return running
        return None

    return wait_until(probe, f"{count} running task(s) of {aid}", timeout=timeout)


def app_gone(marathon, aid):
    def probe():
        try:
            marathon.get_app(aid)
            return False
        except NotFoundError:
            return True

    wait_until(probe, f"{aid} to be removed")


def no_deployment_for(marathon, aid):
    wait_until(
        lambda: not [d for d in marathon.list_deployments() if aid in (d.affected_apps or [])],
        f"no deployment left for {aid}",
    )


def waiting_app(marathon, cleanup, name, instances=2):
    """An app that can never be placed (Keel's agents offer only role `*`), so its deployment and its queue
    entry stay until the test ends them."""
    return create(
        marathon, cleanup, name, instances=instances, accepted_resource_roles=["slave_public"]
    )


# ---------------------------------------------------------------- server information


def test_ping(marathon):
    # client.py:755-762: GET /ping, returns the body
    assert marathon.ping() == b"pong"


def test_get_leader(marathon, keel):
    # client.py:737-744: GET /v2/leader -> {"leader": "host:port"} of the elected Marathon
    leader = marathon.get_leader()
    assert set(leader) == {"leader"}
    host, _, port = leader["leader"].rpartition(":")
    assert host, f"leader must be host:port, got {leader['leader']!r}"
    assert int(port) == keel.port, f"leader {leader['leader']!r} must name the port Keel serves on"


def test_get_info(marathon, keel, base_url):
    # client.py:728-735 parses /v2/info into MarathonInfo, whose constructor builds http_config,
    # marathon_config and zookeeper_config with `.from_json(x)`: each must be a JSON object (models/info.py:37-46).
    info = marathon.get_info()
    assert isinstance(info, MarathonInfo)
    assert info.name == "marathon"
    assert isinstance(info.version, str) and info.version
    assert info.elected is True
    assert info.leader == marathon.get_leader()["leader"]
    state = requests.get(f"{base_url}/master/state", headers=keel.headers, timeout=10)
    assert state.status_code == 200, f"GET /master/state answered {state.status_code}: {state.text[:200]}"
    frameworks = state.json()["frameworks"]
    marathon_ids = [f["id"] for f in frameworks if f["name"] == "marathon"]
    assert info.framework_id in marathon_ids, f"frameworkId {info.framework_id!r} is not Marathon's {marathon_ids}"
    assert isinstance(info.http_config, MarathonHttpConfig)
    assert info.http_config.http_port == keel.port
    assert isinstance(info.marathon_config, MarathonConfig)
    # MarathonConfig takes framework_name but never stores it (models/info.py), so check what it keeps.
    assert info.marathon_config.local_port_min == 10000 and info.marathon_config.local_port_max == 20000
    assert isinstance(info.zookeeper_config, MarathonZooKeeperConfig)


def test_get_metrics(marathon, cleanup):
    # client.py:764-771: GET /metrics with Accept: application/json, parsed with response.json()
    create(marathon, cleanup, "metrics")
    metrics = marathon.get_metrics()
    assert isinstance(metrics, dict)
    for section in ("gauges", "counters", "histograms", "meters", "timers"):
        assert isinstance(metrics.get(section), dict), f"metrics lack the {section!r} object: {list(metrics)}"
    assert metrics["gauges"]["marathon.apps.active.gauge"]["value"] >= 1


# ---------------------------------------------------------------- authentication


def test_basic_auth(base_url, keel, cleanup):
    # username/password: requests sends HTTP Basic (client.py:55, 91-93); Keel takes the token's principal
    # as the user and the token as the password, for reads and writes alike
    basic = MarathonClient(base_url, timeout=30, username=keel.user, password=keel.token)
    assert basic.get_info().name == "marathon"
    aid = app_id("basic")
    cleanup["apps"].append(aid)
    created = basic.create_app(aid, small_app())
    assert isinstance(created, MarathonApp) and created.id == aid
    assert aid in {a.id for a in basic.list_apps()}
    result = basic.delete_app(aid, force=True)
    assert set(result) >= {"deploymentId", "version"}, result
    app_gone(basic, aid)


def test_bearer_token_header(base_url, keel):
    # a requests session carrying `Authorization: Bearer <token>`, handed to the client (session=...); the
    # client adds no Authorization of its own when it has neither auth_token nor username/password
    session = requests.Session()
    session.headers.update(keel.headers)
    client = MarathonClient(base_url, timeout=30, session=session)
    assert client.get_info().name == "marathon"
    session.close()


@pytest.mark.parametrize(
    "credentials",
    [{}, {"auth_token": "keel_not-a-token"}, {"username": "admin", "password": "keel_not-a-token"}],
    ids=["none", "wrong-token", "wrong-basic"],
)
def test_unauthenticated_calls_are_refused(base_url, keel, credentials):
    # Without a valid credential the client's first call fails with its own MarathonHttpError for the 401
    # (client.py:108-114); /ping stays public (Marathon's load balancers probe it without credentials).
    client = MarathonClient(base_url, timeout=30, **credentials)
    with pytest.raises(MarathonHttpError) as refused:
        client.list_apps()
    assert refused.value.status_code == 401
    assert not isinstance(refused.value, (NotFoundError, ConflictError))
    assert refused.value.error_message, "the 401 carries Keel's JSON message"
    with pytest.raises(MarathonHttpError) as refused_write:
        client.create_app(app_id("refused"), small_app())
    assert refused_write.value.status_code == 401
    assert client.ping() == b"pong"


def test_basic_auth_needs_the_tokens_principal(base_url, keel):
    # Basic credentials name the token's principal: the right token under another user name is refused
    client = MarathonClient(base_url, timeout=30, username="someone-else", password=keel.token)
    with pytest.raises(MarathonHttpError) as refused:
        client.get_info()
    assert refused.value.status_code == 401


def test_event_stream_without_credentials_is_refused(base_url):
    # GET /v2/events is protected too: without credentials the client gets a 401, which _do_sse_request
    # (client.py:146-150) turns into MarathonError. An auth_token-only client ends the same way, since the
    # SSE path never sends the token.
    session = requests.Session()
    client = MarathonClient(base_url, timeout=30, sse_session=session)
    with pytest.raises(MarathonError, match="No remaining Marathon servers"):
        next(iter(client.event_stream()))
    session.close()


# ---------------------------------------------------------------- apps


def test_create_app_and_get_it_back(marathon, cleanup):
    aid, created = create(
        marathon,
        cleanup,
        "create",
        disk=0,
        labels={"team": "compat"},
        env={"GREETING": "hello"},
        backoff_seconds=2,
        backoff_factor=1.5,
        max_launch_delay_seconds=120,
        kill_selection="OLDEST_FIRST",
        upgrade_strategy=MarathonUpgradeStrategy(minimum_health_capacity=0.5, maximum_over_capacity=0.25),
    )

    def same_definition(app):
        assert app.id == aid
        assert app.cmd == "sleep 1000"
        assert app.cpus == 0.01
        assert app.mem == 16
        assert app.disk == 0
        assert app.instances == 1
        assert app.labels == {"team": "compat"}
        assert app.env == {"GREETING": "hello"}
        assert app.backoff_seconds == 2
        assert app.backoff_factor == 1.5
        assert app.max_launch_delay_seconds == 120
        assert app.kill_selection == "OLDEST_FIRST"
        assert app.upgrade_strategy.minimum_health_capacity == 0.5
        assert app.upgrade_strategy.maximum_over_capacity == 0.25
        assert isinstance(app.version, str) and app.version

    same_definition(created)
    assert created.deployments, "the create answer names the deployment it started"
    got = marathon.get_app(aid)
    same_definition(got)
    assert got.version == created.version
    assert isinstance(got.version_info.last_config_change_at, datetime.datetime)
    assert isinstance(got.version_info.last_scaling_at, datetime.datetime)
    running_tasks(marathon, aid, 1)
    got = marathon.get_app(aid)
    assert got.tasks_running == 1 and got.tasks_staged == 0


def test_create_existing_app_conflicts(marathon, cleanup):
    # Marathon answers 409 for a second POST of the same id; the client raises ConflictError (client.py:111-112)
    aid, _ = create(marathon, cleanup, "dup")
    with pytest.raises(ConflictError):
        marathon.create_app(aid, small_app())


def test_get_missing_app_is_not_found(marathon):
    with pytest.raises(NotFoundError):
        marathon.get_app(app_id("missing"))


def test_app_without_port_definitions_gets_one_service_port(marathon, cleanup):
    # Marathon gives every host-networked app one port by default ($PORT0): portDefinitions [{port: 0}]
    # with a service port assigned, and each task lists that service port next to its host port.
    aid, created = create(marathon, cleanup, "defport")
    assert len(created.port_definitions) == 1, f"portDefinitions: {created.port_definitions}"
    service_port = created.port_definitions[0].port
    assert service_port > 0
    (task,) = running_tasks(marathon, aid, 1)
    assert len(task.ports) == 1
    assert task.service_ports == [service_port]


def test_port_definition_port_zero_is_assigned_a_service_port(marathon, cleanup):
    # portDefinitions[].port 0 means "assign a free service port" (Marathon's ports.md); two apps get two.
    aids, ports = [], []
    for name in ("port-a", "port-b"):
        aid, created = create(
            marathon, cleanup, name, port_definitions=[PortDefinition(port=0, protocol="tcp", name="http")]
        )
        (pd,) = created.port_definitions
        assert pd.name == "http" and pd.protocol == "tcp"
        assert pd.port > 0, f"port 0 must be replaced by an assigned service port, got {pd.port}"
        assert marathon.get_app(aid).port_definitions[0].port == pd.port
        aids.append(aid)
        ports.append(pd.port)
    assert ports[0] != ports[1], f"both apps got service port {ports[0]}"
    for aid, port in zip(aids, ports):
        (task,) = running_tasks(marathon, aid, 1)
        assert task.service_ports == [port]
        assert len(task.ports) == 1 and task.ports[0] > 0


def test_list_endpoints(marathon, cleanup):
    # client.py:153-159 + models/endpoint.py:33-50: one endpoint per task port, paired with service_ports[i]
    aid, created = create(
        marathon, cleanup, "endpoints", instances=2, port_definitions=[PortDefinition(port=0, name="http")]
    )
    tasks = running_tasks(marathon, aid, 2)
    endpoints = [e for e in marathon.list_endpoints() if e.app_id == aid]
    assert len(endpoints) == 2
    service_port = marathon.get_app(aid).port_definitions[0].port
    by_task = {t.id: t for t in tasks}
    for e in endpoints:
        assert e.service_port == service_port and service_port > 0
        assert e.task_id in by_task
        assert e.task_port == by_task[e.task_id].ports[0]
        assert e.host == by_task[e.task_id].host


def test_list_apps_filters_and_embeds(marathon, cleanup):
    tag = unique("lbl")
    a, _ = create(marathon, cleanup, "list-a", labels={"suite": tag}, cmd="sleep 1001")
    b, _ = create(marathon, cleanup, "list-b", labels={"suite": tag, "tier": "web"}, cmd="sleep 1002")
    running_tasks(marathon, a, 1)
    running_tasks(marathon, b, 1)
    no_deployment_for(marathon, a)
    no_deployment_for(marathon, b)

    ids = {app.id for app in marathon.list_apps()}
    assert {a, b} <= ids
    assert [app.id for app in marathon.list_apps(cmd="sleep 1002")] == [b]
    assert {app.id for app in marathon.list_apps(app_id=a.lstrip("/"))} == {a}
    assert {app.id for app in marathon.list_apps(label=f"suite=={tag}")} == {a, b}
    assert {app.id for app in marathon.list_apps(label="tier==web") if app.id in (a, b)} == {b}
    # client-side filters (client.py:225-226)
    assert [app.id for app in marathon.list_apps(label=f"suite=={tag}", cmd="sleep 1001", instances=1)] == [a]

    embedded = {
        app.id: app
        for app in marathon.list_apps(
            embed_tasks=True,
            embed_counts=True,
            embed_deployments=True,
            embed_readiness=True,
            embed_last_task_failure=True,
            embed_failures=True,
        )
    }
    for aid in (a, b):
        app = embedded[aid]
        assert len(app.tasks) == 1 and app.tasks[0].state == "TASK_RUNNING"
        assert app.tasks_running == 1
        assert app.deployments == []


def test_get_app_embeds(marathon, cleanup):
    aid, _ = create(marathon, cleanup, "embeds")
    (task,) = running_tasks(marathon, aid, 1)
    no_deployment_for(marathon, aid)
    app = marathon.get_app(
        aid,
        embed_tasks=True,
        embed_counts=True,
        embed_deployments=True,
        embed_readiness=True,
        embed_last_task_failure=True,
        embed_failures=True,
    )
    assert [t.id for t in app.tasks] == [task.id]
    assert app.tasks[0].app_id == aid
    assert (app.tasks_running, app.tasks_staged, app.tasks_healthy, app.tasks_unhealthy) == (1, 0, 0, 0)
    assert app.deployments == []
    assert app.last_task_failure is None


def test_get_app_embed_task_stats(marathon, cleanup):
    # embed=app.taskStats: Marathon answers "taskStats" with per-category counts (models/app.py:340-436)
    aid, _ = create(marathon, cleanup, "taskstats", instances=2)
    running_tasks(marathon, aid, 2)
    app = marathon.get_app(aid, embed_task_stats=True)
    assert isinstance(app.task_stats, MarathonTaskStats), f"taskStats missing: {app.task_stats!r}"
    total = app.task_stats.total_summary
    assert total is not None and total.stats.counts.running == 2
    assert app.task_stats.with_latest_config.stats.counts.running == 2


def test_last_task_failure(marathon, cleanup):
    # models/app.py:245-270: lastTaskFailure with appId, taskId, state, message, host, timestamp, version
    aid, created = create(marathon, cleanup, "failing", cmd="exit 3", backoff_seconds=300, backoff_factor=1)
    app = wait_until(
        lambda: (a := marathon.get_app(aid, embed_last_task_failure=True)).last_task_failure and a,
        f"a task failure of {aid}",
    )
    failure = app.last_task_failure
    assert isinstance(failure, MarathonTaskFailure)
    assert failure.app_id == aid
    assert failure.state == "TASK_FAILED"
    assert failure.task_id and failure.task_id.startswith(aid.lstrip("/"))
    assert isinstance(failure.timestamp, datetime.datetime)
    assert failure.version == created.version
    assert failure.host


def test_list_tasks_come_up_running(marathon, cleanup):
    aid, created = create(marathon, cleanup, "tasks", instances=3)
    tasks = running_tasks(marathon, aid, 3)
    for t in tasks:
        assert isinstance(t, MarathonTask)
        assert t.app_id == aid
        assert t.host
        assert t.slave_id
        assert isinstance(t.staged_at, datetime.datetime)
        assert isinstance(t.started_at, datetime.datetime)
        assert t.version == created.version
    everything = marathon.list_tasks()
    assert {t.id for t in tasks} <= {t.id for t in everything}
    assert {t.id for t in marathon.list_tasks(app_id=aid, state="TASK_RUNNING")} == {t.id for t in tasks}


def test_scale_app_to_instances(marathon, cleanup):
    # client.py:358-388: GET the app, then PUT /v2/apps/{id} with {"instances": N} only (a partial update)
    aid, _ = create(marathon, cleanup, "scale")
    running_tasks(marathon, aid, 1)
    result = marathon.scale_app(aid, instances=3)
    assert set(result) >= {"deploymentId", "version"}, result
    assert marathon.get_app(aid).instances == 3
    running_tasks(marathon, aid, 3)
    app = marathon.get_app(aid)
    assert app.cmd == "sleep 1000" and app.mem == 16, "a scale must keep the rest of the definition"


def test_scale_app_by_delta(marathon, cleanup):
    aid, _ = create(marathon, cleanup, "delta", instances=3)
    running_tasks(marathon, aid, 3)
    result = marathon.scale_app(aid, delta=-2)
    assert set(result) >= {"deploymentId", "version"}, result
    running_tasks(marathon, aid, 1)
    assert marathon.get_app(aid).instances == 1


def test_update_app(marathon, cleanup):
    # client.py:278-301: PUT /v2/apps/{id}?force=False with the definition; answers deploymentId and version
    aid, created = create(marathon, cleanup, "update", env={"V": "1"})
    (old,) = running_tasks(marathon, aid, 1)
    result = marathon.update_app(aid, small_app(cmd="sleep 2000", env={"V": "2"}, labels={"updated": "yes"}))
    assert set(result) >= {"deploymentId", "version"}, result
    assert result["version"] != created.version
    app = marathon.get_app(aid)
    assert app.cmd == "sleep 2000"
    assert app.env == {"V": "2"}
    assert app.labels == {"updated": "yes"}
    assert app.version == result["version"]
    (new,) = running_tasks(marathon, aid, 1, exclude={old.id})
    assert new.version == result["version"]


def test_update_locked_app_needs_force(marathon, cleanup):
    # A deployment in progress locks the app: 409 (ConflictError) without force, accepted with force=True
    aid, _ = waiting_app(marathon, cleanup, "locked")
    wait_until(
        lambda: [d for d in marathon.list_deployments() if aid in (d.affected_apps or [])], f"the deployment of {aid}"
    )
    with pytest.raises(ConflictError):
        marathon.update_app(aid, small_app(instances=1, accepted_resource_roles=["slave_public"]))
    result = marathon.update_app(aid, small_app(instances=0), force=True)
    assert set(result) >= {"deploymentId", "version"}, result
    assert marathon.get_app(aid).instances == 0


def test_update_apps(marathon, cleanup):
    # client.py:303-327: PUT /v2/apps with a list; an existing id is updated (partially), a new one created
    existing, _ = create(marathon, cleanup, "bulk-old")
    running_tasks(marathon, existing, 1)
    fresh = app_id("bulk-new")
    cleanup["apps"].append(fresh)
    result = marathon.update_apps(
        [MarathonApp(id=existing, instances=2), small_app(id=fresh, cmd="sleep 1003")]
    )
    assert set(result) >= {"deploymentId", "version"}, result
    running_tasks(marathon, existing, 2)
    running_tasks(marathon, fresh, 1)
    assert marathon.get_app(existing).cmd == "sleep 1000"
    assert marathon.get_app(fresh).cmd == "sleep 1003"


def test_list_versions_and_get_version(marathon, cleanup):
    aid, created = create(marathon, cleanup, "versions")
    running_tasks(marathon, aid, 1)
    update = marathon.update_app(aid, small_app(cmd="sleep 2001"))
    versions = marathon.list_versions(aid)
    assert created.version in versions and update["version"] in versions
    old = marathon.get_version(aid, created.version)
    assert isinstance(old, MarathonApp)
    assert old.id == aid and old.cmd == "sleep 1000" and old.version == created.version
    new = marathon.get_version(aid, update["version"])
    assert new.cmd == "sleep 2001"


def test_rollback_app(marathon, cleanup):
    # client.py:329-343: PUT /v2/apps/{id} with {"version": V} rolls the app back to version V
    aid, created = create(marathon, cleanup, "rollback")
    running_tasks(marathon, aid, 1)
    marathon.update_app(aid, small_app(cmd="sleep 2002"))
    wait_until(lambda: marathon.get_app(aid).cmd == "sleep 2002", "the update")
    no_deployment_for(marathon, aid)
    result = marathon.rollback_app(aid, created.version)
    assert set(result) >= {"deploymentId", "version"}, result
    app = marathon.get_app(aid)
    assert app.cmd == "sleep 1000"
    (task,) = running_tasks(marathon, aid, 1)
    assert marathon.get_app(aid).cmd == "sleep 1000"


def test_restart_app(marathon, cleanup):
    # client.py:265-276: POST /v2/apps/{id}/restart?force=False -> deploymentId and version; new tasks
    aid, _ = create(marathon, cleanup, "restart", instances=2)
    old = {t.id for t in running_tasks(marathon, aid, 2)}
    result = marathon.restart_app(aid)
    assert set(result) >= {"deploymentId", "version"}, result
    new = running_tasks(marathon, aid, 2, exclude=old)
    assert not old & {t.id for t in new}


def test_delete_app(marathon, cleanup):
    # client.py:345-356: DELETE /v2/apps/{id}?force=False -> deploymentId and version
    aid, _ = create(marathon, cleanup, "delete")
    (task,) = running_tasks(marathon, aid, 1)
    result = marathon.delete_app(aid)
    assert set(result) >= {"deploymentId", "version"}, result
    app_gone(marathon, aid)
    wait_until(lambda: task.id not in {t.id for t in marathon.list_tasks()}, f"task {task.id} to end")
    assert aid not in {a.id for a in marathon.list_apps()}


# ---------------------------------------------------------------- killing tasks


def test_kill_task(marathon, cleanup):
    # client.py:601-620: DELETE /v2/apps/{id}/tasks/{task}?scale=False&wipe=False -> {"task": {...}}
    aid, _ = create(marathon, cleanup, "kill1")
    (task,) = running_tasks(marathon, aid, 1)
    killed = marathon.kill_task(aid, task.id)
    assert isinstance(killed, MarathonTask), f"kill_task answered {killed!r}"
    assert killed.id == task.id and killed.app_id == aid
    running_tasks(marathon, aid, 1, exclude={task.id})
    assert marathon.get_app(aid).instances == 1


def test_kill_task_and_scale(marathon, cleanup):
    aid, _ = create(marathon, cleanup, "kill1s", instances=2)
    first, second = running_tasks(marathon, aid, 2)
    # With scale=true Marathon answers the deployment that scales the app down, which the client returns
    # as a dict (client.py:614-620: "Marathon is inconsistent about what type of object it returns").
    killed = marathon.kill_task(aid, first.id, scale=True)
    assert isinstance(killed, dict) and killed.get("deploymentId") and killed.get("version"), f"kill_task answered {killed!r}"
    (left,) = running_tasks(marathon, aid, 1)
    assert left.id == second.id
    assert marathon.get_app(aid).instances == 1


def test_kill_task_wipe(marathon, cleanup):
    aid, _ = create(marathon, cleanup, "kill1w")
    (task,) = running_tasks(marathon, aid, 1)
    killed = marathon.kill_task(aid, task.id, wipe=True)
    assert isinstance(killed, MarathonTask) and killed.id == task.id, f"kill_task answered {killed!r}"
    running_tasks(marathon, aid, 1, exclude={task.id})


def test_kill_tasks(marathon, cleanup):
    # client.py:557-570: DELETE /v2/apps/{id}/tasks?scale=False&wipe=False -> {"tasks": [...]}
    aid, _ = create(marathon, cleanup, "killall", instances=2)
    old = {t.id for t in running_tasks(marathon, aid, 2)}
    killed = marathon.kill_tasks(aid)
    assert isinstance(killed, list) and all(isinstance(t, MarathonTask) for t in killed), killed
    assert {t.id for t in killed} == old
    running_tasks(marathon, aid, 2, exclude=old)


def test_kill_tasks_and_scale(marathon, cleanup):
    # with scale=true Marathon answers the deployment ({"deploymentId", "version"}) and scales to 0
    aid, _ = create(marathon, cleanup, "killalls", instances=2)
    running_tasks(marathon, aid, 2)
    result = marathon.kill_tasks(aid, scale=True)
    assert isinstance(result, dict) and set(result) >= {"deploymentId", "version"}, result
    wait_until(lambda: marathon.list_tasks(aid) == [], f"{aid} to have no tasks")
    assert marathon.get_app(aid).instances == 0


def test_kill_tasks_on_host(marathon, cleanup):
    aid, _ = create(marathon, cleanup, "killhost", instances=2)
    tasks = running_tasks(marathon, aid, 2)
    host = tasks[0].host
    killed = marathon.kill_tasks(aid, host=host)
    assert isinstance(killed, list), killed
    assert {t.id for t in killed} == {t.id for t in tasks if t.host == host}
    killed_none = marathon.kill_tasks(aid, host="no-such-host.invalid")
    assert killed_none == []


def test_kill_given_tasks(marathon, cleanup):
    # client.py:520-536: POST /v2/tasks/delete?scale=False {"ids": [...]} -> True when 200
    aid, _ = create(marathon, cleanup, "killgiven", instances=2)
    tasks = running_tasks(marathon, aid, 2)
    assert marathon.kill_given_tasks([tasks[0].id]) is True
    running_tasks(marathon, aid, 2, exclude={tasks[0].id})
    assert marathon.get_app(aid).instances == 2


def test_kill_given_tasks_and_scale(marathon, cleanup):
    aid, _ = create(marathon, cleanup, "killgivens", instances=3)
    tasks = running_tasks(marathon, aid, 3)
    assert marathon.kill_given_tasks([t.id for t in tasks[:2]], scale=True, force=True) is True
    (left,) = running_tasks(marathon, aid, 1)
    assert left.id == tasks[2].id
    assert marathon.get_app(aid).instances == 1


# ---------------------------------------------------------------- deployments and the queue


def test_list_deployments(marathon, cleanup):
    aid, created = waiting_app(marathon, cleanup, "deploy")
    dep = wait_until(
        lambda: [d for d in marathon.list_deployments() if aid in (d.affected_apps or [])],
        f"a deployment of {aid}",
    )[0]
    assert isinstance(dep, MarathonDeployment)
    assert dep.id == created.deployments[0].id
    assert dep.affected_apps == [aid]
    assert dep.version == created.version
    assert dep.total_steps >= 1 and 1 <= dep.current_step <= dep.total_steps
    assert any(a.app == aid for step in dep.steps for a in step.actions)
    assert [a.app for a in dep.current_actions] == [aid]
    assert dep.current_actions[0].action in ("StartApplication", "ScaleApplication")


def test_list_queue(marathon, cleanup):
    # client.py:689-700: GET /v2/queue -> {"queue": [...]} of MarathonQueueItem (models/queue.py:28-38)
    aid, created = waiting_app(marathon, cleanup, "queue", instances=2)
    item = wait_until(
        lambda: [q for q in marathon.list_queue() if q.app.id == aid], f"{aid} in the queue"
    )[0]
    assert isinstance(item, MarathonQueueItem)
    assert item.count == 2
    assert item.app.instances == 2 and item.app.cmd == "sleep 1000"
    assert item.app.version == created.version
    assert isinstance(item.delay.overdue, bool)
    assert isinstance(item.delay.time_left_seconds, int) and item.delay.time_left_seconds >= 0
    assert isinstance(item.since, str) and item.since, "queue items carry `since`"
    summary = wait_until(
        lambda: [
            r
            for q in marathon.list_queue()
            if q.app.id == aid and q.processed_offers_summary
            for r in q.processed_offers_summary.get("rejectSummaryLastOffers", [])
            if r["reason"] == "UnfulfilledRole" and r["declined"] > 0
        ],
        "offers declined for UnfulfilledRole",
    )
    assert summary


def test_list_queue_embed_last_unused_offers(marathon, cleanup):
    # client.py:695-696: embed=lastUnusedOffers -> each item has lastUnusedOffers with the offer and reasons
    aid, _ = waiting_app(marathon, cleanup, "queue-offers", instances=1)

    def probe():
        items = [q for q in marathon.list_queue(embed_last_unused_offers=True) if q.app.id == aid]
        return items and items[0].last_unused_offers and items[0]

    item = wait_until(probe, f"lastUnusedOffers for {aid}")
    for unused in item.last_unused_offers:
        assert "UnfulfilledRole" in unused["reason"]
        assert unused["offer"]["hostname"]


def test_reset_delay(marathon, cleanup):
    # client.py:723-726: DELETE /v2/queue/{id}/delay. A crashing app with a long backoff is relaunched at once.
    aid, _ = create(marathon, cleanup, "delay", cmd="exit 1", backoff_seconds=600, backoff_factor=1)
    first = wait_until(
        lambda: marathon.get_app(aid, embed_last_task_failure=True).last_task_failure, f"the first failure of {aid}"
    )
    item = wait_until(
        lambda: [q for q in marathon.list_queue() if q.app.id == aid and q.delay.time_left_seconds > 0],
        f"{aid} delayed in the queue",
    )[0]
    assert item.delay.overdue is False
    marathon.reset_delay(aid)
    wait_until(
        lambda: marathon.get_app(aid, embed_last_task_failure=True).last_task_failure.task_id != first.task_id,
        f"{aid} relaunched after its delay was reset",
    )
    with pytest.raises(NotFoundError):
        marathon.reset_delay(app_id("not-queued"))


def test_delete_deployment_rolls_back(marathon, cleanup):
    # client.py:718-721: DELETE /v2/deployments/{id} -> {"deploymentId", "version"} of the rollback; rolling back
    # the creation of an app removes it
    aid, created = waiting_app(marathon, cleanup, "cancel")
    dep_id = created.deployments[0].id
    wait_until(lambda: dep_id in {d.id for d in marathon.list_deployments()}, f"deployment {dep_id}")
    result = marathon.delete_deployment(dep_id)
    assert set(result) >= {"deploymentId", "version"}, result
    assert result["deploymentId"] != dep_id
    app_gone(marathon, aid)
    wait_until(lambda: dep_id not in {d.id for d in marathon.list_deployments()}, f"deployment {dep_id} to end")


def test_delete_deployment_force(marathon, cleanup):
    # client.py:711-717: DELETE /v2/deployments/{id}?force=True -> 202, the deployment just stops
    aid, created = waiting_app(marathon, cleanup, "cancelf")
    dep_id = created.deployments[0].id
    wait_until(lambda: dep_id in {d.id for d in marathon.list_deployments()}, f"deployment {dep_id}")
    assert marathon.delete_deployment(dep_id, force=True) == {}
    wait_until(lambda: dep_id not in {d.id for d in marathon.list_deployments()}, f"deployment {dep_id} to end")
    assert marathon.get_app(aid).id == aid, "a forced cancel keeps the app"
    with pytest.raises(NotFoundError):
        marathon.delete_deployment(dep_id, force=True)


# ---------------------------------------------------------------- groups


def make_group(marathon, cleanup, name, apps):
    gid = "/" + unique(f"compat-{name}")
    cleanup["groups"].append(gid)
    cleanup["apps"].extend(f"{gid}/{a}" for a in apps)
    group = MarathonGroup(id=gid, apps=[small_app(id=f"{gid}/{a}") for a in apps])
    result = marathon.create_group(group)
    return gid, result


def test_groups_create_list_get_delete(marathon, cleanup):
    # client.py:390-400 POST /v2/groups; 402-415 GET /v2/groups -> root's "groups"; 417-427 GET one;
    # 472-484 DELETE /v2/groups/{id}?force=False
    gid, result = make_group(marathon, cleanup, "grp", ["web", "db"])
    assert set(result) >= {"deploymentId", "version"}, result
    assert gid in {g.id for g in marathon.list_groups()}
    assert [g.id for g in marathon.list_groups(id=gid)] == [gid]
    group = marathon.get_group(gid)
    assert isinstance(group, MarathonGroup)
    assert group.id == gid
    assert {a.id for a in group.apps} == {f"{gid}/web", f"{gid}/db"}
    assert all(a.cmd == "sleep 1000" for a in group.apps)
    running_tasks(marathon, f"{gid}/web", 1)
    running_tasks(marathon, f"{gid}/db", 1)
    deleted = marathon.delete_group(gid)
    assert "version" in deleted, deleted

    def gone():
        try:
            marathon.get_group(gid)
            return False
        except NotFoundError:
            return True

    wait_until(gone, f"group {gid} to be removed")
    app_gone(marathon, f"{gid}/web")
    assert gid not in {g.id for g in marathon.list_groups()}


def test_update_group(marathon, cleanup):
    # client.py:429-451: PUT /v2/groups/{id}?force=False with the group's apps
    gid, _ = make_group(marathon, cleanup, "grpupd", ["web"])
    running_tasks(marathon, f"{gid}/web", 1)
    no_deployment_for(marathon, f"{gid}/web")
    result = marathon.update_group(gid, MarathonGroup(apps=[small_app(id=f"{gid}/web", instances=2, cmd="sleep 1004")]))
    assert set(result) >= {"deploymentId", "version"}, result
    running_tasks(marathon, f"{gid}/web", 2)
    assert marathon.get_app(f"{gid}/web").cmd == "sleep 1004"


def test_scale_group(marathon, cleanup):
    # client.py:486-498: PUT /v2/groups/{id} {"scaleBy": N} multiplies every app's instances
    gid, _ = make_group(marathon, cleanup, "grpscale", ["a", "b"])
    running_tasks(marathon, f"{gid}/a", 1)
    running_tasks(marathon, f"{gid}/b", 1)
    no_deployment_for(marathon, f"{gid}/a")
    no_deployment_for(marathon, f"{gid}/b")
    result = marathon.scale_group(gid, 2)
    assert set(result) >= {"deploymentId", "version"}, result
    running_tasks(marathon, f"{gid}/a", 2)
    running_tasks(marathon, f"{gid}/b", 2)


# ---------------------------------------------------------------- events


class SignallingSession(requests.Session):
    """The SSE session handed to MarathonClient(sse_session=...): tells when the stream's answer arrived, and
    closes it at the end of the test."""

    def __init__(self):
        super().__init__()
        self.connected = threading.Event()
        self.responses = []

    def get(self, *args, **kwargs):
        response = super().get(*args, **kwargs)
        self.responses.append(response)
        self.connected.set()
        return response

    def close_streams(self):
        for r in self.responses:
            r.close()
        self.close()


def attr(event, name):
    """An event's attribute: the client sets only those whose value is truthy (models/events.py:45-47)."""
    return getattr(event, name, None)


class EventCollector:
    """Consumes client.event_stream() on a thread; any exception the client raises is kept and re-raised."""

    def __init__(self, client, **kwargs):
        self.events = queue.Queue()
        self.seen = []
        self.thread = threading.Thread(target=self._run, args=(client, kwargs), daemon=True)
        self.thread.start()

    def _run(self, client, kwargs):
        try:
            for event in client.event_stream(**kwargs):
                self.events.put(event)
            self.events.put(EOFError("the event stream ended"))
        except BaseException as e:  # the client's own failure is the finding
            self.events.put(e)

    def wait_for(self, predicate, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event {what} within {timeout:.0f}s; saw {[type(e).__name__ for e in self.seen]}")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if isinstance(event, BaseException):
                raise AssertionError(f"event_stream() failed before {what}: {type(event).__name__}: {event}") from event
            self.seen.append(event)
            if predicate(event):
                return event


@pytest.fixture
def sse(base_url, keel):
    # Basic credentials, not auth_token: the client sends only username/password on the event stream
    # (client.py:132-140), never its auth_token
    session = SignallingSession()
    client = MarathonClient(base_url, timeout=30, sse_session=session, username=keel.user, password=keel.token)
    yield client, session
    session.close_streams()


def test_event_stream(marathon, cleanup, sse):
    # client.py:773-806: GET /v2/events (Accept: text/event-stream); each `data:` line is parsed by
    # EventFactory (models/events.py:211-217), which builds the event class with from_json: an unknown eventType
    # raises MarathonError, and a deployment plan must have original, target, steps, id and version
    # (models/deployment.py:72-77).
    client, session = sse
    collector = EventCollector(client)
    assert session.connected.wait(10), "GET /v2/events did not answer"
    aid, created = create(marathon, cleanup, "events")
    post = collector.wait_for(
        lambda e: isinstance(e, MarathonApiPostEvent) and (attr(e, "app_definition") or {}).get("id") == aid,
        f"api_post_event for {aid}",
    )
    assert attr(post, "uri") and post.timestamp
    update = collector.wait_for(
        lambda e: isinstance(e, MarathonStatusUpdateEvent)
        and attr(e, "app_id") == aid
        and attr(e, "task_status") == "TASK_RUNNING",
        f"status_update_event TASK_RUNNING for {aid}",
    )
    assert attr(update, "task_id") and attr(update, "slave_id") and attr(update, "host")
    assert attr(update, "version") == created.version
    dep_id = created.deployments[0].id
    collector.wait_for(
        lambda e: isinstance(e, MarathonDeploymentSuccess) and attr(e, "id") == dep_id, f"deployment_success {dep_id}"
    )


def test_event_stream_filtered(marathon, cleanup, sse):
    # event_types=[...] is sent as event_type=... query parameters (client.py:785-791): only those types arrive
    client, session = sse
    collector = EventCollector(client, event_types=[MarathonStatusUpdateEvent, "deployment_success"])
    assert session.connected.wait(10), "GET /v2/events did not answer"
    aid, created = create(marathon, cleanup, "evfilter")
    collector.wait_for(
        lambda e: isinstance(e, MarathonStatusUpdateEvent)
        and attr(e, "app_id") == aid
        and attr(e, "task_status") == "TASK_RUNNING",
        f"status_update_event TASK_RUNNING for {aid}",
    )
    dep_id = created.deployments[0].id
    collector.wait_for(
        lambda e: isinstance(e, MarathonDeploymentSuccess) and attr(e, "id") == dep_id, f"deployment_success {dep_id}"
    )
    others = {e.event_type for e in collector.seen} - {"status_update_event", "deployment_success"}
    assert not others, f"filtered stream carried {others}"


class CallbackReceiver:
    """An HTTP server on loopback that records the JSON events POSTed to it."""

    def __init__(self):
        received = self.received = queue.Queue()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    received.put(json.loads(body))
                except ValueError:
                    received.put({"unparsable": body.decode(errors="replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no callback {what} within {timeout:.0f}s; got {[e.get('eventType') for e in seen]}")
            try:
                event = self.received.get(timeout=left)
            except queue.Empty:
                continue
            seen.append(event)
            if predicate(event):
                return event

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = CallbackReceiver()
    yield r
    r.close()


@pytest.fixture
def subscriptions(marathon):
    made = []
    yield made
    for url in made:
        try:
            marathon.delete_event_subscription(url)
        except Exception:
            pass


def test_event_subscriptions_create_list_delete(marathon, subscriptions):
    # client.py:647-678: POST/GET/DELETE /v2/eventSubscriptions?callbackUrl=...; list -> {"callbackUrls": [...]},
    # create and delete answer the subscribe_event / unsubscribe_event
    url = f"http://127.0.0.1:9/{unique('hook')}"
    subscriptions.append(url)
    created = marathon.create_event_subscription(url)
    assert created["callbackUrl"] == url
    assert created["eventType"] == "subscribe_event"
    assert url in marathon.list_event_subscriptions()
    deleted = marathon.delete_event_subscription(url)
    assert deleted["callbackUrl"] == url
    assert deleted["eventType"] == "unsubscribe_event"
    assert url not in marathon.list_event_subscriptions()


def test_event_subscription_receives_events(marathon, cleanup, receiver, subscriptions):
    subscriptions.append(receiver.url)
    marathon.create_event_subscription(receiver.url)
    aid, _ = create(marathon, cleanup, "hooked")
    event = receiver.wait_for(
        lambda e: e.get("eventType") == "api_post_event" and e.get("appDefinition", {}).get("id") == aid,
        f"api_post_event for {aid}",
    )
    assert event["timestamp"]
    receiver.wait_for(
        lambda e: e.get("eventType") == "status_update_event" and e.get("appId") == aid and e.get("taskStatus") == "TASK_RUNNING",
        f"status_update_event TASK_RUNNING for {aid}",
    )
    marathon.delete_event_subscription(receiver.url)
    assert receiver.url not in marathon.list_event_subscriptions()
