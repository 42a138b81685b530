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

/// A hierarchical app id such as `/prod/web`: absolute, with segments of lowercase letters, digits, dots and
/// inner hyphens. Duplicate slashes collapse, as clients build paths like `/v2/apps//prod/web`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AppId(String);

impl AppId {
    /// Parses an id, relative ids being taken as absolute.
    pub fn parse(raw: &str) -> Result<AppId, String> {
        let segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
        if segments.is_empty() {
            return Err("the id must not be empty".into());
        }
        for s in &segments {
            let ok_chars = s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            let ok_ends = !s.starts_with(['-', '.']) && !s.ends_with(['-', '.']);
            if !ok_chars || !ok_ends || *s == "." || *s == ".." {
                return Err(format!(
                    "path segment '{s}' must consist of lowercase letters, digits, hyphens and dots, and start and end with a letter or digit"
                ));
            }
        }
        Ok(AppId(format!("/{}", segments.join("/"))))
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

fn default_inactive() -> u64 {
    300
}
fn default_expunge() -> u64 {
    600
}

impl Default for UnreachableStrategy {
    fn default() -> Self {
        UnreachableStrategy { inactive_after_seconds: 300, expunge_after_seconds: 600 }
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
    #[serde(default)]
    pub env: BTreeMap<String, serde_json::Value>,
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
    fn new(path: &str, error: impl Into<String>) -> Violation {
        Violation { path: path.into(), errors: vec![error.into()] }
    }
}

const OPERATORS: [&str; 7] = ["UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER", "IS"];

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
        if !(self.cpus.is_finite() && self.cpus >= 0.0) {
            v.push(Violation::new("/cpus", "got a negative or invalid number, expected 0 or more"));
        }
        if !(self.mem.is_finite() && self.mem >= 0.0) {
            v.push(Violation::new("/mem", "got a negative or invalid number, expected 0 or more"));
        }
        if !(self.disk.is_finite() && self.disk >= 0.0) {
            v.push(Violation::new("/disk", "got a negative or invalid number, expected 0 or more"));
        }
        if self.cpus == 0.0 && self.mem == 0.0 {
            v.push(Violation::new("/cpus", "an app needs some cpus or mem"));
        }
        if self.accepted_resource_roles.as_ref().is_some_and(|r| r.is_empty() || r.iter().any(|r| r.is_empty())) {
            v.push(Violation::new("/acceptedResourceRoles", "must name at least one role, and no empty one"));
        }
        if !(self.backoff_factor.is_finite() && self.backoff_factor >= 1.0) {
            v.push(Violation::new("/backoffFactor", "got a number below 1.0, expected 1.0 or more"));
        }
        if !(self.backoff_seconds.is_finite() && self.backoff_seconds >= 0.0) {
            v.push(Violation::new("/backoffSeconds", "got a negative number, expected 0 or more"));
        }
        if !(self.max_launch_delay_seconds.is_finite() && self.max_launch_delay_seconds >= 0.0) {
            v.push(Violation::new("/maxLaunchDelaySeconds", "got a negative number, expected 0 or more"));
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
        if un.expunge_after_seconds < un.inactive_after_seconds {
            v.push(Violation::new("/unreachableStrategy/expungeAfterSeconds", "must be at least inactiveAfterSeconds"));
        }
        for (i, c) in self.constraints.iter().enumerate() {
            let path = format!("/constraints({i})");
            match c.get(1).map(String::as_str) {
                Some(op) if OPERATORS.contains(&op) => {
                    let needs_value = matches!(op, "LIKE" | "UNLIKE" | "MAX_PER" | "IS" | "CLUSTER");
                    if c.len() < 2 || c.len() > 3 || (needs_value && op != "CLUSTER" && c.len() != 3) {
                        v.push(Violation::new(
                            &path,
                            format!(
                                "{op} takes a field and {}",
                                if needs_value { "a value" } else { "an optional value" }
                            ),
                        ));
                    }
                    if op == "MAX_PER" && c.get(2).is_some_and(|n| n.parse::<u32>().is_err()) {
                        v.push(Violation::new(&path, "MAX_PER takes a whole number"));
                    }
                }
                _ => v.push(Violation::new(
                    &path,
                    format!("constraint operator must be one of {}", OPERATORS.join(", ")),
                )),
            }
        }
        if self.health_checks.len() > 1 {
            // The agents run one check per task (`TaskSpec::health_check`); a second one would be ignored.
            v.push(Violation::new(
                "/healthChecks",
                format!("Keel runs one health check per app; got {}", self.health_checks.len()),
            ));
        }
        for (i, h) in self.health_checks.iter().enumerate() {
            let protocol = h.protocol.trim_start_matches("MESOS_");
            if !["HTTP", "HTTPS", "TCP", "COMMAND"].contains(&protocol) {
                v.push(Violation::new(&format!("/healthChecks({i})/protocol"), "must be HTTP, HTTPS, TCP or COMMAND"));
            }
            if protocol == "COMMAND" && h.command.is_none() {
                v.push(Violation::new(
                    &format!("/healthChecks({i})/command"),
                    "a COMMAND health check needs a command",
                ));
            }
            if h.interval_seconds == 0 || h.timeout_seconds == 0 {
                v.push(Violation::new(
                    &format!("/healthChecks({i})"),
                    "intervalSeconds and timeoutSeconds must be positive",
                ));
            }
        }
        v
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
        assert_eq!(a.unreachable_strategy.inactive_after_seconds, 300);
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
}
