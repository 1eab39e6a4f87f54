//! The on-disk protocol: the tree's layout, durable file primitives, task locks,
//! and the moves between states. This is the only code that renames task files
//! (`moves`); everything else asks it to. It decides nothing about *when* a move
//! happens, and never starts a process.

pub mod context;
pub mod fsx;
pub mod layout;
pub mod mailbox;
pub mod outbox;
