//! Databases for tests: a fresh PostgreSQL database per test, on the server
//! the test setup started (`scripts/pg-test-cluster`), named by
//! `KBS_TEST_POSTGRES` (no password), `KBS_TEST_POSTGRES_PASSWORD` and
//! `KBS_TEST_POSTGRES_CA`. Without that server the PostgreSQL half of a test
//! is skipped with a message, except under CI (`CI` set), where it fails.

// A test helper: a broken test server is the test's failure, said where it broke.
#![allow(clippy::expect_used)]

use super::PgOptions;

/// Options for a new, empty database of its own, reached over TLS checked
/// against the test server's CA; `None` (after saying so) when no test
/// server is configured outside CI.
pub fn fresh_postgres(test: &str) -> Option<PgOptions> {
    let Ok(base) = std::env::var("KBS_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: KBS_TEST_POSTGRES is not set; scripts/test starts the PostgreSQL server"
        );
        eprintln!("{test}: PostgreSQL half skipped: KBS_TEST_POSTGRES is not set");
        return None;
    };
    let password = std::env::var("KBS_TEST_POSTGRES_PASSWORD").ok();
    let ca = std::env::var_os("KBS_TEST_POSTGRES_CA").map(std::path::PathBuf::from);
    let name = format!("kbs_t_{}", uuid::Uuid::new_v4().simple());
    let admin = {
        let mut c: postgres::Config = base.parse().expect("KBS_TEST_POSTGRES parses");
        if let Some(p) = &password {
            c.password(p);
        }
        c
    };
    let create = name.clone();
    std::thread::spawn(move || {
        let mut client = admin
            .connect(postgres::NoTls)
            .expect("test server reachable");
        client
            .batch_execute(&format!("CREATE DATABASE {create}"))
            .expect("CREATE DATABASE");
    })
    .join()
    .expect("database created");
    let config: postgres::Config = base.parse().expect("KBS_TEST_POSTGRES parses");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("kbs");
    let sslmode = if ca.is_some() { "require" } else { "disable" };
    Some(PgOptions {
        url: format!("postgres://{user}@{host}:{port}/{name}?sslmode={sslmode}"),
        password: password.map(zeroize::Zeroizing::new),
        ca_file: ca,
        pool_size: 4,
    })
}
