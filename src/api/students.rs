use tonic::{Request, Response, Status};

use super::{
    convert::{all, mask_paths, once},
    pb::{self, student_service_server::StudentService},
};
use crate::{
    domain::{self, BatchAssign, Delete, Listing, NewStudent, Page, StudentFields, StudentUpdate},
    store::Store,
};

/// `school.v1.StudentService`.
#[derive(Debug, Clone)]
pub struct StudentApi {
    store: Store,
}

impl StudentApi {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl StudentService for StudentApi {
    async fn create_student(
        &self,
        request: Request<pb::CreateStudentRequest>,
    ) -> Result<Response<pb::Student>, Status> {
        super::audit::note_ids(&request);
        let mut request = request.into_inner();
        let request_id = std::mem::take(&mut request.request_id);
        let parsed = NewStudent::parse(&request.name, &request.email);
        let (student, request_id) = domain::with_request_id(parsed, &request_id)?;
        let once = once(
            request_id,
            "school.v1.StudentService/CreateStudent",
            &request,
        );
        let created = self
            .store
            .create_student(&student, domain::now_micros(), once.as_ref())
            .await?;
        Ok(Response::new(created.into()))
    }

    async fn get_student(
        &self,
        request: Request<pb::GetStudentRequest>,
    ) -> Result<Response<pb::Student>, Status> {
        let id = domain::parse_single_id("student_id", request.get_ref().student_id)?;
        Ok(Response::new(self.store.get_student(id).await?.into()))
    }

    async fn update_student(
        &self,
        request: Request<pb::UpdateStudentRequest>,
    ) -> Result<Response<pb::Student>, Status> {
        super::audit::note_ids(&request);
        let request = request.into_inner();
        let student = request.student.unwrap_or_default();
        let sent = StudentFields {
            id: student.id,
            name: &student.name,
            email: &student.email,
            etag: &student.etag,
        };
        let update = StudentUpdate::parse(sent, &mask_paths(request.update_mask))?;
        Ok(Response::new(
            self.store.update_student(&update).await?.into(),
        ))
    }

    async fn list_students(
        &self,
        request: Request<pb::ListStudentsRequest>,
    ) -> Result<Response<pb::ListStudentsResponse>, Status> {
        let request = request.into_inner();
        let page = domain::parse_list_students(request.page_size, &request.page_token)?;
        let rows = self.store.list_students(&page).await?;
        let page = Page::from_rows(rows, &page, Listing::Students, |s| s.id);
        Ok(Response::new(pb::ListStudentsResponse {
            students: all(page.items),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_student(
        &self,
        request: Request<pb::DeleteStudentRequest>,
    ) -> Result<Response<()>, Status> {
        super::audit::note_ids(&request);
        let request = request.get_ref();
        let delete = Delete::parse("student_id", request.student_id, &request.etag)?;
        self.store.delete_student(delete).await?;
        Ok(Response::new(()))
    }

    async fn assign_course(
        &self,
        request: Request<pb::AssignCourseRequest>,
    ) -> Result<Response<pb::AssignCourseResponse>, Status> {
        super::audit::note_ids(&request);
        let request = request.get_ref();
        let pair = domain::parse_student_course(request.student_id, request.course_id)?;
        let (enrollment, created) = self.store.assign(pair, domain::now_micros()).await?;
        Ok(Response::new(pb::AssignCourseResponse {
            enrollment: Some(enrollment.into()),
            created,
        }))
    }

    async fn batch_assign_courses(
        &self,
        request: Request<pb::BatchAssignCoursesRequest>,
    ) -> Result<Response<pb::BatchAssignCoursesResponse>, Status> {
        super::audit::note_ids(&request);
        let mut request = request.into_inner();
        let request_id = std::mem::take(&mut request.request_id);
        let parsed = BatchAssign::parse(request.student_id, &request.course_ids);
        let (batch, request_id) = domain::with_request_id(parsed, &request_id)?;
        let method = "school.v1.StudentService/BatchAssignCourses";
        let once = once(request_id, method, &request);
        let enrolled = self
            .store
            .batch_assign(&batch, domain::now_micros(), once.as_ref())
            .await?;
        let results = enrolled
            .into_iter()
            .map(|(enrollment, created)| pb::AssignCourseResponse {
                enrollment: Some(enrollment.into()),
                created,
            })
            .collect();
        Ok(Response::new(pb::BatchAssignCoursesResponse { results }))
    }

    async fn get_enrollment(
        &self,
        request: Request<pb::GetEnrollmentRequest>,
    ) -> Result<Response<pb::Enrollment>, Status> {
        let request = request.get_ref();
        let pair = domain::parse_student_course(request.student_id, request.course_id)?;
        Ok(Response::new(self.store.get_enrollment(pair).await?.into()))
    }

    async fn unassign_course(
        &self,
        request: Request<pb::UnassignCourseRequest>,
    ) -> Result<Response<()>, Status> {
        super::audit::note_ids(&request);
        let request = request.get_ref();
        let pair = domain::parse_student_course(request.student_id, request.course_id)?;
        self.store.unassign(pair).await?;
        Ok(Response::new(()))
    }

    async fn list_courses(
        &self,
        request: Request<pb::ListCoursesRequest>,
    ) -> Result<Response<pb::ListCoursesResponse>, Status> {
        let request = request.into_inner();
        let (student_id, page) = domain::parse_list_of(
            "student_id",
            request.student_id,
            request.page_size,
            &request.page_token,
            Listing::CoursesOf,
        )?;
        let rows = self.store.list_courses_of(student_id, &page).await?;
        let page = Page::from_rows(rows, &page, Listing::CoursesOf(student_id), |c| c.id);
        Ok(Response::new(pb::ListCoursesResponse {
            courses: all(page.items),
            next_page_token: page.next_page_token,
        }))
    }
}
