//! Sources: where work is noticed. A source only says "this is ready"; it never claims, packs or
//! deploys anything itself, and it never reaches further down the flow than its channel.
//!
//! - [`drop`]: the drop folder, where a user or a CI job drops ready-made `.tar.gz` archives. It
//!   watches the folder and reports each archive once, when it is complete.

pub mod drop;
