//! Which program keeps a supervisor's runs: the small `mailroom-keeper`
//! binary beside the supervisor's own executable when it is this very build,
//! else the supervisor's own binary as `mailroom keeper`. Chosen once, when a
//! supervisor starts: the small binary is asked for its identity
//! (`mailroom-keeper --identity`, bounded in time) and used only when the
//! answer is exactly [`IDENTITY`]. A keeper left over from another build, a
//! foreign program under that name or one that hangs is never used for a run.
//!
//! `MAILROOM_KEEPER=self` forces `mailroom keeper`; `MAILROOM_KEEPER=PATH`
//! names the small binary elsewhere (still asked for its identity).
//!
//! An upgrade may replace both binaries while a supervisor runs. The small
//! binary is looked at (one `stat`) before each run: once it is no longer
//! the file that answered, runs are kept by `mailroom keeper` from the
//! supervisor's own image (`/proc/self/exe`, which is still this build even
//! when its file was replaced), with one warning. A restart picks up the
//! new pair.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::keeper::{IDENTITY, PROGRAM};
use crate::tree::fsx::FileId;

/// The environment variable that overrides the choice.
pub const ENV: &str = "MAILROOM_KEEPER";

/// How long the identity question may take before the program is stopped
/// and the supervisor's own binary used instead.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The file `p` names (symbolic links followed) as it is now, if it can be
/// read: its identity (inode, size, mtime, …) and its ctime in ns, which no
/// `touch` can set back. Replaced or rewritten in place, it compares unequal.
fn seen(p: &Path) -> Option<(FileId, i128)> {
    let m = std::fs::metadata(p).ok()?;
    Some((
        FileId::of(&m),
        i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    ))
}

/// Set once the small binary changed under this process: from then on, its
/// runs are kept by the fallback (and the warning was said).
static CHANGED: AtomicBool = AtomicBool::new(false);

/// The program a run's keeper is started as: `program` (shown as `arg0`
/// when set), then `prefix`, then the run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperProgram {
    pub program: PathBuf,
    /// `argv[0]` when it differs from `program` (`/proc/self/exe` runs as
    /// the supervisor's path, so `ps` shows a name).
    pub arg0: Option<PathBuf>,
    pub prefix: Vec<String>,
    /// For the small binary: the file that answered, and what keeps the
    /// runs once it is replaced.
    checked: Option<((FileId, i128), Box<KeeperProgram>)>,
}

impl KeeperProgram {
    /// The supervisor's own binary: `mailroom keeper RUN_DIR`.
    pub fn own(exe: &Path) -> KeeperProgram {
        KeeperProgram {
            program: exe.to_path_buf(),
            arg0: None,
            prefix: vec!["keeper".into()],
            checked: None,
        }
    }

    /// The supervisor's own running image as `mailroom keeper`: through
    /// `/proc/self/exe` (the same build even after an upgrade replaced the
    /// file at `exe`), shown as `exe`; `exe` itself without `/proc`.
    pub fn own_image(exe: &Path) -> KeeperProgram {
        let image = Path::new("/proc/self/exe");
        if !image.exists() {
            return KeeperProgram::own(exe);
        }
        KeeperProgram {
            program: image.to_path_buf(),
            arg0: Some(exe.to_path_buf()),
            ..KeeperProgram::own(exe)
        }
    }

    /// The small binary: `mailroom-keeper RUN_DIR`.
    pub fn small(path: &Path) -> KeeperProgram {
        KeeperProgram {
            program: path.to_path_buf(),
            arg0: None,
            prefix: Vec::new(),
            checked: None,
        }
    }

    /// The program for the next run: this one, unless it is the small binary
    /// and its file is no longer the one that answered, now or at an earlier
    /// run (then the fallback for good, with a warning the first time).
    ///
    /// A stat, then an exec by path: an upgrade that lands between the two
    /// (microseconds) is not seen for that one run.
    pub fn for_run(&self) -> &KeeperProgram {
        match &self.checked {
            Some((_, fallback)) if CHANGED.load(Ordering::Relaxed) => fallback,
            Some((id, fallback)) if seen(&self.program) != Some(*id) => {
                if !CHANGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{} changed since this supervisor started (an upgrade?): runs are kept by \
                         `{}` from now on; restart the supervisor to use the new {PROGRAM}",
                        self.program.display(),
                        fallback.display()
                    );
                }
                fallback
            }
            _ => self,
        }
    }

    /// The small binary's path, when this is the small binary that answered
    /// with this build's identity and its file is unchanged since.
    pub fn small_binary(&self) -> Option<&Path> {
        match self.for_run() {
            KeeperProgram {
                program,
                checked: Some(_),
                ..
            } => Some(program),
            _ => None,
        }
    }

    /// The command line without the run directory, for messages.
    pub fn display(&self) -> String {
        let mut s = self
            .arg0
            .as_ref()
            .unwrap_or(&self.program)
            .display()
            .to_string();
        for a in &self.prefix {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Chooses the keeper program for a supervisor whose executable is `exe`,
/// with `MAILROOM_KEEPER` as `over` (see the module). Logs why when the small
/// binary is not used: a missing one at info level (an install of `mailroom`
/// alone), anything else as a warning.
pub fn choose(exe: &Path, over: Option<OsString>) -> KeeperProgram {
    let own = KeeperProgram::own_image(exe);
    let (candidate, named) = match over.filter(|v| !v.is_empty()) {
        Some(v) if v == "self" => {
            tracing::info!("{ENV}=self: runs are kept by `{}`", own.display());
            return own;
        }
        Some(v) => {
            let p = PathBuf::from(v);
            (std::path::absolute(&p).unwrap_or(p), true)
        }
        None => match exe.parent() {
            Some(dir) => (dir.join(PROGRAM), false),
            None => return own,
        },
    };
    // The file before and after it answered: replaced in between, it is
    // not the one that answered.
    let before = seen(&candidate);
    match ask(&candidate, HANDSHAKE_TIMEOUT) {
        Ok(line) if line == IDENTITY && before.is_some() && seen(&candidate) == before => {
            tracing::debug!(keeper = %candidate.display(), "runs are kept by {PROGRAM}");
            KeeperProgram {
                checked: before.map(|id| (id, Box::new(own))),
                ..KeeperProgram::small(&candidate)
            }
        }
        Ok(line) if line == IDENTITY => {
            tracing::warn!(
                "{} changed while it was asked for its identity: runs are kept by `{}` instead",
                candidate.display(),
                own.display()
            );
            own
        }
        Ok(line) => {
            tracing::warn!(
                "{} is not this build's keeper (it says {line:?}, this supervisor is {IDENTITY:?}): \
                 runs are kept by `{}` instead; install mailroom and {PROGRAM} from one build",
                candidate.display(),
                own.display()
            );
            own
        }
        Err(Refusal::Missing) if !named => {
            tracing::info!(
                "no {PROGRAM} beside {}: runs are kept by `{}` (a slower start per run)",
                exe.display(),
                own.display()
            );
            own
        }
        Err(e) => {
            tracing::warn!(
                "{} cannot keep runs ({e}): runs are kept by `{}` instead",
                candidate.display(),
                own.display()
            );
            own
        }
    }
}

/// Why a candidate was not asked or did not answer.
#[derive(Debug)]
pub enum Refusal {
    Missing,
    Failed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => f.write_str("no such file"),
            Refusal::Failed(s) => f.write_str(s),
        }
    }
}

/// Runs `program --identity` in its own process group and returns its first
/// line of output. One that has not exited within `timeout` is killed with
/// its whole group and reaped: it cannot hold up the supervisor's start.
pub fn ask(program: &Path, timeout: Duration) -> Result<String, Refusal> {
    let mut child = Command::new(program)
        .arg("--identity")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Refusal::Missing,
            _ => Refusal::Failed(format!("cannot start it: {e}")),
        })?;
    let mut out = child.stdout.take().expect("piped stdout");
    // Read without blocking: a descendant could keep the pipe open forever.
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe {
            let fl = libc::fcntl(out.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(out.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    let until = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
            other => {
                // SAFETY: the child's group (process_group(0) made its pid
                // the group id); the child is not reaped yet, so the id is
                // still its own.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.wait();
                return Err(Refusal::Failed(match other {
                    Err(e) => format!("cannot wait for it: {e}"),
                    _ => {
                        format!("`{PROGRAM} --identity` gave no answer within {timeout:?}; stopped")
                    }
                }));
            }
        }
    };
    let mut buf = Vec::new();
    // What the pipe holds; WouldBlock once it is empty.
    let _ = (&mut out).take(4096).read_to_end(&mut buf);
    if !status.success() {
        return Err(Refusal::Failed(format!("`--identity` failed: {status}")));
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_binary_is_started_with_the_keeper_subcommand() {
        let k = KeeperProgram::own(Path::new("/usr/bin/mailroom"));
        assert_eq!(k.prefix, ["keeper"]);
        assert_eq!(k.display(), "/usr/bin/mailroom keeper");
        assert_eq!(
            KeeperProgram::small(Path::new("/x/mailroom-keeper")).display(),
            "/x/mailroom-keeper"
        );
    }

    #[test]
    fn self_override_and_a_missing_binary_choose_the_own_binary() {
        let exe = Path::new("/nonexistent-dir-for-mailroom/mailroom");
        let own = KeeperProgram::own_image(exe);
        assert_eq!(
            own.display(),
            "/nonexistent-dir-for-mailroom/mailroom keeper"
        );
        assert_eq!(choose(exe, Some("self".into())), own);
        assert_eq!(choose(exe, None), own);
        assert_eq!(
            choose(exe, Some("/nonexistent-dir-for-mailroom/k".into())),
            own
        );
    }

    #[test]
    fn a_small_binary_replaced_after_it_answered_is_not_used() {
        let dir = std::env::temp_dir().join(format!("mailroom-kp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join(PROGRAM);
        std::fs::write(&bin, "old").unwrap();
        let own = KeeperProgram::own_image(Path::new("/usr/bin/mailroom"));
        let k = KeeperProgram {
            checked: Some((seen(&bin).unwrap(), Box::new(own.clone()))),
            ..KeeperProgram::small(&bin)
        };
        assert_eq!(k.for_run().program, bin);
        // Rewritten in place (`cp` over it; an upgrade's rename over it is
        // the integration test's case): a new size.
        std::fs::write(&bin, "new build").unwrap();
        assert_eq!(k.for_run(), &own);
        assert_eq!(k.for_run().display(), "/usr/bin/mailroom keeper");
        // Removed, it is not used either.
        std::fs::remove_file(&bin).unwrap();
        assert_eq!(k.for_run(), &own);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ask_reads_the_first_line_and_reports_failures() {
        let echo = ask(Path::new("/bin/echo"), Duration::from_secs(5)).unwrap();
        assert_eq!(echo, "--identity");
        assert!(matches!(
            ask(
                Path::new("/nonexistent-dir-for-mailroom/k"),
                HANDSHAKE_TIMEOUT
            ),
            Err(Refusal::Missing)
        ));
        assert!(matches!(
            ask(Path::new("/bin/false"), HANDSHAKE_TIMEOUT),
            Err(Refusal::Failed(_))
        ));
    }
}
