use tonic::{Request, Response, Status};

use super::{
    convert::{all, mask_paths, once},
    pb::{self, course_service_server::CourseService},
};
use crate::{
    domain::{self, CourseFields, CourseUpdate, Delete, Listing, NewCourse, Page},
    store::Store,
};

/// `school.v1.CourseService`.
#[derive(Debug, Clone)]
pub struct CourseApi {
    store: Store,
}

impl CourseApi {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl CourseService for CourseApi {
    async fn create_course(
        &self,
        request: Request<pb::CreateCourseRequest>,
    ) -> Result<Response<pb::Course>, Status> {
        super::audit::note_ids(&request);
        let mut request = request.into_inner();
        let request_id = std::mem::take(&mut request.request_id);
        let parsed = NewCourse::parse(&request.code, &request.title, request.capacity);
        let (course, request_id) = domain::with_request_id(parsed, &request_id)?;
        let once = once(request_id, "school.v1.CourseService/CreateCourse", &request);
        let created = self
            .store
            .create_course(&course, domain::now_micros(), once.as_ref())
            .await?;
        Ok(Response::new(created.into()))
    }

    async fn get_course(
        &self,
        request: Request<pb::GetCourseRequest>,
    ) -> Result<Response<pb::Course>, Status> {
        let id = domain::parse_single_id("course_id", request.get_ref().course_id)?;
        Ok(Response::new(self.store.get_course(id).await?.into()))
    }

    async fn update_course(
        &self,
        request: Request<pb::UpdateCourseRequest>,
    ) -> Result<Response<pb::Course>, Status> {
        super::audit::note_ids(&request);
        let request = request.into_inner();
        let course = request.course.unwrap_or_default();
        let sent = CourseFields {
            id: course.id,
            code: &course.code,
            title: &course.title,
            capacity: course.capacity,
            etag: &course.etag,
        };
        let update = CourseUpdate::parse(sent, &mask_paths(request.update_mask))?;
        Ok(Response::new(
            self.store.update_course(&update).await?.into(),
        ))
    }

    async fn search_courses(
        &self,
        request: Request<pb::SearchCoursesRequest>,
    ) -> Result<Response<pb::SearchCoursesResponse>, Status> {
        let request = request.into_inner();
        let (query, page) =
            domain::parse_search(&request.query, request.page_size, &request.page_token)?;
        let rows = self.store.search_courses(&query, &page).await?;
        let page = Page::from_rows(rows, &page, Listing::Search(&query.text), |c| c.id);
        Ok(Response::new(pb::SearchCoursesResponse {
            courses: all(page.items),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_course(
        &self,
        request: Request<pb::DeleteCourseRequest>,
    ) -> Result<Response<()>, Status> {
        super::audit::note_ids(&request);
        let request = request.get_ref();
        let delete = Delete::parse("course_id", request.course_id, &request.etag)?;
        self.store.delete_course(delete).await?;
        Ok(Response::new(()))
    }

    async fn list_enrolled_students(
        &self,
        request: Request<pb::ListEnrolledStudentsRequest>,
    ) -> Result<Response<pb::ListEnrolledStudentsResponse>, Status> {
        let request = request.into_inner();
        let (course_id, page) = domain::parse_list_of(
            "course_id",
            request.course_id,
            request.page_size,
            &request.page_token,
            Listing::StudentsIn,
        )?;
        let rows = self.store.list_students_in(course_id, &page).await?;
        let page = Page::from_rows(rows, &page, Listing::StudentsIn(course_id), |s| s.id);
        Ok(Response::new(pb::ListEnrolledStudentsResponse {
            students: all(page.items),
            next_page_token: page.next_page_token,
        }))
    }
}
