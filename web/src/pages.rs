//! The pages, as maud templates: each takes what the APIs answered and renders complete HTML, readable
//! without JavaScript. Regions that change live carry `data-live` and an id; `console.js` swaps them.

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use crate::live::{FeedItem, Topics};
use crate::view::{self, DiffLine, Page};

/// Who is looking, and what the page may offer them.
pub struct Ctx {
    pub name: String,
    pub role: String,
    /// The person may write: action buttons and forms are shown.
    pub may_write: bool,
    pub csrf: Option<String>,
    /// Auth is off on this port.
    pub open: bool,
}

const SECTIONS: [(&str, &str, &str); 6] = [
    ("overview", "/ui/", "Overview"),
    ("agents", "/ui/agents", "Agents"),
    ("frameworks", "/ui/frameworks", "Frameworks"),
    ("tasks", "/ui/tasks", "Tasks"),
    ("apps", "/ui/apps", "Apps"),
    ("jobs", "/ui/jobs", "Jobs"),
];

/// The frame of every page: the sidebar, who is signed in, and `body`.
pub fn layout(ctx: &Ctx, title: &str, section: &str, topics: Topics, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Keel" }
                link rel="stylesheet" href="/ui/assets/console.css";
                @if let Some(c) = &ctx.csrf { meta name="csrf-token" content=(c); }
                script src="/ui/assets/console.js" defer {}
            }
            body data-topics=(topics.names()) {
                a.skip href="#main" { "Skip to content" }
                nav.sidebar aria-label="Sections" {
                    a.brand href="/ui/" { span.logo aria-hidden="true" { "⚓" } " Keel" }
                    ul {
                        @for (key, href, label) in SECTIONS {
                            li { a href=(href) aria-current=[(key == section).then_some("page")] { (label) } }
                        }
                    }
                    div.who {
                        @if ctx.open {
                            span.badge.warn { "▲ auth off" }
                        } @else {
                            span { (ctx.name) } " " span.role { (ctx.role) }
                            form method="post" action="/logout" { button.link type="submit" { "Sign out" } }
                        }
                    }
                }
                main #main tabindex="-1" {
                    div #flash role="status" aria-live="polite" {}
                    (body)
                }
            }
        }
    }
}

/// A state with its glyph and word, never by colour alone.
pub fn state(s: &str) -> Markup {
    let (tone, glyph) = view::tone(s);
    html! { span class={"state " (tone)} { span aria-hidden="true" { (glyph) } " " (view::state_word(s)) } }
}

/// An API's failure in plain words, in place of what it would have shown.
pub fn failure(what: &str, f: &crate::upstream::Failure) -> Markup {
    html! {
        div.error role="alert" {
            strong { "Could not load " (what) ": " }
            (f.message) " (HTTP " (f.status.as_u16()) ")"
        }
    }
}

fn bar(label: &str, used: f64, total: f64, text: String) -> Markup {
    let p = view::percent(used, total);
    html! {
        div.capacity {
            div.capacity-label { span { (label) } span { (text) } }
            progress.meter aria-label=(label) max="100" value=(format!("{p:.1}")) { (format!("{p:.0} %")) }
        }
    }
}

fn n(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The pager under a list: links keep the other query parameters.
pub fn pager(p: &Page, base: &str, query: &[(&str, String)]) -> Markup {
    let link = |number: usize| {
        let mut q: Vec<String> = query
            .iter()
            .filter(|(k, v)| *k != "page" && !v.is_empty())
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        q.push(format!("page={number}"));
        format!("{base}?{}", q.join("&"))
    };
    html! {
        nav.pager aria-label="Pages" {
            span { "Rows " (if p.total == 0 { 0 } else { p.start + 1 }) "–" (p.end) " of " (p.total) }
            @if p.number > 1 { a href=(link(p.number - 1)) rel="prev" { "← Previous" } }
            span { "Page " (p.number) " of " (p.pages) }
            @if p.number < p.pages { a href=(link(p.number + 1)) rel="next" { "Next →" } }
        }
    }
}

/// `s` as one segment of a path: `/` is encoded too, so an id cannot reach another path.
pub fn segment(s: &str) -> String {
    urlencode(s).replace('/', "%2F")
}

/// `s` for a URL path (an app id is a path: its `/` stay) or a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A column header that sorts the list by `key` (again: the other way).
fn sort_header(label: &str, key: &str, current: (&str, bool), base: &str, query: &[(&str, String)]) -> Markup {
    let (col, desc) = current;
    let next = if col == key && !desc { format!("-{key}") } else { key.to_owned() };
    let mut q: Vec<String> = query
        .iter()
        .filter(|(k, v)| *k != "sort" && *k != "page" && !v.is_empty())
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    q.push(format!("sort={next}"));
    let aria = if col == key { if desc { "descending" } else { "ascending" } } else { "none" };
    html! {
        th aria-sort=(aria) { a href=(format!("{base}?{}", q.join("&"))) { (label) @if col == key { (if desc { " ▼" } else { " ▲" }) } } }
    }
}

/// A button that calls the API (through the console's proxy) when pressed.
fn action(ctx: &Ctx, label: &str, method: &str, url: &str, body: &str, confirm: Option<&str>, class: &str) -> Markup {
    html! {
        @if ctx.may_write {
            button type="button" class=(format!("btn {class}")) data-call=(method) data-url=(url) data-body=(body)
                data-confirm=[confirm] { (label) }
        }
    }
}

// ---- overview ----

pub struct Overview<'a> {
    pub state: Result<Value, crate::upstream::Failure>,
    pub apps: Result<usize, crate::upstream::Failure>,
    pub jobs: Result<usize, crate::upstream::Failure>,
    pub feed: &'a [FeedItem],
}

/// The values of a JSON object of counts, summed.
fn sum(v: &Value) -> u64 {
    v.as_object().map_or(0, |o| o.values().filter_map(Value::as_u64).sum())
}

pub fn overview(ctx: &Ctx, o: &Overview<'_>) -> Markup {
    let body = html! {
        h1 { "Overview" }
        @match &o.state {
            Err(e) => (failure("the cluster's state", e)),
            Ok(s) => {
                @let (total, used) = (&s["total_resources"], &s["used_resources"]);
                section #capacity data-live="" aria-labelledby="cap-h" {
                    h2 #cap-h { "Capacity" }
                    div.bars {
                        (bar("CPUs", n(&used["cpus"]), n(&total["cpus"]), format!("{:.1} of {:.1}", n(&used["cpus"]), n(&total["cpus"]))))
                        (bar("Memory", n(&used["mem"]), n(&total["mem"]), format!("{} of {}", view::mib(n(&used["mem"])), view::mib(n(&total["mem"])))))
                        (bar("Disk", n(&used["disk"]), n(&total["disk"]), format!("{} of {}", view::mib(n(&used["disk"])), view::mib(n(&total["disk"])))))
                    }
                }
                @let unreachable = s["agents"]["unreachable"].as_u64().unwrap_or(0);
                section #counts data-live="" aria-label="Counts" {
                    div.cards {
                        a.card href="/ui/agents" { span.big { (sum(&s["agents"])) } span { "agents" }
                            @if unreachable > 0 { span.state.warn { "▲ " (unreachable) " unreachable" } } }
                        a.card href="/ui/frameworks" { span.big { (n(&s["frameworks"])) } span { "frameworks" } }
                        a.card href="/ui/tasks" { span.big { (sum(&s["tasks"])) } span { "tasks" } }
                        a.card href="/ui/apps" { span.big { @match &o.apps { Ok(n) => (n), Err(_) => "?" } } span { "apps" } }
                        a.card href="/ui/jobs" { span.big { @match &o.jobs { Ok(n) => (n), Err(_) => "?" } } span { "jobs" } }
                    }
                    @if let Some(by_state) = s["tasks"].as_object().filter(|o| !o.is_empty()) {
                        ul.inline aria-label="Tasks by state" {
                            @for (st, count) in by_state {
                                li { a href=(format!("/ui/tasks?state={st}")) { (state(st)) " " (n(count)) } }
                            }
                        }
                    }
                }
            }
        }
        @if let Err(e) = &o.apps { (failure("the apps", e)) }
        @if let Err(e) = &o.jobs { (failure("the jobs", e)) }
        section #feed data-live="" aria-labelledby="feed-h" {
            h2 #feed-h { "Recent events" }
            @if o.feed.is_empty() {
                p.empty { "Nothing has happened since the console started. Task changes, deployments, job runs and agents coming and going show up here as they happen." }
            } @else {
                ol.feed {
                    @for item in o.feed {
                        li {
                            @let word = match item.tone { "ok" => "ok", "warn" => "warning", "bad" => "failure", _ => "info" };
                            @let glyph = match item.tone { "ok" => "●", "warn" => "▲", "bad" => "✕", _ => "◐" };
                            span class={"state " (item.tone)} { span aria-hidden="true" { (glyph) } " " (word) }
                            " "
                            @if let Some(l) = &item.link { a href=(l) { (item.text) } } @else { (item.text) }
                        }
                    }
                }
            }
        }
    };
    layout(
        ctx,
        "Overview",
        "overview",
        Topics::TASKS
            .union(Topics::AGENTS)
            .union(Topics::FEED)
            .union(Topics::APPS)
            .union(Topics::JOBS)
            .union(Topics::FRAMEWORKS),
        body,
    )
}

// ---- agents and frameworks ----

pub fn agents(ctx: &Ctx, snapshot: &Result<Value, crate::upstream::Failure>, page_no: usize) -> Markup {
    let body = html! {
        h1 { "Agents" }
        @match snapshot {
            Err(e) => (failure("the agents", e)),
            Ok(s) => {
                @let agents = s["agents"].as_array().cloned().unwrap_or_default();
                @let p = view::page(agents.len(), page_no);
                div #agents data-live="" {
                    @if agents.is_empty() {
                        p.empty { "No agents yet — start one with " code { "keel agent --master URL" } "." }
                    } @else {
                        table {
                            thead { tr { th { "Agent" } th { "Status" } th { "CPUs (used / offered / total)" } th { "Memory" } th { "Disk" } th { "Docker" } th { "Tasks" } th { "Last heartbeat" } th { "Attributes" } } }
                            tbody {
                                @for a in &agents[p.start..p.end] {
                                    @let id = text(&a["id"]);
                                    @let st = text(&a["status"]);
                                    tr id=(id) class=[(st == "unreachable").then_some("alert")] {
                                        td { strong { (text(&a["hostname"])) } br; small.mono { (id) } }
                                        td { (state(st)) }
                                        td { (format!("{:.2} / {:.2} / {:.2}", n(&a["used_resources"]["cpus"]), n(&a["offered_resources"]["cpus"]), n(&a["resources"]["cpus"]))) }
                                        td { (view::mib(n(&a["used_resources"]["mem"]))) " / " (view::mib(n(&a["resources"]["mem"]))) }
                                        td { (view::mib(n(&a["used_resources"]["disk"]))) " / " (view::mib(n(&a["resources"]["disk"]))) }
                                        td { @if a["docker"] == true { "✓ yes" } @else { "— no" } }
                                        td { a href=(format!("/ui/tasks?agent={id}")) { (n(&a["tasks"])) } }
                                        td { (view::ago(n(&a["last_seen_seconds_ago"]))) " ago" }
                                        td { @if let Some(attrs) = a["attributes"].as_object() { @for (k, v) in attrs { code { (k) ":" (text(v)) } " " } } }
                                    }
                                }
                            }
                        }
                        (pager(&p, "/ui/agents", &[]))
                    }
                }
            }
        }
    };
    layout(ctx, "Agents", "agents", Topics::AGENTS, body)
}

/// `list` is the master's `/keel/v1/frameworks`: each framework with the count of its tasks.
pub fn frameworks(ctx: &Ctx, list: &Result<Value, crate::upstream::Failure>, page_no: usize) -> Markup {
    let body = html! {
        h1 { "Frameworks" }
        @match list {
            Err(e) => (failure("the frameworks", e)),
            Ok(s) => {
                @let fws = s["frameworks"].as_array().cloned().unwrap_or_default();
                @let p = view::page(fws.len(), page_no);
                div #frameworks data-live="" {
                    @if fws.is_empty() {
                        p.empty { "No frameworks have subscribed yet." }
                    } @else {
                        table {
                            thead { tr { th { "Name" } th { "State" } th { "Role" } th { "DRF share" } th { "Tasks" } th { "Offers" } th { "Web UI" } } }
                            tbody {
                                @for f in &fws[p.start..p.end] {
                                    @let st = if f["active"] != true { "removed" } else if f["connected"] == true { "connected" } else { "disconnected" };
                                    tr {
                                        td { strong { (text(&f["name"])) } br; small.mono { (text(&f["id"])) } }
                                        td { (state(st)) @if f["suppressed"] == true { " " span.badge { "offers suppressed" } } }
                                        td { code { (text(&f["role"])) } }
                                        td { (format!("{:.1} %", n(&f["dominant_share"]) * 100.0)) }
                                        td { a href=(format!("/ui/tasks?framework={}", text(&f["id"]))) { (f["tasks"].as_u64().unwrap_or(0)) } }
                                        td { (n(&f["offers"])) }
                                        td { @let u = text(&f["webui_url"]); @if u.starts_with("http://") || u.starts_with("https://") { a href=(u) rel="noreferrer" { (u) } } @else if u.is_empty() { "—" } @else { code { (u) } } }
                                    }
                                }
                            }
                        }
                        (pager(&p, "/ui/frameworks", &[]))
                    }
                }
            }
        }
    };
    layout(ctx, "Frameworks", "frameworks", Topics::FRAMEWORKS, body)
}

// ---- tasks ----

pub struct TaskFilter {
    pub state: String,
    pub agent: String,
    pub framework: String,
    pub sort: Option<String>,
    pub page: usize,
}

pub const TASK_COLUMNS: [&str; 5] = ["id", "state", "agent", "cpus", "mem"];

pub fn tasks(ctx: &Ctx, snapshot: &Result<Value, crate::upstream::Failure>, f: &TaskFilter) -> Markup {
    let query = [
        ("state", f.state.clone()),
        ("agent", f.agent.clone()),
        ("framework", f.framework.clone()),
        ("sort", f.sort.clone().unwrap_or_default()),
    ];
    let order = view::sort_order(f.sort.as_deref(), &TASK_COLUMNS);
    let body = html! {
        h1 { "Tasks" }
        form.filters method="get" action="/ui/tasks" {
            label { "State " select name="state" {
                option value="" { "any" }
                @for s in ["TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_UNREACHABLE", "TASK_ERROR", "TASK_DROPPED"] {
                    option value=(s) selected[f.state == s] { (view::state_word(s)) }
                }
            } }
            label { "Agent " input name="agent" value=(f.agent) placeholder="agent id"; }
            label { "Framework " input name="framework" value=(f.framework) placeholder="framework id"; }
            button.btn type="submit" { "Filter" }
        }
        @match snapshot {
            Err(e) => (failure("the tasks", e)),
            Ok(s) => {
                @let rows = task_rows(s, f, order);
                @let p = view::page(rows.len(), f.page);
                div #tasks data-live="" {
                    @if rows.is_empty() {
                        p.empty { "No tasks match. Apps and jobs launch tasks; " a href="/ui/apps/new" { "create an app" } "." }
                    } @else {
                        table {
                            thead { tr {
                                (sort_header("Task", "id", order, "/ui/tasks", &query))
                                (sort_header("State", "state", order, "/ui/tasks", &query))
                                (sort_header("Agent", "agent", order, "/ui/tasks", &query))
                                (sort_header("CPUs", "cpus", order, "/ui/tasks", &query))
                                (sort_header("Memory", "mem", order, "/ui/tasks", &query))
                                th { "Message" }
                            } }
                            tbody {
                                @for t in &rows[p.start..p.end] {
                                    @let id = text(&t["id"]);
                                    tr {
                                        td { a.mono href=(format!("/ui/tasks/{}?framework_id={}", segment(id), segment(text(&t["framework_id"])))) { (id) } }
                                        td { (state(text(&t["state"])))
                                            @match t["healthy"].as_bool() { Some(true) => { " " (state("healthy")) }, Some(false) => { " " (state("unhealthy")) }, None => {} } }
                                        td.mono { (text(&t["agent_id"])) }
                                        td { (n(&t["resources"]["cpus"])) }
                                        td { (view::mib(n(&t["resources"]["mem"]))) }
                                        td { (text(&t["message"])) }
                                    }
                                }
                            }
                        }
                        (pager(&p, "/ui/tasks", &query))
                    }
                }
            }
        }
    };
    layout(ctx, "Tasks", "tasks", Topics::TASKS, body)
}

/// The tasks that pass the filter, live then completed, sorted.
fn task_rows<'a>(s: &'a Value, f: &TaskFilter, order: (&str, bool)) -> Vec<&'a Value> {
    let mut rows: Vec<&Value> = s["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(s["completed_tasks"].as_array().into_iter().flatten())
        .filter(|t| f.state.is_empty() || t["state"] == f.state.as_str())
        .filter(|t| f.agent.is_empty() || t["agent_id"] == f.agent.as_str())
        .filter(|t| f.framework.is_empty() || t["framework_id"] == f.framework.as_str())
        .collect();
    sort_tasks(&mut rows, order);
    rows
}

fn sort_tasks(rows: &mut [&Value], (col, desc): (&str, bool)) {
    rows.sort_by(|a, b| {
        let o = match col {
            "cpus" | "mem" => n(&a["resources"][col]).total_cmp(&n(&b["resources"][col])),
            "state" => text(&a["state"]).cmp(text(&b["state"])),
            "agent" => text(&a["agent_id"]).cmp(text(&b["agent_id"])),
            _ => std::cmp::Ordering::Equal,
        };
        o.then_with(|| text(&a["id"]).cmp(text(&b["id"])))
    });
    if desc {
        rows.reverse();
    }
}

pub fn task(
    ctx: &Ctx,
    id: &str,
    framework_id: &str,
    detail: &Result<Value, crate::upstream::Failure>,
    outputs: &[(&str, Result<Value, crate::upstream::Failure>)],
) -> Markup {
    let fq = if framework_id.is_empty() { String::new() } else { format!("framework_id={}&", segment(framework_id)) };
    let offset = |file: &str| {
        outputs
            .iter()
            .find(|(f, _)| *f == file)
            .and_then(|(_, o)| o.as_ref().ok())
            .map_or(0.0, |o| n(&o["offset"]) + o["data"].as_str().map_or(0, str::len) as f64)
    };
    let tail = format!("/ui/tasks/{}/tail?{fq}stdout={}&stderr={}", segment(id), offset("stdout"), offset("stderr"));
    let body = html! {
        p.crumbs { a href="/ui/tasks" { "Tasks" } " / " }
        h1.mono { (id) }
        @match detail {
            Err(e) => (failure("the task", e)),
            Ok(t) => {
                div #task-summary data-live="" {
                    dl.facts {
                        dt { "State" } dd { (state(text(&t["state"]))) }
                        dt { "Framework" } dd.mono { (text(&t["framework_id"])) }
                        dt { "Agent" } dd.mono { a href=(format!("/ui/agents#{}", text(&t["agent_id"]))) { (text(&t["agent_id"])) } }
                        dt { "Resources" } dd { (n(&t["resources"]["cpus"])) " CPUs, " (view::mib(n(&t["resources"]["mem"]))) }
                        @if let Some(c) = t["exit_code"].as_i64() { dt { "Exit code" } dd { (c) } }
                        @if !text(&t["message"]).is_empty() { dt { "Message" } dd { (text(&t["message"])) } }
                    }
                    h2 { "Status history" }
                    table {
                        thead { tr { th { "When (UTC)" } th { "State" } th { "Message" } } }
                        tbody {
                            @for h in t["history"].as_array().into_iter().flatten() {
                                tr { td { (view::iso(n(&h["at"]))) } td { (state(text(&h["state"])))
                                    @match h["healthy"].as_bool() { Some(true) => { " " (state("healthy")) }, Some(false) => { " " (state("unhealthy")) }, None => {} } }
                                    td { (text(&h["message"])) } }
                            }
                        }
                    }
                }
            }
        }
        div #tail data-tail=(tail) {}
        @for (file, out) in outputs {
            section.output aria-labelledby=(format!("{file}-h")) {
                h2 id=(format!("{file}-h")) { (file) }
                @match out {
                    Err(e) => (failure(file, e)),
                    Ok(o) => {
                        pre id=(file) tabindex="0" aria-label=(format!("{file} of the task")) { (text(&o["data"])) }
                    }
                }
            }
        }
    };
    layout(ctx, id, "tasks", Topics::TASKS, body)
}

// ---- apps ----

pub const APP_COLUMNS: [&str; 4] = ["id", "instances", "cpus", "mem"];

pub fn apps(
    ctx: &Ctx,
    apps: &Result<Value, crate::upstream::Failure>,
    queue: &Value,
    sort: Option<&str>,
    page_no: usize,
) -> Markup {
    let query = [("sort", sort.unwrap_or_default().to_owned())];
    let order = view::sort_order(sort, &APP_COLUMNS);
    let waiting: std::collections::HashMap<&str, &Value> =
        queue["queue"].as_array().into_iter().flatten().filter_map(|q| Some((q["app"]["id"].as_str()?, q))).collect();
    let body = html! {
        div.heading { h1 { "Apps" } @if ctx.may_write { a.btn.primary href="/ui/apps/new" { "+ New app" } } }
        @match apps {
            Err(e) => (failure("the apps", e)),
            Ok(v) => {
                @let rows = app_rows(v, order);
                @let p = view::page(rows.len(), page_no);
                div #apps data-live="" {
                    @if rows.is_empty() {
                        p.empty { "No apps yet — " a href="/ui/apps/new" { "create one" } "." }
                    } @else {
                        table {
                            thead { tr {
                                (sort_header("App", "id", order, "/ui/apps", &query))
                                (sort_header("Instances", "instances", order, "/ui/apps", &query))
                                th { "Health" }
                                (sort_header("CPUs", "cpus", order, "/ui/apps", &query))
                                (sort_header("Memory", "mem", order, "/ui/apps", &query))
                                th { "Version" } th { "Status" }
                            } }
                            tbody {
                                @for a in &rows[p.start..p.end] {
                                    @let id = text(&a["id"]);
                                    tr {
                                        td { a href=(format!("/ui/apps{}", urlencode(id))) { (id) } }
                                        td { span.count data-app=(id) { (n(&a["tasksRunning"])) " of " (n(&a["instances"])) " running" }
                                            @if n(&a["tasksStaged"]) > 0.0 { ", " (n(&a["tasksStaged"])) " staged" } }
                                        td { @if a["healthChecks"].as_array().is_some_and(|h| !h.is_empty()) {
                                            (n(&a["tasksHealthy"])) " healthy" @if n(&a["tasksUnhealthy"]) > 0.0 { ", " (state("unhealthy")) " " (n(&a["tasksUnhealthy"])) }
                                        } @else { "—" } }
                                        td { (n(&a["cpus"])) }
                                        td { (view::mib(n(&a["mem"]))) }
                                        td.mono { (text(&a["version"])) }
                                        td { (app_status(a, waiting.get(id).copied())) }
                                    }
                                }
                            }
                        }
                        (pager(&p, "/ui/apps", &query))
                    }
                }
            }
        }
    };
    layout(ctx, "Apps", "apps", Topics::APPS, body)
}

fn app_status(a: &Value, waiting: Option<&Value>) -> Markup {
    let deploying = a["deployments"].as_array().is_some_and(|d| !d.is_empty());
    html! {
        @if deploying { (state("deploying")) " " }
        @if n(&a["instances"]) == 0.0 { (state("suspended")) }
        @else if !deploying && n(&a["tasksRunning"]) >= n(&a["instances"]) { (state("running")) }
        @if let Some(q) = waiting { " " (waiting_reason(q)) }
    }
}

/// Why an app waits, from Marathon's queue: its delay and the offers it turned down.
fn waiting_reason(q: &Value) -> Markup {
    let reasons: Vec<String> = q["processedOffersSummary"]["rejectSummaryLastOffers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| n(&r["declined"]) > 0.0)
        .map(|r| format!("{} ({} offers)", text(&r["reason"]), n(&r["declined"])))
        .collect();
    let delay = n(&q["delay"]["timeLeftSeconds"]);
    html! {
        span.waiting {
            (state("waiting")) " " (n(&q["count"])) " to launch"
            @if delay > 0.0 { "; delayed " (delay) " s after failures" }
            @if !reasons.is_empty() { "; declined: " (reasons.join(", ")) }
            @else if q["processedOffersSummary"]["processedOffersCount"].as_f64() == Some(0.0) { "; no offers yet" }
        }
    }
}

fn app_rows<'a>(v: &'a Value, order: (&str, bool)) -> Vec<&'a Value> {
    let mut rows: Vec<&Value> = v["apps"].as_array().into_iter().flatten().collect();
    sort_apps(&mut rows, order);
    rows
}

fn sort_apps(rows: &mut [&Value], (col, desc): (&str, bool)) {
    rows.sort_by(|a, b| {
        let o = match col {
            "instances" | "cpus" | "mem" => n(&a[col]).total_cmp(&n(&b[col])),
            _ => std::cmp::Ordering::Equal,
        };
        o.then_with(|| text(&a["id"]).cmp(text(&b["id"])))
    });
    if desc {
        rows.reverse();
    }
}

/// The fields of an app that the API computes; the editor leaves them out, and everything else round-trips.
pub const COMPUTED: [&str; 10] = [
    "tasks",
    "deployments",
    "tasksStaged",
    "tasksRunning",
    "tasksHealthy",
    "tasksUnhealthy",
    "lastTaskFailure",
    "readinessCheckResults",
    "taskStats",
    "versionInfo",
];

/// The definition of an app, as the editor shows it: every field the API returns but the computed ones.
pub fn definition(app: &Value) -> Value {
    let mut d = app.clone();
    if let Some(o) = d.as_object_mut() {
        for k in COMPUTED {
            o.remove(k);
        }
        o.remove("version");
    }
    d
}

pub struct AppPage<'a> {
    pub id: &'a str,
    pub app: Result<Value, crate::upstream::Failure>,
    pub versions: Vec<String>,
    pub queue: Option<Value>,
    /// The two versions compared, and their definitions' diff.
    pub diff: Option<(String, String, Vec<DiffLine>)>,
    /// The deployments in progress that change this app, with their steps.
    pub deployments: Vec<Value>,
}

pub fn app(ctx: &Ctx, page: &AppPage<'_>) -> Markup {
    let id = page.id;
    let api = format!("/ui/api/services/v2/apps{}", urlencode(id));
    let body = html! {
        p.crumbs { a href="/ui/apps" { "Apps" } " / " }
        h1 { (id) }
        @match &page.app {
            Err(e) => (failure("the app", e)),
            Ok(a) => {
                @let instances = n(&a["instances"]);
                div #app-status data-live="" {
                    div.cards {
                        div.card { span.big #running { (n(&a["tasksRunning"])) } span { "running of " span #desired { (instances) } } }
                        div.card { span.big { (n(&a["tasksHealthy"])) } span { "healthy" } }
                        div.card { span.big { (n(&a["tasksStaged"])) } span { "staged" } }
                        div.card { span.big { (n(&a["tasksUnhealthy"])) } span { "unhealthy" } }
                    }
                    @if let Some(q) = &page.queue { p { (waiting_reason(q)) } }
                    @if !page.deployments.is_empty() {
                        section aria-labelledby="dep-h" {
                            h2 #dep-h { "Deployment in progress" }
                            @for d in &page.deployments {
                                @let did = text(&d["id"]);
                                @let actions: Vec<String> = d["currentActions"].as_array().into_iter().flatten()
                                    .map(|x| format!("{} {}", text(&x["action"]), text(&x["app"]))).collect();
                                p { (state("deploying")) " " code { (did) }
                                    " — step " (n(&d["currentStep"])) " of " (n(&d["totalSteps"]))
                                    @if !actions.is_empty() { ": " (actions.join(", ")) }
                                    " "
                                    (action(ctx, "Cancel and roll back", "DELETE", &format!("/ui/api/services/v2/deployments/{}", segment(did)), "", Some("Cancel this deployment and roll the app back to its previous version?"), ""))
                                    " "
                                    (action(ctx, "Stop without rollback", "DELETE", &format!("/ui/api/services/v2/deployments/{}?force=true", segment(did)), "", Some("Stop this deployment where it is, without rolling back?"), ""))
                                }
                            }
                        }
                    }
                }
                @if ctx.may_write {
                    section.actions aria-label="Actions" {
                        form.inline data-call="PUT" data-url=(api) data-number="instances" {
                            label { "Instances " input #scale type="number" name="instances" min="0" max="10000" value=(instances) required; }
                            button.btn type="submit" { "Scale" }
                        }
                        (action(ctx, "Restart", "POST", &format!("{api}/restart"), "", Some("Restart every instance of this app (a rolling restart)?"), ""))
                        (action(ctx, "Suspend", "PUT", &api, "{\"instances\":0}", Some("Suspend this app: scale it to 0 instances?"), ""))
                        (action(ctx, "Destroy", "DELETE", &api, "", Some("Destroy this app? Its instances are killed and its definition deleted."), "danger"))
                    }
                }
                section #app-tasks data-live="" aria-labelledby="tasks-h" {
                    h2 #tasks-h { "Instances" }
                    @let tasks = a["tasks"].as_array().cloned().unwrap_or_default();
                    @if tasks.is_empty() { p.empty { "No instances running." } } @else {
                        table {
                            thead { tr { th { "Task" } th { "State" } th { "Host" } th { "Ports" } th { "Started" } } }
                            tbody {
                                @for t in &tasks {
                                    tr {
                                        td { a.mono href=(format!("/ui/tasks/{}", segment(text(&t["id"])))) { (text(&t["id"])) } }
                                        td { (state(text(&t["state"])))
                                            @if let Some(h) = t["healthCheckResults"].as_array().and_then(|h| h.first()) {
                                                " " (state(if h["alive"] == true { "healthy" } else { "unhealthy" })) } }
                                        td { (text(&t["host"])) }
                                        td { (t["ports"].as_array().map(|p| p.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                                        td.mono { (text(&t["startedAt"])) }
                                    }
                                }
                            }
                        }
                    }
                }
                section #app-editor data-live="" aria-labelledby="json-h" {
                    h2 #json-h { "Definition" }
                    @let def = serde_json::to_string_pretty(&definition(a)).unwrap_or_default();
                    @if ctx.may_write {
                        form.editor data-call="PUT" data-url=(format!("{api}?partialUpdate=false")) data-json="definition" {
                            label for="definition" { "The app's JSON. Every field is kept on save; computed fields (tasks, counts, version) are left out. It follows changes until you edit it." }
                            textarea #definition name="definition" rows="18" spellcheck="false" { (def) }
                            div.field-error data-path="/" {}
                            button.btn.primary type="submit" { "Save" }
                        }
                    } @else {
                        pre.json { (def) }
                    }
                }
                section aria-labelledby="ver-h" {
                    h2 #ver-h { "Versions" }
                    @if page.versions.is_empty() { p.empty { "No versions." } } @else {
                        form.inline method="get" action=(format!("/ui/apps{}", urlencode(id))) {
                            label { "Compare " select name="a" { @for v in &page.versions { option value=(v) selected[page.diff.as_ref().is_some_and(|d| &d.0 == v)] { (v) } } } }
                            label { " with " select name="b" { @for (i, v) in page.versions.iter().enumerate() { option value=(v) selected[page.diff.as_ref().map_or(i == 0, |d| &d.1 == v)] { (v) } } } }
                            button.btn type="submit" { "Diff" }
                        }
                        @if let Some((va, vb, lines)) = &page.diff {
                            p { "Changes from " code { (va) } " to " code { (vb) } ":" }
                            pre.diff aria-label="Differences" {
                                @for l in lines {
                                    @match l {
                                        DiffLine::Same(t) => { span { "  " (t) } "\n" }
                                        DiffLine::Removed(t) => { del { "- " (t) } "\n" }
                                        DiffLine::Added(t) => { ins { "+ " (t) } "\n" }
                                    }
                                }
                            }
                        }
                        table {
                            thead { tr { th { "Version" } th {} } }
                            tbody {
                                @for (i, v) in page.versions.iter().enumerate() {
                                    tr { td.mono { (v) @if i == 0 { " " span.badge { "current" } } }
                                        td { @if i > 0 { (action(ctx, "Roll back to this", "PUT", &api, &serde_json::json!({"version": v}).to_string(), Some(&format!("Roll the app back to version {v}?")), "")) } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(ctx, id, "apps", Topics::APPS, body)
}

pub fn new_app(ctx: &Ctx) -> Markup {
    let body = html! {
        p.crumbs { a href="/ui/apps" { "Apps" } " / " }
        h1 { "New app" }
        @if !ctx.may_write { p.error { "Your role may not create apps." } } @else {
            form.app-form data-call="POST" data-url="/ui/api/services/v2/apps" data-fields="app" data-then="/ui/apps{id}" {
                div.field { label for="f-id" { "ID" } input #f-id name="id" required placeholder="/web/api" data-path="/id";
                    small { "A path such as /team/service." } div.field-error data-path="/id" {} }
                div.field { label for="f-cmd" { "Command" } input #f-cmd name="cmd" placeholder="python3 -m http.server $PORT0";
                    div.field-error data-path="/cmd" {} }
                div.field { label for="f-image" { "Docker image (optional)" } input #f-image name="image" placeholder="nginx:1.27"; div.field-error data-path="/container" {} }
                div.row {
                    div.field { label for="f-instances" { "Instances" } input #f-instances name="instances" type="number" min="0" value="1"; div.field-error data-path="/instances" {} }
                    div.field { label for="f-cpus" { "CPUs" } input #f-cpus name="cpus" type="number" step="0.01" min="0" value="0.1"; div.field-error data-path="/cpus" {} }
                    div.field { label for="f-mem" { "Memory (MiB)" } input #f-mem name="mem" type="number" step="1" min="0" value="32"; div.field-error data-path="/mem" {} }
                }
                div.field-error data-path="/" {}
                button.btn.primary type="submit" { "Create app" }
            }
            details {
                summary { "…or paste the app's JSON" }
                form.editor data-call="POST" data-url="/ui/api/services/v2/apps" data-json="json" data-then="/ui/apps{id}" {
                    label for="json" { "Marathon app JSON" }
                    textarea #json name="json" rows="14" spellcheck="false" { "{\n  \"id\": \"/hello\",\n  \"cmd\": \"echo hello; sleep 3600\",\n  \"instances\": 1,\n  \"cpus\": 0.1,\n  \"mem\": 32\n}" }
                    div.field-error data-path="/" {}
                    button.btn.primary type="submit" { "Create from JSON" }
                }
            }
        }
    };
    layout(ctx, "New app", "apps", Topics::default(), body)
}

// ---- jobs ----

fn job_outcome(j: &Value) -> &'static str {
    let s = &j["historySummary"];
    match (s["lastSuccessAt"].as_str(), s["lastFailureAt"].as_str()) {
        (Some(ok), Some(bad)) => {
            if ok >= bad {
                "SUCCESS"
            } else {
                "FAILED"
            }
        }
        (Some(_), None) => "SUCCESS",
        (None, Some(_)) => "FAILED",
        (None, None) => "never run",
    }
}

pub fn jobs(ctx: &Ctx, jobs: &Result<Value, crate::upstream::Failure>, page_no: usize) -> Markup {
    let body = html! {
        div.heading { h1 { "Jobs" } @if ctx.may_write { a.btn.primary href="/ui/jobs/new" { "+ New job" } } }
        @match jobs {
            Err(e) => (failure("the jobs", e)),
            Ok(v) => {
                @let rows = job_rows(v);
                @let p = view::page(rows.len(), page_no);
                div #jobs data-live="" {
                    @if rows.is_empty() {
                        p.empty { "No jobs yet — " a href="/ui/jobs/new" { "create one" } "." }
                    } @else {
                        table {
                            thead { tr { th { "Job" } th { "Schedule" } th { "Time zone" } th { "Next run" } th { "Last outcome" } th { "Successes" } th { "Errors" } th { "Active" } } }
                            tbody {
                                @for j in &rows[p.start..p.end] {
                                    @let s = &j["schedules"][0];
                                    tr {
                                        td { a href=(format!("/ui/jobs/{}", segment(text(&j["id"])))) { (text(&j["id"])) } }
                                        td.mono { @if s.is_null() { "— (manual)" } @else { (text(&s["cron"])) @if s["enabled"] == false { " " (state("disabled")) } } }
                                        td { (text(&s["timezone"])) }
                                        td.mono { (text(&s["nextRunAt"])) }
                                        td { (state(job_outcome(j))) }
                                        td { (n(&j["historySummary"]["successCount"])) }
                                        td { (n(&j["historySummary"]["failureCount"])) }
                                        td { (j["activeRuns"].as_array().map_or(0, Vec::len)) }
                                    }
                                }
                            }
                        }
                        (pager(&p, "/ui/jobs", &[]))
                    }
                }
                @if !rows.is_empty() {
                    section #graph data-live="" aria-labelledby="graph-h" {
                        h2 #graph-h { "Dependencies" }
                        (graph(&rows, None))
                    }
                }
            }
        }
    };
    layout(ctx, "Jobs", "jobs", Topics::JOBS, body)
}

fn job_rows(v: &Value) -> Vec<&Value> {
    let mut rows: Vec<&Value> = v.as_array().into_iter().flatten().collect();
    rows.sort_by(|a, b| text(&a["id"]).cmp(text(&b["id"])));
    rows
}

/// The schedule with `enabled` flipped, as the API takes it back.
fn toggled(s: &Value) -> Value {
    let mut t = s.clone();
    t["enabled"] = Value::Bool(s["enabled"] == false);
    if let Some(o) = t.as_object_mut() {
        o.remove("nextRunAt");
    }
    t
}

/// The dependency graph as an SVG picture; each node says its job's last outcome in words too.
pub fn graph(jobs: &[&Value], focus: Option<&str>) -> Markup {
    let parents: std::collections::BTreeMap<String, Vec<String>> = jobs
        .iter()
        .map(|j| {
            let ps = j["keel"]["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["id"].as_str().map(str::to_owned))
                .collect();
            (text(&j["id"]).to_owned(), ps)
        })
        .collect();
    // Only jobs that have a parent or a child: the others would be a long row of lone boxes.
    let linked: std::collections::BTreeSet<&String> = parents
        .iter()
        .filter(|(_, ps)| !ps.is_empty())
        .flat_map(|(c, ps)| std::iter::once(c).chain(ps.iter()))
        .collect();
    let parents: std::collections::BTreeMap<String, Vec<String>> =
        parents.iter().filter(|(c, _)| linked.contains(c)).map(|(c, ps)| (c.clone(), ps.clone())).collect();
    if parents.is_empty() || focus.is_some_and(|f| !parents.contains_key(f)) {
        return html! { p.empty { "No job depends on another." } };
    }
    let (nodes, edges, width, height) = view::layout(&parents);
    let at = |id: &str| nodes.iter().find(|n| n.id == id).map(|n| (n.x, n.y));
    let outcome: std::collections::HashMap<&str, &'static str> =
        jobs.iter().map(|j| (text(&j["id"]), job_outcome(j))).collect();
    html! {
        svg.graph role="group" aria-label="Job dependency graph" width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) xmlns="http://www.w3.org/2000/svg" {
            defs { marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto" { path d="M0,0 L10,5 L0,10 z" {} } }
            @for (p, c) in &edges {
                @if let (Some((x1, y1)), Some((x2, y2))) = (at(p), at(c)) {
                    line.edge x1=(x1 + 75.0) y1=(y1 + 40.0) x2=(x2 + 75.0) y2=(y2) marker-end="url(#arrow)" {}
                }
            }
            @for node in &nodes {
                @let o = outcome.get(node.id.as_str()).copied().unwrap_or("never run");
                @let (tone, glyph) = view::tone(o);
                a href=(format!("/ui/jobs/{}", segment(&node.id))) aria-label=(format!("{}: {}", node.id, view::state_word(o))) {
                    g class={"node " (tone) @if focus == Some(node.id.as_str()) { " focus" }} {
                        rect x=(node.x) y=(node.y) width="150" height="40" rx="6" {}
                        text x=(node.x + 8.0) y=(node.y + 17.0) { (node.id) }
                        text.sub x=(node.x + 8.0) y=(node.y + 33.0) { (glyph) " " (view::state_word(o)) }
                    }
                }
            }
        }
    }
}

pub struct JobPage<'a> {
    pub id: &'a str,
    pub job: Result<Value, crate::upstream::Failure>,
    pub history: Result<Value, crate::upstream::Failure>,
    pub all: Vec<Value>,
}

pub fn job(ctx: &Ctx, page: &JobPage<'_>) -> Markup {
    let id = page.id;
    let api = format!("/ui/api/jobs/v1/jobs/{}", segment(id));
    let body = html! {
        p.crumbs { a href="/ui/jobs" { "Jobs" } " / " }
        h1 { (id) }
        @match &page.job {
            Err(e) => (failure("the job", e)),
            Ok(j) => {
                @let s = &j["schedules"][0];
                div #job-summary data-live="" {
                    dl.facts {
                        @if !text(&j["description"]).is_empty() { dt { "Description" } dd { (text(&j["description"])) } }
                        dt { "Command" } dd.mono { (text(&j["run"]["cmd"])) }
                        dt { "Schedule" } dd.mono { @if s.is_null() { "none (runs when started, or after its parents)" } @else { (text(&s["cron"])) " in " (text(&s["timezone"])) @if s["enabled"] == false { " " (state("disabled")) } @else { " " (state("enabled")) } } }
                        dt { "Next run" } dd.mono { (text(&s["nextRunAt"])) }
                        dt { "Last outcome" } dd { (state(job_outcome(j))) }
                        dt { "Successes / errors" } dd { (n(&j["historySummary"]["successCount"])) " / " (n(&j["historySummary"]["failureCount"])) }
                    }
                }
                @if ctx.may_write {
                    section.actions aria-label="Actions" {
                        (action(ctx, "Run now", "POST", &format!("{api}/runs"), "{}", None, "primary"))
                        @if !s.is_null() {
                            (action(ctx, if s["enabled"] == false { "Enable" } else { "Disable" }, "PUT", &format!("{api}/schedules/{}", segment(text(&s["id"]))), &toggled(s).to_string(), None, ""))
                        }
                        (action(ctx, "Delete", "DELETE", &format!("{api}?stopCurrentJobRuns=true"), "", Some("Delete this job, and stop its active runs?"), "danger"))
                    }
                }
                section #job-active data-live="" aria-labelledby="active-h" {
                    h2 #active-h { "Active runs" }
                    @let active = j["activeRuns"].as_array().cloned().unwrap_or_default();
                    @if active.is_empty() { p.empty { "None." } } @else {
                        ul { @for r in &active { li { code { (text(&r["id"])) } " " (state(text(&r["status"]))) " "
                            (action(ctx, "Kill", "POST", &format!("{api}/runs/{}/actions/stop", segment(text(&r["id"]))), "{}", Some("Kill this run?"), "danger")) } } }
                    }
                }
                section #job-history data-live="" aria-labelledby="hist-h" {
                    h2 #hist-h { "Run history" }
                    @match &page.history {
                        Err(e) => (failure("the run history", e)),
                        Ok(h) => {
                            @let runs = h["runs"].as_array().cloned().unwrap_or_default();
                            @if runs.is_empty() { p.empty { "No runs yet." } } @else {
                                table.runs {
                                    thead { tr { th { "Run" } th { "Status" } th { "Trigger" } th { "Started" } th { "Finished" } th { "Exit" } th { "Output" } } }
                                    tbody {
                                        @for r in &runs {
                                            tr {
                                                td.mono { (text(&r["id"])) }
                                                td { (state(text(&r["status"]))) @if !text(&r["message"]).is_empty() { br; small { (text(&r["message"])) } } }
                                                td { (text(&r["trigger"])) }
                                                td.mono { (text(&r["startedAt"])) }
                                                td.mono { (text(&r["finishedAt"])) }
                                                td { @if let Some(c) = r["exitCode"].as_i64() { (c) } @else { "—" } }
                                                td {
                                                    @let out = text(&r["stdoutTail"]);
                                                    @let err = text(&r["stderrTail"]);
                                                    @if out.is_empty() && err.is_empty() { "—" } @else {
                                                        details { summary { "output" } @if !out.is_empty() { pre.run-output { (out) } } @if !err.is_empty() { pre.run-output.stderr { (err) } } }
                                                    }
                                                    @for t in r["taskIds"].as_array().into_iter().flatten() { a.mono href=(format!("/ui/tasks/{}", segment(text(t)))) { "task" } " " }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                section #job-graph data-live="" aria-labelledby="graph-h" {
                    h2 #graph-h { "Dependencies" }
                    @let refs: Vec<&Value> = page.all.iter().collect();
                    (graph(&refs, Some(id)))
                }
                @if ctx.may_write { (job_form(Some(j))) }
            }
        }
    };
    layout(ctx, id, "jobs", Topics::JOBS, body)
}

/// A job's definition as the API takes it back: what the form does not show is kept on save.
fn editable_job(job: &Value) -> String {
    let mut j = job.clone();
    if let Some(o) = j.as_object_mut() {
        for k in ["activeRuns", "schedules", "historySummary", "history", "keel"] {
            o.remove(k);
        }
    }
    j.to_string()
}

/// The form that creates a job, or edits one (`job`).
pub fn job_form(job: Option<&Value>) -> Markup {
    let s = job.map(|j| &j["schedules"][0]).filter(|s| !s.is_null());
    let get = |v: Option<&Value>, k: &str| v.and_then(|v| v[k].as_str()).unwrap_or("").to_owned();
    let run = job.map(|j| &j["run"]);
    let num = |k: &str, d: f64| run.and_then(|r| r[k].as_f64()).unwrap_or(d);
    html! {
        section aria-labelledby="form-h" {
            h2 #form-h { @if job.is_some() { "Edit" } @else { "Definition" } }
            form.job-form data-fields="job" data-call=(if job.is_some() { "PUT" } else { "POST" })
                data-url=(match job { Some(j) => format!("/ui/api/jobs/v1/jobs/{}", segment(text(&j["id"]))), None => "/ui/api/jobs/v1/jobs".into() })
                data-then="/ui/jobs/{id}" data-current=(job.map(editable_job).unwrap_or_default())
                data-schedule=(s.map(|s| { let mut s = s.clone(); if let Some(o) = s.as_object_mut() { o.remove("nextRunAt"); } s.to_string() }).unwrap_or_default()) {
                div.field { label for="j-id" { "ID" } input #j-id name="id" required value=(get(job, "id")) readonly[job.is_some()] placeholder="nightly-report";
                    small { "Lower case letters, digits, dashes and dots." } div.field-error data-path="/id" {} }
                div.field { label for="j-desc" { "Description" } input #j-desc name="description" value=(get(job, "description")); }
                div.field { label for="j-cmd" { "Command" } input #j-cmd name="cmd" required value=(get(run, "cmd")) placeholder="echo hello"; div.field-error data-path="/run/cmd" {} }
                div.row {
                    div.field { label for="j-cpus" { "CPUs" } input #j-cpus name="cpus" type="number" step="0.01" min="0" value=(num("cpus", 0.1)); div.field-error data-path="/run/cpus" {} }
                    div.field { label for="j-mem" { "Memory (MiB)" } input #j-mem name="mem" type="number" min="0" value=(num("mem", 32.0)); div.field-error data-path="/run/mem" {} }
                }
                div.row {
                    div.field { label for="j-cron" { "Cron schedule" } input #j-cron name="cron" value=(get(s, "cron")) placeholder="*/5 * * * *" data-preview="1";
                        small { "Leave empty for a job that runs only when started." } div.field-error data-path="/schedules" {} }
                    div.field { label for="j-tz" { "Time zone" } input #j-tz name="timezone" value=(s.map_or("UTC".to_owned(), |s| text(&s["timezone"]).to_owned())) data-preview="1"; }
                }
                div #preview.preview aria-live="polite" { small { "The next fire times show here as you type." } }
                div.field-error data-path="/" {}
                button.btn.primary type="submit" { @if job.is_some() { "Save" } @else { "Create job" } }
            }
        }
    }
}

pub fn new_job(ctx: &Ctx) -> Markup {
    let body = html! {
        p.crumbs { a href="/ui/jobs" { "Jobs" } " / " }
        h1 { "New job" }
        @if ctx.may_write { (job_form(None)) } @else { p.error { "Your role may not create jobs." } }
    };
    layout(ctx, "New job", "jobs", Topics::default(), body)
}

pub fn not_found(ctx: &Ctx, what: &str) -> Markup {
    layout(
        ctx,
        "Not found",
        "",
        Topics::default(),
        html! { h1 { "Not found" } p { (what) } p { a href="/ui/" { "Back to the overview" } } },
    )
}
