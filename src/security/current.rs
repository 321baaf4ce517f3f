//! A setting that a reload can replace while calls are using it: each call or connection takes
//! the value current when it starts and keeps it to its end, so a reload never changes anything
//! under a call in flight.

use std::sync::{Arc, PoisonError, RwLock};

#[derive(Debug)]
pub struct Current<T> {
    value: RwLock<Arc<T>>,
}

impl<T> Current<T> {
    pub fn new(value: T) -> Current<T> {
        Current {
            value: RwLock::new(Arc::new(value)),
        }
    }

    /// The value now; a reload after this does not change it.
    pub fn get(&self) -> Arc<T> {
        self.value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `value` in force for whatever starts from now on.
    pub fn replace(&self, value: T) {
        *self.value.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}
