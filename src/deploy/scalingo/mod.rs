//! The Scalingo platform: authentication, the archive-deploy API, deployment statuses.

pub mod api;
pub mod auth;
pub mod driver;
pub mod follow;
