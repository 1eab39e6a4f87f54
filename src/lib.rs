//! mailroom: a supervisor for command-line AI agents whose whole interface is a
//! directory tree. See ARCHITECTURE.md for the code map and PROTOCOL.md for
//! the on-disk protocol.
//!
//! The folders are the architecture: `model` (pure types), `parse` (files in,
//! validated model out), `tree` (the on-disk protocol, the only code that moves
//! task files), `sched` (ordering and routing, no I/O), `run` (agent processes),
//! `supervisor` (the loop), `ops` (metrics, systemd, the watcher), `cli` and
//! `serve` (the read-only web dashboard).

pub mod adapter;
pub mod cli;
pub mod model;
pub mod ops;
pub mod parse;
pub mod run;
pub mod sched;
pub mod serve;
pub mod supervisor;
pub mod tree;
