//! Sessions: the table of open sessions and their operation state
//! (`table`), the calls that open, close and log in (`calls`), each
//! thread's shortcut to the sessions it used last (`thread_cache`) and the
//! DEK a session keeps ready for its next init (`remembered`).

pub mod calls;
pub mod cancel;
pub mod remembered;
pub mod table;
mod thread_cache;

pub use calls::{lookup, with_session};
pub use table::Session;
