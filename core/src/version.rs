//! What `GET /version` answers: Mesos's version document, so that Mesos's tools and clients accept Keel.
//! `version` is the Mesos API version Keel speaks, purely numeric and dotted (clients split it and parse
//! each part with `int()`); Keel's own version is `keel_version`.

use std::sync::OnceLock;

/// The Mesos version whose HTTP APIs Keel answers.
pub const MESOS_VERSION: &str = "1.11.0";

/// The commit a binary was built from.
#[derive(Clone, Debug, Default)]
pub struct Build {
    /// The commit's hash; empty when not built from a git checkout.
    pub git_sha: &'static str,
    /// The commit's time, seconds since the epoch (0 when unknown): a reproducible build time.
    pub commit_time: i64,
}

static BUILD: OnceLock<Build> = OnceLock::new();

/// Records the binary's build, once, at start.
pub fn set_build(build: Build) {
    let _ = BUILD.set(build);
}

/// The `/version` document.
pub fn document() -> serde_json::Value {
    let build = BUILD.get().cloned().unwrap_or_default();
    let date = chrono::DateTime::from_timestamp(build.commit_time, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    let mut doc = serde_json::json!({
        "version": MESOS_VERSION,
        "git_tag": MESOS_VERSION,
        "build_date": date,
        "build_time": build.commit_time,
        "build_user": "keel",
        "keel_version": env!("CARGO_PKG_VERSION"),
    });
    if !build.git_sha.is_empty() {
        doc["git_sha"] = build.git_sha.into();
    }
    doc
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_is_numeric_and_dotted_and_keels_own_is_apart() {
        let doc = super::document();
        let parts: Vec<u32> = doc["version"].as_str().unwrap().split('.').map(|p| p.parse().unwrap()).collect();
        assert_eq!(parts, [1, 11, 0]);
        assert_eq!(doc["keel_version"], env!("CARGO_PKG_VERSION"));
        assert!(doc["build_time"].is_i64());
    }
}
