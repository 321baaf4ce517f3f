//! Domain records read from rows by column name: the store's business, so the domain knows
//! nothing of sqlx. One impl serves both backends.

use sqlx::{ColumnIndex, Decode, FromRow, Row, Type};

use crate::domain::{Course, Student};

impl<'r, R: Row> FromRow<'r, R> for Student
where
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Student {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            create_time: row.try_get("create_time")?,
            revision: row.try_get("revision")?,
        })
    }
}

impl<'r, R: Row> FromRow<'r, R> for Course
where
    &'r str: ColumnIndex<R>,
    i32: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Course {
            id: row.try_get("id")?,
            code: row.try_get("code")?,
            title: row.try_get("title")?,
            capacity: row.try_get("capacity")?,
            enrolled: row.try_get("enrolled")?,
            create_time: row.try_get("create_time")?,
            revision: row.try_get("revision")?,
        })
    }
}
