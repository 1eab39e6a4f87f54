//! The agent runner: the only place that starts processes. One agent per run,
//! in its own process group, stdin an empty file that carries the task's lock,
//! output redirected to files; on
//! timeout or stop the whole group gets SIGTERM, then SIGKILL after the grace
//! period, and the child is always awaited.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

/// Why a run is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Graceful: SIGTERM, grace, SIGKILL.
    Graceful,
    /// At once: SIGKILL.
    Now,
    /// `mailroom cancel`: like `Graceful`, and the run ends as cancelled.
    Cancel,
}

/// How the agent's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        }
    }

    pub fn signal(self) -> Option<i32> {
        match self {
            Exit::Signal(s) => Some(s),
            Exit::Code(_) => None,
        }
    }
}

/// How a run ended (also the `end` of a keeper's `outcome.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    Exited(Exit),
    TimedOut(Exit),
    OutputLimit(Exit, u64),
    Stopped(Exit),
    Cancelled(Exit),
    SpawnFailed {
        error: String,
        not_found: bool,
    },
    /// The run's keeper ended without writing an outcome after it had
    /// started the agent (killed, or its run directory removed): how the
    /// agent ended is unknown. Only a supervisor makes this; a keeper never
    /// writes it.
    Lost {
        error: String,
        /// The keeper was killed or stopped by a signal mailroom did not
        /// send (outcome `signal`; else `exit`).
        killed: bool,
        /// The run directory was gone (moved or removed during the run).
        run_dir_gone: bool,
    },
}

/// Everything needed to start one agent.
#[derive(Debug)]
pub struct Spec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// `$MAILROOM_OUTPUT`: counted against the output cap too.
    pub output: Option<PathBuf>,
    pub timeout: Duration,
    pub grace: Duration,
    /// Which inherited variables pass (see `env_inherit`, `env_allow`).
    pub inherit: crate::parse::config::EnvPolicy,
    /// A duplicate of the task lock's descriptor: the agent's stdin, so the
    /// lock is held for as long as the agent lives. None: stdin is /dev/null.
    pub stdin: Option<std::fs::File>,
    pub max_output: u64,
    /// Give the agent a [`PrivateTmp`] as `TMPDIR` (unless its `env` sets one).
    pub private_tmp: bool,
}

/// A run's own temporary directory, `$TMPDIR/mailroom-run.<pid>.<random>`
/// (mode 0700), passed to the agent as `TMPDIR` and removed with everything
/// in it when dropped, after the agent and whatever it left behind are gone.
/// What an agent CLI drops into a temp directory (a crash dump holding the
/// prompt, a shell snapshot) is then neither readable by other users of the
/// host nor left behind.
#[derive(Debug)]
pub struct PrivateTmp(PathBuf);

impl PrivateTmp {
    /// Makes the directory under this process's temp directory. A name
    /// that exists (planted, or a leftover of a pid reused) is never taken.
    pub fn create() -> std::io::Result<PrivateTmp> {
        use std::os::unix::fs::DirBuilderExt;
        let base = Self::base();
        let mut last = None;
        for _ in 0..8 {
            let mut r = [0u8; 8];
            // SAFETY: getrandom writes at most `r.len()` bytes into `r`.
            let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
            if n != r.len() as isize {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                r = (t.as_nanos() as u64).to_le_bytes();
            }
            let dir = base.join(format!(
                "mailroom-run.{}.{:016x}",
                std::process::id(),
                u64::from_le_bytes(r)
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(PrivateTmp(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
    }

    /// Makes it for a run whose spec asks for one and puts it in the spec's
    /// environment. A temp directory that cannot be made is no reason to
    /// fail the run: the agent then gets the `TMPDIR` it would have had,
    /// and `warn` hears why.
    pub fn for_spec(spec: &mut Spec, warn: impl FnOnce(String)) -> Option<PrivateTmp> {
        if !spec.private_tmp || spec.env.iter().any(|(k, _)| k == "TMPDIR") {
            return None;
        }
        match PrivateTmp::create() {
            Ok(t) => {
                spec.env
                    .push(("TMPDIR".into(), t.0.to_string_lossy().into_owned()));
                Some(t)
            }
            Err(e) => {
                warn(format!(
                    "cannot make the run's private temp directory in {}: {e}; \
                     the agent gets the shared one",
                    Self::base().display()
                ));
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// This process's temp directory, made absolute (a relative `TMPDIR`
    /// would mean another place in the agent's working directory).
    fn base() -> PathBuf {
        let t = std::env::temp_dir();
        if t.is_absolute() {
            return t;
        }
        std::env::current_dir().map_or(t.clone(), |d| d.join(&t))
    }

    /// Removes what keepers or supervisors killed before they could clean
    /// up left behind: `mailroom-run.<pid>.*` of this user whose process is
    /// gone. Returns how many went.
    pub fn sweep() -> usize {
        use std::os::unix::fs::MetadataExt;
        let me = nix::unistd::geteuid().as_raw();
        let mut n = 0;
        for e in std::fs::read_dir(Self::base())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("mailroom-run."))
                .and_then(|r| r.split_once('.'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let ours = e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
            if ours && !Path::new(&format!("/proc/{pid}")).exists() {
                drop(PrivateTmp(e.path()));
                n += 1;
            }
        }
        n
    }
}

impl Drop for PrivateTmp {
    fn drop(&mut self) {
        // Empty, as a rule: one rmdir. remove_dir_all does not follow links:
        // a directory the agent swapped for a link only loses the link.
        if std::fs::remove_dir(&self.0).is_ok() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            // An agent that made something in it unremovable (a directory
            // without write permission): open it up, then try once more.
            open_up(&self.0, 0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Gives this user every permission on `dir` and the directories below it
/// (links are not followed), so that they can be removed.
fn open_up(dir: &Path, depth: u32) {
    use std::os::fd::AsRawFd;
    // Opened without following a link, changed through the descriptor: a
    // link swapped in meanwhile is not followed either.
    let Ok(d) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
    else {
        return;
    };
    // SAFETY: fchmod of a descriptor we own.
    unsafe { libc::fchmod(d.as_raw_fd(), 0o700) };
    if depth > 64 {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&e.path(), depth + 1);
        }
    }
}

/// Values for the command's placeholders.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub prompt: String,
    pub prompt_file: String,
    pub task: String,
    pub task_file: String,
    pub output_file: String,
    pub workdir: String,
    pub root: String,
    pub mailroom: String,
}

impl Vars {
    fn get<'a>(&'a self, key: &str) -> Option<&'a str> {
        Some(match key {
            "prompt" => &self.prompt,
            "prompt_file" => &self.prompt_file,
            "task" => &self.task,
            "task_file" => &self.task_file,
            "output_file" => &self.output_file,
            "workdir" => &self.workdir,
            "root" => &self.root,
            "mailroom" => &self.mailroom,
            _ => return None,
        })
    }
}

/// Placeholders that hand the agent its prompt; without one, the prompt is appended.
const PROMPT_CARRIERS: &[&str] = &["{prompt}", "{prompt_file}", "{task_file}"];

/// Whether an agent with this command gets its prompt as an argument
/// (`{prompt}` in a word, or no placeholder that hands it over otherwise,
/// so that it is appended): an argument cannot carry a NUL byte.
pub fn prompt_in_argv(command: &[String]) -> bool {
    command.iter().any(|w| w.contains("{prompt}"))
        || !command
            .iter()
            .any(|w| PROMPT_CARRIERS.iter().any(|p| w.contains(p)))
}

/// Substitutes placeholders inside each word, in one pass (a value is never
/// scanned again, so a prompt holding `{task}` stays as written), and appends
/// the prompt when no word carries it. The prompt is always one argv element:
/// data, never shell.
pub fn build_argv(command: &[String], vars: &Vars) -> Vec<String> {
    let mut out: Vec<String> = command.iter().map(|w| substitute(w, vars)).collect();
    if !command
        .iter()
        .any(|w| PROMPT_CARRIERS.iter().any(|p| w.contains(p)))
    {
        out.push(vars.prompt.clone());
    }
    out
}

fn substitute(word: &str, vars: &Vars) -> String {
    substitute_with(word, |k| vars.get(k))
}

/// Replaces each `{name}` that `lookup` knows, in one pass: a value is never
/// scanned again, and unknown `{...}` stay as written.
pub fn substitute_with<'a>(text: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after
            .find('}')
            .and_then(|j| lookup(&after[..j]).map(|v| (j, v)))
        {
            Some((j, v)) => {
                out.push_str(v);
                rest = &after[j + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Environment variables a supervisor must not pass on (systemd's protocol
/// sockets belong to the supervisor alone).
pub(crate) const STRIPPED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// An agent's whole environment: the allowlisted part of this process's,
/// never systemd's protocol variables, then the agent's own and MAILROOM_*.
pub fn agent_env(
    inherit: &crate::parse::config::EnvPolicy,
    extra: &[(String, String)],
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut out: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str()
                .is_some_and(|name| inherit.allows(name) && !STRIPPED_ENV.contains(&name))
        })
        .collect();
    out.extend(extra.iter().map(|(k, v)| (k.into(), v.into())));
    out
}

/// This process's `PATH` with the directory of `exe` added last, when no
/// entry of it is that directory already (None then, or when `PATH` is not
/// set or not text).
pub fn path_with(exe: &Path) -> Option<String> {
    let dir = exe.parent().filter(|d| d.is_absolute())?.to_str()?;
    let path = std::env::var("PATH").ok()?;
    if path.split(':').any(|p| Path::new(p) == Path::new(dir)) {
        return None;
    }
    Some(if path.is_empty() {
        dir.to_owned()
    } else {
        format!("{path}:{dir}")
    })
}

/// Resolves the program: relative paths with a slash are relative to `root`.
pub fn resolve_program(program: &str, root: &Path) -> PathBuf {
    let p = Path::new(program);
    if program.contains('/') && p.is_relative() {
        root.join(p)
    } else {
        p.to_path_buf()
    }
}

/// A started agent.
pub struct Started {
    child: tokio::process::Child,
    /// The agent's pid, which is also its process group id.
    pub pid: u32,
}

/// Starts the agent in its own process group. A failure to start is a
/// [`RunEnd::SpawnFailed`] that says what to fix.
/// Linux refuses any single argument of 128 KiB or more (MAX_ARG_STRLEN).
const MAX_ARG_BYTES: usize = 128 * 1024 - 1;

pub fn spawn(spec: &mut Spec, root: &Path) -> Result<Started, RunEnd> {
    let (cmd, program) = command(spec, root)?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    let child = cmd.spawn().map_err(|e| spawn_error(e, spec, &program))?;
    let pid = child.id().unwrap_or(0);
    Ok(Started { child, pid })
}

/// The agent's start, prepared: the run's output files created, the program
/// resolved, exactly its environment. [`Prepared::command`] makes it a
/// `Command` (the supervisor's own runs); a keeper starts it with
/// [`crate::run::spawn`].
pub struct Prepared {
    /// The program as resolved, also for [`spawn_error`].
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pub cwd: PathBuf,
    /// The lock's duplicate, or None for `/dev/null`.
    pub stdin: Option<std::fs::File>,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
}

impl Prepared {
    /// Its own process group, stdin the lock's duplicate or /dev/null,
    /// stdout and stderr the run's files.
    pub fn command(self) -> (std::process::Command, PathBuf) {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&self.program);
        let stdin = match self.stdin {
            Some(f) => std::process::Stdio::from(f),
            None => std::process::Stdio::null(),
        };
        cmd.args(&self.args)
            .stdin(stdin)
            .stdout(self.stdout)
            .stderr(self.stderr)
            .current_dir(&self.cwd)
            .process_group(0);
        cmd.env_clear();
        cmd.envs(self.env);
        (cmd, self.program)
    }

    /// The [`crate::run::spawn::Launch`] of it.
    pub fn launch(&self) -> crate::run::spawn::Launch<'_> {
        crate::run::spawn::Launch {
            program: &self.program,
            args: &self.args,
            env: &self.env,
            cwd: &self.cwd,
            stdin: self.stdin.as_ref(),
            stdout: &self.stdout,
            stderr: &self.stderr,
        }
    }
}

/// Prepares the agent's start (see [`Prepared`]); a failure is a
/// [`RunEnd::SpawnFailed`] that says what to fix.
pub fn prepare(spec: &mut Spec, root: &Path) -> Result<Prepared, RunEnd> {
    if let Some(a) = spec.argv.iter().find(|a| a.len() > MAX_ARG_BYTES) {
        return Err(RunEnd::SpawnFailed {
            error: format!(
                "an argument of the agent command is {} bytes (the prompt, with its context?); \
                 Linux passes at most 128 KiB in one argument. Give the agent {{prompt_file}} \
                 instead of {{prompt}}, or lower context_max_bytes",
                a.len()
            ),
            not_found: false,
        });
    }
    let open = |p: &Path| {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
    };
    let (stdout, stderr) = match (open(&spec.stdout), open(&spec.stderr)) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return Err(RunEnd::SpawnFailed {
                error: format!("cannot create the run's output files: {e}"),
                not_found: false,
            });
        }
    };
    Ok(Prepared {
        program: resolve_program(&spec.argv[0], root),
        args: spec.argv[1..].to_vec(),
        env: agent_env(&spec.inherit, &spec.env),
        cwd: spec.workdir.clone(),
        stdin: spec.stdin.take(),
        stdout,
        stderr,
    })
}

/// The agent's command, ready to spawn (see [`Prepared::command`]). Returns
/// the program as resolved, for [`spawn_error`].
pub fn command(spec: &mut Spec, root: &Path) -> Result<(std::process::Command, PathBuf), RunEnd> {
    Ok(prepare(spec, root)?.command())
}

/// What a failed spawn of the agent means, said so that a person can fix it.
pub fn spawn_error(e: std::io::Error, spec: &Spec, program: &Path) -> RunEnd {
    // The working directory is changed into before the exec: a directory
    // that went away (or turned into a file) fails the same way as a
    // missing program, and must not be reported as one.
    if !spec.workdir.is_dir() {
        return RunEnd::SpawnFailed {
            error: format!(
                "cannot start agent command `{}`: its working directory {} is gone or not a \
                 directory ({e})",
                program.display(),
                spec.workdir.display()
            ),
            not_found: false,
        };
    }
    let not_found = e.kind() == std::io::ErrorKind::NotFound;
    // The file is there and exec says "not found": what is missing is its
    // interpreter (a script's `#!` line) or an ELF file's loader.
    let exists = std::fs::metadata(program).is_ok_and(|m| m.is_file());
    let error = if not_found && exists {
        let first = std::fs::File::open(program)
            .and_then(|f| {
                use std::io::{BufRead, Read};
                let mut line = String::new();
                std::io::BufReader::new(f).take(256).read_line(&mut line)?;
                Ok(line)
            })
            .unwrap_or_default();
        match first.strip_prefix("#!") {
            Some(interp) => format!(
                "agent command `{}` exists, but its interpreter `{}` (its #! line) was not found",
                program.display(),
                interp.trim()
            ),
            None => format!(
                "agent command `{}` exists, but cannot be run: a program it needs (its \
                 interpreter or dynamic loader) was not found",
                program.display()
            ),
        }
    } else if not_found {
        if spec.argv[0].contains('/') {
            format!(
                "agent command `{}` does not exist (resolved to {})",
                spec.argv[0],
                program.display()
            )
        } else {
            format!(
                "agent command `{}` was not found on PATH; install it or give its full path in mailroom.yaml",
                spec.argv[0]
            )
        }
    } else if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "agent command `{}` is not executable: {e}",
            program.display()
        )
    } else {
        format!("cannot start agent command `{}`: {e}", program.display())
    };
    RunEnd::SpawnFailed { error, not_found }
}

/// Waits for a started agent, honouring timeout, output cap and stop requests.
pub async fn wait(
    started: Started,
    spec: &Spec,
    mut stop: watch::Receiver<Option<Stop>>,
) -> RunEnd {
    let Started { mut child, pid } = started;
    let pgid = Pid::from_raw(pid as i32);
    // Timeouts are capped at 30 days, but never trust an addition to a clock.
    let deadline = Instant::now()
        .checked_add(spec.timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(30 * 24 * 3600));
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;

    enum Why {
        Timeout,
        Stop(Stop),
        Output(u64),
    }
    let why = loop {
        tokio::select! {
            st = child.wait() => {
                let exit = to_exit(st);
                reap_group(pgid, Duration::from_secs(2)).await;
                // Output written since the last look counts too: a fast
                // agent ends before the next check.
                let n = output_size(spec);
                if n > spec.max_output {
                    return output_limit(spec, exit, n);
                }
                return RunEnd::Exited(exit);
            }
            _ = sleep_until(deadline) => break Why::Timeout,
            r = stop.changed() => {
                match (r, *stop.borrow()) {
                    (Ok(()), Some(s)) => break Why::Stop(s),
                    (Err(_), _) => break Why::Stop(Stop::Now),
                    _ => {}
                }
            }
            _ = check.tick() => {
                let n = output_size(spec);
                if n > spec.max_output {
                    break Why::Output(n);
                }
            }
        }
    };
    let exit = match why {
        Why::Stop(Stop::Now) => kill_now(&mut child, pgid).await,
        _ => stop_gracefully(&mut child, pgid, spec.grace, &mut stop).await,
    };
    match why {
        Why::Timeout => RunEnd::TimedOut(exit),
        Why::Stop(Stop::Cancel) => RunEnd::Cancelled(exit),
        Why::Stop(_) => RunEnd::Stopped(exit),
        Why::Output(n) => output_limit(spec, exit, n),
    }
}

/// The end of a run whose output went past `max_output`: the files past it
/// are cut back to it (an agent writes hundreds of MB between two looks),
/// so that a stopped flood does not stay on disk in the run directory.
pub(crate) fn output_limit(spec: &Spec, exit: Exit, n: u64) -> RunEnd {
    cut_outputs(spec);
    RunEnd::OutputLimit(exit, n)
}

/// Cuts each of the run's output files that is past `max_output` back to it.
/// Called when the agent has ended, and again once the processes it left
/// behind are stopped (they share its descriptors and write on).
pub fn cut_outputs(spec: &Spec) {
    for p in [Some(&spec.stdout), Some(&spec.stderr), spec.output.as_ref()]
        .into_iter()
        .flatten()
    {
        cut_back(p, spec.max_output);
    }
}

/// Cuts the regular file at `path` back to `max` bytes and says so at its
/// end. Best effort, and only a file of the run: not through a link (at the
/// file or at any directory above it: its directory must be where the path
/// says), nor one with other names (a hard link to a file elsewhere).
fn cut_back(path: &Path, max: u64) {
    use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
    let Some(dir) = path.parent() else { return };
    if std::fs::canonicalize(dir).ok().as_deref() != Some(dir) {
        return;
    }
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    let Ok(m) = f.metadata() else { return };
    if !m.is_file() || m.nlink() != 1 || m.len() <= max {
        return;
    }
    let note = format!(
        "\n[mailroom: cut here at max_output_bytes ({max} bytes); the agent wrote {} bytes]\n",
        m.len()
    );
    if f.set_len(max).is_ok() {
        let _ = f.write_all_at(note.as_bytes(), max);
    }
}

/// The largest of the run's output files (stdout, stderr, `output.md`), by
/// their length (a sparse file counts at its apparent size).
pub(crate) fn output_size(spec: &Spec) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(&spec.stdout)
        .max(size(&spec.stderr))
        .max(spec.output.as_deref().map_or(0, size))
}

pub(crate) fn to_exit(st: std::io::Result<std::process::ExitStatus>) -> Exit {
    match st {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            _ => Exit::Code(-1),
        },
        Err(_) => Exit::Code(-1),
    }
}

/// SIGTERM to the group, the grace period, then SIGKILL; always awaits the child.
/// A second stop request (`Stop::Now`) during the grace period kills at once.
async fn stop_gracefully(
    child: &mut tokio::process::Child,
    pgid: Pid,
    grace: Duration,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Exit {
    let _ = killpg(pgid, Signal::SIGTERM);
    // A stopped agent acts on its SIGTERM once continued.
    let _ = killpg(pgid, Signal::SIGCONT);
    let until = Instant::now()
        .checked_add(grace)
        .unwrap_or_else(Instant::now);
    let exited = loop {
        tokio::select! {
            st = child.wait() => break Some(to_exit(st)),
            _ = sleep_until(until) => break None,
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() == Some(Stop::Now) {
                    break None;
                }
            }
        }
    };
    match exited {
        Some(exit) => {
            reap_group(pgid, Duration::from_millis(500)).await;
            exit
        }
        None => kill_now(child, pgid).await,
    }
}

async fn kill_now(child: &mut tokio::process::Child, pgid: Pid) -> Exit {
    let _ = killpg(pgid, Signal::SIGKILL);
    let exit = to_exit(child.wait().await);
    reap_group(pgid, Duration::ZERO).await;
    exit
}

/// After the leader has exited, no member of its group may outlive the run
/// (see [`blocking::reap_group`](super::blocking::reap_group); on the
/// blocking pool, as it waits).
async fn reap_group(pgid: Pid, grace: Duration) {
    let _ =
        tokio::task::spawn_blocking(move || super::blocking::reap_group(pgid, grace, false)).await;
}

/// Process groups of agents running `task` under `root` (found through
/// `/proc/*/environ`: the agent's MAILROOM_ROOT and MAILROOM_TASK), each
/// with a start time that tells it from a later group of its number: its
/// leader's, or, for a group whose leader has exited (an agent that left
/// a child behind, a double-forked daemon), the earliest of its members
/// found. Those still take a signal to the group: the kernel gives no new
/// process the number of a group that has members. Costs a scan of /proc;
/// used only in recovery.
pub fn find_agent_groups(root: &Path, task: &str) -> Vec<(u32, u64)> {
    let want_root = format!("MAILROOM_ROOT={}", root.display());
    let want_task = format!("MAILROOM_TASK={task}");
    let mut groups: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut vars = env.split(|b| *b == 0);
        let (mut r, mut t) = (false, false);
        for v in &mut vars {
            r |= v == want_root.as_bytes();
            t |= v == want_task.as_bytes();
        }
        if r && t
            && let Ok(pg) = nix::unistd::getpgid(Some(Pid::from_raw(pid)))
            && pg.as_raw() > 1
        {
            let pg = pg.as_raw() as u32;
            let start = match crate::tree::books::proc_start_time(pg) {
                Some(leader) => Some(leader),
                // Leaderless: the member's own start time, the earliest kept.
                None => crate::tree::books::proc_start_time(pid as u32)
                    .map(|own| groups.get(&pg).map_or(own, |&had| had.min(own))),
            };
            if let Some(start) = start {
                groups.insert(pg, start);
            }
        }
    }
    groups.into_iter().collect()
}

/// Stops a process group that no supervisor owns any more (its supervisor
/// died): SIGTERM, then SIGKILL after `grace`. Blocking; for recovery.
pub fn kill_orphan_group(pgid: u32, grace: Duration) {
    let pg = Pid::from_raw(pgid as i32);
    if killpg(pg, Signal::SIGTERM).is_err() {
        return;
    }
    let until = std::time::Instant::now() + grace;
    while std::time::Instant::now() < until {
        if killpg(pg, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(pg, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private temp directory that its agent swapped for a link to
    /// another directory: dropping it removes the link, nothing behind it.
    #[test]
    fn a_private_tmp_swapped_for_a_link_loses_only_the_link() {
        let t = PrivateTmp::create().unwrap();
        let path = t.path().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let victim = std::env::temp_dir().join(format!("mailroom-victim-{}", std::process::id()));
        std::fs::create_dir_all(victim.join("sub")).unwrap();
        std::fs::write(victim.join("sub/keep"), "x").unwrap();
        std::fs::remove_dir(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        drop(t);
        assert!(std::fs::symlink_metadata(&path).is_err(), "the link stays");
        assert!(victim.join("sub/keep").exists(), "removed through the link");
        let mode = std::fs::metadata(victim.join("sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_ne!(mode, 0o700, "permissions changed through the link");
        std::fs::remove_dir_all(&victim).unwrap();
    }

    /// A working directory that went away fails the spawn with ENOENT, as a
    /// missing program does; the error names the directory, and the run is
    /// not taken for a missing agent (which sends it to a fallback).
    #[test]
    fn a_vanished_workdir_is_not_a_missing_agent() {
        let dir = crate::tree::fsx::tests::tempdir();
        let gone = dir.join("gone");
        let mut spec = Spec {
            argv: vec!["true".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            workdir: gone.clone(),
            stdout: dir.join("out"),
            stderr: dir.join("err"),
            output: None,
            timeout: Duration::from_secs(10),
            grace: Duration::from_secs(1),
            inherit: crate::parse::config::EnvPolicy::Allow(Vec::new()),
            stdin: None,
            max_output: 1 << 20,
            private_tmp: false,
        };
        let prepared = prepare(&mut spec, &dir).ok().unwrap();
        let e = crate::run::spawn::spawn(&prepared.launch()).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        match spawn_error(e, &spec, &prepared.program) {
            RunEnd::SpawnFailed { error, not_found } => {
                assert!(!not_found, "{error}");
                assert!(
                    error.contains("working directory") && error.contains("gone"),
                    "{error}"
                );
            }
            _ => panic!("not a spawn failure"),
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_prompt_is_an_argument_unless_a_placeholder_hands_it_over() {
        let c = |w: &[&str]| prompt_in_argv(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(c(&["claude", "-p"]));
        assert!(c(&["a", "--msg={prompt}"]));
        assert!(!c(&["cat", "{prompt_file}"]));
        assert!(!c(&["run", "{task_file}"]));
    }

    fn v() -> Vars {
        Vars {
            prompt: "do {task} $(rm -rf /)".into(),
            task: "t1".into(),
            output_file: "/o".into(),
            ..Vars::default()
        }
    }

    #[test]
    fn prompt_is_appended_when_no_placeholder_carries_it() {
        let cmd: Vec<String> = ["codex", "exec"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            build_argv(&cmd, &v()),
            vec!["codex", "exec", "do {task} $(rm -rf /)"]
        );
    }

    #[test]
    fn placeholders_are_substituted_once_per_word() {
        let cmd: Vec<String> = ["a", "--p={prompt}", "-o", "{output_file}", "{unknown}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            build_argv(&cmd, &v()),
            vec!["a", "--p=do {task} $(rm -rf /)", "-o", "/o", "{unknown}"]
        );
    }
}
