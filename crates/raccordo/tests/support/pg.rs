//! The local PostgreSQL of the tests that need one (`postgres` feature): a schema per test,
//! dropped at the end.

const URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

/// `RACCORDO_TEST_POSTGRES`, or the local server.
pub fn database() -> String {
    std::env::var("RACCORDO_TEST_POSTGRES").unwrap_or_else(|_| URL.into())
}

/// A schema name for one test's hub, or `None` (after saying so) without PostgreSQL outside
/// CI; under CI a missing server fails the test.
pub fn fresh_schema() -> Option<String> {
    if std::net::TcpStream::connect("127.0.0.1:5432").is_err()
        && std::env::var_os("RACCORDO_TEST_POSTGRES").is_none()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL cannot be reached at 127.0.0.1:5432"
        );
        eprintln!("SKIPPED: no PostgreSQL on 127.0.0.1:5432; CI runs this");
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    Some(format!(
        "raccordo_test_{}_{}",
        now.as_secs(),
        now.subsec_nanos()
    ))
}

pub async fn drop_schema(schema: &str) {
    let (client, connection) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
