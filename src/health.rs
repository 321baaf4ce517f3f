//! Readiness: the standard gRPC health service follows the database, on the probe's own
//! connection (see `store::probe`), for the whole server and each of our services.

use std::time::Duration;

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::{Readiness, Store};

/// The names health reports on: the whole server and each of our services.
const HEALTH_NAMES: [&str; 4] = [
    "",
    "school.v1.StudentService",
    "school.v1.CourseService",
    "school.v1.EnrollmentEventService",
];

/// Sets every name's status, and the `student_service_health_status` gauge with it.
pub(crate) async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    let serving = if status == ServingStatus::Serving {
        1.0
    } else {
        0.0
    };
    for name in HEALTH_NAMES {
        reporter.set_service_status(name, status).await;
        metrics::gauge!(crate::telemetry::catalogue::HEALTH_STATUS.name, "service" => name)
            .set(serving);
    }
}

/// Asks the database every `interval`, on the probe's own connection; health follows its
/// answer: NOT_SERVING while it is unreachable or refuses writes, SERVING again once it is back.
pub(crate) async fn follow_database(store: Store, reporter: HealthReporter, interval: Duration) {
    let mut probe = store.probe();
    let mut last = Readiness::Ready;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let readiness = probe.check(interval).await;
        if readiness == last {
            continue;
        }
        last = readiness;
        match readiness {
            Readiness::Ready => {
                tracing::info!("database reachable and writable again: health SERVING");
                set_health(&reporter, ServingStatus::Serving).await;
            }
            Readiness::ReadOnly => {
                tracing::warn!(
                    "database refuses writes (a standby, or read-only transactions): health NOT_SERVING"
                );
                set_health(&reporter, ServingStatus::NotServing).await;
            }
            Readiness::Unreachable => {
                tracing::warn!("database unreachable: health NOT_SERVING");
                set_health(&reporter, ServingStatus::NotServing).await;
            }
        }
    }
}
