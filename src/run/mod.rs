//! Agent processes: argv and prompt rendering, spawning in a process group,
//! timeouts, stopping and reaping, usage-limit detection, workspaces, and the
//! built-in demo agent. Knows nothing of the tree's states: it gets paths.

pub mod blocking;
pub mod demo;
pub mod keeper;
pub mod keeper_program;
pub mod launcher;
pub mod limits;
pub mod process;
pub mod prompt;
pub mod spawn;
pub mod workspace;
