//! A database per test, made quickly from a migrated template.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// Serialises template creation across test processes (nextest runs each
/// test in its own process).
const TEMPLATE_LOCK: i64 = 0x6b696c6e_74706c74;

/// A fresh, migrated database that belongs to one test. The cluster is
/// thrown away after the run, so databases are not dropped one by one.
#[derive(Debug)]
pub struct TestDb {
    url: String,
    name: String,
    pool: PgPool,
}

/// The admin URL of the test cluster.
pub fn admin_url() -> String {
    std::env::var("KILN_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "KILN_TEST_DATABASE_URL is not set: these tests need the throwaway Postgres cluster that \
             scripts/test starts; run `scripts/test`"
        )
    })
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let cut = base.rfind('/').expect("a postgres URL has a path");
    let mut out = format!("{}/{db}", &base[..cut]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    /// A new database, migrated to the current schema.
    pub async fn new() -> Result<TestDb> {
        let admin = admin_url();
        let template = format!("kiln_template_v{}", kiln_queue::SCHEMA_VERSION);
        let mut conn = PgConnection::connect(&admin).await.context("connect to the test cluster")?;
        ensure_template(&mut conn, &admin, &template).await?;

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let name = format!("kiln_test_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos);
        // Copies from one template must not overlap a connection to it; the
        // template is never connected to after it is made.
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut conn)
            .await
            .context("create the test database")?;
        conn.close().await?;
        let url = with_database(&admin, &name);
        let pool = PgPoolOptions::new().max_connections(20).connect(&url).await?;
        Ok(TestDb { url, name, pool })
    }

    /// The database's URL, for spawned binaries and config files.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A new, empty (never migrated) database beside this one; its URL.
    /// `tag` must be a plain identifier.
    pub async fn empty_sibling(&self, tag: &str) -> String {
        let name = format!("{}_{tag}", self.name);
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&self.pool).await.expect("create an empty database");
        with_database(&self.url, &name)
    }

    /// How many sessions are waiting for an advisory lock in this database
    /// right now (Postgres' own view, `pg_locks`): a way to see that a
    /// process is blocked on a lock without timing it.
    pub async fn advisory_waiters(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&self.pool)
        .await
        .expect("read pg_locks")
    }

    /// A queue over this database with the given settings.
    pub fn queue(&self, settings: kiln_queue::QueueSettings) -> kiln_queue::Queue {
        kiln_queue::Queue::from_pool(self.pool.clone(), settings)
    }
}

async fn ensure_template(conn: &mut PgConnection, admin: &str, template: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_lock($1)").bind(TEMPLATE_LOCK).execute(&mut *conn).await?;
    let result = async {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(template)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            let building = format!("{template}_building");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {building}")).execute(&mut *conn).await?;
            sqlx::query(&format!("CREATE DATABASE {building}")).execute(&mut *conn).await?;
            kiln_queue::migrate(&with_database(admin, &building)).await.context("migrate the template")?;
            sqlx::query(&format!("ALTER DATABASE {building} RENAME TO {template}")).execute(&mut *conn).await?;
        }
        anyhow::Ok(())
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(TEMPLATE_LOCK).execute(&mut *conn).await?;
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_name() {
        assert_eq!(super::with_database("postgres://u@h:5/postgres", "x"), "postgres://u@h:5/x");
        assert_eq!(
            super::with_database("postgres://u@h:5/postgres?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
    }
}
