//! The `.tar.gz` archives that dropdeploy deploys: checking them before upload.

pub mod ignore;
pub mod inspect;
pub mod pack;
