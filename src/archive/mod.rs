//! The `.tar.gz` archives that dropdeploy deploys: checking them before upload, and packing
//! a source directory into one.

pub mod ignore;
pub mod inspect;
pub mod pack;
pub mod pgzip;
