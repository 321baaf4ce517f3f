//! Scenario 7, hostile input: malformed requests to every method over raw HTTP/2, past any
//! client-side encoding. Every stream must get a non-OK `grpc-status` (the one its kind of damage
//! calls for) within [`STREAM_BOUND`], no stored data may change, and the service must answer
//! normally afterwards.
//!
//! `HOSTILE_REQUESTS` sets the count (default 10,000, spread evenly over 14 methods: all but the two updates, whose requests nest a message) and
//! `HOSTILE_SEED` the seed; request `i` is made from the seed and `i` alone, so a failure
//! reproduces with the same two values whatever the scheduling.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use student_service::{api::pb, server::MAX_MESSAGE_BYTES};
use tonic::Code;

use super::{
    raw::{RawClient, frame, message, proto},
    snapshot,
};
use crate::helpers::{Backend, TestApp, on_both_backends};

on_both_backends!(malformed_requests_to_every_method_are_refused_without_harm);

const DEFAULT_REQUESTS: usize = 10_000;
const DEFAULT_SEED: u64 = 0x5eed_0007;
/// Streams in flight at once, over [`CONNECTIONS`] connections.
const CONCURRENCY: usize = 64;
const CONNECTIONS: usize = 4;
/// Every stream must be answered within this.
const STREAM_BOUND: Duration = Duration::from_secs(10);
/// Bigger than the server's 1 MiB message limit.
const HUGE_BYTES: usize = 5 * 1024 * 1024;
/// A string field of a megabyte, inside the message limit.
const MEGABYTE: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// An int64 resource id.
    Id,
    /// An int32 page size.
    Size,
    /// The int32 capacity of a course.
    Capacity,
    /// A string.
    Text,
}

struct Method {
    path: &'static str,
    /// The request's fields, numbered from 1.
    fields: &'static [Field],
}

const METHODS: [Method; 14] = {
    use Field::*;
    [
        method("StudentService/CreateStudent", &[Text, Text]),
        method("StudentService/GetStudent", &[Id]),
        method("StudentService/ListStudents", &[Size, Text]),
        method("StudentService/DeleteStudent", &[Id]),
        method("StudentService/AssignCourse", &[Id, Id]),
        method("StudentService/UnassignCourse", &[Id, Id]),
        method("StudentService/GetEnrollment", &[Id, Id]),
        // course_ids is repeated: one varint of field 2 is a list of one.
        method("StudentService/BatchAssignCourses", &[Id, Id]),
        method("StudentService/ListCourses", &[Id, Size, Text]),
        method("CourseService/CreateCourse", &[Text, Text, Capacity]),
        method("CourseService/GetCourse", &[Id]),
        method("CourseService/SearchCourses", &[Text, Size, Text]),
        method("CourseService/DeleteCourse", &[Id]),
        method("CourseService/ListEnrolledStudents", &[Id, Size, Text]),
    ]
};

const fn method(path: &'static str, fields: &'static [Field]) -> Method {
    Method { path, fields }
}

impl Method {
    fn path(&self) -> String {
        format!("/school.v1.{}", self.path)
    }

    fn has_text(&self) -> bool {
        self.fields.contains(&Field::Text)
    }

    /// Lists take a page token as their last field.
    fn is_list(&self) -> bool {
        self.path.contains("/List") || self.path.ends_with("/SearchCourses")
    }

    fn only_reads(&self) -> bool {
        self.path.contains("/Get") || self.is_list()
    }
}

/// The kinds of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Damage {
    /// Random bytes, no framing.
    RandomBytes,
    /// A frame whose declared length is more than the body holds, or a cut-off frame header.
    Truncated,
    /// The compressed flag without compression (or with an encoding the server lacks).
    CompressedFlag,
    /// A compressed flag that is neither 0 nor 1.
    BadFlag,
    /// Varints where strings are expected and vice versa, invalid wire types, broken varints.
    WrongTypes,
    /// Bytes that are not UTF-8 in string fields.
    InvalidUtf8,
    /// A 5 MiB message.
    Huge,
    /// Megabyte strings.
    MegabyteString,
    /// i64::MIN ids, i32::MIN page sizes and capacities, i64::MAX ids on reads.
    ExtremeIntegers,
    /// Page tokens the service did not issue for that listing.
    ForgedToken,
}

const INTERNAL: i32 = Code::Internal as i32;
const INVALID_ARGUMENT: i32 = Code::InvalidArgument as i32;
const NOT_FOUND: i32 = Code::NotFound as i32;
const OUT_OF_RANGE: i32 = Code::OutOfRange as i32;
const UNIMPLEMENTED: i32 = Code::Unimplemented as i32;

impl Damage {
    /// The statuses this damage may get. tonic refuses broken frames and undecodable messages
    /// with INTERNAL (as grpc-go and grpc-java do, and as the gRPC compression spec requires for
    /// a compressed flag without an encoding), a message over the size limit with OUT_OF_RANGE,
    /// and an encoding it does not support with UNIMPLEMENTED; the rest reach our validation.
    fn allowed(self) -> &'static [i32] {
        match self {
            Damage::RandomBytes => &[INTERNAL, OUT_OF_RANGE],
            Damage::Truncated | Damage::BadFlag | Damage::WrongTypes => &[INTERNAL],
            Damage::CompressedFlag => &[INTERNAL, UNIMPLEMENTED],
            Damage::InvalidUtf8 => &[INTERNAL, INVALID_ARGUMENT],
            Damage::Huge => &[OUT_OF_RANGE],
            Damage::MegabyteString | Damage::ForgedToken => &[INVALID_ARGUMENT],
            Damage::ExtremeIntegers => &[INVALID_ARGUMENT, NOT_FOUND],
        }
    }

    fn pick(rng: &mut fastrand::Rng) -> Damage {
        // The big ones are rarer: each costs megabytes of traffic.
        match rng.u32(0..1000) {
            0..10 => Damage::Huge,
            10..30 => Damage::MegabyteString,
            30..150 => Damage::RandomBytes,
            150..270 => Damage::Truncated,
            270..390 => Damage::CompressedFlag,
            390..510 => Damage::BadFlag,
            510..630 => Damage::WrongTypes,
            630..750 => Damage::InvalidUtf8,
            750..870 => Damage::ExtremeIntegers,
            _ => Damage::ForgedToken,
        }
    }
}

/// What requests are made from: real ids and genuine page tokens to forge from.
struct Material {
    student_ids: Vec<i64>,
    course_ids: Vec<i64>,
    /// Genuine next-page tokens, each valid only for the listing that issued it.
    tokens: Vec<Token>,
    huge: Bytes,
    megabyte: Arc<Vec<u8>>,
}

struct Token {
    /// The path of the method that issued it, and for which owner (0 for ListStudents).
    path: String,
    owner: i64,
    text: String,
}

/// One hostile request.
struct Hostile {
    damage: Damage,
    method: &'static Method,
    headers: Vec<(&'static str, &'static str)>,
    body: Bytes,
}

const NON_POSITIVE_IDS: [i64; 5] = [i64::MIN, i64::MIN + 1, -(1 << 53), -1, 0];
const NEGATIVE_SIZES: [i64; 4] = [i32::MIN as i64, i32::MIN as i64 + 1, -1000, -1];
/// Names that CreateStudent must refuse.
const INVALID_NAMES: [&str; 5] = ["", "   ", "\u{0}", "Ada\u{7}Lovelace", "\u{1b}[2J"];
/// Well-formed strings that are hostile in other ways.
const ODD_STRINGS: [&str; 8] = [
    "Robert'); DROP TABLE students;--",
    "%_\\",
    "\u{202e}evil",
    "🎓🎓🎓",
    "a@b.c",
    "\u{feff}",
    " ",
    "",
];

impl Material {
    /// Request `i`: every method gets an equal share, the damage and its details come from
    /// the seed and `i` only.
    fn request(&self, seed: u64, i: usize) -> Hostile {
        let mut rng =
            fastrand::Rng::with_seed(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let method = &METHODS[i % METHODS.len()];
        let mut damage = Damage::pick(&mut rng);
        if damage == Damage::ForgedToken && !method.is_list() {
            damage = Damage::ExtremeIntegers;
        }
        let mut headers = Vec::new();
        let body = match damage {
            Damage::RandomBytes => random_bytes(&mut rng),
            Damage::Truncated => {
                let payload = invalid_message(method, &mut rng, |_, _| None);
                match rng.u8(0..3) {
                    // A frame header cut short.
                    0 => Bytes::from(payload_prefix(&mut rng)),
                    // A header that promises a body that never comes.
                    1 => frame(0, rng.u32(1..=MAX_MESSAGE_BYTES as u32), &[]),
                    _ => frame(0, len(&payload) + rng.u32(1..1000), &payload),
                }
            }
            Damage::CompressedFlag => {
                if rng.bool() {
                    headers.push((
                        "grpc-encoding",
                        *rng.choice(&["gzip", "zstd", "br", "x-made-up"])
                            .expect("non-empty"),
                    ));
                }
                let payload = invalid_message(method, &mut rng, |_, _| None);
                frame(1, len(&payload), &payload)
            }
            Damage::BadFlag => {
                let payload = invalid_message(method, &mut rng, |_, _| None);
                frame(rng.u8(2..=255), len(&payload), &payload)
            }
            Damage::WrongTypes => message(&wrong_types(method, &mut rng)),
            Damage::InvalidUtf8 => {
                let bad = invalid_utf8(&mut rng);
                message(&if method.has_text() {
                    invalid_message(method, &mut rng, |field, _| {
                        (field == Field::Text).then(|| bad.clone())
                    })
                } else {
                    // No string field to break: an unknown one, which is skipped.
                    let mut payload = invalid_message(method, &mut rng, |_, _| None);
                    proto::bytes(&mut payload, 9, &bad);
                    payload
                })
            }
            Damage::Huge => self.huge.clone(),
            Damage::MegabyteString => {
                let big = &self.megabyte;
                message(&if method.has_text() {
                    // One megabyte field per message: two would pass the size limit.
                    let mut used = false;
                    invalid_message(method, &mut rng, |field, _| {
                        (field == Field::Text && !std::mem::replace(&mut used, true))
                            .then(|| big.to_vec())
                    })
                } else {
                    let mut payload = invalid_message(method, &mut rng, |_, _| None);
                    proto::bytes(&mut payload, 9, big);
                    payload
                })
            }
            Damage::ExtremeIntegers => {
                let mut payload =
                    if method.only_reads() && method.fields.contains(&Field::Id) && rng.bool() {
                        // The largest id: well-formed, and simply not there.
                        let mut payload = Vec::new();
                        for (n, field) in numbered(method) {
                            match field {
                                Field::Id => proto::int(&mut payload, n, i64::MAX),
                                Field::Size => proto::int(&mut payload, n, i64::from(i32::MAX)),
                                Field::Capacity | Field::Text => {}
                            }
                        }
                        payload
                    } else {
                        invalid_message(method, &mut rng, |_, _| None)
                    };
                if method.fields == [Field::Text, Field::Text] {
                    // CreateStudent has no integer: an unknown one, after an invalid name.
                    proto::int(&mut payload, 7, i64::MIN);
                }
                message(&payload)
            }
            Damage::ForgedToken => message(&self.forged_token(method, &mut rng)),
        };
        Hostile {
            damage,
            method,
            headers,
            body,
        }
    }

    /// A list request that is valid but for its page token.
    fn forged_token(&self, method: &Method, rng: &mut fastrand::Rng) -> Vec<u8> {
        let owner = match method.fields[0] {
            Field::Id if method.path.contains("ListCourses") => {
                *rng.choice(&self.student_ids).expect("students")
            }
            Field::Id => *rng.choice(&self.course_ids).expect("courses"),
            _ => 0,
        };
        let path = method.path();
        let genuine = self
            .tokens
            .iter()
            .filter(|t| t.path != path || t.owner != owner)
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>();
        let token = match rng.u8(0..6) {
            // A genuine token from another listing, or another owner.
            0 => (*rng.choice(&genuine).expect("tokens")).to_owned(),
            // A genuine token with one character changed.
            1 => {
                let mut bytes = rng
                    .choice(&self.tokens)
                    .expect("tokens")
                    .text
                    .clone()
                    .into_bytes();
                let at = rng.usize(0..bytes.len());
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let replacement = loop {
                    let c = *rng.choice(alphabet).expect("alphabet");
                    if c != bytes[at] {
                        break c;
                    }
                };
                bytes[at] = replacement;
                String::from_utf8(bytes).expect("ASCII")
            }
            // Random base64url of any length.
            2 => {
                let alphabet: Vec<char> =
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                        .chars()
                        .collect();
                (0..rng.usize(1..80))
                    .map(|_| *rng.choice(&alphabet).expect("alphabet"))
                    .collect()
            }
            // Padded, or with characters outside the alphabet.
            3 => format!("{}==", rng.choice(&self.tokens).expect("tokens").text),
            4 => (*rng
                .choice(&[
                    "!!!",
                    "AQAAAAAAAAAB r4b-6RGqj7U",
                    "\u{0}",
                    "🎓",
                    "../../etc/passwd",
                    "' OR 1=1 --",
                ])
                .expect("strings"))
            .to_owned(),
            // Far longer than any token.
            _ => "A".repeat(rng.usize(65..20_000)),
        };
        let mut payload = Vec::new();
        for (n, field) in numbered(method) {
            match field {
                Field::Id => proto::int(&mut payload, n, owner),
                Field::Size => proto::int(&mut payload, n, 1),
                // SearchCourses' query comes first, the token last.
                Field::Text if n == 1 => proto::bytes(&mut payload, n, b"course"),
                Field::Text => proto::bytes(&mut payload, n, token.as_bytes()),
                Field::Capacity => {}
            }
        }
        payload
    }
}

fn numbered(method: &Method) -> impl Iterator<Item = (u32, Field)> {
    (1..).zip(method.fields.iter().copied())
}

fn len(payload: &[u8]) -> u32 {
    u32::try_from(payload.len()).expect("under 4 GiB")
}

/// A well-typed message that our validation must refuse: every id non-positive, every page
/// size and capacity negative, CreateStudent's name invalid. `text` may override string fields
/// (given the field and its number).
fn invalid_message(
    method: &Method,
    rng: &mut fastrand::Rng,
    mut text: impl FnMut(Field, u32) -> Option<Vec<u8>>,
) -> Vec<u8> {
    let creates_student = method.fields == [Field::Text, Field::Text];
    let mut payload = Vec::new();
    for (n, field) in numbered(method) {
        match field {
            Field::Id => proto::int(
                &mut payload,
                n,
                *rng.choice(&NON_POSITIVE_IDS).expect("ids"),
            ),
            Field::Size | Field::Capacity => {
                proto::int(
                    &mut payload,
                    n,
                    *rng.choice(&NEGATIVE_SIZES).expect("sizes"),
                );
            }
            Field::Text => {
                let value = text(field, n).unwrap_or_else(|| {
                    let pool: &[&str] = if creates_student && n == 1 {
                        &INVALID_NAMES
                    } else {
                        &ODD_STRINGS
                    };
                    rng.choice(pool).expect("strings").as_bytes().to_vec()
                });
                proto::bytes(&mut payload, n, &value);
            }
        }
    }
    payload
}

/// Random bytes; when they happen to start like a well-formed frame, the declared length is
/// made too large, so that no accident can produce a valid request.
fn random_bytes(rng: &mut fastrand::Rng) -> Bytes {
    let mut bytes: Vec<u8> = (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect();
    if bytes.len() >= 5 && bytes[0] == 0 {
        let declared = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if declared <= bytes.len() - 5 {
            bytes[1] |= 0x80;
        }
    }
    Bytes::from(bytes)
}

/// The first 0..=4 bytes of a frame header.
fn payload_prefix(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut header = vec![0u8];
    header.extend_from_slice(&rng.u32(1..1000).to_be_bytes());
    header.truncate(rng.usize(0..5));
    header
}

/// A message whose every field has a wire type its declaration does not allow, or that breaks
/// the wire format itself.
fn wrong_types(method: &Method, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut payload = Vec::new();
    for (n, field) in numbered(method) {
        match (field, rng.u8(0..3)) {
            (Field::Text, 0) => proto::int(&mut payload, n, rng.i64(..)),
            (Field::Text, 1) => {
                proto::tag(&mut payload, n, proto::FIXED32);
                payload.extend_from_slice(&rng.u32(..).to_le_bytes());
            }
            (Field::Text, _) => {
                proto::tag(&mut payload, n, proto::FIXED64);
                payload.extend_from_slice(&rng.u64(..).to_le_bytes());
            }
            (_, 0) => proto::bytes(&mut payload, n, b"not a number"),
            (_, 1) => {
                proto::tag(&mut payload, n, proto::FIXED32);
                payload.extend_from_slice(&rng.u32(..).to_le_bytes());
            }
            (_, _) => {
                proto::tag(&mut payload, n, proto::FIXED64);
                payload.extend_from_slice(&rng.u64(..).to_le_bytes());
            }
        }
    }
    match rng.u8(0..4) {
        // Wire types 6 and 7 do not exist.
        0 => proto::tag(&mut payload, 1, 6 + rng.u8(0..2)),
        // A varint of eleven bytes.
        1 => {
            proto::tag(&mut payload, 1, proto::VARINT);
            payload.extend_from_slice(&[0xff; 10]);
            payload.push(0x01);
        }
        // A length that runs past the end of the message.
        2 => {
            proto::tag(&mut payload, 2, proto::LEN);
            proto::varint(&mut payload, u64::from(rng.u32(1..u32::MAX)));
        }
        _ => {}
    }
    payload
}

fn invalid_utf8(rng: &mut fastrand::Rng) -> Vec<u8> {
    const BAD: [&[u8]; 6] = [
        b"\xff",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"Ada \xe2\x82",
        b"\xf4\x90\x80\x80",
        b"ok\x80ok",
    ];
    rng.choice(BAD).expect("bad bytes").to_vec()
}

/// What one damage kind got.
#[derive(Default)]
struct Outcome {
    codes: BTreeMap<i32, usize>,
}

async fn malformed_requests_to_every_method_are_refused_without_harm(backend: Backend) {
    let requests = env_number("HOSTILE_REQUESTS").unwrap_or(DEFAULT_REQUESTS as u64) as usize;
    let seed = env_number("HOSTILE_SEED").unwrap_or(DEFAULT_SEED);
    let app = TestApp::spawn(backend).await;
    let material = Arc::new(seed_data(&app).await);
    let before = snapshot(&app.peek).await;

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(RawClient::connect(app.address).await);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|worker| {
            let client = clients[worker % CONNECTIONS].clone();
            let (material, next) = (material.clone(), next.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return seen;
                    }
                    let request = material.request(seed, i);
                    let path = request.method.path();
                    let sent = Instant::now();
                    let reply = tokio::time::timeout(
                        STREAM_BOUND,
                        client.call(&path, &request.headers, request.body),
                    )
                    .await;
                    seen.push((i, request.damage, path, reply, sent.elapsed()));
                }
            })
        })
        .collect();
    let mut outcomes: BTreeMap<Damage, Outcome> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for worker in workers {
        for (i, damage, path, reply, elapsed) in worker.await.expect("no panic") {
            slowest = slowest.max(elapsed);
            match reply {
                Err(_) => failures.push(format!(
                    "request {i} ({damage:?} to {path}): no answer within {STREAM_BOUND:?}"
                )),
                Ok(Err(err)) => failures.push(format!(
                    "request {i} ({damage:?} to {path}): HTTP/2 error {err}"
                )),
                Ok(Ok(reply)) => {
                    let status = reply.status.unwrap_or(-1);
                    *outcomes
                        .entry(damage)
                        .or_default()
                        .codes
                        .entry(status)
                        .or_default() += 1;
                    if !damage.allowed().contains(&status) {
                        failures.push(format!(
                            "request {i} ({damage:?} to {path}): grpc-status {status} {:?}",
                            reply.message
                        ));
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "hostile: {requests} requests (seed {seed:#x}) to {} methods in {elapsed:?}, slowest {slowest:?}",
        METHODS.len()
    );
    for (damage, outcome) in &outcomes {
        let codes: Vec<String> = outcome
            .codes
            .iter()
            .map(|(code, n)| format!("{:?} {n}", Code::from_i32(*code)))
            .collect();
        eprintln!("  {damage:?}: {}", codes.join(", "));
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests went wrong (seed {seed:#x}); first ones: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );

    assert_eq!(snapshot(&app.peek).await, before, "stored data changed");
    // And the service still works.
    let student = app.create_student("After", "after@example.com").await;
    let enrolled = app
        .assign(student.id, material.course_ids[0])
        .await
        .expect("AssignCourse after the storm");
    assert!(enrolled.created);
    app.assert_integrity().await;
    app.stop().await;
}

/// Students, courses and enrollments to aim at, and a genuine token from every kind of listing.
async fn seed_data(app: &TestApp) -> Material {
    let mut student_ids = Vec::new();
    for i in 0..4 {
        student_ids.push(
            app.create_student(&format!("Student {i}"), &format!("s{i}@example.com"))
                .await
                .id,
        );
    }
    let mut course_ids = Vec::new();
    for i in 0..3 {
        course_ids.push(
            app.create_course(&format!("C-{i}"), &format!("Course {i}"), 0)
                .await
                .id,
        );
    }
    for &student in &student_ids {
        for &course in &course_ids {
            app.assign(student, course).await.expect("assign");
        }
    }
    let mut tokens = Vec::new();
    let first_page = pb::ListStudentsRequest {
        page_size: 1,
        page_token: String::new(),
    };
    let students_token = app
        .students
        .clone()
        .list_students(first_page)
        .await
        .expect("ListStudents")
        .into_inner()
        .next_page_token;
    tokens.push(Token {
        path: "/school.v1.StudentService/ListStudents".into(),
        owner: 0,
        text: students_token,
    });
    for &student in &student_ids[..2] {
        let page = app.list_courses(student, 1, "").await.expect("ListCourses");
        tokens.push(Token {
            path: "/school.v1.StudentService/ListCourses".into(),
            owner: student,
            text: page.next_page_token,
        });
    }
    for &course in &course_ids[..2] {
        let page = app
            .courses
            .clone()
            .list_enrolled_students(pb::ListEnrolledStudentsRequest {
                course_id: course,
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .expect("ListEnrolledStudents")
            .into_inner();
        tokens.push(Token {
            path: "/school.v1.CourseService/ListEnrolledStudents".into(),
            owner: course,
            text: page.next_page_token,
        });
    }
    let search = app
        .courses
        .clone()
        .search_courses(pb::SearchCoursesRequest {
            query: String::new(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("SearchCourses")
        .into_inner();
    // Issued for the empty query; the forged requests search for "course".
    tokens.push(Token {
        path: "/school.v1.CourseService/SearchCourses".into(),
        owner: -1,
        text: search.next_page_token,
    });
    assert!(
        tokens.iter().all(|t| !t.text.is_empty()),
        "every listing has a second page"
    );

    let mut huge = vec![0u8; HUGE_BYTES];
    fastrand::Rng::with_seed(7).fill(&mut huge);
    let megabyte: Vec<u8> = "Ada Lovelace 学生 "
        .bytes()
        .cycle()
        .take(MEGABYTE)
        .collect::<Vec<_>>();
    // Cut back to a character boundary, so the string is valid UTF-8.
    let valid = String::from_utf8_lossy(&megabyte)
        .trim_end_matches('\u{fffd}')
        .as_bytes()
        .to_vec();
    Material {
        student_ids,
        course_ids,
        tokens,
        huge: message(&huge),
        megabyte: Arc::new(valid),
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.replace('_', "").parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}
