//! HTTP handler tests: the Metronome, Chronos and Keel APIs through the router, with a SQLite store and a
//! scheduler whose master never answers (jobs are stored and validated; nothing launches).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use keel_chronos::api::{Api, router};
use keel_chronos::scheduler::{self, Clock};
use keel_chronos::store::JobStore;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A router over a fresh store. Keep the directory alive for as long as the router.
async fn app() -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        keel_core::store::Store::connect(&format!("sqlite:{}", dir.path().join("k.db").display())).await.unwrap();
    let jobs = JobStore::new(store);
    // No master answers here: the driver keeps retrying in the background.
    let chronos =
        scheduler::start("http://127.0.0.1:1", jobs.clone(), Clock::System, CancellationToken::new()).await.unwrap();
    (router(Api { jobs, chronos }), dir)
}

struct Answer {
    status: StatusCode,
    json: Value,
    text: String,
}

async fn call(r: &Router, method: &str, uri: &str, body: &str) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Answer { status, json: serde_json::from_slice(&bytes).unwrap_or(Value::Null), text }
}

async fn get(r: &Router, uri: &str) -> Answer {
    call(r, "GET", uri, "").await
}

fn message(a: &Answer) -> &str {
    a.json["message"].as_str().unwrap_or_else(|| panic!("no message in {}", a.text))
}

/// Metronome's run ids: 14 digits of the scheduled time, then five letters.
fn is_run_id(id: &str) -> bool {
    id.len() == 19 && id[..14].chars().all(|c| c.is_ascii_digit()) && id[14..].chars().all(|c| c.is_ascii_alphabetic())
}

// ---- Metronome jobs ----

#[tokio::test]
async fn metronome_job_crud() {
    let (r, _dir) = app().await;
    let body = json!({
        "id": "prod.backup",
        "description": "nightly backup",
        "labels": {"team": "ops"},
        "run": {"cmd": "echo backup"},
        "schedules": [{"id": "nightly", "cron": "0 2 * * *"}],
    })
    .to_string();
    let a = call(&r, "POST", "/v1/jobs", &body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let j = &a.json;
    assert_eq!(j["id"], "prod.backup");
    assert_eq!(j["description"], "nightly backup");
    assert_eq!(j["labels"]["team"], "ops");
    assert_eq!(j["run"]["cmd"], "echo backup");
    assert_eq!(j["run"]["cpus"], 1.0);
    assert_eq!(j["run"]["mem"], 128.0);
    assert_eq!(j["run"]["disk"], 0.0);
    assert_eq!(j["run"]["restart"]["policy"], "NEVER");
    assert_eq!(j["run"]["maxLaunchDelay"], 3600);
    assert_eq!(j["schedules"][0]["id"], "nightly");
    assert_eq!(j["schedules"][0]["cron"], "0 2 * * *");
    assert!(j["schedules"][0]["nextRunAt"].is_string(), "{j}");

    let a = call(&r, "POST", "/v1/jobs", &body).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    assert_eq!(message(&a), "Job with this id already exists");

    let a = get(&r, "/v1/jobs/prod.backup").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["id"], "prod.backup");
    assert_eq!(a.json["run"]["cmd"], "echo backup");
    assert!(a.json.get("schedules").is_none(), "no embed asked for: {}", a.text);

    let a = get(&r, "/v1/jobs/nope").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(message(&a), "Job not found");
    assert_eq!(a.json["id"], "nope");

    // PUT without schedules keeps the existing ones; the path names the job.
    let a =
        call(&r, "PUT", "/v1/jobs/prod.backup", r#"{"id": "ignored", "run": {"cmd": "echo v2", "cpus": 0.5}}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["id"], "prod.backup");
    assert_eq!(a.json["run"]["cmd"], "echo v2");
    assert_eq!(a.json["run"]["cpus"], 0.5);
    assert!(a.json.get("description").is_none(), "the new body has no description: {}", a.text);
    let a = get(&r, "/v1/jobs/prod.backup?embed=schedules").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["run"]["cmd"], "echo v2");
    let schedules = a.json["schedules"].as_array().unwrap();
    assert_eq!(schedules.len(), 1, "{}", a.text);
    assert_eq!(schedules[0]["id"], "nightly");
    assert_eq!(schedules[0]["cron"], "0 2 * * *");

    let a = call(&r, "PUT", "/v1/jobs/nope", r#"{"id": "nope", "run": {"cmd": "x"}}"#).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);

    let a = call(&r, "DELETE", "/v1/jobs/prod.backup", "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["id"], "prod.backup");
    let a = get(&r, "/v1/jobs/prod.backup").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let a = call(&r, "DELETE", "/v1/jobs/prod.backup", "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let a = get(&r, "/v1/jobs").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json, json!([]));
}

#[tokio::test]
async fn metronome_rejects_bad_bodies_with_reasons() {
    let (r, _dir) = app().await;
    let a = call(
        &r,
        "POST",
        "/v1/jobs",
        r#"{"id": "bad-cron", "run": {"cmd": "x"}, "schedules": [{"id": "s", "cron": "61 * * * *"}]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("invalid cron expression '61 * * * *'"), "{}", a.text);
    assert!(message(&a).contains("schedule 's'"), "{}", a.text);

    let a = call(
        &r,
        "POST",
        "/v1/jobs",
        r#"{"id": "bad-zone", "run": {"cmd": "x"}, "schedules": [{"id": "s", "cron": "0 2 * * *", "timezone": "Mars/Olympus"}]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("unknown time zone 'Mars/Olympus'"), "{}", a.text);

    let a = call(&r, "POST", "/v1/jobs", "{not json").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(message(&a).starts_with("invalid JSON body"), "{}", a.text);

    let a = call(&r, "POST", "/v1/jobs", r#"{"id": "colour", "run": {"cmd": "x"}, "color": "red"}"#).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("unknown field `color`"), "{}", a.text);

    let a = call(&r, "POST", "/v1/jobs", r#"{"id": "Bad_Id", "run": {"cmd": "x"}}"#).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert_eq!(a.json["details"][0]["path"], "/id");

    let a = call(&r, "POST", "/v1/jobs", r#"{"id": "nothing", "run": {}}"#).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("needs a command or a Docker image"), "{}", a.text);

    // Nothing was saved.
    let a = get(&r, "/v1/jobs").await;
    assert_eq!(a.json, json!([]), "{}", a.text);
}

// ---- Metronome schedules ----

#[tokio::test]
async fn metronome_schedules_crud() {
    let (r, _dir) = app().await;
    let a = call(&r, "POST", "/v1/jobs", r#"{"id": "report", "run": {"cmd": "make report"}}"#).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert!(a.json.get("schedules").is_none(), "{}", a.text);

    let a = call(&r, "POST", "/v1/jobs/report/schedules", r#"{"id": "daily", "cron": "0 6 * * *"}"#).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["id"], "daily");
    assert_eq!(a.json["cron"], "0 6 * * *");
    assert_eq!(a.json["concurrencyPolicy"], "ALLOW");
    assert_eq!(a.json["enabled"], true);
    assert_eq!(a.json["startingDeadlineSeconds"], 900);
    assert_eq!(a.json["timezone"], "UTC");
    let next = a.json["nextRunAt"].as_str().unwrap_or_else(|| panic!("no nextRunAt: {}", a.text));
    assert!(next.ends_with("T06:00:00.000+0000"), "{next}");

    let a = call(&r, "POST", "/v1/jobs/report/schedules", r#"{"id": "daily", "cron": "0 7 * * *"}"#).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    assert!(message(&a).contains("daily"), "{}", a.text);

    let a = call(&r, "POST", "/v1/jobs/report/schedules", r#"{"id": "bad", "cron": "61 * * * *"}"#).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("'61 * * * *'"), "{}", a.text);

    let a = call(&r, "POST", "/v1/jobs/ghost/schedules", r#"{"id": "daily", "cron": "0 6 * * *"}"#).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);

    let a = get(&r, "/v1/jobs/report/schedules/daily").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["cron"], "0 6 * * *");

    let a = get(&r, "/v1/jobs/report/schedules").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json.as_array().unwrap().len(), 1, "{}", a.text);

    let a = call(
        &r,
        "PUT",
        "/v1/jobs/report/schedules/daily",
        // The path names the schedule; the body need not.
        r#"{"cron": "30 1 * * *", "timezone": "Europe/Berlin", "concurrencyPolicy": "FORBID", "enabled": false}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["cron"], "30 1 * * *");
    assert_eq!(a.json["timezone"], "Europe/Berlin");
    assert_eq!(a.json["concurrencyPolicy"], "FORBID");
    assert_eq!(a.json["enabled"], false);
    assert!(a.json.get("nextRunAt").is_none(), "a disabled schedule has no next run: {}", a.text);
    let a = get(&r, "/v1/jobs/report/schedules/daily").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["cron"], "30 1 * * *");

    let a = call(&r, "PUT", "/v1/jobs/report/schedules/daily", r#"{"cron": "0 0 30 2 *"}"#).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("it never fires"), "{}", a.text);
    let a = get(&r, "/v1/jobs/report/schedules/daily").await;
    assert_eq!(a.json["cron"], "30 1 * * *", "a refused change leaves the schedule as it was: {}", a.text);

    let a = get(&r, "/v1/jobs/report/schedules/weekly").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(message(&a), "Schedule not found");
    let a = call(&r, "PUT", "/v1/jobs/report/schedules/weekly", r#"{"id": "weekly", "cron": "0 0 * * 0"}"#).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);

    let a = call(&r, "DELETE", "/v1/jobs/report/schedules/daily", "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = get(&r, "/v1/jobs/report/schedules/daily").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let a = get(&r, "/v1/jobs/report/schedules").await;
    assert_eq!(a.json, json!([]), "{}", a.text);
    let a = call(&r, "DELETE", "/v1/jobs/report/schedules/daily", "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
}

#[tokio::test]
async fn metronome_embeds() {
    let (r, _dir) = app().await;
    let a = call(
        &r,
        "POST",
        "/v1/jobs",
        r#"{"id": "embedded", "run": {"cmd": "x"}, "schedules": [{"id": "s", "cron": "0 3 * * *"}]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);

    let a = get(&r, "/v1/jobs?embed=schedules&embed=historySummary").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let jobs = a.json.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{}", a.text);
    let j = &jobs[0];
    assert_eq!(j["schedules"][0]["id"], "s");
    assert_eq!(j["historySummary"]["successCount"], 0);
    assert_eq!(j["historySummary"]["failureCount"], 0);
    assert!(j.get("history").is_none(), "{j}");
    assert!(j.get("activeRuns").is_none(), "{j}");

    // Comma-separated works as well as repeated.
    let a = get(&r, "/v1/jobs/embedded?embed=activeRuns,history").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["activeRuns"], json!([]));
    assert_eq!(a.json["history"]["successfulFinishedRuns"], json!([]));
    assert!(a.json.get("schedules").is_none(), "{}", a.text);

    let a = get(&r, "/v1/jobs?embed=everything").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(message(&a).contains("unknown embed 'everything'"), "{}", a.text);
    let a = get(&r, "/v1/jobs/embedded?embed=schedules&embed=nope").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
}

/// Answers carry exactly Metronome's JobSpec and RunSpec fields (strict clients refuse any other); Keel's
/// extras come with `embed=keel`.
#[tokio::test]
async fn metronome_jobs_answer_exactly_metronomes_fields() {
    let (r, _dir) = app().await;
    let parent = r#"{"id": "up", "run": {"cmd": "true"}}"#;
    assert_eq!(call(&r, "POST", "/v1/jobs", parent).await.status, StatusCode::CREATED);
    let job =
        r#"{"id": "down", "dependencies": [{"id": "up"}], "run": {"cmd": "true", "docker": {"image": "busybox"}}}"#;
    let a = call(&r, "POST", "/v1/jobs", job).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = get(&r, "/v1/jobs/down").await;
    let keys: Vec<&str> = a.json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["id", "labels", "run"], "{}", a.text);
    let allowed = [
        "cpus",
        "mem",
        "disk",
        "cmd",
        "args",
        "user",
        "env",
        "placement",
        "artifacts",
        "maxLaunchDelay",
        "docker",
        "volumes",
        "restart",
    ];
    for k in a.json["run"].as_object().unwrap().keys() {
        assert!(allowed.contains(&k.as_str()), "run.{k} is not Metronome's: {}", a.text);
    }
    assert_eq!(a.json["run"]["docker"], json!({"image": "busybox"}));
    let a = get(&r, "/v1/jobs/down?embed=keel").await;
    assert_eq!(a.json["keel"]["dependencies"], json!([{"id": "up"}]), "{}", a.text);
    assert_eq!(a.json["keel"]["forcePullImage"], false, "{}", a.text);
}

#[tokio::test]
async fn job_bodies_with_repeated_keys_or_parents_are_refused() {
    let (r, _dir) = app().await;
    let a = call(&r, "POST", "/v1/jobs", r#"{"id": "a", "id": "b", "run": {"cmd": "true"}}"#).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("duplicate key 'id'"), "{}", a.text);
    assert_eq!(
        call(&r, "POST", "/v1/jobs", r#"{"id": "up", "run": {"cmd": "true"}}"#).await.status,
        StatusCode::CREATED
    );
    let many: Vec<serde_json::Value> = (0..10_000).map(|_| json!({"id": "up"})).collect();
    let body = json!({"id": "down", "dependencies": many, "run": {"cmd": "true"}}).to_string();
    let a = call(&r, "POST", "/v1/jobs", &body).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("at most 100"), "{}", a.text);
    let twice = r#"{"id": "down", "dependencies": [{"id": "up"}, {"id": "up"}], "run": {"cmd": "true"}}"#;
    let a = call(&r, "POST", "/v1/jobs", twice).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("named twice"), "{}", a.text);
}

// ---- Metronome runs ----

#[tokio::test]
async fn metronome_runs_start_show_and_stop() {
    let (r, _dir) = app().await;
    let a = call(&r, "POST", "/v1/jobs", r#"{"id": "batch", "run": {"cmd": "sleep 1"}}"#).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);

    let a = call(&r, "POST", "/v1/jobs/batch/runs", "").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["status"], "INITIAL");
    assert_eq!(a.json["jobId"], "batch");
    let keys: Vec<&str> = a.json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["createdAt", "id", "jobId", "status", "tasks"], "exactly Metronome's JobRun fields: {}", a.text);
    let run_id = a.json["id"].as_str().unwrap().to_owned();
    assert!(is_run_id(&run_id), "{run_id}");

    let a = call(&r, "POST", "/v1/jobs/ghost/runs", "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);

    let a = get(&r, "/v1/jobs/batch/runs").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let runs = a.json.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{}", a.text);
    assert_eq!(runs[0]["id"], run_id.as_str());
    assert_eq!(runs[0]["status"], "INITIAL");

    let a = get(&r, &format!("/v1/jobs/batch/runs/{run_id}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["id"], run_id.as_str());
    assert_eq!(a.json["status"], "INITIAL");

    let a = get(&r, "/v1/jobs/batch/runs/20260101000000abcde").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(message(&a), "Job Run not found");

    let a = call(&r, "POST", &format!("/v1/jobs/batch/runs/{run_id}/actions/stop"), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["id"], run_id.as_str());

    let a = get(&r, "/v1/jobs/batch/runs").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json, json!([]), "the stopped run is no longer active");

    let a = get(&r, "/keel/v1/jobs/batch/runs").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["jobId"], "batch");
    assert_eq!(a.json["errorCount"], 1);
    let runs = a.json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{}", a.text);
    assert_eq!(runs[0]["id"], run_id.as_str());
    assert_eq!(runs[0]["status"], "FAILED");
    assert_eq!(runs[0]["message"], "stopped by request");
    assert_eq!(runs[0]["trigger"], "manual");
    assert!(runs[0]["finishedAt"].is_string(), "{}", a.text);

    // As in Metronome, a finished run is no longer found under /runs; Keel's history has it (above).
    let a = get(&r, &format!("/v1/jobs/batch/runs/{run_id}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(message(&a), "Job Run not found");

    let a = get(&r, "/v1/jobs/batch?embed=history&embed=activeRuns").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["activeRuns"], json!([]));
    assert_eq!(a.json["history"]["failureCount"], 1);
    assert_eq!(a.json["history"]["failedFinishedRuns"][0]["id"], run_id.as_str());
    assert_eq!(a.json["history"]["successfulFinishedRuns"], json!([]));

    // It cannot be stopped twice.
    let a = call(&r, "POST", &format!("/v1/jobs/batch/runs/{run_id}/actions/stop"), "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(message(&a), "Job Run not found");

    let a = get(&r, "/keel/v1/jobs/ghost/runs").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
}

// ---- Chronos ----

fn chronos_job(name: &str) -> String {
    json!({
        "name": name,
        "command": format!("echo {name}"),
        "schedule": "R/2030-01-01T00:00:00Z/P1D",
        "owner": "ops@example.com",
    })
    .to_string()
}

fn find<'a>(jobs: &'a Value, name: &str) -> &'a Value {
    jobs.as_array().unwrap().iter().find(|j| j["name"] == name).unwrap_or_else(|| panic!("no job {name} in {jobs}"))
}

#[tokio::test]
async fn chronos_jobs_dependencies_and_graph() {
    let (r, _dir) = app().await;
    let a = call(&r, "POST", "/scheduler/iso8601", &chronos_job("extract")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let a = call(&r, "POST", "/v1/scheduler/iso8601", &chronos_job("other")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);

    for prefix in ["/scheduler", "/v1/scheduler"] {
        let a = get(&r, &format!("{prefix}/jobs")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json.as_array().unwrap().len(), 2, "{}", a.text);
        let j = find(&a.json, "extract");
        assert_eq!(j["command"], "echo extract");
        assert_eq!(j["schedule"], "R/2030-01-01T00:00:00Z/P1D");
        assert_eq!(j["owner"], "ops@example.com");
        assert_eq!(j["retries"], 2);
        assert_eq!(j["epsilon"], "PT1M");
        assert_eq!(j["cpus"], 0.1);
        assert_eq!(j["mem"], 128.0);
        assert_eq!(j["disk"], 256.0);
        assert_eq!(j["successCount"], 0);
        assert_eq!(j["errorCount"], 0);
        assert_eq!(j["lastSuccess"], "");
        assert_eq!(j["lastError"], "");
        assert_eq!(j["concurrent"], false);
    }

    let child = json!({"name": "load", "command": "echo load", "parents": ["extract"]}).to_string();
    let a = call(&r, "POST", "/scheduler/dependency", &child).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let a = get(&r, "/scheduler/job/load").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["parents"], json!(["extract"]));
    assert!(a.json.get("schedule").is_none(), "{}", a.text);

    // The parent made to depend on its child: a cycle.
    let cycle = json!({"name": "extract", "command": "echo extract", "parents": ["load"]}).to_string();
    let a = call(&r, "PUT", "/v1/scheduler/dependency", &cycle).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(message(&a).starts_with("dependency cycle"), "{}", a.text);
    // Nothing changed.
    let a = get(&r, "/scheduler/job/extract").await;
    assert_eq!(a.json["schedule"], "R/2030-01-01T00:00:00Z/P1D", "{}", a.text);

    let orphan = json!({"name": "orphan", "command": "x", "parents": ["ghost"]}).to_string();
    let a = call(&r, "POST", "/scheduler/dependency", &orphan).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(message(&a).contains("unknown parent 'ghost'"), "{}", a.text);

    let no_parents = json!({"name": "orphan", "command": "x", "parents": []}).to_string();
    let a = call(&r, "POST", "/scheduler/dependency", &no_parents).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(a.json["status"], "Bad Request");
    assert!(message(&a).contains("needs at least one parent"), "{}", a.text);

    let bad = json!({"name": "bad", "command": "x", "schedule": "every day"}).to_string();
    let a = call(&r, "POST", "/scheduler/iso8601", &bad).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(message(&a).contains("invalid ISO 8601 repeating interval 'every day'"), "{}", a.text);

    let a = call(&r, "POST", "/scheduler/iso8601", "{not json").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);

    for prefix in ["/scheduler", "/v1/scheduler"] {
        let a = get(&r, &format!("{prefix}/job/ghost")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
        assert_eq!(message(&a), "Job 'ghost' not found");
    }

    let a = get(&r, "/scheduler/jobs/search?name=EXTR").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let names: Vec<&str> = a.json.as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["extract"]);
    let a = get(&r, "/v1/scheduler/jobs/search?command=echo%20lo").await;
    let names: Vec<&str> = a.json.as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["load"], "{}", a.text);
    let a = get(&r, "/scheduler/jobs/search?name=nothing-like-it").await;
    assert_eq!(a.json, json!([]));

    for prefix in ["/scheduler", "/v1/scheduler"] {
        let a = get(&r, &format!("{prefix}/graph/csv")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let lines: Vec<&str> = a.text.lines().collect();
        assert_eq!(
            lines,
            ["node,extract,fresh,idle", "node,load,fresh,idle", "node,other,fresh,idle", "link,extract,load"],
            "{}",
            a.text
        );

        let a = get(&r, &format!("{prefix}/graph/dot")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert!(a.text.starts_with("digraph G {"), "{}", a.text);
        assert!(a.text.contains("1 [ label=\"extract\" ]"), "{}", a.text);
        assert!(a.text.contains("2 [ label=\"load\" ]"), "{}", a.text);
        assert!(a.text.contains("1 -> 2;"), "{}", a.text);
        assert!(a.text.trim_end().ends_with('}'), "{}", a.text);
    }

    // Chronos 2.3 refused to delete a parent with 400, and so does Keel.
    let a = call(&r, "DELETE", "/scheduler/job/extract", "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(message(&a).contains("is a parent of load"), "{}", a.text);
    let a = call(&r, "DELETE", "/v1/scheduler/job/load", "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let a = call(&r, "DELETE", "/scheduler/job/extract", "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let a = call(&r, "DELETE", "/scheduler/job/extract", "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = get(&r, "/scheduler/jobs").await;
    let names: Vec<&str> = a.json.as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["other"], "{}", a.text);
}

#[tokio::test]
async fn chronos_manual_run_kill_and_stats() {
    let (r, _dir) = app().await;
    let a = call(&r, "POST", "/scheduler/iso8601", &chronos_job("nightly")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);

    for prefix in ["/scheduler", "/v1/scheduler"] {
        let a = get(&r, &format!("{prefix}/job/stat/nightly")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json["histogram"]["count"], 0);
        assert_eq!(a.json["histogram"]["median"], 0);
        assert_eq!(a.json["taskStatHistory"], json!([]));
        let a = get(&r, &format!("{prefix}/job/stat/ghost")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    }

    let a = call(&r, "PUT", "/scheduler/job/nightly", "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let a = call(&r, "PUT", "/v1/scheduler/job/ghost", "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);

    // The run waits for an offer that never comes.
    let a = get(&r, "/v1/jobs/nightly/runs").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json.as_array().unwrap().len(), 1, "{}", a.text);
    assert_eq!(a.json[0]["status"], "INITIAL");
    let a = get(&r, "/scheduler/graph/csv").await;
    assert_eq!(a.text, "node,nightly,fresh,queued\n");

    let a = call(&r, "DELETE", "/scheduler/task/kill/nightly", "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    let a = call(&r, "DELETE", "/v1/scheduler/task/kill/ghost", "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);

    let a = get(&r, "/v1/jobs/nightly/runs").await;
    assert_eq!(a.json, json!([]), "{}", a.text);
    let a = get(&r, "/keel/v1/jobs/nightly/runs").await;
    assert_eq!(a.json["runs"][0]["status"], "FAILED", "{}", a.text);
    assert_eq!(a.json["runs"][0]["message"], "killed by request", "{}", a.text);

    let a = get(&r, "/scheduler/job/nightly").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["errorCount"], 1);
    assert_ne!(a.json["lastError"], "");
    let a = get(&r, "/scheduler/graph/csv").await;
    assert_eq!(a.text, "node,nightly,failure,idle\n");

    let a = get(&r, "/scheduler/job/stat/nightly").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["histogram"]["count"], 0, "a failed run has no duration: {}", a.text);
}

// ---- Schedule preview ----

fn utc_times(a: &Answer) -> Vec<&str> {
    a.json["next"]
        .as_array()
        .unwrap_or_else(|| panic!("no next in {}", a.text))
        .iter()
        .map(|t| t["utc"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn preview_follows_daylight_saving() {
    let (r, _dir) = app().await;
    let a = get(
        &r,
        "/keel/v1/schedule/preview?cron=30%202%20*%20*%20*&timezone=Europe/Berlin&from=2026-03-28T00:00:00Z&count=3",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["timezone"], "Europe/Berlin");
    // The spring-forward gap skips 02:30 on the 29th: it fires at 03:00 local.
    assert_eq!(utc_times(&a), ["2026-03-28T01:30:00.000Z", "2026-03-29T01:00:00.000Z", "2026-03-30T00:30:00.000Z"]);
    assert_eq!(a.json["next"][1]["local"], "2026-03-29T03:00:00+02:00");

    let a = get(
        &r,
        "/keel/v1/schedule/preview?cron=30%201%20*%20*%20*&timezone=America/New_York&from=2026-10-31T12:00:00Z&count=3",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    // 01:30 happens twice on 2026-11-01; it fires once, at the first.
    assert_eq!(utc_times(&a), ["2026-11-01T05:30:00.000Z", "2026-11-02T06:30:00.000Z", "2026-11-03T06:30:00.000Z"]);

    let a = get(&r, "/keel/v1/schedule/preview?schedule=R2/2026-01-01T00:00:00Z/PT1H&from=2025-12-31T00:00:00Z").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["timezone"], "UTC");
    assert_eq!(utc_times(&a), ["2026-01-01T00:00:00.000Z", "2026-01-01T01:00:00.000Z"]);

    let a = get(&r, "/keel/v1/schedule/preview?cron=61%20*%20*%20*%20*").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("invalid cron expression '61 * * * *'"), "{}", a.text);

    let a = get(&r, "/keel/v1/schedule/preview?cron=0%202%20*%20*%20*&timezone=Mars/Olympus").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(message(&a).contains("Mars/Olympus"), "{}", a.text);

    let a = get(&r, "/keel/v1/schedule/preview?timezone=UTC").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(message(&a), "give either cron= or schedule=");

    let a = get(&r, "/keel/v1/schedule/preview?cron=0%202%20*%20*%20*&from=yesterday").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(message(&a).contains("RFC 3339"), "{}", a.text);
}
