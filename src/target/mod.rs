//! Deploy targets: where an inspected archive goes.

pub mod scalingo;
