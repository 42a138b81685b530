"""dcos-metronome 0.3.0 (module `metronome`, with protobuf 3.20.3) against Keel's Metronome API.

The client parses every answer with google.protobuf.json_format.Parse into the messages of
metronome/models/metronome_pb2.py (metronome/client.py:39-47), without ignore_unknown_fields: a field the
message lacks, or an enum value it does not know, fails the call with ParseError. What the messages hold:
  JobSpec      id, description, labels (map), run
  RunSpec      cpus, mem, disk, cmd, args, user, env (map), placement, artifacts, maxLaunchDelay, docker,
               volumes, restart
  ScheduleSpec id, cron, timezone, startingDeadlineSeconds, concurrencyPolicy (UNKNOWN|ALLOW), enabled, nextRunAt
  JobRun       id, jobId, status (INITIAL|STARTING|ACTIVE|SUCCESS|FAILED), createdAt, completedAt, tasks
  JobRunTask   id, startedAt, completedAt, status (UNKNOWN|TASK_CREATED|TASK_STAGING|TASK_STARTING|TASK_RUNNING|
               TASK_FINISHED|TASK_FAILED|TASK_KILLED)
404 raises NotFoundError, other >= 400 MetronomeHttpError (client.py:78-88).

Authentication: like marathon-python, the client takes `auth_token=T`, sent as `Authorization: token=T`
(client.py:58-59), or `username`/`password`, sent as HTTP Basic (client.py:27, 67-69). The tests use
auth_token; one uses Basic (user `admin`, password the token).
"""

import datetime
import json
from zoneinfo import ZoneInfo

import pytest
from google.protobuf.json_format import Parse
from metronome import MetronomeClient
from metronome.exceptions import MetronomeHttpError, NotFoundError
from metronome.models import JobRun, JobSpec, ScheduleSpec

from compat_util import unique, wait_until

TIMEOUT = 60.0
ACTIVE = ("INITIAL", "STARTING", "ACTIVE")


@pytest.fixture
def metronome(base_url, token):
    return MetronomeClient(base_url, timeout=30, auth_token=token)


@pytest.fixture
def jobs(metronome):
    made = []
    yield made
    for jid in made:
        try:
            metronome.delete_job(jid, stop_current_job_runs=True)
        except Exception:
            pass


def job_spec(jid, **run):
    spec = {
        "id": jid,
        "description": "made by the compat suite",
        "labels": {"suite": "compat"},
        "run": {
            "cmd": "sleep 1000",
            "cpus": 0.01,
            "mem": 16,
            "disk": 0,
            "env": {"GREETING": "hello"},
            "maxLaunchDelay": 60,
            "restart": {"policy": "NEVER"},
        },
    }
    spec["run"].update(run)
    return Parse(json.dumps(spec), JobSpec())


def create(metronome, jobs, name, **run):
    jid = unique(name)
    jobs.append(jid)
    created = metronome.create_job(job_spec(jid, **run))
    assert isinstance(created, JobSpec), f"create_job answered {created!r} (it needs 201 and the job)"
    return jid, created


def schedule_spec(sid, cron="0 3 * * *", timezone="UTC"):
    return Parse(
        json.dumps(
            {
                "id": sid,
                "cron": cron,
                "timezone": timezone,
                "startingDeadlineSeconds": 60,
                "concurrencyPolicy": "ALLOW",
                "enabled": True,
            }
        ),
        ScheduleSpec(),
    )


def metronome_time(text):
    """Metronome's timestamps: 2026-12-01T03:00:00.000+0000."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")


def assert_same_job(job, jid, cmd="sleep 1000", description="made by the compat suite"):
    assert job.id == jid
    assert job.description == description
    assert dict(job.labels) == {"suite": "compat"}
    assert job.run.cmd == cmd
    assert job.run.cpus == 0.01
    assert job.run.mem == 16
    assert job.run.disk.value == 0
    assert dict(job.run.env) == {"GREETING": "hello"}
    assert job.run.maxLaunchDelay == 60
    assert JobSpec.RunSpec.RestartSpec.RestartPolicy.Name(job.run.restart.policy) == "NEVER"


def run_status(run):
    return JobRun.Status.Name(run.status)


def task_status(task):
    return JobRun.JobRunTask.Status.Name(task.status)


def test_ping(metronome):
    assert metronome.ping() == "pong"


def test_basic_auth(base_url, keel, jobs):
    basic = MetronomeClient(base_url, timeout=30, username=keel.user, password=keel.token)
    jid, created = create(basic, jobs, "met-basic")
    assert_same_job(basic.get_job(jid), jid)
    assert basic.delete_job(jid).status_code == 200


@pytest.mark.parametrize(
    "credentials",
    [{}, {"auth_token": "keel_not-a-token"}, {"username": "admin", "password": "keel_not-a-token"}],
    ids=["none", "wrong-token", "wrong-basic"],
)
def test_unauthenticated_calls_are_refused(base_url, jobs, credentials):
    # Without a valid credential the client's first call fails with its MetronomeHttpError for the 401
    # (client.py:78-88); /ping stays public.
    client = MetronomeClient(base_url, timeout=30, **credentials)
    with pytest.raises(MetronomeHttpError) as refused:
        client.list_jobs()
    assert refused.value.status_code == 401
    assert not isinstance(refused.value, NotFoundError)
    assert refused.value.error_message, "the 401 carries Keel's JSON message"
    jid = unique("met-refused")
    jobs.append(jid)
    with pytest.raises(MetronomeHttpError) as refused_write:
        client.create_job(job_spec(jid))
    assert refused_write.value.status_code == 401
    assert client.ping() == "pong"


def test_create_job_and_get_it_back(metronome, jobs):
    # client.py:98-104: POST /v1/jobs -> 201 and the job
    jid, created = create(metronome, jobs, "met-create")
    assert_same_job(created, jid)
    got = metronome.get_job(jid)
    assert_same_job(got, jid)
    assert got == created


def test_get_job_with_embed_flags(metronome, jobs):
    # client.py:118-125 sends activeRuns=, schedules=, historySummary= (true or false) as query parameters
    jid, _ = create(metronome, jobs, "met-flags")
    metronome.create_schedule(jid, schedule_spec("nightly"))
    assert_same_job(metronome.get_job(jid, active_runs=True, schedules=True, history_summary=True), jid)


def test_list_jobs(metronome, jobs):
    # client.py:106-116: GET /v1/jobs?activeRuns=false&schedules=false&history=false&historySummary=false
    a, _ = create(metronome, jobs, "met-list-a")
    b, _ = create(metronome, jobs, "met-list-b")
    metronome.create_schedule(a, schedule_spec("nightly"))
    listed = {j.id: j for j in metronome.list_jobs()}
    assert {a, b} <= set(listed)
    assert_same_job(listed[a], a)
    flagged = {j.id: j for j in metronome.list_jobs(active_runs=True, schedules=True, history=True, history_summary=True)}
    assert {a, b} <= set(flagged)


def test_get_missing_job_is_not_found(metronome):
    with pytest.raises(NotFoundError):
        metronome.get_job(unique("met-missing"))


def test_update_job(metronome, jobs):
    # client.py:127-136: PUT /v1/jobs/{id} with the whole job -> 200 and the job
    jid, _ = create(metronome, jobs, "met-update")
    spec = job_spec(jid, cmd="sleep 2000")
    spec.description = "updated"
    updated = metronome.update_job(jid, spec)
    assert isinstance(updated, JobSpec), f"update_job answered {updated!r} (it needs 200 and the job)"
    assert_same_job(updated, jid, cmd="sleep 2000", description="updated")
    assert_same_job(metronome.get_job(jid), jid, cmd="sleep 2000", description="updated")


def test_delete_job(metronome, jobs):
    # client.py:138-143: DELETE /v1/jobs/{id}?stopCurrentJobRuns=false; returns the response
    jid, _ = create(metronome, jobs, "met-delete")
    response = metronome.delete_job(jid)
    assert response.status_code == 200
    with pytest.raises(NotFoundError):
        metronome.get_job(jid)
    assert jid not in {j.id for j in metronome.list_jobs()}
    with pytest.raises(NotFoundError):
        metronome.delete_job(jid)


def test_schedules_crud(metronome, jobs):
    # client.py:145-180
    jid, _ = create(metronome, jobs, "met-sched")
    created = metronome.create_schedule(jid, schedule_spec("nightly"))
    assert isinstance(created, ScheduleSpec), f"create_schedule answered {created!r} (it needs 201)"
    assert created.id == "nightly" and created.cron == "0 3 * * *" and created.timezone == "UTC"
    assert created.startingDeadlineSeconds == 60 and created.enabled is True
    assert ScheduleSpec.ConcurrencyPolicy.Name(created.concurrencyPolicy) == "ALLOW"
    next_run = metronome_time(created.nextRunAt)
    assert next_run > datetime.datetime.now(datetime.timezone.utc)
    assert (next_run.astimezone(datetime.timezone.utc).hour, next_run.minute) == (3, 0)

    assert [s.id for s in metronome.list_schedules(jid)] == ["nightly"]
    assert metronome.get_schedule(jid, "nightly") == created

    updated = metronome.update_schedule(jid, "nightly", schedule_spec("nightly", cron="30 4 * * *", timezone="Europe/Berlin"))
    assert isinstance(updated, ScheduleSpec), f"update_schedule answered {updated!r} (it needs 200)"
    assert updated.cron == "30 4 * * *" and updated.timezone == "Europe/Berlin"
    local = metronome_time(updated.nextRunAt).astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (4, 30)
    assert metronome.get_schedule(jid, "nightly").cron == "30 4 * * *"

    assert metronome.delete_schedule(jid, "nightly").status_code == 200
    assert metronome.list_schedules(jid) == []
    with pytest.raises(NotFoundError):
        metronome.get_schedule(jid, "nightly")


def test_run_stop_lifecycle(metronome, jobs):
    # client.py:182-201: POST /v1/jobs/{id}/runs -> 201 and the run; GET runs (active runs) and one run;
    # POST .../actions/stop
    jid, _ = create(metronome, jobs, "met-run")
    run = metronome.run_job(jid)
    assert isinstance(run, JobRun), f"run_job answered {run!r} (it needs 201 and the run)"
    assert run.jobId == jid and run.id
    assert run_status(run) in ACTIVE
    assert metronome_time(run.createdAt)
    assert run.id in {r.id for r in metronome.list_runs(jid)}

    def active():
        r = metronome.get_run(jid, run.id)
        return (
            run_status(r) == "ACTIVE" and r.tasks and all(task_status(t) == "TASK_RUNNING" for t in r.tasks) and r
        )

    r = wait_until(active, f"run {run.id} ACTIVE with its task TASK_RUNNING", timeout=TIMEOUT)
    assert r.jobId == jid
    assert len(r.tasks) == 1 and r.tasks[0].id and r.tasks[0].startedAt

    assert metronome.stop_run(jid, run.id).status_code == 200
    wait_until(lambda: run.id not in {x.id for x in metronome.list_runs(jid)}, f"run {run.id} to end")
    with pytest.raises(NotFoundError):
        metronome.get_run(jid, run.id)


def test_run_completes(metronome, jobs):
    jid, _ = create(metronome, jobs, "met-done", cmd="true")
    run = metronome.run_job(jid)
    assert isinstance(run, JobRun), f"run_job answered {run!r}"
    wait_until(lambda: run.id not in {x.id for x in metronome.list_runs(jid)}, f"run {run.id} to finish")
    assert metronome.list_runs(jid) == []


def test_get_missing_run_is_not_found(metronome, jobs):
    jid, _ = create(metronome, jobs, "met-norun")
    with pytest.raises(NotFoundError):
        metronome.get_run(jid, "20200101000000abcde")


def test_delete_job_with_active_run(metronome, jobs):
    # Metronome refuses (409) to delete a job with active runs unless stopCurrentJobRuns=true
    jid, _ = create(metronome, jobs, "met-delrun")
    run = metronome.run_job(jid)
    assert isinstance(run, JobRun), f"run_job answered {run!r}"
    wait_until(lambda: run.id in {x.id for x in metronome.list_runs(jid)}, f"run {run.id} listed")
    with pytest.raises(MetronomeHttpError) as refused:
        metronome.delete_job(jid)
    assert refused.value.status_code == 409
    assert metronome.delete_job(jid, stop_current_job_runs=True).status_code == 200
    with pytest.raises(NotFoundError):
        metronome.get_job(jid)
