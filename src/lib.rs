//! mailroom: a supervisor for command-line AI agents whose whole interface is a
//! directory tree. See ARCHITECTURE.md for the code map and PROTOCOL.md for
//! the on-disk protocol.

pub mod adapter;
pub mod cli;
pub mod config;
pub mod context;
pub mod control;
pub mod demo;
pub mod followups;
pub mod fsx;
pub mod layout;
pub mod limits;
pub mod mailbox;
pub mod metrics;
pub mod prompt;
pub mod record;
pub mod routing;
pub mod runner;
pub mod scheduler;
pub mod sdnotify;
pub mod supervisor;
pub mod task;
pub mod watcher;
pub mod workspace;
