//! Marathon app definitions: the JSON Marathon accepts, with its defaults, and the validation that answers
//! 422 with per-field details.
//!
//! Field names and defaults follow Marathon's published API (`docs/rest-api/public/api/v2/types/app.raml` in
//! the Marathon repository): `cpus` 1, `mem` 128, `disk` 0, `instances` 1, `backoffSeconds` 1,
//! `backoffFactor` 1.15, `maxLaunchDelaySeconds` 3600, `killSelection` `YOUNGEST_FIRST`, upgrade strategy
//! 1/1, unreachable strategy 0/0 here meaning Marathon's 300/600.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest app id: a task id is the id (less its first slash), a dot and a 36-character UUID, and the
/// core takes task ids of up to 200 characters.
pub const MAX_ID_LEN: usize = 150;
/// The most path segments (groups and the app's name) an id may have.
pub const MAX_DEPTH: usize = 16;
/// The longest path segment, as Marathon's names.
pub const MAX_SEGMENT_LEN: usize = 63;

/// A hierarchical app id such as `/prod/web`: absolute, with segments of lowercase letters, digits, dots and
/// inner hyphens. Duplicate slashes collapse, as clients build paths like `/v2/apps//prod/web`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AppId(String);

impl AppId {
    /// Parses an id, relative ids being taken as absolute. Ids are bounded as Marathon bounds names: a
    /// segment of at most [`MAX_SEGMENT_LEN`] characters, at most [`MAX_DEPTH`] segments and
    /// [`MAX_ID_LEN`] characters in all, so that every task id derived from it fits the core's limit.
    pub fn parse(raw: &str) -> Result<AppId, String> {
        if raw.len() > 4 * MAX_ID_LEN {
            return Err(format!("the id is {} characters long; at most {MAX_ID_LEN} are allowed", raw.len()));
        }
        let segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
        if segments.is_empty() {
            return Err("the id must not be empty".into());
        }
        if segments.len() > MAX_DEPTH {
            return Err(format!("the id has {} path segments; at most {MAX_DEPTH} are allowed", segments.len()));
        }
        for s in &segments {
            let ok_chars = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            let ok_ends = !s.starts_with(['-', '.']) && !s.ends_with(['-', '.']);
            if !ok_chars || !ok_ends || *s == "." || *s == ".." {
                return Err(format!(
                    "path segment '{s}' must consist of lowercase letters, digits, hyphens and dots, and start and end with a letter or digit"
                ));
            }
            if s.len() > MAX_SEGMENT_LEN {
                return Err(format!("path segment '{s}' is longer than {MAX_SEGMENT_LEN} characters"));
            }
        }
        let id = format!("/{}", segments.join("/"));
        if id.len() > MAX_ID_LEN {
            return Err(format!("the id is {} characters long; at most {MAX_ID_LEN} are allowed", id.len()));
        }
        Ok(AppId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix of the app's task ids: `/prod/web` → `prod_web`.
    pub fn task_prefix(&self) -> String {
        self.0.trim_start_matches('/').replace('/', "_")
    }

    /// Whether this app lives at or under `group` (`/prod` contains `/prod/web`).
    pub fn is_in(&self, group: &str) -> bool {
        let group = group.trim_end_matches('/');
        group.is_empty() || self.0 == group || self.0.starts_with(&format!("{group}/"))
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn default_cpus() -> f64 {
    1.0
}
fn default_mem() -> f64 {
    128.0
}
fn default_instances() -> u32 {
    1
}
fn default_backoff_seconds() -> f64 {
    1.0
}
fn default_backoff_factor() -> f64 {
    1.15
}
fn default_max_launch_delay() -> f64 {
    3600.0
}
fn default_kill_selection() -> String {
    "YOUNGEST_FIRST".into()
}
fn one() -> f64 {
    1.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStrategy {
    #[serde(default = "one")]
    pub minimum_health_capacity: f64,
    #[serde(default = "one")]
    pub maximum_over_capacity: f64,
}

impl Default for UpgradeStrategy {
    fn default() -> Self {
        UpgradeStrategy { minimum_health_capacity: 1.0, maximum_over_capacity: 1.0 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnreachableStrategy {
    #[serde(default = "default_inactive")]
    pub inactive_after_seconds: u64,
    #[serde(default = "default_expunge")]
    pub expunge_after_seconds: u64,
}

/// Keel's default, unlike Marathon's 300 s: an instance on an unreachable agent is replaced at once (the
/// master marks an agent unreachable after `--agent-timeout`, 10 s by default), and when the agent comes
/// back, the extra copy is killed. An app that sets `unreachableStrategy` keeps what it set; setting
/// `inactiveAfterSeconds` (300 is Marathon's) avoids the short overlap of two copies during a partition.
pub const DEFAULT_INACTIVE_AFTER_SECONDS: u64 = 0;

fn default_inactive() -> u64 {
    DEFAULT_INACTIVE_AFTER_SECONDS
}
fn default_expunge() -> u64 {
    600
}

impl Default for UnreachableStrategy {
    fn default() -> Self {
        UnreachableStrategy { inactive_after_seconds: DEFAULT_INACTIVE_AFTER_SECONDS, expunge_after_seconds: 600 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDefinition {
    #[serde(default)]
    pub port: u32,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn tcp() -> String {
    "tcp".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerPortMapping {
    #[serde(default)]
    pub container_port: u32,
    #[serde(default)]
    pub host_port: u32,
    #[serde(default)]
    pub service_port: u32,
    #[serde(default = "tcp")]
    pub protocol: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Docker {
    pub image: String,
    #[serde(default)]
    pub force_pull_image: bool,
    /// `HOST` (the default) or `BRIDGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<DockerPortMapping>>,
    #[serde(default)]
    pub privileged: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// `DOCKER` (the default) or `MESOS`.
    #[serde(default = "docker_type", rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Docker>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<serde_json::Value>,
}

fn docker_type() -> String {
    "DOCKER".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppHealthCheck {
    /// `HTTP`, `HTTPS`, `TCP`, `COMMAND`, or their `MESOS_` forms.
    #[serde(default = "http")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<serde_json::Value>,
    #[serde(default = "grace")]
    pub grace_period_seconds: u64,
    #[serde(default = "interval")]
    pub interval_seconds: u64,
    #[serde(default = "timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "failures")]
    pub max_consecutive_failures: u32,
}

fn http() -> String {
    "HTTP".into()
}
fn grace() -> u64 {
    300
}
fn interval() -> u64 {
    60
}
fn timeout() -> u64 {
    20
}
fn failures() -> u32 {
    3
}

/// Where a secret of an app comes from: the name it is stored under (`keel secret put NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub source: String,
}

/// An app as Marathon's `/v2/apps` accepts and returns it (computed fields aside).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppDefinition {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    #[serde(default = "default_mem")]
    pub mem: f64,
    #[serde(default)]
    pub disk: f64,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Values are strings, or `{"secret": KEY}` naming an entry of `secrets`.
    #[serde(default)]
    pub env: BTreeMap<String, serde_json::Value>,
    /// Secrets the app's environment refers to: KEY -> `{"source": NAME}` of a stored secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretSource>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// Absent means one port, as in Marathon; an empty list means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_definitions: Option<Vec<PortDefinition>>,
    #[serde(default)]
    pub require_ports: bool,
    #[serde(default)]
    pub constraints: Vec<Vec<String>>,
    /// Roles of the resources the app may run on. Keel's agents offer only unreserved resources (`*`), so
    /// a list without `*` cannot be placed, and the queue says so (`UnfulfilledRole`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_resource_roles: Option<Vec<String>>,
    #[serde(default)]
    pub health_checks: Vec<AppHealthCheck>,
    #[serde(default)]
    pub upgrade_strategy: UpgradeStrategy,
    #[serde(default = "default_backoff_seconds")]
    pub backoff_seconds: f64,
    #[serde(default = "default_backoff_factor")]
    pub backoff_factor: f64,
    #[serde(default = "default_max_launch_delay")]
    pub max_launch_delay_seconds: f64,
    #[serde(default = "default_kill_selection")]
    pub kill_selection: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_kill_grace_period_seconds: Option<u64>,
    #[serde(default)]
    pub unreachable_strategy: UnreachableStrategy,
    /// Set by the server: when this version of the definition was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Set by the server: when the app was last scaled and last changed otherwise (or restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_info: Option<VersionInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub last_scaling_at: String,
    pub last_config_change_at: String,
}

/// One field's problems, as in Marathon's 422 `details`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    pub path: String,
    pub errors: Vec<String>,
}

impl Violation {
    pub fn new(path: &str, error: impl Into<String>) -> Violation {
        Violation { path: path.into(), errors: vec![error.into()] }
    }
}

/// The most instances one app may ask for.
pub const MAX_INSTANCES: u32 = 100_000;
/// The longest delay, timeout or grace period an app may set, in seconds (a year): anything longer is a
/// mistake, and would overflow a clock.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;
/// The steepest backoff growth an app may ask for.
pub const MAX_BACKOFF_FACTOR: f64 = 100.0;
/// The most of any one resource an app's instance may ask for (cpus, MiB of memory or disk).
pub const MAX_RESOURCE: f64 = 1e9;

/// Whether an amount of cpus, mem or disk can be placed: finite, not negative, at most [`MAX_RESOURCE`],
/// and either 0 or at least the smallest unit the core counts in (0.001).
fn check_resource(value: f64) -> Result<(), String> {
    if !(value.is_finite() && (0.0..=MAX_RESOURCE).contains(&value)) {
        return Err(format!("got {value}, expected a number from 0 to {MAX_RESOURCE}"));
    }
    match keel_core::resources::Scalar::from_f64(value) {
        Ok(s) if s.milli() == 0 && value > 0.0 => Err(format!("got {value}, below the smallest unit, 0.001")),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

impl AppDefinition {
    /// Everything wrong with the definition; empty when it is valid.
    pub fn validate(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if let Err(e) = AppId::parse(&self.id) {
            v.push(Violation::new("/id", e));
        }
        let has_cmd = self.cmd.as_ref().is_some_and(|c| !c.trim().is_empty());
        let has_args = self.args.as_ref().is_some_and(|a| !a.is_empty());
        let has_image =
            self.container.as_ref().and_then(|c| c.docker.as_ref()).is_some_and(|d| !d.image.trim().is_empty());
        if (has_cmd && has_args) || (!has_cmd && !has_args && !has_image) {
            v.push(Violation::new(
                "/",
                "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.",
            ));
        }
        for (path, value) in [("/cpus", self.cpus), ("/mem", self.mem), ("/disk", self.disk)] {
            if let Err(e) = check_resource(value) {
                v.push(Violation::new(path, e));
            }
        }
        if self.cpus == 0.0 && self.mem == 0.0 {
            v.push(Violation::new("/cpus", "an app needs some cpus or mem"));
        }
        if self.gpus > 0 {
            v.push(Violation::new("/gpus", "Keel's agents offer no GPUs"));
        }
        for (k, value) in &self.env {
            match value {
                serde_json::Value::String(_) => {}
                serde_json::Value::Object(o) if o.len() == 1 && o.get("secret").is_some_and(|s| s.is_string()) => {
                    let key = o["secret"].as_str().unwrap_or_default();
                    if !self.secrets.contains_key(key) {
                        v.push(Violation::new(
                            &format!("/env/{k}"),
                            format!("names secret '{key}', which 'secrets' does not declare"),
                        ));
                    }
                }
                _ => v.push(Violation::new(&format!("/env/{k}"), "must be a string or {\"secret\": KEY}")),
            }
        }
        for (k, s) in &self.secrets {
            if let Err(e) = keel_core::secrets::check_name(&s.source) {
                v.push(Violation::new(&format!("/secrets/{k}/source"), e));
            }
        }
        if let Some(u) = self.user.as_deref().filter(|u| !u.is_empty())
            && !keel_core::task::valid_user(u)
        {
            v.push(Violation::new("/user", "must be a user name: 1 to 32 of a-z A-Z 0-9 . _ -"));
        }
        if self.instances > MAX_INSTANCES {
            v.push(Violation::new("/instances", format!("got {}, expected at most {MAX_INSTANCES}", self.instances)));
        }
        if self.accepted_resource_roles.as_ref().is_some_and(|r| r.is_empty() || r.iter().any(|r| r.is_empty())) {
            v.push(Violation::new("/acceptedResourceRoles", "must name at least one role, and no empty one"));
        }
        if !(self.backoff_factor.is_finite() && (1.0..=MAX_BACKOFF_FACTOR).contains(&self.backoff_factor)) {
            v.push(Violation::new(
                "/backoffFactor",
                format!("got {}, expected a number from 1.0 to {MAX_BACKOFF_FACTOR}", self.backoff_factor),
            ));
        }
        for (path, value) in
            [("/backoffSeconds", self.backoff_seconds), ("/maxLaunchDelaySeconds", self.max_launch_delay_seconds)]
        {
            if !(value.is_finite() && (0.0..=MAX_SECONDS as f64).contains(&value)) {
                v.push(Violation::new(path, format!("got {value}, expected 0 to {MAX_SECONDS} seconds")));
            }
        }
        let us = &self.upgrade_strategy;
        for (name, value) in
            [("minimumHealthCapacity", us.minimum_health_capacity), ("maximumOverCapacity", us.maximum_over_capacity)]
        {
            if !(0.0..=1.0).contains(&value) {
                v.push(Violation::new(&format!("/upgradeStrategy/{name}"), "got a number outside 0.0 to 1.0"));
            }
        }
        if !["YOUNGEST_FIRST", "OLDEST_FIRST"].contains(&self.kill_selection.as_str()) {
            v.push(Violation::new("/killSelection", "must be YOUNGEST_FIRST or OLDEST_FIRST"));
        }
        let un = &self.unreachable_strategy;
        for (name, value) in
            [("inactiveAfterSeconds", un.inactive_after_seconds), ("expungeAfterSeconds", un.expunge_after_seconds)]
        {
            if value > MAX_SECONDS {
                v.push(Violation::new(
                    &format!("/unreachableStrategy/{name}"),
                    format!("got {value}, expected at most {MAX_SECONDS}"),
                ));
            }
        }
        if un.expunge_after_seconds < un.inactive_after_seconds {
            v.push(Violation::new("/unreachableStrategy/expungeAfterSeconds", "must be at least inactiveAfterSeconds"));
        }
        if let Some(grace) = self.task_kill_grace_period_seconds.filter(|g| *g > MAX_SECONDS) {
            v.push(Violation::new(
                "/taskKillGracePeriodSeconds",
                format!("got {grace}, expected at most {MAX_SECONDS}"),
            ));
        }
        for (i, c) in self.constraints.iter().enumerate() {
            if let Err(e) = crate::placement::Constraint::parse(c) {
                v.push(Violation::new(&format!("/constraints({i})"), e));
            }
        }
        for (i, p) in self.port_definitions.iter().flatten().enumerate() {
            if p.port > 65535 {
                v.push(Violation::new(
                    &format!("/portDefinitions({i})/port"),
                    format!("got {}, expected 0 to 65535", p.port),
                ));
            }
        }
        if let Some(docker) = self.container.as_ref().and_then(|c| c.docker.as_ref()) {
            if docker.image.trim().is_empty() {
                v.push(Violation::new("/container/docker/image", "must not be empty"));
            }
            for (i, m) in docker.port_mappings.iter().flatten().enumerate() {
                for (name, port) in
                    [("containerPort", m.container_port), ("hostPort", m.host_port), ("servicePort", m.service_port)]
                {
                    if port > 65535 {
                        v.push(Violation::new(
                            &format!("/container/docker/portMappings({i})/{name}"),
                            format!("got {port}, expected 0 to 65535"),
                        ));
                    }
                }
            }
        }
        if self.health_checks.len() > 1 {
            // The agents run one check per task (`TaskSpec::health_check`); a second one would be ignored.
            v.push(Violation::new(
                "/healthChecks",
                format!("Keel runs one health check per app; got {}", self.health_checks.len()),
            ));
        }
        let ports = self.port_count();
        for (i, h) in self.health_checks.iter().enumerate() {
            let path = format!("/healthChecks({i})");
            let protocol = h.protocol.trim_start_matches("MESOS_");
            if !["HTTP", "HTTPS", "TCP", "COMMAND"].contains(&protocol) {
                v.push(Violation::new(&format!("{path}/protocol"), "must be HTTP, HTTPS, TCP or COMMAND"));
            }
            if protocol == "COMMAND" && h.command.is_none() {
                v.push(Violation::new(&format!("{path}/command"), "a COMMAND health check needs a command"));
            }
            if protocol != "COMMAND" {
                let index = h.port_index.unwrap_or(0) as usize;
                if index >= ports {
                    v.push(Violation::new(
                        &format!("{path}/portIndex"),
                        format!("the app has {ports} port(s), so portIndex {index} names none"),
                    ));
                }
            }
            if h.interval_seconds == 0 || h.timeout_seconds == 0 {
                v.push(Violation::new(&path, "intervalSeconds and timeoutSeconds must be positive"));
            }
            for (name, value) in [
                ("gracePeriodSeconds", h.grace_period_seconds),
                ("intervalSeconds", h.interval_seconds),
                ("timeoutSeconds", h.timeout_seconds),
            ] {
                if value > MAX_SECONDS {
                    v.push(Violation::new(
                        &format!("{path}/{name}"),
                        format!("got {value}, expected at most {MAX_SECONDS}"),
                    ));
                }
            }
        }
        v
    }

    /// Fills in what Marathon fills in on every stored definition: the default port definition
    /// (`[{"port": 0, "protocol": "tcp", "name": "default"}]`) for an app with neither port definitions nor
    /// container port mappings, and a unique service port for every port given as 0. A port the previous
    /// version of the app had at the same place is kept, so an update does not move the app's ports.
    /// `taken` holds the service ports of every other app.
    pub fn assign_service_ports(
        &mut self,
        previous: Option<&AppDefinition>,
        taken: &std::collections::BTreeSet<u32>,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<(), Violation> {
        let mappings = self.container.as_mut().and_then(|c| c.docker.as_mut()).and_then(|d| d.port_mappings.as_mut());
        let mut slots: Vec<(&mut u32, String)> = match mappings {
            Some(m) => m
                .iter_mut()
                .enumerate()
                .map(|(i, m)| (&mut m.service_port, format!("/container/docker/portMappings({i})/servicePort")))
                .collect(),
            None => self
                .port_definitions
                .get_or_insert_with(|| {
                    vec![PortDefinition {
                        port: 0,
                        protocol: tcp(),
                        name: Some("default".into()),
                        labels: BTreeMap::new(),
                    }]
                })
                .iter_mut()
                .enumerate()
                .map(|(i, p)| (&mut p.port, format!("/portDefinitions({i})/port")))
                .collect(),
        };
        let before = previous.map(AppDefinition::service_ports).unwrap_or_default();
        let mut used: std::collections::BTreeSet<u32> = taken.clone();
        used.extend(slots.iter().map(|(p, _)| **p).filter(|p| *p != 0));
        let mut candidates = range.clone().filter(|p| !taken.contains(p));
        for (i, (port, path)) in slots.iter_mut().enumerate() {
            if **port != 0 {
                continue;
            }
            let kept = before.get(i).copied().filter(|p| *p != 0 && range.contains(p) && !used.contains(p));
            let chosen = match kept {
                Some(p) => Some(p),
                None => candidates.by_ref().find(|p| !used.contains(p)),
            };
            let Some(p) = chosen else {
                return Err(Violation::new(
                    path,
                    format!("no service port is left in {}-{}", range.start(), range.end()),
                ));
            };
            used.insert(p);
            **port = p;
        }
        Ok(())
    }

    /// The app's service ports: its port definitions' ports, or its container port mappings' service ports.
    pub fn service_ports(&self) -> Vec<u32> {
        if let Some(m) = self.container.as_ref().and_then(|c| c.docker.as_ref()).and_then(|d| d.port_mappings.as_ref())
        {
            return m.iter().map(|m| m.service_port).collect();
        }
        self.port_definitions.iter().flatten().map(|p| p.port).collect()
    }

    /// How many host ports each instance needs.
    pub fn port_count(&self) -> usize {
        if let Some(mappings) =
            self.container.as_ref().and_then(|c| c.docker.as_ref()).and_then(|d| d.port_mappings.as_ref())
        {
            return mappings.len();
        }
        self.port_definitions.as_ref().map_or(1, Vec::len)
    }

    /// What identifies this app's configuration apart from its scale: instances of an older configuration
    /// are replaced, a change of `instances` alone only scales.
    pub fn config_fingerprint(&self) -> String {
        let mut bare = self.clone();
        bare.instances = 0;
        bare.version = None;
        // A restart changes only lastConfigChangeAt, and must replace the instances too.
        if let Some(info) = &mut bare.version_info {
            info.last_scaling_at.clear();
        }
        serde_json::to_string(&bare).unwrap_or_default()
    }

    /// Whether `other` differs from this definition in more than scale and server-set fields.
    pub fn same_config(&self, other: &AppDefinition) -> bool {
        let strip = |a: &AppDefinition| {
            let mut a = a.clone();
            a.instances = 0;
            a.version = None;
            a.version_info = None;
            a
        };
        strip(self) == strip(other)
    }

    /// The app's parsed id; call after [`AppDefinition::validate`] found nothing.
    pub fn app_id(&self) -> Result<AppId, String> {
        AppId::parse(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(json: &str) -> AppDefinition {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn ids_are_normalized_and_checked() {
        assert_eq!(AppId::parse("web").unwrap().as_str(), "/web");
        assert_eq!(AppId::parse("//prod//web/").unwrap().as_str(), "/prod/web");
        assert_eq!(AppId::parse("/prod/web").unwrap().task_prefix(), "prod_web");
        for bad in ["", "/", "/Web", "/we b", "/-web", "/web-", "/a/../b"] {
            assert!(AppId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(AppId::parse("/prod/web").unwrap().is_in("/prod"));
        assert!(!AppId::parse("/production/web").unwrap().is_in("/prod"));
    }

    #[test]
    fn defaults_are_marathons() {
        let a = app(r#"{"id": "/web", "cmd": "sleep 100"}"#);
        assert_eq!((a.cpus, a.mem, a.disk, a.instances), (1.0, 128.0, 0.0, 1));
        assert_eq!((a.backoff_seconds, a.backoff_factor, a.max_launch_delay_seconds), (1.0, 1.15, 3600.0));
        assert_eq!(a.kill_selection, "YOUNGEST_FIRST");
        assert_eq!(a.upgrade_strategy, UpgradeStrategy { minimum_health_capacity: 1.0, maximum_over_capacity: 1.0 });
        assert_eq!(a.unreachable_strategy.inactive_after_seconds, 0, "Keel replaces unreachable instances at once");
        assert!(a.validate().is_empty());
    }

    #[test]
    fn validation_names_each_bad_field() {
        let a = app(r#"{"id": "/Bad", "cpus": -1, "backoffFactor": 0.5, "constraints": [["hostname", "SOMETIMES"]],
                "upgradeStrategy": {"minimumHealthCapacity": 2}}"#);
        let paths: Vec<String> = a.validate().into_iter().map(|v| v.path).collect();
        assert_eq!(
            paths,
            vec!["/id", "/", "/cpus", "/backoffFactor", "/upgradeStrategy/minimumHealthCapacity", "/constraints(0)"]
        );
        assert!(app(r#"{"id": "/a", "cmd": "x", "args": ["y"]}"#).validate().iter().any(|v| v.path == "/"));
        assert!(app(r#"{"id": "/a", "container": {"docker": {"image": "busybox"}}}"#).validate().is_empty());
        let no_roles = app(r#"{"id": "/a", "cmd": "x", "acceptedResourceRoles": []}"#).validate();
        assert_eq!(no_roles.iter().map(|v| v.path.as_str()).collect::<Vec<_>>(), ["/acceptedResourceRoles"]);
        assert!(app(r#"{"id": "/a", "cmd": "x", "acceptedResourceRoles": ["*"]}"#).validate().is_empty());
        assert!(app(r#"{"id": "/a", "cmd": "x", "constraints": [["rack", "MAX_PER", "two"]]}"#).validate().len() == 1);
        let two_checks =
            app(r#"{"id": "/a", "cmd": "x", "healthChecks": [{"protocol": "TCP"}, {"protocol": "HTTP"}]}"#);
        assert_eq!(
            two_checks.validate(),
            vec![Violation::new("/healthChecks", "Keel runs one health check per app; got 2")]
        );
        assert!(app(r#"{"id": "/a", "cmd": "x", "healthChecks": [{"protocol": "TCP"}]}"#).validate().is_empty());
        assert!(
            app(r#"{"id": "/a", "cmd": "x", "constraints": [["hostname", "UNIQUE"], ["rack", "CLUSTER", "r1"]]}"#)
                .validate()
                .is_empty()
        );
    }

    #[test]
    fn ids_are_bounded() {
        assert!(AppId::parse(&"a/".repeat(16)).is_ok());
        assert!(AppId::parse(&"/a".repeat(17)).unwrap_err().contains("at most 16"));
        assert!(AppId::parse(&"/a".repeat(3000)).is_err());
        assert!(AppId::parse(&"x".repeat(100_000)).unwrap_err().contains("at most 150"));
        assert!(AppId::parse(&"x".repeat(64)).unwrap_err().contains("longer than 63"));
        let long = format!("/{}/{}/{}", "a".repeat(60), "b".repeat(60), "c".repeat(40));
        assert!(AppId::parse(&long).unwrap_err().contains("at most 150"));
        let longest = format!("/{}/{}/{}", "a".repeat(60), "b".repeat(60), "c".repeat(27));
        let id = AppId::parse(&longest).unwrap();
        let task = format!("{}.{}", id.task_prefix(), uuid::Uuid::new_v4());
        assert!(keel_core::ids::TaskId::parse(task).is_ok(), "the longest app id still makes a valid task id");
    }

    #[test]
    fn numbers_are_range_checked() {
        let paths = |json: &str| app(json).validate().into_iter().map(|v| v.path).collect::<Vec<_>>();
        assert_eq!(paths(r#"{"id": "/a", "cmd": "x", "cpus": 2e15}"#), ["/cpus"]);
        assert_eq!(paths(r#"{"id": "/a", "cmd": "x", "cpus": 0.0004}"#), ["/cpus"]);
        assert_eq!(paths(r#"{"id": "/a", "cmd": "x", "mem": 1e300}"#), ["/mem"]);
        assert_eq!(paths(r#"{"id": "/a", "cmd": "x", "backoffSeconds": 1e308}"#), ["/backoffSeconds"]);
        assert_eq!(paths(r#"{"id": "/a", "cmd": "x", "maxLaunchDelaySeconds": 1e308}"#), ["/maxLaunchDelaySeconds"]);
        assert_eq!(paths(r#"{"id": "/a", "cmd": "x", "backoffFactor": 1e10}"#), ["/backoffFactor"]);
        assert_eq!(paths(r#"{"id": "/a", "cmd": "x", "instances": 4000000000}"#), ["/instances"]);
        assert_eq!(
            paths(r#"{"id": "/a", "cmd": "x", "taskKillGracePeriodSeconds": 18446744073709551615}"#),
            ["/taskKillGracePeriodSeconds"]
        );
        assert_eq!(
            paths(
                r#"{"id": "/a", "cmd": "x", "unreachableStrategy": {"inactiveAfterSeconds": 1, "expungeAfterSeconds": 18446744073709551615}}"#
            ),
            ["/unreachableStrategy/expungeAfterSeconds"]
        );
        assert_eq!(
            paths(r#"{"id": "/a", "cmd": "x", "portDefinitions": [{"port": 70000}]}"#),
            ["/portDefinitions(0)/port"]
        );
        assert_eq!(
            paths(
                r#"{"id": "/a", "container": {"docker": {"image": "b", "portMappings": [{"containerPort": 99999}]}}}"#
            ),
            ["/container/docker/portMappings(0)/containerPort"]
        );
        assert_eq!(
            paths(r#"{"id": "/a", "cmd": "x", "container": {"docker": {"image": " "}}}"#),
            ["/container/docker/image"]
        );
        assert_eq!(
            paths(r#"{"id": "/a", "cmd": "x", "healthChecks": [{"protocol": "HTTP", "portIndex": 1}]}"#),
            ["/healthChecks(0)/portIndex"]
        );
        assert_eq!(
            paths(r#"{"id": "/a", "cmd": "x", "portDefinitions": [], "healthChecks": [{"protocol": "TCP"}]}"#),
            ["/healthChecks(0)/portIndex"]
        );
        assert_eq!(
            paths(
                r#"{"id": "/a", "cmd": "x", "healthChecks": [{"protocol": "HTTP", "intervalSeconds": 18446744073709551615}]}"#
            ),
            ["/healthChecks(0)/intervalSeconds"]
        );
        assert!(paths(r#"{"id": "/a", "cmd": "x", "portDefinitions": [{"port": 0}, {"port": 0}], "healthChecks": [{"portIndex": 1}]}"#).is_empty());
    }

    #[test]
    fn service_ports_are_assigned_uniquely_and_kept_across_updates() {
        let mut a = app(r#"{"id": "/a", "cmd": "x"}"#);
        let taken: std::collections::BTreeSet<u32> = [10000, 10002].into();
        a.assign_service_ports(None, &taken, 10000..=20000).unwrap();
        let defs = a.port_definitions.clone().unwrap();
        assert_eq!((defs.len(), defs[0].port, defs[0].name.as_deref()), (1, 10001, Some("default")));

        let mut b = app(r#"{"id": "/b", "cmd": "x", "portDefinitions": [{"port": 0}, {"port": 10003}, {"port": 0}]}"#);
        b.assign_service_ports(None, &taken, 10000..=20000).unwrap();
        assert_eq!(b.service_ports(), [10001, 10003, 10004]);
        let mut b2 = app(r#"{"id": "/b", "cmd": "y", "portDefinitions": [{"port": 0}, {"port": 0}, {"port": 0}]}"#);
        b2.assign_service_ports(Some(&b), &taken, 10000..=20000).unwrap();
        assert_eq!(b2.service_ports(), [10001, 10003, 10004], "an update keeps the app's ports");

        let mut d =
            app(r#"{"id": "/d", "container": {"docker": {"image": "i", "portMappings": [{"containerPort": 80}]}}}"#);
        d.assign_service_ports(None, &taken, 10000..=20000).unwrap();
        assert_eq!((d.service_ports(), d.port_definitions.is_none()), (vec![10001], true));

        let mut none = app(r#"{"id": "/n", "cmd": "x", "portDefinitions": []}"#);
        none.assign_service_ports(None, &taken, 10000..=20000).unwrap();
        assert!(none.service_ports().is_empty(), "an empty list means no ports");

        let mut full = app(r#"{"id": "/f", "cmd": "x"}"#);
        let err = full.assign_service_ports(None, &taken, 10000..=10000).unwrap_err();
        assert_eq!(err.path, "/portDefinitions(0)/port");
    }
}
