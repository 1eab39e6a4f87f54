//! Files in, validated model out: the task-file format and `mailroom.yaml`, each a
//! raw serde shape checked into the type the program works with, with errors that
//! name the file, line and column. Reads no file itself except the config.

pub mod config;
pub mod task;
