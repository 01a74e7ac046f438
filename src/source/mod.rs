//! Sources: where work is noticed. A source only says "this is ready"; it never claims, packs or
//! deploys anything itself, and it never reaches further down the flow than its channel.
//!
//! - [`drop`]: the drop folder, where a user or a CI job drops ready-made `.tar.gz` archives. It
//!   watches the folder and reports each archive once, when it is complete.
//! - [`tree`]: a watched source directory. It notices relevant changes (ignored paths are not
//!   changes) and says when a burst of them is over (debounce), for the redeploy loop.
//! - [`watch`]: the file watch under [`tree`]: one inotify watch per kept directory, following
//!   the tree and its ignore rules as they change, or polling for network filesystems.

pub mod drop;
pub mod redeploy;
pub mod tree;
pub mod watch;
