//! Records the commit the binary is built from, for `GET /version`: its hash and its time (the commit's
//! time, not the build's, so that a build is reproducible). Outside a git checkout both are unknown.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let sha = git(&["rev-parse", "HEAD"]).filter(|s| s.len() == 40).unwrap_or_default();
    let time = git(&["log", "-1", "--format=%ct"]).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
    println!("cargo:rustc-env=KEEL_GIT_SHA={sha}");
    println!("cargo:rustc-env=KEEL_COMMIT_TIME={time}");
    // Run again after a commit or a checkout, not on every build.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
