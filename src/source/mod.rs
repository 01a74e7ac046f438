//! Sources: where work is noticed. The watchers only say "this is ready"; the one piece that
//! turns a watched directory's changes into jobs is [`redeploy`], which hands each job on and
//! waits for its end through a callback, never reaching into the queue itself.
//!
//! - [`drop`]: the drop folder, where a user or a CI job drops ready-made `.tar.gz` archives. It
//!   watches the folder and reports each archive once, when it is complete.
//! - [`tree`]: a watched source directory. It notices relevant changes (ignored paths are not
//!   changes) and says when a burst of them is over (debounce), for the redeploy loop.
//! - [`watch`]: the file watch under [`tree`]: one inotify watch per kept directory, following
//!   the tree and its ignore rules as they change, or polling for network filesystems.
//! - [`redeploy`]: a watched directory's loop: burst → digest (skip if unchanged) → pack into
//!   a job → hand it on → wait for its end → remember the deployed digest.

pub mod drop;
pub mod inotify;
pub mod redeploy;
pub mod tree;
pub mod watch;
