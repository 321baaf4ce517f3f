//! Versioned migrations, embedded in the binary: one folder per dialect.

use super::Backend;
use std::collections::HashSet;

use sqlx::migrate::{MigrateError, Migrator};

use super::{Store, with_reader, with_writer};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// A migration that a run applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    pub description: String,
}

impl Store {
    /// Applies every migration the database does not have yet and returns those it applied
    /// (none when it is up to date). Safe to run from several replicas at once: sqlx holds a
    /// database lock while it migrates.
    pub async fn migrate(&self) -> Result<Vec<Applied>, MigrateError> {
        self.migrate_up_to(None).await
    }

    /// Like [`Store::migrate`], but stops after migration `version`: leaves the database as
    /// the release that shipped that migration would have, for upgrade tests and for operators
    /// who must reproduce such a database. The server and `student-service migrate` always
    /// apply every migration.
    pub async fn migrate_to(&self, version: i64) -> Result<Vec<Applied>, MigrateError> {
        self.migrate_up_to(Some(version)).await
    }

    async fn migrate_up_to(&self, target: Option<i64>) -> Result<Vec<Applied>, MigrateError> {
        let before = self.applied_versions().await;
        let migrator = match &self.0 {
            Backend::Sqlite { .. } => &SQLITE,
            Backend::Postgres(_) => &POSTGRES,
        };
        let wanted = |version: i64| target.is_none_or(|target| version <= target);
        with_writer!(self, "migrate", pool => match target {
            Some(target) => migrator.run_to(target, pool).await,
            None => migrator.run(pool).await,
        })?;
        Ok(migrator
            .iter()
            .filter(|m| {
                m.migration_type.is_up_migration()
                    && wanted(m.version)
                    && !before.contains(&m.version)
            })
            .map(|m| Applied {
                version: m.version,
                description: m.description.to_string(),
            })
            .collect())
    }

    /// The versions already applied; none when the bookkeeping table does not exist yet.
    async fn applied_versions(&self) -> HashSet<i64> {
        const SQL: &str = "SELECT version FROM _sqlx_migrations WHERE success";
        let versions: Result<Vec<i64>, _> =
            with_reader!(self, "migrate", pool => sqlx::query_scalar(SQL).fetch_all(pool).await);
        versions.unwrap_or_default().into_iter().collect()
    }
}
