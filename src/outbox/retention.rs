//! Retention: events older than `--events-retention` are deleted, oldest first.

use std::time::Duration;

use crate::store::Store;

/// Events deleted per statement.
const RETENTION_BATCH: i64 = 1000;

/// Deletes events older than `retention` (and, when `published_only`, published), a batch at a
/// time, checking every tenth of the retention (at most a minute apart).
pub(crate) async fn retain_events(store: Store, retention: Duration, published_only: bool) {
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let cutoff = crate::domain::now_micros().saturating_sub(retention);
        loop {
            match store
                .delete_old_events(cutoff, published_only, RETENTION_BATCH)
                .await
            {
                Ok(deleted) if deleted as i64 == RETENTION_BATCH => {}
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "event retention failed; trying again later");
                    break;
                }
            }
        }
    }
}
