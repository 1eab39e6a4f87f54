//! The on-disk protocol: the tree's layout, durable file primitives, task locks,
//! the bookkeeping files, the context merge and the outbox. Only `moves` renames
//! task files; everything else asks it to. Nothing here decides *when* a move
//! happens, and nothing here starts a process.

pub mod books;
pub mod budget;
pub mod context;
pub mod fsx;
pub mod layout;
pub mod lock;
pub mod moves;
pub mod outbox;
pub mod recovery;
pub mod registry;
pub mod slots;
