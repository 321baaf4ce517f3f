//! A job only one replica may do at a time on PostgreSQL (numbering events, relaying them).

use crate::store::{Session, Store};

/// Any number that names the sequencer's lock among the database's advisory locks.
const SEQUENCER_LOCK: i64 = 0x5343_484f_4f4c_5631; // "SCHOOLV1"
/// The relay's lock.
const RELAY_LOCK: i64 = 0x5343_484f_4f4c_5632; // "SCHOOLV2"

/// Held by a session advisory lock on a session of its own, so that when the replica dies its
/// session ends, the lock is free, and another replica takes the job at its next try. On SQLite
/// there is one server per file, so it always holds.
pub(super) struct Leadership {
    key: i64,
    job: &'static str,
    /// The session that holds the lock, or tries for it at each call while another replica
    /// has it (one session kept, not one opened per try).
    session: Option<Session>,
    holds: bool,
}

impl Leadership {
    /// The sequencer's: one replica numbers the events, in commit order.
    pub(super) fn sequencer() -> Self {
        Leadership::of(SEQUENCER_LOCK, "numbers enrollment events")
    }

    /// The relay's: one replica publishes to the broker, in order.
    pub(super) fn relay() -> Self {
        Leadership::of(RELAY_LOCK, "relays enrollment events")
    }

    fn of(key: i64, job: &'static str) -> Self {
        Leadership {
            key,
            job,
            session: None,
            holds: false,
        }
    }

    /// Whether this replica holds the job now, claiming it if no replica does.
    pub(super) async fn hold(&mut self, store: &Store) -> bool {
        if !store.is_shared() {
            return true;
        }
        if self.holds {
            // A session that died took the lock with it.
            if let Some(session) = self.session.as_mut()
                && session.is_alive().await
            {
                return true;
            }
            tracing::warn!(
                job = self.job,
                "lost the session holding the lock; claiming again"
            );
            self.holds = false;
            self.session = None;
        }
        if self.session.is_none() {
            self.session = store.session().await.and_then(Result::ok);
        }
        let Some(session) = self.session.as_mut() else {
            return false;
        };
        match session.try_lock(self.key).await {
            Ok(true) => {
                self.holds = true;
                tracing::info!("this replica {} (advisory lock taken)", self.job);
            }
            Ok(false) => {}
            Err(_) => self.session = None,
        }
        self.holds
    }

    /// Lets go of the job and its session (the lock ends with it); the next [`Leadership::hold`]
    /// opens a new one.
    pub(super) fn release(&mut self) {
        self.holds = false;
        self.session = None;
    }

    /// The session that holds the lock, while it does.
    pub(super) fn session(&mut self) -> Option<&mut Session> {
        self.session.as_mut().filter(|_| self.holds)
    }
}
