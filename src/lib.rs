//! student-service: the `school.v1` gRPC API (students, courses, enrollments) over SQLite or
//! PostgreSQL.
//!
//! The path of a request: [`api`] (tonic adapters) -> [`domain`] (validation and rules) ->
//! [`store`] (SQL) -> back; [`error::Error`] carries failures and becomes a gRPC status in
//! `api::status`, the only place that knows the mapping.

pub mod api;
pub mod app;
pub mod config;
pub mod domain;
pub mod error;
mod health;
pub mod listen;
pub mod outbox;
pub mod pb;
pub mod security;
pub mod server;
pub mod store;
pub mod telemetry;
