//! Pure types of the product: a run's outcome and the JSON records that carry it.
//! No I/O and no paths: this folder knows what a task's life and its result are,
//! not where they are stored.

pub mod outcome;
pub mod record;

pub use outcome::Outcome;
