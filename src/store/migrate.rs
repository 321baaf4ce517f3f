//! Versioned migrations, embedded in the binary: one folder per dialect. The server applies
//! them at start (`--migrations auto`), or only checks that the database's schema is exactly
//! this binary's (`--migrations check`), for a role that may not change the schema.

use super::Backend;
use std::{collections::HashSet, fmt};

use sqlx::migrate::{MigrateError, Migrator};

use super::{Store, errors, with_reader, with_writer};

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
    pub async fn migrate(&self) -> Result<Vec<Applied>, MigrationError> {
        self.migrate_up_to(None)
            .await
            .map_err(MigrationError::from_sqlx)
    }

    /// Like [`Store::migrate`], but stops after migration `version`: leaves the database as
    /// the release that shipped that migration would have, for upgrade tests and for operators
    /// who must reproduce such a database. The server and `student-service migrate` always
    /// apply every migration.
    pub async fn migrate_to(&self, version: i64) -> Result<Vec<Applied>, MigrationError> {
        self.migrate_up_to(Some(version))
            .await
            .map_err(MigrationError::from_sqlx)
    }

    /// Checks, without changing anything, that the database holds exactly this binary's
    /// migrations: none missing, none unknown to it, none failed, none changed.
    pub async fn check_schema(&self) -> Result<(), SchemaError> {
        const SQL: &str =
            "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version";
        let rows: Result<Vec<(i64, bool, Vec<u8>)>, sqlx::Error> =
            with_reader!(self, "migrate", pool => sqlx::query_as(SQL).fetch_all(pool).await);
        let rows = match rows {
            Ok(rows) => rows,
            Err(err) if errors::is_undefined_table(&err) => Vec::new(),
            Err(err) => return Err(SchemaError::Unreadable(err)),
        };
        let migrator = self.migrator();
        let wanted = migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration());
        let latest = wanted.clone().map(|m| m.version).max().unwrap_or(0);
        if let Some((version, ..)) = rows.iter().find(|(_, success, _)| !success) {
            return Err(SchemaError::Failed { version: *version });
        }
        let found = rows.iter().map(|(version, ..)| *version).max();
        let unknown: Vec<i64> = rows
            .iter()
            .map(|(version, ..)| *version)
            .filter(|version| !migrator.version_exists(*version))
            .collect();
        if !unknown.is_empty() {
            return Err(SchemaError::Ahead {
                found: found.unwrap_or(0),
                wanted: latest,
                unknown: Versions(unknown),
            });
        }
        let missing: Vec<i64> = wanted
            .clone()
            .map(|m| m.version)
            .filter(|version| !rows.iter().any(|(applied, ..)| applied == version))
            .collect();
        match found {
            None => return Err(SchemaError::Empty { wanted: latest }),
            Some(found) if !missing.is_empty() => {
                return Err(SchemaError::Behind {
                    found,
                    wanted: latest,
                    missing: Versions(missing),
                });
            }
            Some(_) => {}
        }
        for migration in wanted {
            let applied = rows
                .iter()
                .find(|(version, ..)| *version == migration.version);
            if applied.is_some_and(|(.., checksum)| checksum[..] != migration.checksum[..]) {
                return Err(SchemaError::Changed {
                    version: migration.version,
                });
            }
        }
        Ok(())
    }

    fn migrator(&self) -> &'static Migrator {
        match &self.0 {
            Backend::Sqlite { .. } => &SQLITE,
            Backend::Postgres(..) => &POSTGRES,
        }
    }

    async fn migrate_up_to(&self, target: Option<i64>) -> Result<Vec<Applied>, MigrateError> {
        let before = self.applied_versions().await;
        let migrator = self.migrator();
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

/// Why the migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "the database refuses writes (a PostgreSQL standby, in recovery, or read-only \
         transactions), so the migrations cannot be applied: point --database-url at the primary"
    )]
    ReadOnly(#[source] MigrateError),
    #[error(
        "the database role may not change the schema, so the migrations cannot be applied: \
         apply them as the schema's owner (`student-service migrate`), then start the server \
         with --migrations check (docs/operations.md)"
    )]
    NotPermitted(#[source] MigrateError),
    #[error("cannot apply the migrations")]
    Failed(#[source] MigrateError),
}

impl MigrationError {
    fn from_sqlx(err: MigrateError) -> MigrationError {
        let database = match &err {
            MigrateError::Execute(database) | MigrateError::ExecuteMigration(database, _) => {
                Some(database)
            }
            _ => None,
        };
        match database {
            Some(database) if errors::refuses_writes_error(database) => {
                MigrationError::ReadOnly(err)
            }
            Some(database) if errors::is_permission_denied(database) => {
                MigrationError::NotPermitted(err)
            }
            _ => MigrationError::Failed(err),
        }
    }
}

/// Why the database's schema is not this binary's (`--migrations check`).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database has no schema yet and --migrations check applies none: apply the \
         migrations first (`student-service migrate`, as the schema's owner); this binary needs \
         version {wanted}"
    )]
    Empty { wanted: i64 },
    #[error(
        "the database's schema is at version {found}, behind this binary's {wanted} (not \
         applied: {missing}): apply the migrations first (`student-service migrate`, as the \
         schema's owner), then start the server"
    )]
    Behind {
        found: i64,
        wanted: i64,
        missing: Versions,
    },
    #[error(
        "the database's schema is at version {found}, ahead of this binary's {wanted} (unknown \
         to it: {unknown}): a newer release migrated it; run that release or a later one"
    )]
    Ahead {
        found: i64,
        wanted: i64,
        unknown: Versions,
    },
    #[error(
        "migration {version} is recorded as failed in the database (_sqlx_migrations): apply \
         the migrations again (`student-service migrate`, as the schema's owner)"
    )]
    Failed { version: i64 },
    #[error(
        "migration {version} in the database is not this binary's (its checksum differs): the \
         database was migrated by another build"
    )]
    Changed { version: i64 },
    #[error("cannot read the database's applied migrations (_sqlx_migrations)")]
    Unreadable(#[source] sqlx::Error),
}

/// Migration versions, for messages: `5, 6, 7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions(pub Vec<i64>);

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<String> = self.0.iter().map(i64::to_string).collect();
        f.write_str(&texts.join(", "))
    }
}
