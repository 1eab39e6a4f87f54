//! The fsync discipline, checked mechanically: the real binary runs under
//! `strace` with `durability: strict`, and the trace must show
//!
//! 1. after every rename into `tasks/{pending,assigned,completed,failed}/`, an
//!    fsync of that directory by the same thread, before that thread renames
//!    anything else and before the file is renamed away again (and, for a task
//!    file moving between two state directories, an fsync of the directory it
//!    left as well); a commit's run directory may wait for the fsync that
//!    follows its task file's move into the same directory;
//! 2. every durable write (a mailroom temp file `.<base>.<host>.<pid>.<n>.tmp`
//!    renamed over its target: result records, state files, context files) is
//!    fsynced as the temp file, by the renaming thread, before the rename, and
//!    its directory is fsynced after it (within the same window as in 1).
//!
//! Needs `strace` (Debian/Ubuntu package `strace`). Without it the test fails
//! and says so, or with `MAILROOM_TEST_SKIP_MISSING=1` prints `SKIPPED:` and
//! why (`common::require`): it never skips silently.

use crate::common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One traced system call.
#[derive(Debug, Clone)]
struct Call {
    tid: u32,
    name: String,
    args: Vec<String>,
    ret: String,
    raw: String,
    /// The trace lines where the call started and where it returned (the
    /// same line unless strace split it into unfinished and resumed halves).
    start: usize,
    end: usize,
}

impl Call {
    fn ok(&self) -> bool {
        self.ret.trim_start().starts_with('0')
    }

    fn is_fsync(&self) -> bool {
        self.name == "fsync" || self.name == "fdatasync"
    }

    /// The path of a `-y` annotated descriptor argument: `7</a/b>` gives `/a/b`.
    fn fd_path(&self, i: usize) -> Option<PathBuf> {
        fd_path(self.args.get(i)?)
    }

    /// Source and target of a successful rename of any flavour.
    fn rename(&self) -> Option<(PathBuf, PathBuf)> {
        if !self.ok() {
            return None;
        }
        match self.name.as_str() {
            "rename" => Some((unquote(&self.args[0])?, unquote(&self.args[1])?)),
            "renameat" | "renameat2" => Some((
                resolve(self.fd_path(0), unquote(&self.args[1])?),
                resolve(self.fd_path(2), unquote(&self.args[3])?),
            )),
            _ => None,
        }
    }
}

fn fd_path(arg: &str) -> Option<PathBuf> {
    let start = arg.find('<')?;
    let end = arg.rfind('>')?;
    let p = arg.get(start + 1..end)?;
    Some(PathBuf::from(p.strip_suffix(" (deleted)").unwrap_or(p)))
}

fn resolve(dir: Option<PathBuf>, p: PathBuf) -> PathBuf {
    match dir {
        Some(d) if p.is_relative() => d.join(p),
        _ => p,
    }
}

/// A strace string argument (`"a\"b"`) as a path.
fn unquote(arg: &str) -> Option<PathBuf> {
    let s = arg.trim().strip_prefix('"')?;
    let s = s.strip_suffix("\"...").or_else(|| s.strip_suffix('"'))?;
    let mut out = Vec::new();
    let mut b = s.bytes();
    while let Some(c) = b.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match b.next()? {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'x' => {
                let h = [b.next()?, b.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&h).ok()?, 16).ok()?);
            }
            o => out.push(o),
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// Splits an argument list at top-level commas (not inside quotes, `<...>`,
/// braces, brackets or parentheses).
fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut quoted, mut escaped) = (0i32, false, false);
    for c in s.chars() {
        if quoted {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '<' | '{' | '[' | '(' => depth += 1,
            '>' | '}' | ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// The index of the `)` that closes the `(` at `open`, outside quotes.
fn matching_paren(s: &str, open: usize) -> Option<usize> {
    let (mut depth, mut quoted, mut escaped) = (0i32, false, false);
    for (i, c) in s.char_indices().skip_while(|(i, _)| *i < open) {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Parses `strace -f -y -o` output, joining `<unfinished ...>` and
/// `<... resumed>` halves per thread.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut unfinished: HashMap<u32, (String, usize)> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.trim().parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.starts_with("---") || rest.starts_with("+++") {
            continue;
        }
        let mut start = n;
        let full = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            unfinished.insert(tid, (head.trim_end().to_owned(), n));
            continue;
        } else if let Some(r) = rest.strip_prefix("<... ") {
            let Some(i) = r.find(" resumed>") else {
                continue;
            };
            let (head, began) = unfinished.remove(&tid).unwrap_or_default();
            start = began;
            format!("{head}{}", &r[i + " resumed>".len()..])
        } else {
            rest.to_owned()
        };
        let Some(open) = full.find('(') else { continue };
        let Some(close) = matching_paren(&full, open) else {
            continue;
        };
        // strace pads the result into a column: `)      = 0`.
        let Some(ret) = full[close + 1..].trim_start().strip_prefix("= ") else {
            continue;
        };
        calls.push(Call {
            tid,
            name: full[..open].to_owned(),
            args: split_args(&full[open + 1..close]),
            ret: ret.to_owned(),
            raw: format!("{tid} {full}"),
            start,
            end: n,
        });
    }
    calls
}

fn is_tmp(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

fn is_run_dir(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "run")
}

fn is_task_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

/// Whether the data renamed to `path` at `calls[i]` was fsynced by that
/// thread first: as `path` itself, or under the temp name it had before an
/// earlier rename by the same thread (a temp file staged through another).
fn fsynced_before(calls: &[Call], i: usize, path: &Path) -> bool {
    let tid = calls[i].tid;
    if fsynced(&calls[..i], tid, path) {
        return true;
    }
    calls[..i].iter().enumerate().rev().any(|(j, c)| {
        c.tid == tid
            && c.rename()
                .is_some_and(|(s, t)| t == path && fsynced_before(calls, j, &s))
    })
}

/// Whether a thread fsynced `path` among `calls`.
fn fsynced(calls: &[Call], tid: u32, path: &Path) -> bool {
    calls
        .iter()
        .any(|c| c.tid == tid && c.is_fsync() && c.ok() && c.fd_path(0).as_deref() == Some(path))
}

/// Whether some thread flushed directory `dir` with a call that started after
/// `after` returned and returned within `calls` (the window before the
/// renaming thread's next step). With group commit the flush may be another
/// thread's, shared by every caller that was waiting for it; one that was
/// already under way when the rename returned does not count.
fn dir_flushed(calls: &[Call], after: &Call, dir: &Path) -> bool {
    calls.iter().any(|c| {
        c.is_fsync() && c.ok() && c.start > after.end && c.fd_path(0).as_deref() == Some(dir)
    })
}

/// Files written through a temp file without any fsync by design: a keeper's
/// `keeper.json` (who keeps the run: it matters only while the host is up),
/// `context/current_state.md` (regenerated at every merge) and a
/// supervisor's heartbeat in `tasks/supervisors/` (says the process is up).
fn is_volatile(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n == "keeper.json" || n == "current_state.md")
        || p.parent()
            .is_some_and(|d| d.file_name().is_some_and(|n| n == "supervisors"))
}

/// Every violation of the discipline in a trace, as readable lines.
fn violations(calls: &[Call], state_dirs: &[PathBuf]) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        let Some((src, dst)) = c.rename() else {
            continue;
        };
        if is_volatile(&dst) {
            continue;
        }
        let dst_dir = dst.parent().unwrap().to_path_buf();
        let src_dir = src.parent().unwrap().to_path_buf();
        // The fsyncs must come before this thread renames anything else
        // (its next step), and before anyone renames this file away again.
        let window_end = |from: usize, dst: &Path| {
            calls[from + 1..]
                .iter()
                .position(|n| n.rename().is_some_and(|(s, _)| s == dst || n.tid == c.tid))
                .map_or(calls.len(), |p| from + 1 + p)
        };
        // A commit's run directory is made durable with its task file: the
        // fsync may come as late as the one after the task file's move into
        // the same directory (PROTOCOL.md 7.3, step 2).
        let end = if is_run_dir(&dst) {
            calls[i + 1..]
                .iter()
                .position(|n| {
                    n.tid == c.tid
                        && n.rename().is_some_and(|(_, d)| {
                            is_task_file(&d) && d.parent() == Some(dst_dir.as_path())
                        })
                })
                .map_or(calls.len(), |p| window_end(i + 1 + p, &dst))
        } else {
            window_end(i, &dst)
        };
        let window = &calls[i + 1..end];
        let upto = |k: usize| if k < calls.len() { &calls[k].raw } else { "" };
        if state_dirs.contains(&dst_dir) && !dir_flushed(window, c, &dst_dir) {
            bad.push(format!(
                "no fsync of {} after\n    {}\n  before\n    {}",
                dst_dir.display(),
                c.raw,
                upto(end)
            ));
        }
        if is_task_file(&dst)
            && state_dirs.contains(&dst_dir)
            && state_dirs.contains(&src_dir)
            && !dir_flushed(window, c, &src_dir)
        {
            bad.push(format!(
                "no fsync of the source directory {} after\n    {}\n  before\n    {}",
                src_dir.display(),
                c.raw,
                upto(end)
            ));
        }
        if is_tmp(&src) {
            if !fsynced_before(calls, i, &src) {
                bad.push(format!(
                    "temp file {} was not fsynced by thread {} before\n    {}",
                    src.display(),
                    c.tid,
                    c.raw
                ));
            }
            if !state_dirs.contains(&dst_dir) && !dir_flushed(window, c, &dst_dir) {
                bad.push(format!(
                    "no fsync of {} after the durable write\n    {}",
                    dst_dir.display(),
                    c.raw
                ));
            }
        }
    }
    bad
}

/// The strace binary, or `None` when it is missing and skips are allowed
/// (see [`require`]).
fn strace() -> Option<String> {
    let found = ["/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(str::to_owned)
        .or_else(|| {
            let out = Command::new("sh")
                .args(["-c", "command -v strace"])
                .output()
                .ok()?;
            let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (!p.is_empty()).then_some(p)
        });
    let have = require(
        found.is_some(),
        "strace is not installed, and the fsync discipline is checked under it: \
         install it (Debian/Ubuntu: `apt-get install strace`)",
    );
    if have { found } else { None }
}

/// Runs `mailroom --root R <args>` under strace; returns its trace, parsed.
fn traced(strace: &str, root: &Root, args: &[&str]) -> (Vec<Call>, String) {
    traced_calls(strace, root, args, MOVES)
}

/// The system calls the discipline is about: moves, syncs, and opens (for
/// the descriptors' paths).
const MOVES: &str = "rename,renameat,renameat2,link,linkat,unlink,unlinkat,fsync,fdatasync,openat";

/// [`traced`] with a chosen list of system calls (`strace -e trace=`).
fn traced_calls(strace: &str, root: &Root, args: &[&str], syscalls: &str) -> (Vec<Call>, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let trace = root.p(&format!("strace-{n}.out"));
    let mut cmd = Command::new(strace);
    cmd.args(["-f", "-y", "-qq", "-s", "4096", "-o"])
        .arg(&trace)
        .arg("-e")
        .arg(format!("trace={syscalls}"))
        .arg(BIN)
        .arg("--root")
        .arg(&root.path)
        .args(args)
        .env_remove("MAILROOM_ROOT")
        .env_remove("MAILROOM_TASK");
    let started = Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "`mailroom {}` under strace failed ({:?}); if strace itself failed, ptrace may be \
         forbidden here (containers need CAP_SYS_PTRACE):\n{}{}",
        args.join(" "),
        out.status,
        stdout(&out),
        stderr(&out)
    );
    eprintln!(
        "traced `mailroom {}`: {:?}",
        args.join(" "),
        started.elapsed()
    );
    let text = std::fs::read(&trace).unwrap_or_else(|e| {
        panic!(
            "cannot read the trace {}: {e}\nstrace and mailroom said:\n{}{}",
            trace.display(),
            stdout(&out),
            stderr(&out)
        )
    });
    let text = String::from_utf8_lossy(&text);
    (parse_trace(&text), trace.display().to_string())
}

fn assert_disciplined(calls: &[Call], state_dirs: &[PathBuf], trace: &str) {
    let bad = violations(calls, state_dirs);
    assert!(
        bad.is_empty(),
        "{} violation(s) of the fsync discipline (trace: {trace}):\n\n{}",
        bad.len(),
        bad.join("\n\n")
    );
}

#[test]
fn every_commit_point_is_fsynced_under_strict_durability() {
    let Some(strace) = strace() else { return };
    let root = Root::new().config(&format!(
        "durability: strict\nretry_delay: 50ms\nsettle: 100ms\nrescan_interval: 1s\n\
         concurrency: 2\ndefault_agent: a\n\
         agents:\n  a:\n    command: [{:?}]\n  f:\n    command: [{:?}]\n",
        agent("ok.sh"),
        agent("fail.sh"),
    ));
    for i in 0..4 {
        root.write(
            &format!("tasks/pending/ok{i}.yaml"),
            &format!("description: task {i}\n"),
        );
    }
    // One failure after a retry (requeue, then commit to failed/), one file
    // refused after settling, and one name clash (x.yaml beside x.yml).
    root.write(
        "tasks/pending/flaky.yaml",
        "description: fails twice\nagent: f\nretries: 1\n",
    );
    root.write("tasks/pending/bad.yaml", "description: x\npriorty: high\n");
    root.write("tasks/pending/ok0.yml", "description: the same name\n");

    let canon = root.path.canonicalize().unwrap();
    let state_dirs: Vec<PathBuf> = ["pending", "assigned", "completed", "failed"]
        .iter()
        .map(|d| canon.join("tasks").join(d))
        .collect();

    // A submission through tasks/tmp/ (the writer protocol).
    let (calls, trace) = traced(&strace, &root, &["add", "--name", "added", "an added task"]);
    assert!(
        calls
            .iter()
            .filter_map(Call::rename)
            .any(|(s, t)| is_tmp(&s) && t == state_dirs[0].join("added.yaml")),
        "`mailroom add` did not rename a temp file into pending/ (trace: {trace})"
    );
    assert_disciplined(&calls, &state_dirs, &trace);

    // The supervisor: claims, runs, a requeue, commits, a reject and a clash.
    let (calls, trace) = traced(&strace, &root, &["run", "--exit-when-idle"]);
    assert_eq!(
        root.names("completed"),
        ["added", "ok0", "ok1", "ok2", "ok3"]
    );
    let failed = root.names("failed");
    for want in ["bad", "flaky", "ok0.clash-1"] {
        assert!(failed.iter().any(|n| n == want), "{want} not in {failed:?}");
    }
    // Not vacuous: the trace shows every kind of move.
    let renames: Vec<(PathBuf, PathBuf)> = calls.iter().filter_map(Call::rename).collect();
    for d in &state_dirs {
        let into = renames
            .iter()
            .filter(|(_, t)| t.parent() == Some(d.as_path()) && is_task_file(t))
            .count();
        assert!(
            into > 0,
            "no task file was renamed into {} (trace: {trace})",
            d.display()
        );
    }
    let records = renames
        .iter()
        .filter(|(s, t)| is_tmp(s) && t.to_string_lossy().ends_with(".result.json"))
        .count();
    assert!(
        records >= 8,
        "expected at least 8 result records written through temp files, saw {records} \
         (trace: {trace})"
    );
    assert_disciplined(&calls, &state_dirs, &trace);

    // `mailroom retry` (failed/ -> pending/), then the retried task's run.
    let (calls, trace) = traced(&strace, &root, &["retry", "flaky"]);
    assert!(
        calls.iter().filter_map(Call::rename).any(|(s, t)| {
            s == state_dirs[3].join("flaky.yaml") && t == state_dirs[0].join("flaky.yaml")
        }),
        "`mailroom retry` did not move flaky back (trace: {trace})"
    );
    assert_disciplined(&calls, &state_dirs, &trace);
    let (calls, trace) = traced(&strace, &root, &["run", "--exit-when-idle"]);
    assert!(root.names("failed").iter().any(|n| n == "flaky"));
    assert_disciplined(&calls, &state_dirs, &trace);
}

#[test]
fn the_context_log_append_is_fdatasynced_before_the_commit() {
    // context/completed_tasks.jsonl is appended to in place, not through a
    // temp file, so the rename checks above do not see it: the append must
    // be synced by itself before the task file's move commits the task.
    let Some(strace) = strace() else { return };
    let root = Root::new().config(&format!(
        "durability: strict\nretry_delay: 50ms\nsettle: 100ms\nrescan_interval: 1s\n\
         concurrency: 2\ndefault_agent: a\n\
         agents:\n  a:\n    command: [{:?}]\n  f:\n    command: [{:?}]\n",
        agent("ok.sh"),
        agent("fail.sh"),
    ));
    for i in 0..3 {
        root.write(
            &format!("tasks/pending/j{i}.yaml"),
            &format!("description: task {i}\n"),
        );
    }
    root.write(
        "tasks/pending/jf.yaml",
        "description: fails\nagent: f\nretries: 0\n",
    );
    let syscalls = format!("{MOVES},write,pwrite64,writev");
    let (calls, trace) = traced_calls(&strace, &root, &["run", "--exit-when-idle"], &syscalls);
    assert_eq!(root.names("completed"), ["j0", "j1", "j2"]);
    assert_eq!(root.names("failed"), ["jf"]);
    let canon = root.path.canonicalize().unwrap();
    let log = canon.join("context/completed_tasks.jsonl");
    let assigned = canon.join("tasks/assigned");
    let ends = [canon.join("tasks/completed"), canon.join("tasks/failed")];
    let mut commits = 0;
    for (i, c) in calls.iter().enumerate() {
        let Some((src, dst)) = c.rename() else {
            continue;
        };
        let into_end = dst.parent().is_some_and(|d| ends.iter().any(|e| e == d));
        if !(is_task_file(&dst) && src.parent() == Some(assigned.as_path()) && into_end) {
            continue;
        }
        commits += 1;
        let appended = calls[..i].iter().rposition(|w| {
            w.tid == c.tid
                && matches!(w.name.as_str(), "write" | "pwrite64" | "writev")
                && w.fd_path(0).as_deref() == Some(log.as_path())
        });
        let Some(w) = appended else {
            panic!(
                "no append to the context log by thread {} before the commit\n    {}\n(trace: {trace})",
                c.tid, c.raw
            );
        };
        let synced = calls[w + 1..i].iter().any(|f| {
            f.tid == c.tid
                && f.is_fsync()
                && f.ok()
                && f.fd_path(0).as_deref() == Some(log.as_path())
        });
        assert!(
            synced,
            "the append to {} was not fdatasynced before the commit:\n    {}\n  then\n    {}\n(trace: {trace})",
            log.display(),
            calls[w].raw,
            c.raw
        );
    }
    assert_eq!(commits, 4, "expected four commits in the trace ({trace})");
}

#[test]
fn the_trace_parser_reads_strace_output() {
    let t = "\
10 renameat2(AT_FDCWD</tmp>, \"/r/tasks/pending/a.yaml\", AT_FDCWD</tmp>, \"/r/tasks/assigned/a.yaml\", RENAME_NOREPLACE) = 0
11 fsync(16</r/tasks/assigned/.a.state.json.h.1.0.tmp> <unfinished ...>
10 fsync(16</r/tasks/assigned>) = 0
11 <... fsync resumed>)              = 0
11 rename(\"/r/tasks/assigned/.a.state.json.h.1.0.tmp\", \"/r/tasks/assigned/a.state.json\") = 0
10 renameat2(AT_FDCWD</tmp>, \"/r/tasks/assigned/a.yaml\", AT_FDCWD</tmp>, \"/r/tasks/completed/a.yaml\", RENAME_NOREPLACE) = -1 EEXIST (File exists)
10 --- SIGCHLD {si_signo=SIGCHLD} ---
";
    let calls = parse_trace(t);
    assert_eq!(calls.len(), 5, "{calls:#?}");
    assert_eq!(
        calls[0].rename(),
        Some((
            PathBuf::from("/r/tasks/pending/a.yaml"),
            PathBuf::from("/r/tasks/assigned/a.yaml")
        ))
    );
    assert_eq!((calls[1].tid, calls[1].name.as_str()), (10, "fsync"));
    assert_eq!(
        calls[1].fd_path(0),
        Some(PathBuf::from("/r/tasks/assigned"))
    );
    // The two halves of an interrupted call are joined.
    assert_eq!(calls[2].tid, 11);
    assert_eq!(
        calls[2].fd_path(0),
        Some(PathBuf::from("/r/tasks/assigned/.a.state.json.h.1.0.tmp"))
    );
    assert!(calls[4].rename().is_none(), "a failed rename is no move");
    let dirs: Vec<PathBuf> = ["pending", "assigned", "completed", "failed"]
        .iter()
        .map(|d| PathBuf::from("/r/tasks").join(d))
        .collect();
    let bad = violations(&calls, &dirs);
    // The claim never fsynced pending/, and the state file's directory was
    // not fsynced after its rename: both are reported.
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(
        bad[0].contains("source directory /r/tasks/pending"),
        "{bad:#?}"
    );
    assert!(
        bad[1].contains("no fsync of /r/tasks/assigned after"),
        "{bad:#?}"
    );

    // Group commit: thread 21's rename is covered by the flush thread 20
    // started after it; thread 22's is not, as the only flush of completed/
    // after its rename was already under way when the rename returned.
    let t = "\
20 fsync(5</r/tasks/completed/.b.result.json.h.1.0.tmp>) = 0
20 rename(\"/r/tasks/completed/.b.result.json.h.1.0.tmp\", \"/r/tasks/completed/b.result.json\") = 0
21 fsync(6</r/tasks/completed/.c.result.json.h.1.1.tmp>) = 0
21 rename(\"/r/tasks/completed/.c.result.json.h.1.1.tmp\", \"/r/tasks/completed/c.result.json\") = 0
20 fsync(7</r/tasks/completed> <unfinished ...>
22 fsync(8</r/tasks/completed/.d.result.json.h.1.2.tmp>) = 0
22 rename(\"/r/tasks/completed/.d.result.json.h.1.2.tmp\", \"/r/tasks/completed/d.result.json\") = 0
20 <... fsync resumed>)              = 0
";
    let bad = violations(&parse_trace(t), &dirs);
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(bad[0].contains("d.result.json"), "{bad:#?}");
}
