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
