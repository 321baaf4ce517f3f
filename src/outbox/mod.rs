//! The enrollment event outbox at work: what runs over the events the store's triggers write.
//!
//! - `head`: follows the newest sequence to wake watchers, and on PostgreSQL numbers new events
//!   first (the sequencer);
//! - `leadership`: a job only one replica may do at a time (numbering, relaying), held by a
//!   PostgreSQL session advisory lock;
//! - `retention`: deletes events older than `--events-retention`;
//! - `relay`, `cloud_event`, `nats_settings`: delivery to NATS JetStream, at least once, as
//!   CloudEvents.
//!
//! Each is a task the composition root (`app`) starts and stops; the SQL is the store's
//! (`store::events`).

mod cloud_event;
mod head;
mod leadership;
mod nats_settings;
mod relay;
mod retention;

pub use cloud_event::message;
pub(crate) use head::follow_head;
use leadership::Leadership;
pub use nats_settings::{InvalidNatsSetting, NatsSettings};
pub(crate) use relay::relay;
pub(crate) use retention::retain_events;
