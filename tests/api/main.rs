//! The integration suite: one binary, the real server, real databases, real HTTP/2.

mod clusters;
mod helpers;
mod pki;
mod process;
mod proxy;

mod audit;
mod authorization;
mod batches;
mod courses;
mod enrollments;
mod event_sequencing;
mod events;
mod lifecycle;
mod metrics;
mod nats;
mod pagination;
mod parity;
mod pg_pool;
mod postgres_failover;
mod postgres_replicas;
mod postgres_roles;
mod postgres_standby;
mod postgres_tls;
mod races;
mod reliability;
mod replica_races;
mod resilience;
mod schema;
mod security;
mod startup;
mod students;
mod traces;
mod traces_export;
mod unicode;
mod updates;
