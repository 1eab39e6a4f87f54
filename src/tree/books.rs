//! The bookkeeping beside tasks: state files, cooldown files, records of tasks
//! that never ran, run ids and host identity, listings of a state directory,
//! and the StrictModes check of the tree. Moves nothing (see `moves`).

use crate::model::Outcome;
use std::fs::{self};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::model::record::{ResultRecord, Status, TaskState};
use crate::tree::fsx;
use crate::tree::layout::{Layout, State};

/// Reads a task's state file; a missing one is a fresh state.
pub fn read_state(layout: &Layout, name: &str) -> TaskState {
    state_if_any(layout, name).unwrap_or_else(|| fresh_state(name))
}

/// A task's state file, or None when there is none (an unreadable one is a
/// fresh state).
pub fn state_if_any(layout: &Layout, name: &str) -> Option<TaskState> {
    let mut st = match fs::read(layout.state_file(name)) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(task = name, error = %e, "state file is unreadable; starting it afresh");
            fresh_state(name)
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(_) => fresh_state(name),
    };
    // The name is the identity; never trust one read from a file.
    st.task = name.to_owned();
    Some(st)
}

/// The state of a task that never ran.
pub fn fresh_state(name: &str) -> TaskState {
    TaskState {
        version: crate::model::record::PROTOCOL_VERSION,
        task: name.to_owned(),
        ..TaskState::default()
    }
}

/// The usage-limit cooldowns in force, from `tasks/cooldowns/<agent>.json`,
/// sorted by agent. With `prune`, the files of expired ones (or of ones
/// whose end cannot be read) are removed: the supervisor does this at its
/// rescans; readers such as `status` leave the tree alone.
pub fn cooldowns(layout: &Layout, prune: bool) -> Vec<crate::model::record::Cooldown> {
    let Ok(rd) = fs::read_dir(&layout.cooldowns) else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now();
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let p = ent.path();
        let json = ent
            .file_name()
            .to_str()
            .is_some_and(|f| f.ends_with(".json") && !f.starts_with('.'));
        if !json {
            continue;
        }
        let Some(c) = fsx::read_task_file(&p, 64 * 1024)
            .ok()
            .and_then(|(b, _)| serde_json::from_slice::<crate::model::record::Cooldown>(&b).ok())
        else {
            continue;
        };
        if crate::model::record::parse_ts(&c.until).is_some_and(|t| t > now) {
            out.push(c);
        } else if prune {
            let _ = fs::remove_file(&p);
        }
    }
    out.sort_by(|a, b| a.agent.cmp(&b.agent));
    out
}

/// Writes a task's state file durably. Caller holds the task's lock.
/// The directory of the run a state file names (`run.attempt`), in
/// `assigned/`: where its keeper, outcome and files are.
pub fn current_run_dir(layout: &Layout, name: &str, st: &TaskState) -> std::path::PathBuf {
    let n = st.run.as_ref().map_or(st.attempts, |r| r.attempt);
    layout.attempt_dir(State::Assigned, name, n)
}

/// Who holds a run of this host now: whether the supervisor its state file
/// names is alive and, when it is gone, which supervisor adopted the run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RunHolder {
    pub supervisor_alive: bool,
    /// The pid that holds the run's adoption lock (read, never taken here).
    pub adopted_by: Option<u32>,
}

/// [`RunHolder`] for `name`'s run under way (`st.run`); None when there is
/// none, or it runs on another host, where this one cannot look.
pub fn run_holder(layout: &Layout, name: &str, st: &TaskState) -> Option<RunHolder> {
    let r = st.run.as_ref().filter(|r| r.host == hostname())?;
    let supervisor_alive = same_process(r.supervisor_pid, r.supervisor_start);
    let adopted_by = (!supervisor_alive)
        .then(|| {
            let dir = current_run_dir(layout, name, st);
            let f = std::fs::File::open(dir.join(crate::run::keeper::ADOPTER_LOCK)).ok()?;
            crate::tree::lock::flock_holder(&f)
        })
        .flatten();
    Some(RunHolder {
        supervisor_alive,
        adopted_by,
    })
}

/// Points a record about to be filed as `dest/<record.task>` at its run
/// directories: `run_dir` at the latest attempt's, and each attempt in
/// `history` at its own (for the attempts whose directory is still in
/// `assigned/<name>.run/`, where the commit moves it from). Called before the
/// run directory moves.
pub fn fill_run_dirs(layout: &Layout, name: &str, dest: State, record: &mut ResultRecord) {
    let rel = |n: u32| layout.rel(&layout.attempt_dir(dest, &record.task, n));
    let here = |n: u32| {
        fs::symlink_metadata(layout.attempt_dir(State::Assigned, name, n)).is_ok_and(|m| m.is_dir())
    };
    let mut dirs = Vec::new();
    for a in &record.history {
        dirs.push(here(a.attempt).then(|| rel(a.attempt)));
    }
    for (a, d) in record.history.iter_mut().zip(dirs) {
        if d.is_some() {
            a.run_dir = d;
        }
    }
    if let Some((n, _)) = layout.last_attempt(State::Assigned, name) {
        record.run_dir = Some(if n == 0 {
            layout.rel(&layout.run_dir(dest, &record.task))
        } else {
            rel(n)
        });
    }
}

pub fn write_state(layout: &Layout, st: &TaskState) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(st).map_err(io::Error::other)?;
    fsx::write_atomic(&layout.state_file(&st.task), &bytes)
}

/// A result record for a file that never ran.
pub fn never_ran_record(outcome: Outcome, error: String) -> ResultRecord {
    record_at(
        outcome,
        error,
        &hostname(),
        &run_id(),
        &crate::model::record::now(),
    )
}

/// A failure record with its host, run id and time given (no clock, no host
/// lookup): the pure core of [`never_ran_record`].
pub fn record_at(
    outcome: Outcome,
    error: String,
    host: &str,
    run_id: &str,
    finished_at: &str,
) -> ResultRecord {
    ResultRecord {
        version: crate::model::record::PROTOCOL_VERSION,
        task: String::new(),
        status: Status::Failed,
        outcome,
        error: Some(error),
        error_class: None,
        session_id: None,
        usage: None,
        error_location: None,
        agent: None,
        agent_reason: None,
        attempts: 0,
        started_at: None,
        finished_at: finished_at.to_owned(),
        duration_ms: None,
        exit_code: None,
        signal: None,
        output_file: None,
        run_dir: None,
        summary: None,
        submitted_as: None,
        warnings: Vec::new(),
        followups: Vec::new(),
        withheld_followups: Vec::new(),
        children: Vec::new(),
        workspace: None,
        history: Vec::new(),
        host: host.to_owned(),
        run_id: run_id.to_owned(),
    }
}

/// The record of a file set aside because its name is taken.
pub fn clash_record(why: &str) -> ResultRecord {
    never_ran_record(
        Outcome::Clash,
        format!(
            "{why}. Rename the file and submit it again (or `mailroom retry` it under its new name)."
        ),
    )
}

/// The machine's host name, for records and for telling local runs from remote ones.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A unique id for one finished run.
pub fn run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:x}-{:x}-{:x}",
        t.as_nanos(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Start time of a process in clock ticks since boot, from `/proc/<pid>/stat`.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    proc_state(pid).map(|(_, start)| start)
}

/// A process's state letter (`R`, `S`, `T`, `Z`, …) and start time in clock
/// ticks since boot, from `/proc/<pid>/stat`.
pub fn proc_state(pid: u32) -> Option<(char, u64)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The state letter and start time in the text of a `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let mut fields = after_comm(stat)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // The start time is field 22, the 20th after the state (field 3).
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// A process's parent pid, from `/proc/<pid>/stat` (field 4).
pub fn proc_ppid(pid: u32) -> Option<u32> {
    after_comm(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A `/proc/<pid>/stat` line from field 3 (the state) on: the command name
/// (field 2) may hold spaces and parentheses, so everything up to its last
/// ')' goes.
fn after_comm(stat: &str) -> Option<&str> {
    Some(&stat[stat.rfind(')')? + 1..])
}

/// Whether `pid` is the same process that had start time `start`, and is
/// alive: a zombie (dead, not yet reaped by its parent) is not. A process
/// whose `/proc` entry cannot be read for another reason than its absence
/// (this process is out of descriptors, say) is not proven gone, and counts
/// as alive: a supervisor that takes a live peer for dead adopts its runs.
pub fn same_process(pid: u32, start: u64) -> bool {
    alive_by_stat(fs::read_to_string(format!("/proc/{pid}/stat")), start)
}

/// [`same_process`] from the result of reading `/proc/<pid>/stat`.
fn alive_by_stat(stat: io::Result<String>, start: u64) -> bool {
    match stat {
        Ok(s) => {
            parse_stat(&s).is_some_and(|(state, s)| s == start && !matches!(state, 'Z' | 'X' | 'x'))
        }
        Err(e) => !(e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)),
    }
}

/// The root a `mailroom ... run` process works on, from its command line,
/// environment and working directory; `None` if it is not a supervisor.
pub fn supervisor_root(pid: u32) -> Option<std::path::PathBuf> {
    // This binary's name, looked up once: `stop` asks for every process.
    static EXE_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let exe_name = EXE_NAME.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "mailroom".into())
    });
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_str()?;
    // An upgrade replaced the running binary's file: the link says so.
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    if name != exe_name.as_str() && name != "mailroom" {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut root = None;
    let mut sub = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--root" || a == "--log-format" {
            if a == "--root" {
                root = args.get(i + 1).cloned();
            }
            i += 2;
            continue;
        }
        if let Some(r) = a.strip_prefix("--root=") {
            root = Some(r.to_owned());
        } else if !a.starts_with('-') {
            sub = Some(a.clone());
            break;
        }
        i += 1;
    }
    if sub.as_deref() != Some("run") {
        return None;
    }
    let root = root.or_else(|| {
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        env.split(|b| *b == 0)
            .find_map(|v| v.strip_prefix(b"MAILROOM_ROOT="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    let root = std::path::PathBuf::from(root.unwrap_or_else(|| ".".into()));
    let root = if root.is_absolute() {
        root
    } else {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()?
            .join(root)
    };
    root.canonicalize().ok()
}

/// The task file at `path` (of task `name`, extension `ext`), read up to
/// `limit` bytes and parsed; None when it cannot be read or does not parse.
pub fn parsed_task(
    path: &Path,
    name: &str,
    ext: &str,
    limit: u64,
) -> Option<crate::parse::task::Task> {
    let (b, _) = fsx::read_task_file(path, limit).ok()?;
    crate::parse::task::parse_as(name, ext, &b).ok()
}

/// The task files in one state directory: (name, extension), sorted by name.
pub fn list(layout: &Layout, s: State) -> io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let listed = crate::tree::fsx::for_each_name(layout.dir(s), |fname| {
        if let Ok(fname) = std::str::from_utf8(fname)
            && let crate::parse::task::Entry::Task { name, ext } =
                crate::parse::task::classify(fname)
        {
            out.push((name.to_owned(), ext.to_owned()));
        }
    });
    match listed {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r?,
    }
    out.sort();
    Ok(out)
}

/// Counts the task files in one state directory without stat-ing them (or
/// allocating per entry: `status` lists 100,000 pending names this way).
pub fn count(layout: &Layout, s: State) -> usize {
    let mut n = 0;
    let _ = crate::tree::fsx::for_each_name(layout.dir(s), |name| {
        if let Ok(name) = std::str::from_utf8(name)
            && matches!(
                crate::parse::task::classify(name),
                crate::parse::task::Entry::Task { .. }
            )
        {
            n += 1;
        }
    });
    n
}

/// [`count`] of `pending/`, with the names there that no supervisor will
/// ever claim (`task.YAML`, `task.txt`; not editors' leftovers, dot files,
/// `x~` or `#x#`, nor `tasks/tmp/`'s drafts), sorted. The names are read
/// in the same pass: no more cost than [`count`].
pub fn count_pending(layout: &Layout) -> (usize, Vec<String>) {
    use crate::parse::task::{Entry, classify, is_leftover};
    let mut n = 0;
    let mut ignored = Vec::new();
    let _ = crate::tree::fsx::for_each_name(layout.dir(State::Pending), |name| {
        let Ok(name) = std::str::from_utf8(name) else {
            return;
        };
        match classify(name) {
            Entry::Task { .. } => n += 1,
            Entry::Ignored if !is_leftover(name) => {
                ignored.push(name.to_owned());
            }
            _ => {}
        }
    });
    ignored.sort();
    (n, ignored)
}

/// Whether a path exists without following a final symlink.
pub fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Like sshd's StrictModes: the tree must not be open to other users. The
/// root and every directory of the protocol must belong to this user and not
/// be writable by others; writable by a group only when it is the user's own
/// primary group (a user private group). `shared: true` lifts both rules for
/// trees that several users write to (world-writable still needs the sticky
/// bit then). Returns what is wrong and how to fix it.
pub fn check_permissions(layout: &Layout, shared: bool) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    let my_group = nix::unistd::getegid().as_raw();
    let dirs = [
        &layout.root,
        &layout.tasks,
        &layout.tmp,
        &layout.pending,
        &layout.assigned,
        &layout.completed,
        &layout.failed,
        &layout.control,
        &layout.cancel,
        &layout.cooldowns,
        &layout.context,
        &layout.outputs,
    ];
    for d in dirs {
        let Ok(m) = fs::symlink_metadata(d) else {
            continue;
        };
        let shown = layout.rel(d);
        let shown = if shown.is_empty() { ".".into() } else { shown };
        if m.file_type().is_symlink() && d != &layout.root {
            return Err(format!(
                "{shown} is a symbolic link; mailroom follows none inside the tree"
            ));
        }
        let mode = m.mode();
        if shared {
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                return Err(format!(
                    "{shown} is writable by everyone without the sticky bit; \
                     run `chmod o-w {shown}` or `chmod +t {shown}`"
                ));
            }
            continue;
        }
        if m.uid() != me {
            return Err(format!(
                "{shown} belongs to uid {}, not to this user ({me}); \
                 set `shared: true` in mailroom.yaml if several users share this tree",
                m.uid()
            ));
        }
        if mode & 0o002 != 0 || (mode & 0o020 != 0 && m.gid() != my_group) {
            return Err(format!(
                "{shown} is writable by other users (mode {:o}); run `chmod go-w {shown}`, \
                 or set `shared: true` in mailroom.yaml if several users share this tree",
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

/// Agents paused one by one (`tasks/control/pause.<agent>`), sorted; names
/// that are not valid agent names are ignored.
pub fn paused_agents(layout: &Layout) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(&layout.control)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|f| f.strip_prefix("pause."))
                        .filter(|a| crate::parse::task::check_name(a).is_ok())
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The environment of process `pid` (readable for this user's processes),
/// as name and value pairs. None when it cannot be read (gone, another
/// user's).
pub fn proc_environ(pid: u32) -> Option<Vec<(String, String)>> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        env.split(|b| *b == 0)
            .filter_map(|v| {
                let v = String::from_utf8_lossy(v);
                let (k, val) = v.split_once('=')?;
                Some((k.to_owned(), val.to_owned()))
            })
            .collect(),
    )
}

/// Whether `name` completed, as a commit leaves it: its task file in
/// `completed/` with its record, which says `completed`. A file put there
/// by hand or by an agent completes nothing.
pub fn is_completed(layout: &Layout, name: &str) -> bool {
    // A name is in one state: found in another one too (a task that runs,
    // waits or failed, beside files an agent planted in `completed/`), it
    // did not complete.
    if [State::Pending, State::Assigned, State::Failed]
        .into_iter()
        .any(|s| layout.find(s, name).is_some())
    {
        return false;
    }
    layout.find(State::Completed, name).is_some()
        && read_record(layout, State::Completed, name)
            .is_some_and(|r| r.status == crate::model::record::Status::Completed)
}

/// Whether the task file of `name` in a terminal `state` was filed there by
/// a commit: its record is there and names it. A file an agent planted (or
/// one put there by hand) has none, and passes for no task.
pub fn has_record(layout: &Layout, state: State, name: &str) -> bool {
    read_record(layout, state, name).is_some_and(|r| r.task == name)
}

/// What a reader (`show`, `list`, `wait`) should say of a terminal task file
/// with no record of its own, or None when it has one: that mailroom did
/// not file it, and where the task of that name went when it was filed
/// under a clash name because of it.
pub fn unfiled_note(layout: &Layout, state: State, name: &str) -> Option<String> {
    if !matches!(state, State::Completed | State::Failed) || has_record(layout, state, name) {
        return None;
    }
    let mut note = format!(
        "no record: mailroom did not file {} (an agent or a person put it there)",
        layout.rel(&layout.find(state, name)?.0)
    );
    if let Some(c) = diverted_as(layout, name) {
        note.push_str(&format!(
            "; the task of this name failed and was filed as `{c}` (`mailroom show {c}`)"
        ));
    }
    Some(note)
}

/// The clash name under which a task of this name was filed in `failed/`
/// because its own place was taken when it was committed (a file an agent
/// planted there): the task failed, under another name. Looks at
/// `<name>.clash-1`, `-2`, ... while their records exist.
pub fn diverted_as(layout: &Layout, name: &str) -> Option<String> {
    let submitted = |r: &crate::model::record::ResultRecord| {
        r.submitted_as.as_deref().is_some_and(|p| {
            Path::new(p)
                .file_stem()
                .is_some_and(|s| s == std::ffi::OsStr::new(name))
                && p.starts_with("tasks/assigned/")
        })
    };
    (1..=64)
        .map(|n| format!("{name}.clash-{n}"))
        .take_while(|c| {
            layout
                .record_file(State::Failed, c)
                .symlink_metadata()
                .is_ok()
        })
        .find(|c| {
            read_record(layout, State::Failed, c)
                .is_some_and(|r| r.outcome == crate::model::Outcome::Tampered && submitted(&r))
        })
}

/// `name`'s record in `state`, when it is a regular file (never through a
/// link, never a FIFO an agent put there) that parses.
pub fn read_record(
    layout: &Layout,
    state: State,
    name: &str,
) -> Option<crate::model::record::ResultRecord> {
    let (b, _) =
        crate::tree::fsx::read_task_file(&layout.record_file(state, name), 16 << 20).ok()?;
    serde_json::from_slice(&b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_whose_stat_cannot_be_read_is_not_taken_for_gone() {
        // Fields 4 to 21 between the state (3) and the start time (22).
        let line = |state: char, start: u64| {
            format!(
                "12 (a b) c) {state} {} {start} 0\n",
                vec!["0"; 18].join(" ")
            )
        };
        assert!(alive_by_stat(Ok(line('S', 42)), 42));
        assert!(
            !alive_by_stat(Ok(line('S', 42)), 43),
            "another start: pid reused"
        );
        assert!(!alive_by_stat(Ok(line('Z', 42)), 42), "a zombie");
        assert!(!alive_by_stat(Ok("garbage".into()), 42));
        let gone = io::Error::from(io::ErrorKind::NotFound);
        assert!(!alive_by_stat(Err(gone), 42));
        assert!(!alive_by_stat(
            Err(io::Error::from_raw_os_error(libc::ESRCH)),
            42
        ));
        // Out of descriptors: not proven gone.
        assert!(alive_by_stat(
            Err(io::Error::from_raw_os_error(libc::EMFILE)),
            42
        ));
    }

    #[test]
    fn a_zombie_is_not_the_same_process() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = proc_start_time(pid).unwrap();
        // Dead, not yet reaped: a zombie.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('Z'))
        {
            assert!(std::time::Instant::now() < until, "no zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(proc_start_time(pid), Some(start));
        assert!(!same_process(pid, start));
        child.wait().unwrap();
        assert!(same_process(
            std::process::id(),
            proc_start_time(std::process::id()).unwrap()
        ));
    }
}
