//! Helpers for tests that need real infrastructure. They never skip silently: with `CI=true` a missing
//! PostgreSQL is a failure, and elsewhere the skip is printed.

/// Whether missing infrastructure must fail the test rather than skip it.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A fresh, empty PostgreSQL database for one test, from `KEEL_TEST_POSTGRES_URL` (an admin URL that may
/// create databases). `None` (after saying so) when no server is configured outside CI.
pub async fn postgres_database() -> Option<String> {
    use sqlx::Connection;
    let Ok(admin) = std::env::var("KEEL_TEST_POSTGRES_URL") else {
        assert!(!required(), "KEEL_TEST_POSTGRES_URL is not set but CI=true: PostgreSQL tests must run");
        eprintln!("skipping PostgreSQL half of this test: KEEL_TEST_POSTGRES_URL is not set (run .ci/test)");
        return None;
    };
    let name = format!("keel_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to KEEL_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
    Some(format!("{base}/{name}"))
}

/// Replaces the section `name` of a Markdown report (between `<!-- bench:NAME -->` and
/// `<!-- /bench:NAME -->`), appending it when it is not there yet, so that each benchmark keeps its own
/// part of `docs/benchmarks.md` up to date.
pub fn write_report_section(path: &std::path::Path, name: &str, body: &str) -> std::io::Result<()> {
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let current = std::fs::read_to_string(path)
        .unwrap_or_else(|_| "# Benchmarks\n\nWritten by `cargo bench`; each section by its own benchmark.\n".into());
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let updated = match (current.find(&start), current.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{section}{}", &current[..s], &current[e + end.len()..]),
        _ => format!("{}\n{section}\n", current.trim_end()),
    };
    std::fs::write(path, updated)
}

#[cfg(test)]
mod tests {
    #[test]
    fn report_sections_are_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.md");
        super::write_report_section(&path, "a", "one").unwrap();
        super::write_report_section(&path, "b", "two").unwrap();
        super::write_report_section(&path, "a", "three").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("<!-- bench:a -->\nthree\n<!-- /bench:a -->"), "{text}");
        assert!(text.contains("two") && !text.contains("one"), "{text}");
        assert!(text.find("bench:a").unwrap() < text.find("bench:b").unwrap());
    }
}
