//! A running task's output, streamed: `/tasks/NAME/output` follows the
//! `stdout.log` of the run under way as server-sent events.
//!
//! Events carry JSON strings: `reset` (the log's last [`MAX_TAIL`] bytes, at
//! the start and whenever the log was replaced or shrank, as at a new
//! attempt), `append` (bytes added since), and `end` (with why: the task
//! left `assigned/`, or the stream reached [`MAX_STREAM`]). The log is
//! polled, which also works on file systems without inotify; reads never
//! follow a symlink and stop at a size.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::tree::fsx;
use crate::tree::layout::{Layout, State};

use super::view::{MAX_TAIL, run_dir};

/// How often the log is looked at.
pub const POLL: Duration = Duration::from_millis(250);
/// At most this much is sent in one `append`.
const CHUNK: u64 = 64 * 1024;
/// A stream ends after sending this much; a reload starts a new one.
pub const MAX_STREAM: u64 = 8 * 1024 * 1024;

/// What one look at the log found.
#[derive(Debug, PartialEq)]
pub enum Step {
    Reset(String),
    Append(String),
    Nothing,
    End(&'static str),
}

/// A follower of one task's log. It keeps the log open, so that the last
/// bytes an agent wrote are still read after its task (and run directory)
/// moved on to `completed/` or `failed/`.
pub struct Follower {
    layout: Layout,
    name: String,
    file: Option<std::fs::File>,
    /// The open log's identity and the offset read up to.
    at: (u64, u64, u64),
    /// The next read starts the text over (a new log).
    reset: bool,
    /// Bytes of a UTF-8 sequence cut at the end of the last read.
    pending: Vec<u8>,
    sent: u64,
}

impl Follower {
    pub fn new(layout: Layout, name: String) -> Follower {
        Follower {
            layout,
            name,
            file: None,
            at: (0, 0, 0),
            reset: true,
            pending: Vec::new(),
            sent: 0,
        }
    }

    /// Switches to the log at the run's path when it is another file than
    /// the one open (the first look, a new attempt) or was truncated.
    fn reopen(&mut self) {
        let Some(dir) = run_dir(&self.layout, State::Assigned, &self.name) else {
            return;
        };
        let Ok(f) = fsx::open_nofollow(&dir.join("stdout.log")) else {
            return;
        };
        let Ok(meta) = f.metadata() else {
            return;
        };
        let (dev, ino, off) = self.at;
        if !meta.is_file()
            || (self.file.is_some() && dev == meta.dev() && ino == meta.ino() && meta.len() >= off)
        {
            return;
        }
        self.at = (meta.dev(), meta.ino(), meta.len().saturating_sub(MAX_TAIL));
        self.file = Some(f);
        self.reset = true;
        self.pending.clear();
    }

    /// Looks at the log once (blocking I/O).
    pub fn step(&mut self) -> Step {
        if self.sent >= MAX_STREAM {
            return Step::End("the stream reached its size limit; reload for the latest");
        }
        let running = matches!(
            self.layout.locate(&self.name),
            Some((State::Assigned, _, _))
        );
        if running {
            self.reopen();
        }
        let Some(f) = self.file.as_mut() else {
            return if running {
                Step::Nothing
            } else {
                Step::End("the task is no longer running")
            };
        };
        let limit = if self.reset { MAX_TAIL } else { CHUNK };
        let mut buf = std::mem::take(&mut self.pending);
        let start = buf.len();
        if f.seek(SeekFrom::Start(self.at.2)).is_err()
            || f.take(limit).read_to_end(&mut buf).is_err()
        {
            return Step::Nothing;
        }
        let read = (buf.len() - start) as u64;
        if read == 0 && !self.reset {
            self.pending = buf;
            return if running {
                Step::Nothing
            } else {
                Step::End("the task is no longer running")
            };
        }
        self.at.2 += read;
        // Keep an incomplete UTF-8 sequence at the end for the next read.
        let keep = match std::str::from_utf8(&buf) {
            Err(e) if e.error_len().is_none() => buf.len() - e.valid_up_to(),
            _ => 0,
        };
        self.pending = buf.split_off(buf.len() - keep);
        let text = String::from_utf8_lossy(&buf).into_owned();
        self.sent += text.len() as u64;
        if std::mem::take(&mut self.reset) {
            Step::Reset(text)
        } else {
            Step::Append(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_sends_the_tail_then_what_is_added_and_ends_with_the_run() {
        let d = std::env::temp_dir().join(format!("mailroom-stream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let layout = Layout::new(&d);
        for s in State::ALL {
            std::fs::create_dir_all(layout.dir(s)).unwrap();
        }
        std::fs::write(layout.task_file(State::Assigned, "t", "yaml"), "x\n").unwrap();
        let run = layout.run_dir(State::Assigned, "t");
        std::fs::create_dir_all(&run).unwrap();
        let mut f = Follower::new(layout.clone(), "t".into());
        assert_eq!(f.step(), Step::Nothing, "no log yet");
        std::fs::write(run.join("stdout.log"), "one\n").unwrap();
        assert_eq!(f.step(), Step::Reset("one\n".into()));
        assert_eq!(f.step(), Step::Nothing);
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(run.join("stdout.log"))
            .unwrap();
        // "é" cut in two: the first byte waits for the second.
        log.write_all(b"two \xc3").unwrap();
        assert_eq!(f.step(), Step::Append("two ".into()));
        log.write_all(b"\xa9\n").unwrap();
        assert_eq!(f.step(), Step::Append("é\n".into()));
        // A new attempt's log (another file): from its start again.
        std::fs::remove_file(run.join("stdout.log")).unwrap();
        std::fs::write(run.join("stdout.log"), "again\n").unwrap();
        assert_eq!(f.step(), Step::Reset("again\n".into()));
        // The last words, then the commit moves the task and its run away:
        // they are still sent, and then the stream ends.
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(run.join("stdout.log"))
            .unwrap();
        log.write_all(b"bye\n").unwrap();
        crate::tree::moves::move_run_dir(&layout, "t", State::Completed).unwrap();
        crate::tree::moves::move_file(
            &layout.task_file(State::Assigned, "t", "yaml"),
            &layout.task_file(State::Completed, "t", "yaml"),
        )
        .unwrap();
        assert_eq!(f.step(), Step::Append("bye\n".into()));
        assert!(matches!(f.step(), Step::End(_)));
        let _ = std::fs::remove_dir_all(&d);
    }
}
