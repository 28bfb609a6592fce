//! Schema migrations with refinery, run only by `kiln-janitor migrate`.

use tokio_postgres::NoTls;

use crate::QueueError;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// The schema version this build expects: the newest migration's version.
pub const SCHEMA_VERSION: i64 = 4;

/// An arbitrary constant: the advisory lock that serialises migrators.
const MIGRATION_LOCK: i64 = 0x6b696c6e_6d696772;

/// Apply every pending migration. Idempotent; concurrent callers wait for
/// each other on an advisory lock, so two janitors starting together do not
/// trip over each other. Returns the names of the migrations applied.
pub async fn migrate(database_url: &str) -> Result<Vec<String>, QueueError> {
    let (mut client, connection) =
        tokio_postgres::connect(database_url, NoTls).await.map_err(|e| QueueError::Migration(e.to_string()))?;
    let conn = tokio::spawn(connection);
    let result = async {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| QueueError::Migration(e.to_string()))?;
        let report = embedded::migrations::runner()
            .set_abort_divergent(true)
            .run_async(&mut client)
            .await
            .map_err(|e| QueueError::Migration(e.to_string()));
        let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
        report
    }
    .await;
    drop(client);
    let _ = conn.await;
    Ok(result?.applied_migrations().iter().map(|m| m.to_string()).collect())
}

/// The newest migration version applied to the database, 0 when none.
pub(crate) async fn applied_version(pool: &sqlx::PgPool) -> Result<i64, QueueError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('refinery_schema_history') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM refinery_schema_history").fetch_one(pool).await?;
    Ok(v.map(i64::from).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn schema_version_is_the_newest_migration() {
        let newest = super::embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .max()
            .unwrap();
        assert_eq!(newest, super::SCHEMA_VERSION);
    }
}
