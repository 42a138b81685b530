//! The examples of "write your own framework" (README), run as users would run them against a real
//! `keel dev`: examples/batch_files.rs on Keel's Rust driver here; examples/pymesos_framework.py, on
//! pymesos over Mesos's v1 API, in the compatibility suite (tests/compat/test_pymesos.py).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// The example's binary, which `cargo test` builds beside the tests.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_owned();
    let path = deps.parent().unwrap().join("examples").join(name);
    assert!(path.is_file(), "{} is not built (cargo test builds the examples)", path.display());
    path
}

#[tokio::test]
async fn the_rust_batch_framework_counts_every_file_in_parallel_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevProc::start(dir.path(), &[]).await;
    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    for (i, text) in ["one line\n", "two\nlines here\n", "", "a name; with spaces\n"].iter().enumerate() {
        let name = if i == 3 { "odd name; rm -rf x.txt".to_owned() } else { format!("file-{i}.txt") };
        std::fs::write(input.join(name), text).unwrap();
    }
    let out = tokio::task::spawn_blocking({
        let (bin, base, token, input) = (example("batch_files"), dev.base.clone(), dev.token.clone(), input.clone());
        move || {
            Command::new(bin)
                .args(["--master", &base, "--timeout", "90"])
                .arg(&input)
                .env("KEEL_TOKEN", token)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the example failed:\n{stderr}");
    assert!(stderr.contains("counted 4 files"), "{stderr}");
    // Each file's answer is `wc`'s, collected from its task's stdout.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for line in lines {
        let (file, counts) = line.split_once('\t').unwrap();
        let expected = Command::new("wc").arg(file).output().unwrap();
        assert_eq!(counts, String::from_utf8_lossy(&expected.stdout).trim(), "{file}");
    }
    // The framework tore itself down: the master forgets it.
    wait_for("the batch framework to be gone", std::time::Duration::from_secs(20), || async {
        let state = get(&format!("{}/master/state", dev.base), &dev.token)
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()?;
        (!state["frameworks"].as_array()?.iter().any(|f| f["name"] == "batch-files")).then_some(())
    })
    .await;
}
