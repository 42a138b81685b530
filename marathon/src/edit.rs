//! Changes to app definitions, as a pure step: the current definition and a change in, the new definition
//! (or the reason it is refused) out. The scheduler actor applies every change through [`apply`], one at a
//! time, so it is the only writer of app definitions: racing requests cannot lose each other's updates,
//! and the store and the actor always see changes in the same order.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::app::{AppDefinition, AppId, VersionInfo, Violation};

/// Where service ports are taken from (Marathon's default `--local_port_min` and `--local_port_max`).
pub const SERVICE_PORTS: std::ops::RangeInclusive<u32> = 10000..=20000;

/// What a request asks to do to one app.
#[derive(Clone, Debug)]
pub enum AppChange {
    /// `POST /v2/apps`: a new app; refused if it exists.
    Create(Value),
    /// `PUT /v2/apps/{id}`: with `partial` (Marathon's default) the fields given are merged into the
    /// current definition; otherwise they replace it. Creates the app if it does not exist.
    Put { raw: Value, partial: bool },
    /// `PATCH /v2/apps/{id}`: the fields given are merged into the current definition, which must exist.
    Patch(Value),
    /// `POST /v2/apps/{id}/restart`: the same definition under a new version, so every instance is replaced.
    Restart,
    /// `DELETE /v2/apps/{id}`.
    Delete,
    /// Sets the instance count, as a kill with `scale=true` does.
    Scale(u32),
    /// Restores a definition (`None`: removes the app), as cancelling a deployment does.
    Restore(Option<Box<AppDefinition>>),
}

impl AppChange {
    /// The event type Marathon publishes for a request that made this change, if any.
    pub fn api_event(&self) -> Option<&'static str> {
        match self {
            AppChange::Create(_) | AppChange::Put { .. } | AppChange::Patch(_) => Some("api_post_event"),
            _ => None,
        }
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("App '{0}' does not exist")]
    NotFound(AppId),
    #[error("An app with id [{0}] already exists.")]
    Exists(AppId),
    #[error(
        "App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/{0}'."
    )]
    Locked(String),
    #[error("App '{0}' does not exist in version {1}")]
    NoVersion(AppId, String),
    #[error("Object is not valid")]
    Invalid(Vec<Violation>),
    #[error("cannot store the app: {0}")]
    Store(#[from] crate::store::AppStoreError),
    #[error("the services framework is not running")]
    Stopped,
}

impl ChangeError {
    fn invalid(path: &str, error: impl Into<String>) -> ChangeError {
        ChangeError::Invalid(vec![Violation { path: path.into(), errors: vec![error.into()] }])
    }
}

/// The version a PUT body asks to roll back to: Marathon takes `{"version": V}` (and nothing else) as
/// "restore version V".
pub fn rollback_to(raw: &Value) -> Option<&str> {
    let obj = raw.as_object()?;
    (obj.len() == 1).then(|| obj.get("version")?.as_str()).flatten()
}

/// Parses a JSON value as a definition, telling a wrong shape apart with its reason.
fn parse(raw: Value) -> Result<AppDefinition, ChangeError> {
    serde_json::from_value(raw).map_err(|e| ChangeError::invalid("/", e.to_string()))
}

/// Merges `changes` (a JSON object) into `current`.
fn merged(current: &AppDefinition, changes: Value) -> Result<Value, ChangeError> {
    let Value::Object(changes) = changes else {
        return Err(ChangeError::invalid("/", "expected a JSON object"));
    };
    let mut base = serde_json::to_value(current).map_err(|e| ChangeError::invalid("/", e.to_string()))?;
    if let Some(obj) = base.as_object_mut() {
        // Server-set fields are never taken from the caller's merge: they are stamped below.
        obj.extend(changes.into_iter().filter(|(k, _)| k != "version" && k != "versionInfo"));
    }
    Ok(base)
}

/// Applies `change` to the app `id` whose definition is `current`, at `version` (a new, unique timestamp).
/// `taken` holds every other app's service ports. Returns the new definition, `None` if the app is gone.
pub fn apply(
    id: &AppId,
    current: Option<&AppDefinition>,
    change: AppChange,
    taken: &BTreeSet<u32>,
    version: &str,
) -> Result<Option<AppDefinition>, ChangeError> {
    let raw = match (change, current) {
        (AppChange::Create(_), Some(_)) => return Err(ChangeError::Exists(id.clone())),
        (AppChange::Create(raw), None) => raw,
        (AppChange::Put { raw, partial: true }, Some(cur)) => merged(cur, raw)?,
        (AppChange::Put { raw, .. }, _) => raw,
        (AppChange::Patch(raw), Some(cur)) => merged(cur, raw)?,
        (AppChange::Delete, Some(_)) | (AppChange::Restore(None), _) => return Ok(None),
        (AppChange::Patch(_) | AppChange::Delete | AppChange::Restart | AppChange::Scale(_), None) => {
            return Err(ChangeError::NotFound(id.clone()));
        }
        (AppChange::Restart, Some(cur)) => {
            let mut app = cur.clone();
            app.version = Some(version.to_owned());
            app.version_info =
                Some(VersionInfo { last_scaling_at: version.to_owned(), last_config_change_at: version.to_owned() });
            return Ok(Some(app));
        }
        (AppChange::Scale(n), Some(cur)) => {
            let mut app = cur.clone();
            app.instances = n;
            stamp(&mut app, Some(cur), version);
            return Ok(Some(app));
        }
        (AppChange::Restore(Some(app)), _) => {
            let mut app = *app;
            if let Some(p) = app.service_ports().into_iter().find(|p| *p != 0 && taken.contains(p)) {
                return Err(ChangeError::invalid(
                    "/portDefinitions",
                    format!("service port {p} of that version is now another app's"),
                ));
            }
            stamp(&mut app, current, version);
            return Ok(Some(app));
        }
    };
    let mut raw = raw;
    match raw.as_object_mut() {
        Some(obj) => {
            obj.insert("id".into(), Value::String(id.to_string()));
        }
        None => return Err(ChangeError::invalid("/", "expected a JSON object")),
    }
    let mut app = parse(raw)?;
    let problems = app.validate();
    if !problems.is_empty() {
        return Err(ChangeError::Invalid(problems));
    }
    app.assign_service_ports(current, taken, SERVICE_PORTS).map_err(|v| ChangeError::Invalid(vec![v]))?;
    stamp(&mut app, current, version);
    Ok(Some(app))
}

/// Stamps a definition with `version`, carrying `versionInfo` over from `previous`: a change of scale alone
/// keeps `lastConfigChangeAt`.
fn stamp(app: &mut AppDefinition, previous: Option<&AppDefinition>, version: &str) {
    app.version = None;
    app.version_info = None;
    let config_changed_at = match previous {
        Some(p) if p.same_config(app) => {
            p.version_info.as_ref().map_or_else(|| version.to_owned(), |i| i.last_config_change_at.clone())
        }
        _ => version.to_owned(),
    };
    app.version_info =
        Some(VersionInfo { last_scaling_at: version.to_owned(), last_config_change_at: config_changed_at });
    app.version = Some(version.to_owned());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id(s: &str) -> AppId {
        AppId::parse(s).unwrap()
    }

    fn create(raw: Value) -> AppDefinition {
        apply(&id("/web"), None, AppChange::Create(raw), &BTreeSet::new(), "v1").unwrap().unwrap()
    }

    #[test]
    fn put_is_partial_by_default_and_replaces_on_request() {
        let cur = create(json!({"cmd": "sleep 1", "mem": 64, "labels": {"a": "b"}}));
        let taken = BTreeSet::new();
        let scaled = apply(
            &id("/web"),
            Some(&cur),
            AppChange::Put { raw: json!({"instances": 3}), partial: true },
            &taken,
            "v2",
        )
        .unwrap()
        .unwrap();
        assert_eq!((scaled.instances, scaled.cmd.as_deref(), scaled.mem), (3, Some("sleep 1"), 64.0));
        assert_eq!(scaled.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(scaled.service_ports(), cur.service_ports(), "a scale keeps the service ports");
        let info = scaled.version_info.unwrap();
        assert_eq!((info.last_scaling_at.as_str(), info.last_config_change_at.as_str()), ("v2", "v1"));

        let replaced = apply(
            &id("/web"),
            Some(&cur),
            AppChange::Put { raw: json!({"instances": 3}), partial: false },
            &taken,
            "v2",
        );
        assert!(matches!(replaced, Err(ChangeError::Invalid(_))), "a full replacement needs a cmd");
        let created =
            apply(&id("/new"), None, AppChange::Put { raw: json!({"cmd": "x"}), partial: true }, &taken, "v1");
        assert_eq!(created.unwrap().unwrap().id, "/new", "PUT creates a missing app");
    }

    #[test]
    fn refusals_name_their_reason() {
        let cur = create(json!({"cmd": "x"}));
        let taken = BTreeSet::new();
        let web = id("/web");
        assert!(matches!(
            apply(&web, Some(&cur), AppChange::Create(json!({"cmd": "x"})), &taken, "v"),
            Err(ChangeError::Exists(_))
        ));
        assert!(matches!(apply(&web, None, AppChange::Patch(json!({})), &taken, "v"), Err(ChangeError::NotFound(_))));
        assert!(matches!(apply(&web, None, AppChange::Delete, &taken, "v"), Err(ChangeError::NotFound(_))));
        assert!(matches!(
            apply(&web, Some(&cur), AppChange::Patch(json!([1])), &taken, "v"),
            Err(ChangeError::Invalid(_))
        ));
        let Err(ChangeError::Invalid(v)) =
            apply(&web, Some(&cur), AppChange::Patch(json!({"cpus": "lots"})), &taken, "v")
        else {
            panic!("a wrong type is refused")
        };
        assert_eq!(v[0].path, "/");
        assert!(matches!(apply(&web, Some(&cur), AppChange::Delete, &taken, "v"), Ok(None)));
    }

    #[test]
    fn a_patch_cannot_set_server_fields_and_ports_avoid_other_apps() {
        let taken: BTreeSet<u32> = [10000].into();
        let app = apply(&id("/a"), None, AppChange::Create(json!({"cmd": "x"})), &taken, "v1").unwrap().unwrap();
        assert_eq!(app.service_ports(), [10001]);
        let patched = apply(&id("/a"), Some(&app), AppChange::Patch(json!({"version": "forged"})), &taken, "v2");
        assert_eq!(patched.unwrap().unwrap().version.as_deref(), Some("v2"));
    }
}

/// What is wrong with an app's secrets given what the framework holds: no secrets key at all, or a source
/// that is not stored. Pure (given the secrets).
pub fn missing_secrets(app: &AppDefinition, secrets: &keel_core::secrets::Secrets) -> Vec<Violation> {
    if app.secrets.is_empty() {
        return Vec::new();
    }
    if !secrets.enabled() {
        return vec![Violation::new("/secrets", "this framework has no secrets key (--secrets-key-file)")];
    }
    app.secrets
        .iter()
        .filter(|(_, s)| secrets.get(&s.source).is_none())
        .map(|(k, s)| {
            Violation::new(
                &format!("/secrets/{k}/source"),
                format!("no secret named '{}' is stored: store it with `keel secret put {}`", s.source, s.source),
            )
        })
        .collect()
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn secrets_must_be_declared_and_stored() {
        let app: AppDefinition = serde_json::from_value(serde_json::json!({
            "id": "/a", "cmd": "x",
            "env": {"DB": {"secret": "db"}, "PLAIN": "v"},
            "secrets": {"db": {"source": "db-password"}}
        }))
        .unwrap();
        assert!(app.validate().is_empty(), "{:?}", app.validate());
        let none = keel_core::secrets::Secrets::none();
        assert_eq!(missing_secrets(&app, &none)[0].path, "/secrets");
        let empty = keel_core::secrets::Secrets::fixed(Default::default());
        assert_eq!(missing_secrets(&app, &empty)[0].path, "/secrets/db/source");
        let stored = keel_core::secrets::Secrets::fixed([("db-password".into(), "x".into())].into());
        assert!(missing_secrets(&app, &stored).is_empty());
        let undeclared: AppDefinition =
            serde_json::from_value(serde_json::json!({"id": "/a", "cmd": "x", "env": {"DB": {"secret": "nope"}}}))
                .unwrap();
        assert_eq!(undeclared.validate()[0].path, "/env/DB");
        let bad: AppDefinition =
            serde_json::from_value(serde_json::json!({"id": "/a", "cmd": "x", "env": {"N": 5}})).unwrap();
        assert_eq!(bad.validate()[0].path, "/env/N");
    }
}
