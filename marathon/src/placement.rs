//! Placement constraints, as a pure function: may one more instance of an app go on this agent, given where
//! its other instances are?
//!
//! Operators: UNIQUE, CLUSTER, GROUP_BY, LIKE, UNLIKE, MAX_PER and IS; fields: `hostname` and any agent
//! attribute. An agent that lacks an attribute fails every constraint on it except UNLIKE.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use keel_core::api::Offer;
use keel_core::ids::TaskId;
use keel_core::resources::{PortSet, Resources, Scalar};
use keel_core::secrets::Secrets;
use keel_core::task::{self, CommandSpec, DockerSpec, HealthCheck, HealthCheckKind, Network, TaskSpec};

use crate::app::{AppDefinition, AppId};

/// What a constraint sees of an agent: its hostname and attributes.
pub struct Place<'a> {
    pub hostname: &'a str,
    pub attributes: &'a [(String, String)],
}

impl Place<'_> {
    fn field(&self, name: &str) -> Option<&str> {
        if name == "hostname" {
            return Some(self.hostname);
        }
        self.attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The operators a constraint may use.
pub const OPERATORS: [&str; 7] = ["UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER", "IS"];

/// How big a compiled LIKE/UNLIKE pattern may get, so that a hostile pattern cannot take the memory.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A constraint checked once, at validation: its operator known, its number parsed and its pattern
/// compiled (with the `regex` crate, which matches in linear time, however the pattern is written).
#[derive(Clone, Debug)]
pub struct Constraint {
    field: String,
    op: Op,
    value: Option<String>,
}

#[derive(Clone, Debug)]
enum Op {
    Unique,
    Cluster,
    GroupBy(usize),
    Like(regex::Regex),
    Unlike(regex::Regex),
    MaxPer(usize),
    Is,
}

impl Constraint {
    /// Parses Marathon's `[field, OPERATOR, value?]`.
    pub fn parse(c: &[String]) -> Result<Constraint, String> {
        let (Some(field), Some(op)) = (c.first(), c.get(1)) else {
            return Err(format!(
                "a constraint is [field, operator, value?]; operator must be one of {}",
                OPERATORS.join(", ")
            ));
        };
        if c.len() > 3 {
            return Err(format!("{op} takes a field and at most one value"));
        }
        let value = c.get(2).cloned();
        let need = |what: &str| value.clone().ok_or_else(|| format!("{op} takes a field and {what}"));
        let number =
            |v: &str| v.parse::<u32>().map(|n| n as usize).map_err(|_| format!("{op} takes a whole number, got '{v}'"));
        let pattern = |v: &str| {
            regex::RegexBuilder::new(&format!("^(?:{v})$"))
                .size_limit(PATTERN_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("{op} takes a regular expression: {e}"))
        };
        let op = match op.as_str() {
            "UNIQUE" => Op::Unique,
            "CLUSTER" => Op::Cluster,
            "GROUP_BY" => Op::GroupBy(value.as_deref().map(number).transpose()?.unwrap_or(0)),
            "LIKE" => Op::Like(pattern(&need("a value")?)?),
            "UNLIKE" => Op::Unlike(pattern(&need("a value")?)?),
            "MAX_PER" => Op::MaxPer(number(&need("a value")?)?),
            "IS" => {
                need("a value")?;
                Op::Is
            }
            _ => return Err(format!("constraint operator must be one of {}", OPERATORS.join(", "))),
        };
        Ok(Constraint { field: field.clone(), op, value })
    }

    /// Parses every constraint of an app, which validation has already accepted; any that fail are left
    /// out, with the reason logged.
    pub fn parse_all(constraints: &[Vec<String>]) -> Vec<Constraint> {
        constraints
            .iter()
            .filter_map(|c| {
                Constraint::parse(c)
                    .inspect_err(|e| tracing::warn!(constraint = ?c, error = %e, "stored constraint ignored"))
                    .ok()
            })
            .collect()
    }
}

/// Whether an instance may be placed at `candidate`, given the places of the app's current instances.
/// Returns the first violated constraint, for "why is my app waiting".
pub fn check(constraints: &[Constraint], candidate: &Place<'_>, existing: &[Place<'_>]) -> Result<(), String> {
    for c in constraints {
        let field = c.field.as_str();
        let value = c.value.as_deref();
        let here = candidate.field(field);
        let ok = match &c.op {
            Op::Unique => here.is_some_and(|h| existing.iter().all(|e| e.field(field) != Some(h))),
            Op::Cluster => match (here, value) {
                (Some(h), Some(v)) => h == v,
                (Some(h), None) => existing.iter().all(|e| e.field(field) == Some(h)),
                (None, _) => false,
            },
            Op::Is => here.is_some_and(|h| Some(h) == value),
            Op::Like(re) => here.is_some_and(|h| re.is_match(h)),
            Op::Unlike(re) => here.is_none_or(|h| !re.is_match(h)),
            Op::MaxPer(max) => {
                here.is_some_and(|h| existing.iter().filter(|e| e.field(field) == Some(h)).count() < *max)
            }
            Op::GroupBy(groups) => match here {
                None => false,
                Some(h) => {
                    // Spread evenly: place here only if this value has no more instances than the least used
                    // value seen so far (values with none count as zero).
                    let mut counts: HashMap<&str, usize> = HashMap::new();
                    for e in existing {
                        if let Some(v) = e.field(field) {
                            *counts.entry(v).or_default() += 1;
                        }
                    }
                    let here_count = counts.get(h).copied().unwrap_or(0);
                    let min = if counts.len() < *groups || counts.is_empty() {
                        0
                    } else {
                        counts.values().copied().min().unwrap_or(0)
                    };
                    here_count <= min
                }
            },
        };
        if !ok {
            let op = match &c.op {
                Op::Unique => "UNIQUE",
                Op::Cluster => "CLUSTER",
                Op::GroupBy(_) => "GROUP_BY",
                Op::Like(_) => "LIKE",
                Op::Unlike(_) => "UNLIKE",
                Op::MaxPer(_) => "MAX_PER",
                Op::Is => "IS",
            };
            return Err(format!("{field}:{op}{}", value.map(|v| format!(":{v}")).unwrap_or_default()));
        }
    }
    Ok(())
}

/// Builds one task of app `app_id`, with id `{app}.{unique}`, to fit in what is `left` of `offer`, or says why it does not fit, with
/// Marathon's reason (`InsufficientCpus`, `UnfulfilledConstraint`, …). `existing` lists where the app's
/// instances that count are, for its `constraints`; `secrets` resolves the secrets its environment names.
#[allow(clippy::too_many_arguments)]
pub fn fit<'a>(
    app: &AppDefinition,
    app_id: &AppId,
    unique: &str,
    offer: &Offer,
    left: &Resources,
    constraints: &[Constraint],
    existing: impl FnOnce() -> Vec<Place<'a>>,
    secrets: &Secrets,
) -> Result<(TaskSpec, Vec<u16>), String> {
    // Validation accepted only amounts the core can count; a stored one it cannot is never taken for 0.
    let scalar = |v: f64| Scalar::from_f64(v).map_err(|_| "InvalidResources".to_owned());
    let (cpus, mem, disk) = (scalar(app.cpus)?, scalar(app.mem)?, scalar(app.disk)?);
    if left.cpus < cpus {
        return Err("InsufficientCpus".into());
    }
    if left.mem < mem {
        return Err("InsufficientMemory".into());
    }
    if left.disk < disk {
        return Err("InsufficientDisk".into());
    }
    let docker = app.container.as_ref().and_then(|c| c.docker.as_ref());
    if docker.is_some() && !offer.docker {
        // Not one of Marathon's reasons: Keel agents may run without a Docker engine.
        return Err("NoDockerOnAgent".into());
    }
    if app.accepted_resource_roles.as_ref().is_some_and(|roles| !roles.iter().any(|r| r == "*")) {
        // Every offer Keel makes is of unreserved resources.
        return Err("UnfulfilledRole".into());
    }
    let ports: Vec<u16> = if app.require_ports {
        // The app names its host ports: only those will do.
        let wanted: Vec<u16> =
            app.port_definitions.iter().flatten().filter_map(|p| u16::try_from(p.port).ok()).collect();
        if wanted.iter().any(|p| *p == 0 || !left.ports.contains_port(*p)) {
            return Err("InsufficientPorts".into());
        }
        wanted
    } else {
        left.ports.iter().take(app.port_count()).collect()
    };
    if ports.len() < app.port_count() {
        return Err("InsufficientPorts".into());
    }
    if !constraints.is_empty() {
        let here = Place { hostname: &offer.hostname, attributes: &offer.attributes };
        check(constraints, &here, &existing()).map_err(|_| "UnfulfilledConstraint".to_owned())?;
    }

    // Reasons are counted per kind for the queue: never put the (random) task id in one.
    let task_id =
        TaskId::parse(format!("{}.{unique}", app_id.task_prefix())).map_err(|_| "InvalidTaskId".to_owned())?;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &app.env {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            v => {
                let key = v["secret"].as_str().unwrap_or_default();
                let source = app.secrets.get(key).map(|s| s.source.as_str()).unwrap_or_default();
                secrets.get(source).ok_or_else(|| "SecretNotFound".to_owned())?
            }
        };
        env.insert(k.clone(), value);
    }
    for (i, p) in ports.iter().enumerate() {
        env.insert(format!("PORT{i}"), p.to_string());
    }
    if let Some(p) = ports.first() {
        env.insert("PORT".into(), p.to_string());
    }
    env.insert("PORTS".into(), ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","));
    env.insert("HOST".into(), offer.hostname.clone());
    env.insert("MARATHON_APP_ID".into(), app_id.to_string());
    env.insert("MARATHON_APP_VERSION".into(), app.version.clone().unwrap_or_default());
    env.insert("MESOS_TASK_ID".into(), task_id.to_string());
    let (value, shell, arguments) = match (&app.cmd, &app.args) {
        (Some(cmd), _) => (cmd.clone(), true, vec![]),
        (None, Some(args)) if !args.is_empty() => (args[0].clone(), false, args[1..].to_vec()),
        _ => (String::new(), true, vec![]),
    };
    let container = docker.map(|d| DockerSpec {
        image: d.image.clone(),
        force_pull: d.force_pull_image,
        network: if d.network.as_deref() == Some("BRIDGE") { Network::Bridge } else { Network::Host },
        port_mappings: d
            .port_mappings
            .iter()
            .flatten()
            .zip(&ports)
            .map(|(m, host)| task::PortMapping {
                host_port: *host,
                container_port: m.container_port as u16,
                protocol: m.protocol.clone(),
            })
            .collect(),
        volumes: vec![],
    });
    let health_check = app.health_checks.first().and_then(|h| {
        let kind = match h.protocol.trim_start_matches("MESOS_") {
            "HTTP" | "HTTPS" => HealthCheckKind::Http {
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                port_index: h.port_index.unwrap_or(0) as usize,
            },
            "TCP" => HealthCheckKind::Tcp { port_index: h.port_index.unwrap_or(0) as usize },
            "COMMAND" => HealthCheckKind::Command {
                command: h
                    .command
                    .as_ref()
                    .and_then(|c| c.get("value").and_then(|v| v.as_str()).or(c.as_str()))
                    .unwrap_or("true")
                    .to_owned(),
            },
            _ => return None,
        };
        Some(HealthCheck {
            kind,
            grace_period: Duration::from_secs(h.grace_period_seconds),
            interval: Duration::from_secs(h.interval_seconds),
            timeout: Duration::from_secs(h.timeout_seconds),
            max_consecutive_failures: h.max_consecutive_failures,
        })
    });
    let resources =
        Resources { cpus, mem, disk, ports: PortSet::from_ranges(ports.iter().map(|p| (*p, *p))).unwrap_or_default() };
    let spec = TaskSpec {
        id: task_id,
        name: app_id.to_string(),
        resources,
        command: CommandSpec { value, shell, arguments, env },
        labels: app.labels.clone(),
        kill_grace: app.task_kill_grace_period_seconds.map(Duration::from_secs),
        container,
        health_check,
        user: app.user.clone().filter(|u| !u.is_empty()),
    };
    spec.validate().map_err(|e| e.to_string())?;
    Ok((spec, ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(parts: &[&str]) -> Constraint {
        Constraint::parse(&parts.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn attrs(rack: &str) -> Vec<(String, String)> {
        vec![("rack".into(), rack.into())]
    }

    #[test]
    fn unique_max_per_and_cluster() {
        let a1 = attrs("r1");
        let a2 = attrs("r2");
        let h1 = Place { hostname: "h1", attributes: &a1 };
        let h2 = Place { hostname: "h2", attributes: &a2 };
        let h1b = Place { hostname: "h1", attributes: &a1 };
        assert!(check(&[c(&["hostname", "UNIQUE"])], &h2, &[h1b]).is_ok());
        let h1b = Place { hostname: "h1", attributes: &a1 };
        assert_eq!(check(&[c(&["hostname", "UNIQUE"])], &h1, &[h1b]), Err("hostname:UNIQUE".into()));
        let e = [Place { hostname: "x", attributes: &a1 }];
        assert!(check(&[c(&["rack", "MAX_PER", "2"])], &h1, &e).is_ok());
        let e = [Place { hostname: "x", attributes: &a1 }, Place { hostname: "y", attributes: &a1 }];
        assert!(check(&[c(&["rack", "MAX_PER", "2"])], &h1, &e).is_err());
        assert!(check(&[c(&["rack", "CLUSTER", "r2"])], &h2, &[]).is_ok());
        assert!(check(&[c(&["rack", "CLUSTER", "r2"])], &h1, &[]).is_err());
        let e = [Place { hostname: "x", attributes: &a1 }];
        assert!(check(&[c(&["rack", "CLUSTER"])], &h2, &e).is_err(), "CLUSTER without a value sticks to the first");
        assert!(check(&[c(&["rack", "IS", "r1"])], &h1, &[]).is_ok());
        assert!(check(&[c(&["zone", "IS", "a"])], &h1, &[]).is_err(), "a missing attribute fails");
    }

    #[test]
    fn like_unlike_and_group_by() {
        let a1 = attrs("rack-12");
        let p = Place { hostname: "web-3.example", attributes: &a1 };
        assert!(check(&[c(&["hostname", "LIKE", "web-[0-9].*"])], &p, &[]).is_ok());
        assert!(check(&[c(&["hostname", "LIKE", "web"])], &p, &[]).is_err(), "LIKE matches the whole value");
        assert!(check(&[c(&["rack", "UNLIKE", "rack-1[0-9]|rack-2"])], &p, &[]).is_err());
        assert!(check(&[c(&["rack", "UNLIKE", "rack-2.*"])], &p, &[]).is_ok());
        let (r1, r2) = (attrs("r1"), attrs("r2"));
        let existing = [Place { hostname: "a", attributes: &r1 }];
        let on_r1 = Place { hostname: "b", attributes: &r1 };
        let on_r2 = Place { hostname: "c", attributes: &r2 };
        assert!(check(&[c(&["rack", "GROUP_BY", "2"])], &on_r1, &existing).is_err());
        assert!(check(&[c(&["rack", "GROUP_BY", "2"])], &on_r2, &existing).is_ok());
    }

    /// A pattern that makes a backtracking matcher take exponential time (and recurse once per `*`)
    /// matches in linear time here, and bad or oversized patterns are refused at validation.
    #[test]
    fn patterns_are_compiled_once_and_match_in_linear_time() {
        let evil = format!("{}b", "a*".repeat(500));
        let host = "a".repeat(10_000);
        let p = Place { hostname: &host, attributes: &[] };
        let started = std::time::Instant::now();
        assert!(check(&[c(&["hostname", "LIKE", &evil])], &p, &[]).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
        let parse = |v: &[&str]| Constraint::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(parse(&["hostname", "LIKE", "web-[0-9"]).unwrap_err().contains("regular expression"));
        assert!(parse(&["hostname", "LIKE", &"(a{100}){100}".repeat(10)]).is_err(), "an oversized pattern");
        assert!(parse(&["hostname", "LIKE"]).is_err());
        assert!(parse(&["rack", "MAX_PER", "two"]).unwrap_err().contains("whole number"));
        assert!(parse(&["rack", "SOMETIMES"]).unwrap_err().contains("must be one of"));
    }
}
