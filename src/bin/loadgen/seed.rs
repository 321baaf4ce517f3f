//! Seeds the database through the API itself, as a client would.

use student_service::api::pb::{
    AssignCourseRequest, CreateCourseRequest, CreateStudentRequest,
    course_service_client::CourseServiceClient, student_service_client::StudentServiceClient,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::Args;

/// What the measured calls draw their ids from.
pub(crate) struct Seeded {
    pub(crate) students: Vec<i64>,
    pub(crate) assign_courses: Vec<i64>,
}

const SEED_TASKS: usize = 16;

pub(crate) async fn seed(channels: &[Channel], args: &Args) -> Result<Seeded, tonic::Status> {
    // A tag per run keeps emails and codes unique when seeding the same database again.
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let courses = create_courses(channels, &run, "C", args.courses).await?;
    let assign_courses = create_courses(channels, &run, "A", args.assign_courses).await?;
    let students = parallel(channels, args.students, {
        let run = run.clone();
        move |mut client: StudentServiceClient<Channel>, _, i| {
            let run = run.clone();
            async move {
                let request = CreateStudentRequest {
                    name: format!("Load Student {i}"),
                    email: format!("load-{run}-{i}@example.com"),
                    request_id: String::new(),
                };
                Ok(client.create_student(request).await?.into_inner().id)
            }
        }
    })
    .await?;
    let per_student = args.courses_per_student.min(courses.len());
    let pairs: Vec<(i64, i64)> = students
        .iter()
        .enumerate()
        .flat_map(|(s, &student)| {
            let courses = &courses;
            (0..per_student).map(move |k| (student, courses[(s + k * 7) % courses.len()]))
        })
        .collect();
    let pairs = std::sync::Arc::new(pairs);
    parallel(
        channels,
        pairs.len(),
        move |mut client: StudentServiceClient<Channel>, _, i| {
            let (student_id, course_id) = pairs[i];
            async move {
                client
                    .assign_course(AssignCourseRequest {
                        student_id,
                        course_id,
                    })
                    .await?;
                Ok(0)
            }
        },
    )
    .await?;
    Ok(Seeded {
        students,
        assign_courses,
    })
}

async fn create_courses(
    channels: &[Channel],
    run: &str,
    kind: &str,
    count: usize,
) -> Result<Vec<i64>, tonic::Status> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let mut client = CourseServiceClient::new(channels[i % channels.len()].clone());
        let request = CreateCourseRequest {
            code: format!("{kind}{run}-{i}"),
            title: format!("Load course {i}"),
            capacity: 0,
            request_id: String::new(),
        };
        ids.push(client.create_course(request).await?.into_inner().id);
    }
    Ok(ids)
}

/// Runs `call(client, task, i)` for i in 0..count over SEED_TASKS tasks; results in order of i.
async fn parallel<F, Fut>(
    channels: &[Channel],
    count: usize,
    call: F,
) -> Result<Vec<i64>, tonic::Status>
where
    F: Fn(StudentServiceClient<Channel>, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<i64, tonic::Status>> + Send,
{
    let mut tasks = JoinSet::new();
    for task in 0..SEED_TASKS {
        let client = StudentServiceClient::new(channels[task % channels.len()].clone());
        let call = call.clone();
        tasks.spawn(async move {
            let mut done = Vec::new();
            for i in (task..count).step_by(SEED_TASKS) {
                done.push((i, call(client.clone(), task, i).await?));
            }
            Ok::<_, tonic::Status>(done)
        });
    }
    let mut results = vec![0; count];
    while let Some(joined) = tasks.join_next().await {
        let done =
            joined.map_err(|e| tonic::Status::internal(format!("seed task failed: {e}")))??;
        for (i, id) in done {
            results[i] = id;
        }
    }
    Ok(results)
}
