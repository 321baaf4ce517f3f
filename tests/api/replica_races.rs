//! The promises of BatchAssignCourses and UpdateCourse under races across replicas (two server
//! processes on PostgreSQL; one process on SQLite, whose writers share one file): no course over
//! capacity at any instant, no deadlock, no half-written batch; `verify` passes after.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use prost_types::FieldMask;
use student_service::{
    api::pb::{
        AssignCourseRequest, BatchAssignCoursesRequest, Course, GetCourseRequest,
        ListCoursesRequest, UnassignCourseRequest, UpdateCourseRequest,
        course_service_client::CourseServiceClient, student_service_client::StudentServiceClient,
    },
    store::Store,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::{
    helpers::{Backend, Peek, TestDatabase, error_reason, on_both_backends, pool_settings},
    process::ServerProcess,
    resilience::{
        assert_verify_passes, create_courses, create_students, env_number, share_of, stored_pairs,
    },
};

on_both_backends!(
    batches_and_assignments_racing_on_replicas_keep_every_promise,
    capacity_updates_racing_assignments_never_overfill_a_course,
);

async fn start_replicas(backend: &Backend, database: &TestDatabase) -> Vec<ServerProcess> {
    let replicas = match backend {
        Backend::Sqlite => 1,
        Backend::Postgres { .. } => 2,
    };
    let mut servers = Vec::new();
    for _ in 0..replicas {
        servers.push(ServerProcess::start(&database.url, &[]).await);
    }
    servers
}

/// What one client knows: it alone touches its students, one call at a time, so after every
/// acknowledged call it knows exactly which courses each of them is in.
#[derive(Default)]
struct Model {
    enrolled: HashMap<i64, HashSet<i64>>,
    outcomes: BTreeMap<String, u64>,
    contradictions: Vec<String>,
}

impl Model {
    fn count(&mut self, outcome: String) {
        *self.outcomes.entry(outcome).or_insert(0) += 1;
    }

    fn batch(&mut self, student: i64, courses: &[i64], answer: Result<Vec<(i64, bool)>, Status>) {
        let mine = self.enrolled.entry(student).or_default();
        match answer {
            Ok(results) => {
                for (&course, &(answered, created)) in courses.iter().zip(&results) {
                    if answered != course || created == mine.contains(&course) {
                        self.contradictions.push(format!(
                            "batch {courses:?} of {student}: {results:?} with {mine:?}"
                        ));
                    }
                    mine.insert(course);
                }
                self.count("batch OK".into());
            }
            // Refused whole: the model stays as it was; the named courses must be ones the
            // student asked for and is not in.
            Err(status) if status.code() == Code::FailedPrecondition => {
                let details = status.get_error_details();
                let named = details
                    .error_info()
                    .and_then(|info| info.metadata.get("course_ids").cloned())
                    .unwrap_or_default();
                let plausible = named.split(',').all(|id| {
                    id.parse::<i64>()
                        .is_ok_and(|id| courses.contains(&id) && !mine.contains(&id))
                });
                if !plausible {
                    self.contradictions
                        .push(format!("batch {courses:?} refused naming {named}"));
                }
                self.count(format!("batch {}", error_reason(&status)));
            }
            Err(status) => {
                self.contradictions
                    .push(format!("batch {courses:?}: {status:?}"));
                self.count(format!("batch {:?}", status.code()));
            }
        }
    }

    fn assign(&mut self, student: i64, course: i64, answer: Result<bool, Status>) {
        let mine = self.enrolled.entry(student).or_default();
        match answer {
            Ok(created) if created != mine.contains(&course) => {
                mine.insert(course);
                self.count("assign OK".into());
            }
            Err(status) if status.code() == Code::FailedPrecondition && !mine.contains(&course) => {
                self.count(format!("assign {}", error_reason(&status)));
            }
            other => {
                self.contradictions.push(format!(
                    "assign {student}/{course} with {mine:?}: {other:?}"
                ));
            }
        }
    }

    fn unassign(&mut self, student: i64, course: i64, answer: Result<(), Status>) {
        let mine = self.enrolled.entry(student).or_default();
        match answer {
            Ok(()) if mine.remove(&course) => self.count("unassign OK".into()),
            Err(status) if status.code() == Code::NotFound && !mine.contains(&course) => {
                self.count("unassign NOT_ENROLLED".into());
            }
            other => {
                self.contradictions.push(format!(
                    "unassign {student}/{course} with {mine:?}: {other:?}"
                ));
            }
        }
    }
}

/// Clients own a few students each and enroll them over shared small courses with batches (in
/// random order), single assignments and unassignments. After every call the client reads its
/// student's courses back: a half-written batch would show at once. Nothing may fail ABORTED:
/// batches take their courses in id order, so they queue rather than deadlock (with the batch
/// inserted in request order instead, PostgreSQL reported "deadlock detected" in every run).
async fn batches_and_assignments_racing_on_replicas_keep_every_promise(backend: Backend) {
    const COURSES: usize = 8;
    const CAPACITY: i32 = 30;
    const CLIENTS: usize = 16;
    const STUDENTS: usize = 48;
    let operations = env_number("RACE_OPERATIONS", 10_000) as usize / 10;
    let database = TestDatabase::create(&backend).await;
    let servers = start_replicas(&backend, &database).await;
    let (mut students, mut courses) = servers[0].clients().await;
    let student_ids = create_students(&mut students, STUDENTS).await;
    let course_ids = create_courses(&mut courses, "BATCH", CAPACITY, COURSES).await;

    let mut workers = Vec::new();
    for client in 0..CLIENTS {
        let mine = share_of(&student_ids, client, CLIENTS);
        let course_ids = course_ids.clone();
        let mut api = StudentServiceClient::new(servers[client % servers.len()].channel().await);
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(client as u64);
            let mut model = Model::default();
            for _ in 0..operations / CLIENTS {
                let student = mine[rng.usize(..mine.len())];
                let course = course_ids[rng.usize(..course_ids.len())];
                match rng.u8(..10) {
                    0..5 => {
                        let mut batch = course_ids.clone();
                        rng.shuffle(&mut batch);
                        batch.truncate(rng.usize(2..=5));
                        let request = BatchAssignCoursesRequest {
                            student_id: student,
                            course_ids: batch.clone(),
                            request_id: String::new(),
                        };
                        let answer = api.batch_assign_courses(request).await.map(|r| {
                            let results = r.into_inner().results;
                            results
                                .iter()
                                .map(|r| {
                                    (r.enrollment.as_ref().map_or(0, |e| e.course_id), r.created)
                                })
                                .collect()
                        });
                        model.batch(student, &batch, answer);
                    }
                    5..6 => {
                        let request = AssignCourseRequest {
                            student_id: student,
                            course_id: course,
                        };
                        let answer = api.assign_course(request).await;
                        model.assign(student, course, answer.map(|r| r.into_inner().created));
                    }
                    _ => {
                        let request = UnassignCourseRequest {
                            student_id: student,
                            course_id: course,
                        };
                        let answer = api.unassign_course(request).await;
                        model.unassign(student, course, answer.map(drop));
                    }
                }
                let request = ListCoursesRequest {
                    student_id: student,
                    page_size: 100,
                    ..Default::default()
                };
                let listed: HashSet<i64> = match api.list_courses(request).await {
                    Ok(page) => page.into_inner().courses.iter().map(|c| c.id).collect(),
                    Err(status) => {
                        model
                            .contradictions
                            .push(format!("ListCourses: {status:?}"));
                        continue;
                    }
                };
                let expected = model.enrolled.get(&student).cloned().unwrap_or_default();
                if listed != expected {
                    model.contradictions.push(format!(
                        "student {student} is in {listed:?}, the answers say {expected:?}"
                    ));
                }
            }
            model
        }));
    }
    let mut expected = HashSet::new();
    let mut outcomes = BTreeMap::new();
    let mut contradictions = Vec::new();
    for worker in workers {
        let model = worker.await.expect("client task");
        for (student, courses) in model.enrolled {
            expected.extend(courses.into_iter().map(|course| (student, course)));
        }
        for (outcome, n) in model.outcomes {
            *outcomes.entry(outcome).or_insert(0) += n;
        }
        contradictions.extend(model.contradictions);
    }

    let store = Store::connect(&database.url, &pool_settings())
        .await
        .expect("connect");
    let stored = stored_pairs(&Peek::open(&database.url).await).await;
    eprintln!(
        "batch races over {} replica(s): {outcomes:?}; {} enrolled",
        servers.len(),
        stored.len()
    );
    assert!(
        contradictions.is_empty(),
        "contradictions: {contradictions:#?}"
    );
    assert_eq!(
        stored, expected,
        "the database differs from the acknowledged answers"
    );
    assert!(
        outcomes.get("batch OK").copied().unwrap_or(0) > 0,
        "some batch succeeded"
    );
    assert!(
        outcomes.get("batch COURSE_FULL").copied().unwrap_or(0) > 0,
        "some batch met a full course"
    );
    assert_verify_passes(&store).await;
    store.close().await;
}

/// Registrars move a course's capacity up and down while students enroll and leave on every
/// replica. A watcher reads the course all along: never more students than seats. Updates
/// that would go below the students enrolled are refused with the count.
async fn capacity_updates_racing_assignments_never_overfill_a_course(backend: Backend) {
    const STUDENTS: usize = 60;
    const ENROLLERS: usize = 8;
    const UPDATERS: usize = 2;
    let operations = env_number("RACE_OPERATIONS", 10_000) as usize / 10;
    let database = TestDatabase::create(&backend).await;
    let servers = start_replicas(&backend, &database).await;
    let (mut students, mut courses) = servers[0].clients().await;
    let student_ids = create_students(&mut students, STUDENTS).await;
    let course = create_courses(&mut courses, "CAP", 10, 1).await[0];

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let mut api = CourseServiceClient::new(servers[0].channel().await);
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut reads, mut overfilled) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let read = api.get_course(GetCourseRequest { course_id: course }).await;
                let read = read.expect("GetCourse").into_inner();
                if read.capacity != 0 && read.enrolled > read.capacity {
                    overfilled.push(read);
                }
                reads += 1;
            }
            (reads, overfilled)
        })
    };
    let mut workers = Vec::new();
    for client in 0..ENROLLERS + UPDATERS {
        let server = &servers[client % servers.len()];
        let channel = server.channel().await;
        let mine = share_of(&student_ids, client, ENROLLERS);
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(client as u64);
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            let mut contradictions = Vec::new();
            for _ in 0..operations / (ENROLLERS + UPDATERS) {
                let outcome = if client >= ENROLLERS {
                    let capacity = rng.i32(1..=20);
                    update_capacity(&channel, course, capacity, &mut contradictions).await
                } else {
                    let student_id = mine[rng.usize(..mine.len())];
                    let mut api = StudentServiceClient::new(channel.clone());
                    let answer = if rng.bool() {
                        let request = AssignCourseRequest {
                            student_id,
                            course_id: course,
                        };
                        api.assign_course(request).await.map(drop)
                    } else {
                        let request = UnassignCourseRequest {
                            student_id,
                            course_id: course,
                        };
                        api.unassign_course(request).await.map(drop)
                    };
                    match answer {
                        Ok(()) => "enroller OK".to_owned(),
                        Err(status)
                            if matches!(
                                status.code(),
                                Code::FailedPrecondition | Code::NotFound
                            ) =>
                        {
                            format!("enroller {}", error_reason(&status))
                        }
                        Err(status) => {
                            contradictions.push(format!("enroller: {status:?}"));
                            format!("enroller {:?}", status.code())
                        }
                    }
                };
                *outcomes.entry(outcome).or_insert(0) += 1;
            }
            (outcomes, contradictions)
        }));
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut contradictions = Vec::new();
    for worker in workers {
        let (seen, wrong) = worker.await.expect("client task");
        for (outcome, n) in seen {
            *outcomes.entry(outcome).or_insert(0) += n;
        }
        contradictions.extend(wrong);
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, overfilled) = watcher.await.expect("watcher");

    eprintln!(
        "capacity races over {} replica(s): {outcomes:?}; {reads} reads",
        servers.len()
    );
    assert!(
        contradictions.is_empty(),
        "contradictions: {contradictions:#?}"
    );
    assert!(
        overfilled.is_empty(),
        "a course over capacity was seen: {overfilled:?}"
    );
    for expected in [
        "update OK",
        "update CAPACITY_BELOW_ENROLLED",
        "enroller COURSE_FULL",
    ] {
        assert!(
            outcomes.contains_key(expected),
            "{expected} never happened: {outcomes:?}"
        );
    }
    let store = Store::connect(&database.url, &pool_settings())
        .await
        .expect("connect");
    assert_verify_passes(&store).await;
    store.close().await;
}

/// One UpdateCourse of the capacity; what the answer must say either way.
async fn update_capacity(
    channel: &Channel,
    course_id: i64,
    capacity: i32,
    contradictions: &mut Vec<String>,
) -> String {
    let request = UpdateCourseRequest {
        course: Some(Course {
            id: course_id,
            capacity,
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["capacity".into()],
        }),
    };
    match CourseServiceClient::new(channel.clone())
        .update_course(request)
        .await
    {
        Ok(updated) => {
            let updated = updated.into_inner();
            if updated.capacity != capacity || updated.enrolled > capacity {
                contradictions.push(format!("asked for {capacity}, got {updated:?}"));
            }
            "update OK".to_owned()
        }
        Err(status) if error_reason(&status) == "CAPACITY_BELOW_ENROLLED" => {
            let details = status.get_error_details();
            let enrolled: i32 = details
                .error_info()
                .and_then(|info| info.metadata.get("enrolled")?.parse().ok())
                .unwrap_or(0);
            if enrolled <= capacity {
                contradictions.push(format!("refused {capacity} with {enrolled} enrolled"));
            }
            "update CAPACITY_BELOW_ENROLLED".to_owned()
        }
        Err(status) => {
            contradictions.push(format!("update: {status:?}"));
            format!("update {:?}", status.code())
        }
    }
}
