//! The newest event sequence, for watchers to wake on; on PostgreSQL, numbering comes first.

use std::time::Duration;

use tokio::sync::watch;

use super::Leadership;
use crate::{error::Error, store::Store};

/// Rows numbered per statement; the sequencer loops until fewer are left.
const SEQUENCER_BATCH: i64 = 1000;

/// Keeps `head` at the newest sequence, polling every `interval`; on PostgreSQL it also
/// numbers new events while this replica holds the sequencer lock. Runs until stopped.
pub(crate) async fn follow_head(store: Store, head: watch::Sender<i64>, interval: Duration) {
    let mut sequencer = Sequencer {
        leadership: Leadership::sequencer(),
        read_only: false,
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if store.is_shared() {
            sequencer.run(&store).await;
        }
        match store.event_head().await {
            Ok(sequence) => {
                head.send_if_modified(|current| {
                    let newer = sequence > *current;
                    if newer {
                        *current = sequence;
                    }
                    newer
                });
            }
            Err(err) => tracing::debug!(error = %err, "cannot read the event head"),
        }
    }
}

/// PostgreSQL's rows arrive unnumbered (migrations/postgres/0005 says why); one replica at a
/// time numbers them: the one holding the sequencer lock.
struct Sequencer {
    leadership: Leadership,
    /// Whether the last try found the database refusing writes (said once, not at every tick).
    read_only: bool,
}

impl Sequencer {
    /// Numbers what is ready, taking the lock first if no replica holds it.
    async fn run(&mut self, store: &Store) {
        if !self.leadership.hold(store).await {
            return;
        }
        let Some(session) = self.leadership.session() else {
            return;
        };
        loop {
            match session.number_ready_events(SEQUENCER_BATCH).await {
                Ok(numbered) => {
                    self.read_only = false;
                    if (numbered as i64) < SEQUENCER_BATCH {
                        return;
                    }
                }
                Err(err) => {
                    // The next try opens a new session: this one may reach a server that has
                    // become a standby, or be broken, while a new one reaches the primary.
                    self.leadership.release();
                    let read_only = matches!(err, Error::ReadOnly(_));
                    if !(read_only && self.read_only) {
                        tracing::warn!(error = %err, "numbering enrollment events failed; trying again");
                    }
                    self.read_only = read_only;
                    return;
                }
            }
        }
    }
}
