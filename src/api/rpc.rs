//! What the gRPC server metrics say about a call: which RPC it is, in labels that cannot carry
//! request data, and the counts and times recorded for it.

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Histogram, counter, histogram};
use tonic::Code;

use crate::telemetry::metrics::enabled as metrics_on;

/// One RPC the server serves, or `unknown` / `unknown` for any other path: label values come
/// from this table, never from the request, so a client cannot mint new series. A wrong method
/// of a real service is `unknown` too, not a method of that service: it is the client's
/// mistake, and under the service's name it would count among that service's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rpc {
    pub(super) service: &'static str,
    pub(super) method: &'static str,
    /// `unary`, `server_stream`, `client_stream` or `bidi_stream`, as go-grpc-middleware says.
    pub(super) kind: &'static str,
    /// Where this RPC's metric handles are kept in [`HANDLES`].
    slot: usize,
}

const UNARY: &str = "unary";
const SERVER_STREAM: &str = "server_stream";
const BIDI_STREAM: &str = "bidi_stream";

/// (service, its methods with their kinds).
const RPCS: &[(&str, &[(&str, &str)])] = &[
    (
        "school.v1.StudentService",
        &[
            ("CreateStudent", UNARY),
            ("GetStudent", UNARY),
            ("UpdateStudent", UNARY),
            ("ListStudents", UNARY),
            ("DeleteStudent", UNARY),
            ("AssignCourse", UNARY),
            ("BatchAssignCourses", UNARY),
            ("GetEnrollment", UNARY),
            ("UnassignCourse", UNARY),
            ("ListCourses", UNARY),
        ],
    ),
    (
        "school.v1.CourseService",
        &[
            ("CreateCourse", UNARY),
            ("GetCourse", UNARY),
            ("UpdateCourse", UNARY),
            ("SearchCourses", UNARY),
            ("DeleteCourse", UNARY),
            ("ListEnrolledStudents", UNARY),
        ],
    ),
    (
        "school.v1.EnrollmentEventService",
        &[("WatchEnrollmentEvents", SERVER_STREAM)],
    ),
    (
        "grpc.health.v1.Health",
        &[("Check", UNARY), ("Watch", SERVER_STREAM)],
    ),
    (
        "grpc.reflection.v1.ServerReflection",
        &[("ServerReflectionInfo", BIDI_STREAM)],
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        &[("ServerReflectionInfo", BIDI_STREAM)],
    ),
];

const UNKNOWN: &str = "unknown";

/// One slot per RPC of the table, and slot 0 for every path the server does not serve.
const SLOTS: usize = {
    let mut slots = 1;
    let mut service = 0;
    while service < RPCS.len() {
        slots += RPCS[service].1.len();
        service += 1;
    }
    slots
};

/// The gRPC codes, 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: usize = 17;

/// The metric handles of one RPC's labels, each found in the registry once, on first use: a
/// labelled `counter!` builds and hashes its key and searches the registry at every call,
/// about 2% of a ListCourses call's CPU for its five recordings.
struct Handles {
    started: OnceLock<Counter>,
    handling: OnceLock<Histogram>,
    received: OnceLock<Counter>,
    sent: OnceLock<Counter>,
    handled: [OnceLock<Counter>; CODES],
}

impl Handles {
    const fn new() -> Handles {
        Handles {
            started: OnceLock::new(),
            handling: OnceLock::new(),
            received: OnceLock::new(),
            sent: OnceLock::new(),
            handled: [const { OnceLock::new() }; CODES],
        }
    }
}

/// Filled only once the recorder is installed (`metrics_on`): a handle taken before would
/// record nowhere for good.
static HANDLES: [Handles; SLOTS] = [const { Handles::new() }; SLOTS];

impl Rpc {
    /// The RPC of a request path `/package.Service/Method`.
    pub(super) fn of_path(path: &str) -> Rpc {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut first = 1;
        for (name, methods) in RPCS {
            if *name == service
                && let Some(known) = methods.iter().position(|(name, _)| *name == method)
            {
                let (method, kind) = methods[known];
                return Rpc {
                    service: name,
                    method,
                    kind,
                    slot: first + known,
                };
            }
            first += methods.len();
        }
        Rpc {
            service: UNKNOWN,
            method: UNKNOWN,
            kind: UNARY,
            slot: 0,
        }
    }

    /// Whether the server serves this RPC: a call of any other path is the client's mistake,
    /// whatever its code (the trace's status, the alert rules).
    pub(super) fn served(self) -> bool {
        self.slot != 0
    }

    pub(super) fn started(self) {
        if metrics_on() {
            self.started_counter().increment(1);
        }
    }

    pub(super) fn handled(self, code: Code, elapsed: Duration) {
        if !metrics_on() {
            return;
        }
        self.handled_counter(code).increment(1);
        self.handling_histogram().record(elapsed.as_secs_f64());
    }

    fn started_counter(self) -> &'static Counter {
        self.handles().started.get_or_init(|| {
            counter!(
                crate::telemetry::catalogue::GRPC_STARTED.name,
                &self.labels()[..]
            )
        })
    }

    fn handled_counter(self, code: Code) -> &'static Counter {
        let slot = usize::try_from(code as i32).unwrap_or(0).min(CODES - 1);
        self.handles().handled[slot].get_or_init(|| {
            let mut labels = self.labels().to_vec();
            labels.push(("grpc_code", code_name(code)));
            counter!(crate::telemetry::catalogue::GRPC_HANDLED.name, &labels[..])
        })
    }

    fn handling_histogram(self) -> &'static Histogram {
        self.handles().handling.get_or_init(|| {
            histogram!(
                crate::telemetry::catalogue::GRPC_HANDLING_SECONDS.name,
                &self.labels()[..]
            )
        })
    }

    fn messages_counter(self, sent: bool) -> &'static Counter {
        let handles = self.handles();
        let (handle, name) = if sent {
            (
                &handles.sent,
                crate::telemetry::catalogue::GRPC_MESSAGES_SENT.name,
            )
        } else {
            (
                &handles.received,
                crate::telemetry::catalogue::GRPC_MESSAGES_RECEIVED.name,
            )
        };
        handle.get_or_init(|| counter!(name, &self.labels()[..]))
    }

    fn handles(self) -> &'static Handles {
        &HANDLES[self.slot]
    }

    fn labels(self) -> [(&'static str, &'static str); 3] {
        [
            ("grpc_type", self.kind),
            ("grpc_service", self.service),
            ("grpc_method", self.method),
        ]
    }
}

/// Puts every RPC's series in the registry at 0 (its counters, each code of the handled one,
/// its latency histogram), as go-grpc-middleware's `InitializeMetrics` does: a series that
/// first appears at 1 loses that call to `rate()` and `increase()`, and the first server error
/// of a method would go unseen. Paths the server does not serve included (`unknown`). A no-op
/// before the recorder is installed.
pub(crate) fn register_every_rpc() {
    if !metrics_on() {
        return;
    }
    let served = RPCS.iter().flat_map(|(service, methods)| {
        methods
            .iter()
            .map(move |(method, _)| Rpc::of_path(&format!("/{service}/{method}")))
    });
    for rpc in std::iter::once(Rpc::of_path("")).chain(served) {
        rpc.started_counter();
        rpc.messages_counter(false);
        rpc.messages_counter(true);
        rpc.handling_histogram();
        for code in 0..CODES {
            rpc.handled_counter(Code::from_i32(code as i32));
        }
    }
}

/// A code as grpc-go spells it (`OK`, `Canceled`), which dashboards and alert rules match on;
/// tonic's `Debug` spelling (`Ok`, `Cancelled`) differs.
pub(super) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Counts the gRPC messages of one direction of a call from its body bytes: each message is a
/// 5-byte prefix (a flag and a big-endian length) and then that many bytes, split across data
/// frames however the peer likes.
#[derive(Debug)]
pub(super) struct Messages {
    rpc: Rpc,
    sent: bool,
    /// Prefix bytes seen of the message being read (up to 5).
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come, once its prefix is complete.
    remaining: u64,
}

impl Messages {
    pub(super) fn received(rpc: Rpc) -> Messages {
        Messages::new(rpc, false)
    }

    pub(super) fn sent(rpc: Rpc) -> Messages {
        Messages::new(rpc, true)
    }

    fn new(rpc: Rpc, sent: bool) -> Messages {
        Messages {
            rpc,
            sent,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Counts every message that `data` completes.
    pub(super) fn count(&mut self, mut data: &[u8]) {
        let mut complete = 0;
        while !data.is_empty() {
            if self.prefix_len < 5 {
                let take = (5 - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
                self.prefix_len += take;
                data = &data[take..];
                if self.prefix_len == 5 {
                    let [_, a, b, c, d] = self.prefix;
                    self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                }
            } else {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= take as u64;
                data = &data[take..];
            }
            if self.prefix_len == 5 && self.remaining == 0 {
                complete += 1;
                self.prefix_len = 0;
            }
        }
        if complete > 0 && metrics_on() {
            self.rpc.messages_counter(self.sent).increment(complete);
        }
    }

    #[cfg(test)]
    fn reading(&self) -> bool {
        self.prefix_len > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_a_bounded_set_of_labels() {
        let rpc = Rpc::of_path("/school.v1.StudentService/AssignCourse");
        assert_eq!(
            (rpc.service, rpc.method, rpc.kind),
            ("school.v1.StudentService", "AssignCourse", "unary")
        );
        assert_eq!(
            Rpc::of_path("/grpc.health.v1.Health/Watch").kind,
            "server_stream"
        );
        let made_up = Rpc::of_path("/school.v1.StudentService/ada@example.com");
        assert_eq!((made_up.service, made_up.method), ("unknown", "unknown"));
        assert!(!made_up.served());
        let made_up = Rpc::of_path("/evil.Service/Method");
        assert_eq!((made_up.service, made_up.method), ("unknown", "unknown"));
    }

    #[test]
    fn every_label_set_has_a_slot_of_its_own() {
        let mut paths = vec!["/evil.Service/Method".to_owned()];
        for (service, methods) in RPCS {
            assert_eq!(Rpc::of_path(&format!("/{service}/NoSuchMethod")).slot, 0);
            paths.extend(
                methods
                    .iter()
                    .map(|(method, _)| format!("/{service}/{method}")),
            );
        }
        let mut slots: Vec<usize> = paths.iter().map(|path| Rpc::of_path(path).slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..SLOTS).collect::<Vec<_>>());
    }

    #[test]
    fn every_method_of_our_protos_has_its_own_labels() {
        use prost::Message;
        let descriptors =
            prost_types::FileDescriptorSet::decode(super::super::pb::FILE_DESCRIPTOR_SET)
                .expect("our descriptors decode");
        let mut methods = 0;
        for file in descriptors
            .file
            .iter()
            .filter(|f| f.package() == "school.v1")
        {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/school.v1.{}/{}", service.name(), method.name());
                    let kind = match (method.client_streaming(), method.server_streaming()) {
                        (false, false) => UNARY,
                        (false, true) => SERVER_STREAM,
                        (true, false) => "client_stream",
                        (true, true) => BIDI_STREAM,
                    };
                    let rpc = Rpc::of_path(&path);
                    assert_eq!((rpc.method, rpc.kind), (method.name(), kind), "{path}");
                    methods += 1;
                }
            }
        }
        assert!(methods >= 15, "found only {methods} methods");
    }

    #[test]
    fn messages_are_counted_across_any_split_of_the_frames() {
        // Two messages (3 bytes, then empty), then half of a third.
        let bytes = [0, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1];
        for split in 0..bytes.len() {
            let mut messages = Messages::received(Rpc::of_path("/x/y"));
            let counted_before = messages.prefix_len;
            messages.count(&bytes[..split]);
            messages.count(&bytes[split..]);
            assert!(
                messages.reading(),
                "split at {split}: the third is unfinished"
            );
            assert_eq!(counted_before, 0);
            assert_eq!(messages.remaining, 8, "split at {split}");
        }
    }
}
