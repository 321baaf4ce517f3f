//! `--watchers N`: event watchers that never catch up, beside the measured calls. Each replays
//! the whole event feed from the start, again and again (a crowd of consumers recovering after an
//! outage), on connections of their own; a health `Watch` counts the times the server said
//! NOT_SERVING meanwhile. What the measured calls' latencies show is what the watchers cost them.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use student_service::api::pb::{
    WatchEnrollmentEventsRequest, enrollment_event_service_client::EnrollmentEventServiceClient,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Streams per HTTP/2 connection, under the server's default limit of 128.
const STREAMS_PER_CONNECTION: usize = 100;

/// The running watchers; [`Watchers::stop`] ends them and reports.
pub(crate) struct Watchers {
    tasks: JoinSet<()>,
    stop: Arc<AtomicBool>,
    replays: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
    not_serving: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

impl Watchers {
    pub(crate) async fn start(
        target: &str,
        count: usize,
    ) -> Result<Watchers, tonic::transport::Error> {
        let connections = count.div_ceil(STREAMS_PER_CONNECTION).max(1);
        let channels = super::connect(&[target.to_owned()], connections).await?;
        let watchers = Watchers {
            tasks: JoinSet::new(),
            stop: Arc::new(AtomicBool::new(false)),
            replays: Arc::default(),
            events: Arc::default(),
            not_serving: Arc::default(),
            failures: Arc::default(),
        };
        let mut watchers = watchers;
        for i in 0..count {
            let channel = channels[i % channels.len()].clone();
            let (stop, replays, events, failures) = (
                watchers.stop.clone(),
                watchers.replays.clone(),
                watchers.events.clone(),
                watchers.failures.clone(),
            );
            watchers.tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match replay(channel.clone(), &events).await {
                        Ok(()) => replays.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        let (channel, stop, not_serving) = (
            channels[0].clone(),
            watchers.stop.clone(),
            watchers.not_serving.clone(),
        );
        watchers.tasks.spawn(async move {
            let request = HealthCheckRequest::default();
            let Ok(response) = HealthClient::new(channel).watch(request).await else {
                return;
            };
            let mut updates = response.into_inner();
            while let Ok(Some(update)) = updates.message().await {
                if update.status != ServingStatus::Serving as i32 {
                    not_serving.fetch_add(1, Ordering::Relaxed);
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        });
        Ok(watchers)
    }

    /// Stops the watchers and says what they did.
    pub(crate) async fn stop(mut self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        format!(
            "watchers: {} replays of the feed completed ({} events read), {} streams failed; \
             health went NOT_SERVING {} times",
            self.replays.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.not_serving.load(Ordering::Relaxed),
        )
    }
}

/// Reads the feed from the first event until a response says it is at the head.
async fn replay(channel: Channel, events: &AtomicU64) -> Result<(), tonic::Status> {
    let request = WatchEnrollmentEventsRequest {
        after_sequence: 0,
        ..Default::default()
    };
    let mut stream = EnrollmentEventServiceClient::new(channel)
        .watch_enrollment_events(request)
        .await?
        .into_inner();
    while let Some(response) = stream.message().await? {
        events.fetch_add(response.events.len() as u64, Ordering::Relaxed);
        let at_head = response
            .events
            .last()
            .is_none_or(|last| last.sequence >= response.head_sequence);
        if at_head {
            return Ok(());
        }
    }
    Ok(())
}
