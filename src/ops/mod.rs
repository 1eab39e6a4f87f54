//! Operating the daemon: Prometheus metrics, the systemd notify protocol and the
//! file-system watcher. Each is a hint or a report; none decides anything about a
//! task.

pub mod dirwatch;
pub mod hooks;
pub mod metrics;
pub mod sdnotify;
pub mod watcher;
