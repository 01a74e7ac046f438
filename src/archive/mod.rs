//! The `.tar.gz` archives that dropdeploy deploys: checking them before upload ([`inspect`]),
//! the one path and link policy that both the check and the local extractor apply to every
//! entry ([`paths`]), and packing a source directory into one ([`pack`]).

pub mod ignore;
pub mod inspect;
pub mod pack;
pub mod paths;
pub mod pgzip;
