//! The integration tests, in one binary: each module drives the real
//! `mailroom` binary (or the library) on temporary roots. One binary links
//! the crate once instead of once per file; see ARCHITECTURE.md, Testing.

mod common;

mod access;
mod attempts;
mod budget;
mod clis;
mod context;
mod control;
mod core;
mod crash;
mod disk;
mod docs;
mod faults;
mod fsync;
mod hooks;
mod hostile;
mod hosts;
mod keeper;
mod keeper_bin;
mod markdown;
mod metrics;
mod operator;
mod presets;
mod props;
mod scheduling;
mod serve;
mod systemd;
mod tampering;
mod tour;
mod webdriver;
mod workspace;
mod writers;
