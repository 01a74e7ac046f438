//! The Scalingo platform: authentication, the archive-deploy API, deployment statuses, the
//! deployments stream, the budget of API requests, regions.

pub mod api;
pub mod auth;
pub mod budget;
pub mod driver;
pub mod follow;
pub mod lenient;
pub mod regions;
pub mod stream;
