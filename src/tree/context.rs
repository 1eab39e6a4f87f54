//! The context merge: after every finished task, under a lock on `context/`,
//! the agent's output lands in `context/agent_outputs/<name>.md`, one line is
//! appended to `context/completed_tasks.jsonl`, and `context/current_state.md`
//! is regenerated for the next agent to read.
//!
//! The context is derived data. A file in the way of a merge (a planted
//! symbolic link, a directory, an unwritable file) is set aside
//! (`<file>.set-aside-<n>`) and a fresh one takes its place, with the path in
//! the log; a link's target is never written. Callers log a merge that still
//! fails and go on: it never blocks a task's commit.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::model::record::{ResultRecord, Status};
use crate::tree::fsx;
use crate::tree::layout::{Layout, State};

/// How much of an agent's output goes into `agent_outputs/<name>.md`.
pub const OUTPUT_CAP: u64 = 1024 * 1024;
/// How many finished tasks `current_state.md` shows.
const RECENT: usize = 15;
pub const JSONL: &str = "completed_tasks.jsonl";

/// Runs `write` on the context file at `path`; when it fails and something
/// that is not a regular file, or a file mailroom may not write, is at `path`,
/// sets that aside and runs `write` once more on a fresh file.
fn or_set_aside<T>(
    layout: &Layout,
    path: &Path,
    mut write: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    // A link is set aside before anything is tried: even where a rename
    // would replace it, it must not go unnoticed.
    let in_the_way = |e: Option<&io::Error>| match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => true,
        Ok(_) => e.is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) || e.raw_os_error() == Some(libc::EPERM)
        }),
        Err(_) => false,
    };
    let err = if in_the_way(None) {
        io::Error::other("it is not a regular file")
    } else {
        match write() {
            Ok(v) => return Ok(v),
            Err(e) if in_the_way(Some(&e)) => e,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", layout.rel(path)),
                ));
            }
        }
    };
    let aside = fsx::set_aside(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {err}; cannot set it aside: {e}", layout.rel(path)),
        )
    })?;
    tracing::warn!(
        path = %layout.rel(path),
        set_aside_as = %layout.rel(&aside),
        error = %err,
        "a context file was in the way; set it aside and started a fresh one"
    );
    write().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", layout.rel(path))))
}

/// Makes sure `dir` is a directory of its own: a symbolic link (which an
/// agent may plant to make the supervisor write elsewhere) or a file in its
/// place is set aside, and a fresh directory made.
fn real_dir(layout: &Layout, dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            let aside = fsx::set_aside(dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{} is not a directory; cannot set it aside: {e}",
                        layout.rel(dir)
                    ),
                )
            })?;
            tracing::warn!(
                path = %layout.rel(dir),
                set_aside_as = %layout.rel(&aside),
                "a context directory was a link or a file; set it aside and made a fresh one"
            );
            fsx::create_dir_all(dir)
        }
        Err(_) => fsx::create_dir_all(dir),
    }
}

/// How long a merge waits for `context/.lock`. Merges hold it for
/// milliseconds; a holder that keeps it longer (an agent that took it) must
/// not hold up the commits, or a shutdown, behind it.
const CONTEXT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the exclusive lock on `context/.lock`, waiting at most
/// [`CONTEXT_LOCK_WAIT`]. `context/` and `context/agent_outputs/` are made
/// sure to be directories of the tree first: nothing is ever written
/// through a link.
fn lock_context(layout: &Layout, wait: std::time::Duration) -> io::Result<File> {
    real_dir(layout, &layout.context)?;
    real_dir(layout, &layout.outputs)?;
    let path = layout.context.join(".lock");
    let f = or_set_aside(layout, &path, || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
    })?;
    crate::tree::lock::flock_within(&f, wait).map_err(|why| {
        io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{} {why}; the context was not merged", layout.rel(&path)),
        )
    })?;
    Ok(f)
}

/// `context/.unmerged/`: one file per task whose commit went ahead without
/// its merge (the lock was held), naming the state its record is in.
fn unmerged_dir(layout: &Layout) -> std::path::PathBuf {
    layout.context.join(".unmerged")
}

/// Notes that `name`'s record in `state` was committed without its merge,
/// for [`replay_unmerged`]. Best effort.
pub fn note_unmerged(layout: &Layout, state: State, name: &str) {
    let dir = unmerged_dir(layout);
    let _ = real_dir(layout, &dir)
        .and_then(|()| fsx::write_atomic(&fsx::child(&dir, name), state.dir_name().as_bytes()));
}

/// Whether `name` was committed without its merge and waits for
/// [`replay_unmerged`] (its record must stay until then).
pub fn is_unmerged(layout: &Layout, name: &str) -> bool {
    std::fs::symlink_metadata(fsx::child(&unmerged_dir(layout), name)).is_ok()
}

/// Whether `name` is still not merged into context/ after this process
/// tried the pending merges itself (as a supervisor's rescan would; the
/// commands that must not go on before that merge, `clean` and `retry`,
/// need no supervisor for it). A lock held for more than `wait`, or a merge
/// that fails, leaves it unmerged.
pub fn still_unmerged(layout: &Layout, name: &str, wait: std::time::Duration) -> bool {
    if !is_unmerged(layout, name) {
        return false;
    }
    replay_unmerged(layout, 256, wait);
    is_unmerged(layout, name)
}

/// Merges what was committed without its merge (at most `max` tries, each
/// waiting at most `wait` for the lock), oldest note first, and forgets what
/// is merged or gone. Returns how many were merged.
///
/// A held lock ends the pass (every merge would wait for it). A merge that
/// fails for its own reason (say an agent made its `agent_outputs/` file an
/// immutable directory) is logged, and its note goes to the back of the
/// queue (its mtime is set to now): it is tried again later, and cannot
/// starve the notes behind it.
pub fn replay_unmerged(layout: &Layout, max: usize, wait: std::time::Duration) -> usize {
    let dir = unmerged_dir(layout);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut notes: Vec<(std::time::SystemTime, String)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // Another supervisor's note being written (its temp file).
            if name.starts_with('.') {
                return None;
            }
            let at = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((at, name))
        })
        .collect();
    notes.sort();
    let (mut merged, mut tried) = (0, 0);
    for (_, name) in notes {
        if tried == max {
            break;
        }
        let path = fsx::child(&dir, &name);
        if crate::parse::task::check_name(&name).is_err() {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let state = fsx::read_head(&path, 64)
            .ok()
            .and_then(|(b, _)| State::parse(String::from_utf8_lossy(&b).trim()))
            .filter(|s| matches!(s, State::Completed | State::Failed));
        let rec = state.and_then(|s| crate::tree::books::read_record(layout, s, &name));
        let Some(rec) = rec.filter(|r| r.task == name) else {
            // Retried, or never there: nothing to merge.
            let _ = std::fs::remove_file(&path);
            continue;
        };
        tried += 1;
        let (out, cut, _) = rec
            .run_dir
            .as_deref()
            .map(|d| read_output_and_summary(&layout.root.join(d)))
            .unwrap_or_default();
        match merge_within(layout, &rec, output_for(&rec, &out, cut), None, wait, None) {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
                merged += 1;
            }
            // Still held: the next pass tries again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::warn!(
                    task = %name,
                    error = %e,
                    "could not merge a finished task into context/; trying again at a later pass"
                );
                let _ = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            }
        }
    }
    merged
}

/// The output a merge of `rec` writes to `agent_outputs/`, as the commit
/// that filed it would: a commit's (a run's, a subtask parent's), which
/// names its `output_file`, not a reject's or a cancel's (its log line
/// only), even of a task that had run before (its record then names the
/// agent of that run). For the merges a later pass makes.
pub fn output_for<'a>(rec: &ResultRecord, out: &'a str, cut: bool) -> Option<(&'a str, bool)> {
    rec.output_file.is_some().then_some((out, cut))
}

/// Whether `c` is a control character [`clean`] takes out.
fn is_control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// What an agent said, made fit for `context/` and the next prompts: its
/// terminal escape sequences (colours, titles) dropped, `\r\n` and a lone
/// `\r` made newlines, and every other control character (a NUL above all,
/// which no argument of a later agent's command line can carry) shown as
/// U+FFFD. Borrowed when there is nothing to clean.
pub fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\r' => {
                it.next_if_eq(&'\n');
                out.push('\n');
            }
            '\x1b' => match it.peek() {
                // CSI: parameters and intermediates, then one final byte;
                // anything else ends it and is kept.
                Some('[') => {
                    it.next();
                    while let Some(&c) = it.peek() {
                        if ('0'..='?').contains(&c) || (' '..='/').contains(&c) {
                            it.next();
                            continue;
                        }
                        if ('@'..='~').contains(&c) {
                            it.next();
                        }
                        break;
                    }
                }
                // OSC (a title, a link): up to BEL or ESC \, but never past
                // a line's end nor for more than 4 KiB: one left open must
                // not swallow the rest of an answer.
                Some(']') => {
                    it.next();
                    let mut n = 0;
                    while let Some(&c) = it.peek() {
                        if c == '\n' || c == '\r' || n >= 4096 {
                            break;
                        }
                        it.next();
                        n += 1;
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            it.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                // Any other escape: it and its one printable character.
                Some(&c) if !c.is_control() => {
                    it.next();
                }
                // A lone ESC.
                _ => {}
            },
            c if is_control(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out.into()
}

/// Extracts the last `[SUMMARY]…[/SUMMARY]` block of an output, [`clean`]ed.
pub fn summary(text: &str) -> Option<String> {
    let start = text.rfind("[SUMMARY]")?;
    let body = &text[start + "[SUMMARY]".len()..];
    let end = body.find("[/SUMMARY]").unwrap_or(body.len());
    let s = clean(&body[..end]);
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut s = s.to_owned();
    if s.len() > 2000 {
        let mut cut = 2000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" …");
    }
    Some(s)
}

/// Where a run's output is, in the order it is taken: the first of them
/// that is not blank (see [`read_output`]).
pub const OUTPUT_FILES: [&str; 3] = ["output.md", "answer.md", "stdout.log"];

/// The agent's output for a finished run: `output.md` if the agent wrote one
/// (via `$MAILROOM_OUTPUT`), else the answer its CLI's adapter read from the
/// output (`answer.md`: the text, not the JSON envelope), else its stdout.
/// Capped.
pub fn read_output(run_dir: &Path) -> (String, bool) {
    let (text, cut, _) = read_output_and_summary(run_dir);
    (text, cut)
}

/// [`read_output`], and the output's last `[SUMMARY]` block: from its
/// tail when it is longer than the cap (a summary comes at the end).
pub fn read_output_and_summary(run_dir: &Path) -> (String, bool, Option<String>) {
    for f in OUTPUT_FILES {
        let path = run_dir.join(f);
        if let Ok((b, cut)) = fsx::read_head(&path, OUTPUT_CAP)
            && !b.iter().all(u8::is_ascii_whitespace)
        {
            let text = String::from_utf8_lossy(&b).into_owned();
            let tail = cut
                .then(|| fsx::read_tail(&path, SUMMARY_TAIL).ok())
                .flatten()
                .and_then(|(t, _)| summary(&String::from_utf8_lossy(&t)));
            let s = tail.or_else(|| summary(&text));
            return (text, cut, s);
        }
    }
    (String::new(), false, None)
}

/// How much of the end of an output longer than [`OUTPUT_CAP`] is searched
/// for its summary.
const SUMMARY_TAIL: u64 = 64 * 1024;

/// Merges one finished task into `context/`. Idempotent: a record whose
/// `run_id` is already in the log is not appended again.
/// `pending_hint` is the supervisor's count of pending tasks, which spares a
/// listing of a large `pending/`.
///
/// `tree` is the first task of the task's tree of follow-ups when the caller
/// knows it (from the task it claimed); otherwise it is looked up from the
/// task files.
pub fn merge(
    layout: &Layout,
    rec: &ResultRecord,
    output: Option<(&str, bool)>,
    pending_hint: Option<usize>,
    tree: Option<&str>,
) -> io::Result<()> {
    merge_within(layout, rec, output, pending_hint, CONTEXT_LOCK_WAIT, tree)
}

/// How long a merge made on the supervisor's loop (a reject, recovery)
/// waits for the lock: the loop must not stall behind its holder.
pub const LOOP_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// [`merge`], waiting at most `wait` for `context/.lock`.
pub fn merge_within(
    layout: &Layout,
    rec: &ResultRecord,
    output: Option<(&str, bool)>,
    pending_hint: Option<usize>,
    wait: std::time::Duration,
    tree: Option<&str>,
) -> io::Result<()> {
    let queued = InFlight::enter(&layout.context);
    // Fields drop in order: this merge leaves the count before the lock.
    let held = (queued, lock_context(layout, wait)?);
    let merged = merge_locked(layout, rec, output, tree);
    // Under load, merges of this process queue for the lock: one with
    // another behind it leaves the regeneration to that one, which makes it
    // right after its own line (and so shows this one too). Each merge's
    // line and output are written either way.
    let (others_waiting, owed) = held.0.leave_state();
    if others_waiting || (merged.is_err() && !owed) {
        return merged;
    }
    let state = write_current_state(layout, pending_hint, Some(&rec.task));
    merged.and(state)
}

/// By context directory: the merges of this process waiting for its
/// `.lock` or holding it, and whether one left `current_state.md` to
/// another queued behind it.
static IN_FLIGHT: Mutex<Vec<(std::path::PathBuf, usize, bool)>> = Mutex::new(Vec::new());

/// A merge counted in [`IN_FLIGHT`] until it is dropped.
struct InFlight<'a>(&'a Path);

impl<'a> InFlight<'a> {
    fn enter(context: &'a Path) -> InFlight<'a> {
        let mut v = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        match v.iter_mut().find(|(p, _, _)| p == context) {
            Some(e) => e.1 += 1,
            None => v.push((context.to_path_buf(), 1, false)),
        }
        InFlight(context)
    }

    /// Whether another merge waits behind this one (which then leaves
    /// `current_state.md` to it, and notes that it is owed), and whether an
    /// earlier merge left it to this one (the note is then cleared).
    fn leave_state(&self) -> (bool, bool) {
        let mut v = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = v.iter_mut().find(|(p, _, _)| p == self.0) else {
            return (false, false);
        };
        if e.1 > 1 {
            e.2 = true;
            (true, true)
        } else {
            (false, std::mem::take(&mut e.2))
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut v = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = v.iter().position(|(p, _, _)| p == self.0) {
            v[i].1 -= 1;
            // Kept while owed: the next merge of this tree makes it.
            if v[i].1 == 0 && !v[i].2 {
                v.swap_remove(i);
            }
        }
    }
}

/// The part of a merge under the lock before `current_state.md`: the
/// output file and the log line.
fn merge_locked(
    layout: &Layout,
    rec: &ResultRecord,
    output: Option<(&str, bool)>,
    tree: Option<&str>,
) -> io::Result<()> {
    if let Some((text, cut)) = output {
        let mut md = format!(
            "# {}\n\n- status: {}\n- agent: {}\n- attempts: {}\n- started: {}\n- finished: {}\n",
            rec.task,
            status_word(rec),
            rec.agent.as_deref().unwrap_or("-"),
            rec.attempts,
            rec.started_at.as_deref().unwrap_or("-"),
            rec.finished_at,
        );
        if let Some(e) = &rec.error {
            md.push_str(&format!("- error: {}\n", clean(e)));
        }
        md.push_str("\n---\n\n");
        if text.trim().is_empty() && rec.status == Status::Failed {
            // Nothing to show (it never ran, or wrote nothing): say so
            // rather than leave an empty section the next agent wonders at.
            md.push_str(
                "(no output: its agent wrote nothing to stdout or $MAILROOM_OUTPUT, or never \
                 started; the error is above)\n",
            );
        } else {
            md.push_str(&clean(text));
        }
        if cut {
            md.push_str(&format!(
                "\n\n[output truncated at {OUTPUT_CAP} bytes; the full output is in {}]\n",
                rec.run_dir.as_deref().unwrap_or("the run directory")
            ));
        }
        let path = layout.output_file(&rec.task);
        or_set_aside(layout, &path, || fsx::write_atomic(&path, md.as_bytes()))?;
    }
    append_log(layout, rec, tree)
}

fn status_word(rec: &ResultRecord) -> &'static str {
    match rec.status {
        Status::Completed => "completed",
        Status::Failed => "failed",
    }
}

/// One line of `completed_tasks.jsonl`. `totals` counts every line so far
/// (this one included), so that a reader of the log's tail knows them too.
fn log_line(rec: &ResultRecord, totals: (u64, u64)) -> serde_json::Value {
    serde_json::json!({
        "totals": { "completed": totals.0, "failed": totals.1 },
        "task": rec.task,
        "status": status_word(rec),
        "outcome": rec.outcome,
        "agent": rec.agent,
        "attempts": rec.attempts,
        "started_at": rec.started_at,
        "finished_at": rec.finished_at,
        "duration_ms": rec.duration_ms,
        "exit_code": rec.exit_code,
        "error": rec.error.as_deref().map(clean),
        "summary": rec.summary.as_deref().map(clean),
        "output_file": rec.output_file,
        "error_class": rec.error_class,
        "session_id": rec.session_id,
        // Every attempt's usage, summed: what the task cost in all.
        "usage": total_usage(rec),
        "run_id": rec.run_id,
    })
}

/// The usage of every attempt of a record, summed (None: none reported).
pub fn total_usage(rec: &ResultRecord) -> Option<crate::adapter::Usage> {
    let mut total = crate::adapter::Usage::default();
    for u in rec.history.iter().filter_map(|a| a.usage.as_ref()) {
        total.add(u);
    }
    (!total.is_empty()).then_some(total)
}

/// The longest line of `completed_tasks.jsonl` its readers take: a record's
/// line is a few hundred bytes, one with a long error a few KiB; a longer
/// "line" (no supervisor writes one) is skipped to its end.
pub const MAX_LOG_LINE: usize = 1024 * 1024;

/// `completed_tasks.jsonl` opened for reading, with its metadata, when it is
/// a regular file. Agents write in `context/`: a FIFO there would hold its
/// reader (the main loop, the prompt of every later run, a command) for
/// good, and a link would show a file from elsewhere.
pub fn open_log(layout: &Layout) -> Option<(File, std::fs::Metadata)> {
    let f = fsx::open_nofollow(&layout.context.join(JSONL)).ok()?;
    let meta = f.metadata().ok().filter(|m| m.is_file())?;
    Some((f, meta))
}

/// Calls `f` with each line of `completed_tasks.jsonl`, for the commands
/// that read it whole (`agents`, `usage`): a regular file only
/// ([`open_log`]), never more than a line at a time, a line over
/// [`MAX_LOG_LINE`] skipped.
pub fn each_log_line(layout: &Layout, mut f: impl FnMut(&str)) {
    use std::io::BufRead;
    const MAX_LINE: u64 = MAX_LOG_LINE as u64;
    let Some((file, _)) = open_log(layout) else {
        return;
    };
    let mut r = io::BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::new();
    let mut skipping = false;
    loop {
        line.clear();
        match (&mut r).take(MAX_LINE + 1).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let whole = line.last() == Some(&b'\n');
        if skipping || !whole && line.len() as u64 > MAX_LINE {
            skipping = !whole;
            continue;
        }
        f(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']));
    }
}

fn append_log(layout: &Layout, rec: &ResultRecord, tree: Option<&str>) -> io::Result<()> {
    let path = layout.context.join(JSONL);
    let mut f = or_set_aside(layout, &path, || {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
    })?;
    let (tail, cut) = tail_of(&mut f, 64 * 1024)?;
    let id = format!("\"run_id\":\"{}\"", rec.run_id);
    if memchr::memmem::find(&tail, id.as_bytes()).is_some() {
        return Ok(());
    }
    let (mut c, mut x) = last_totals(&tail, cut);
    // The log is in `context/`, where agents write: a forged line's totals
    // at `u64::MAX` must neither wrap the counters to 0 nor panic.
    match rec.status {
        Status::Completed => c = c.saturating_add(1),
        Status::Failed => x = x.saturating_add(1),
    }
    let mut v = log_line(rec, (c, x));
    // The first task of its tree of follow-ups, for the tree budgets.
    v["tree"] = match tree {
        Some(t) => t.into(),
        None => crate::tree::outbox::tree_root(layout, &rec.task, 64)
            .0
            .into(),
    };
    let mut line = serde_json::to_string(&v).map_err(io::Error::other)?;
    line.push('\n');
    // A crash may have left a torn last line: start on a fresh one.
    if !tail.is_empty() && !tail.ends_with(b"\n") {
        line.insert(0, '\n');
    }
    f.write_all(line.as_bytes())?;
    fsx::sync_data(&f)
}

/// The tasks ever filed as completed and as failed on this tree: the
/// `totals` of the context log's last line ((0, 0) without a log). Unlike
/// the directories' entries, they never go down (`clean` removes tasks,
/// not lines), as counters in the metrics must not.
pub fn log_totals(layout: &Layout) -> (u64, u64) {
    recent(layout, 1)
        .last()
        .map(|v| {
            let n = |k: &str| v["totals"][k].as_u64().unwrap_or(0);
            (n("completed"), n("failed"))
        })
        .unwrap_or((0, 0))
}

/// The totals of the last well-formed line in a tail of the log.
fn last_totals(tail: &[u8], cut: bool) -> (u64, u64) {
    whole_lines(tail, cut)
        .rev()
        .find_map(parse_line)
        .map(|v| {
            let n = |k: &str| v["totals"][k].as_u64().unwrap_or(0);
            (n("completed"), n("failed"))
        })
        .unwrap_or((0, 0))
}

fn tail_of(f: &mut File, limit: u64) -> io::Result<(Vec<u8>, bool)> {
    let len = f.metadata()?.len();
    let start = len.saturating_sub(limit);
    f.seek(SeekFrom::Start(start))?;
    let mut b = Vec::with_capacity(limit.min(len) as usize);
    f.take(limit).read_to_end(&mut b)?;
    Ok((b, start > 0))
}

/// The complete lines of a tail read by [`tail_of`], oldest first: a first
/// line cut by the read's start is left out.
fn whole_lines(tail: &[u8], cut: bool) -> impl DoubleEndedIterator<Item = &[u8]> {
    let mut lines = tail.split(|&b| b == b'\n');
    if cut {
        lines.next();
    }
    lines.filter(|l| !l.is_empty())
}

/// One log line as JSON, or None when it does not parse (a torn line). A line
/// with bytes that are not UTF-8 is read as its lossy decoding.
fn parse_line(line: &[u8]) -> Option<serde_json::Value> {
    #[cfg(test)]
    tests::PARSED.with(|c| c.set(c.get() + 1));
    serde_json::from_slice(line).ok().or_else(|| {
        std::str::from_utf8(line)
            .is_err()
            .then(|| serde_json::from_str(&String::from_utf8_lossy(line)).ok())
            .flatten()
    })
}

/// The last `n` parseable entries of the log, newest last.
///
/// Reads the log's tail in growing windows (16 KiB, 64 KiB, 256 KiB) until
/// `n` entries parse or the window holds the whole log: a merge and a prompt
/// each read a few lines, not the last quarter megabyte. What was parsed last
/// is kept with the bytes it was parsed from: a read that finds the same
/// window (the prompts between two merges) parses nothing, and one after an
/// append parses only the lines it has not seen, each known by its bytes.
pub fn recent(layout: &Layout, n: usize) -> Arc<Vec<Arc<serde_json::Value>>> {
    /// The last read: path, n, the window and whether it was cut, what it
    /// parsed to, and each of those entries by its line's bytes.
    struct Last {
        path: std::path::PathBuf,
        n: usize,
        tail: Vec<u8>,
        cut: bool,
        out: Arc<Vec<Arc<serde_json::Value>>>,
        lines: HashMap<Vec<u8>, Arc<serde_json::Value>>,
    }
    /// How many parsed lines a log's entry keeps, at most.
    const KNOWN_LINES: usize = 64;
    /// Kept per log (a process has one tree, tests have many).
    static LAST: Mutex<Vec<Last>> = Mutex::new(Vec::new());
    let path = layout.context.join(JSONL);
    let Some((mut f, _)) = open_log(layout) else {
        return Arc::default();
    };
    let keep = |l: Last| {
        if let Ok(mut g) = LAST.lock() {
            g.retain(|o| o.path != l.path);
            if g.len() >= 16 {
                g.remove(0);
            }
            g.push(l);
        }
    };
    let mut last = LAST.lock().ok().and_then(|mut g| {
        let i = g.iter().position(|l| l.path == path)?;
        Some(g.remove(i))
    });
    let mut out = Vec::new();
    for window in [16 * 1024, 64 * 1024, 256 * 1024] {
        let Ok((tail, cut)) = tail_of(&mut f, window) else {
            return Arc::default();
        };
        if let Some(l) = last.take_if(|l| (l.n, l.tail.as_slice(), l.cut) == (n, &tail, cut)) {
            let out = l.out.clone();
            keep(l);
            return out;
        }
        let mut lines = HashMap::new();
        out = whole_lines(&tail, cut)
            .rev()
            .filter_map(|line| {
                let known = last.as_mut().and_then(|l| l.lines.remove(line));
                let v = known.or_else(|| parse_line(line).map(Arc::new))?;
                lines.insert(line.to_vec(), v.clone());
                Some(v)
            })
            .take(n)
            .collect();
        if out.len() >= n || !cut {
            out.reverse();
            let out = Arc::new(out);
            // Lines known before and not used now stay known, up to a few
            // dozen: a read of fewer entries (the metrics' one) must not
            // make the next read of 15 parse 14 again.
            if let Some(l) = last.take() {
                for (k, v) in l.lines {
                    if lines.len() >= KNOWN_LINES {
                        break;
                    }
                    lines.entry(k).or_insert(v);
                }
            }
            keep(Last {
                path,
                n,
                tail,
                cut,
                out: out.clone(),
                lines,
            });
            return out;
        }
        // A wider window: what this one parsed is known by its bytes.
        if let Some(l) = last.as_mut() {
            l.lines.extend(lines);
        } else {
            last = Some(Last {
                path: path.clone(),
                n,
                tail: Vec::new(),
                cut,
                out: Arc::default(),
                lines,
            });
        }
    }
    out.reverse();
    Arc::new(out)
}

/// How many recent outputs without a `[SUMMARY]` a prompt carries excerpts of.
pub const EXCERPTS: usize = 5;

/// A bounded excerpt of a recent task's output, for the next prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Excerpt {
    pub task: String,
    pub status: String,
    /// The output's head and tail, or all of it when it fits.
    pub text: String,
}

/// Head and tail of `body` within `max` bytes (cut at character
/// boundaries), with a marker saying how much was left out between them.
pub fn head_and_tail(body: &str, max: usize) -> String {
    if body.len() <= max {
        return body.to_owned();
    }
    let half = max / 2;
    let mut h = half;
    while !body.is_char_boundary(h) {
        h -= 1;
    }
    let mut t = body.len() - half;
    while !body.is_char_boundary(t) {
        t += 1;
    }
    format!(
        "{}\n[... {} bytes omitted ...]\n{}",
        &body[..h],
        t - h,
        &body[t..]
    )
}

/// Excerpts of the newest outputs (at most [`EXCERPTS`] tasks, each listed
/// once) whose agent printed no `[SUMMARY]`, sharing `total` bytes: the
/// next agent learns what they produced, not only where it is.
pub fn output_excerpts(layout: &Layout, total: u64) -> Vec<Excerpt> {
    let mut seen = std::collections::HashSet::new();
    let wanted: Vec<(String, String)> = recent(layout, RECENT)
        .iter()
        .rev()
        .filter_map(|e| {
            let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            let task = s("task");
            (seen.insert(task.clone()) && s("summary").is_empty() && !s("output_file").is_empty())
                .then(|| (task, s("status")))
        })
        .take(EXCERPTS)
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let each = (total / wanted.len() as u64) as usize;
    if each < 256 {
        return Vec::new();
    }
    wanted
        .into_iter()
        .filter_map(|(task, status)| {
            let body = output_body(&layout.output_file(&task), each)?;
            (!body.trim().is_empty()).then_some(Excerpt {
                task,
                status,
                text: body,
            })
        })
        .collect()
}

/// The agent's text in an `agent_outputs/` file (below its header), as
/// [`head_and_tail`] within `max` bytes, reading no more than that.
fn output_body(path: &Path, max: usize) -> Option<String> {
    const HEADER: usize = 4096;
    let (head, cut) = fsx::read_head(path, (HEADER + max) as u64).ok()?;
    let start = head.windows(6).position(|w| w == b"\n---\n\n")? + 6;
    // A head that is the whole file (the rule) needs no second look at it.
    let len = if cut {
        std::fs::symlink_metadata(path).ok()?.len() as usize
    } else {
        head.len()
    };
    let body_len = len.saturating_sub(start);
    if start + body_len <= head.len() {
        let body = String::from_utf8_lossy(&head[start..]);
        return Some(head_and_tail(clean(&body).trim(), max));
    }
    let half = max / 2;
    let (tail, _) = fsx::read_tail(path, half as u64).ok()?;
    let h = String::from_utf8_lossy(&head[start..(start + half).min(head.len())]).into_owned();
    let t = String::from_utf8_lossy(&tail).into_owned();
    // Character boundaries may have been cut: drop a partial first or last character.
    let h = h.trim_end_matches('\u{fffd}');
    let t = t.trim_start_matches('\u{fffd}');
    Some(format!(
        "{}\n[... {} bytes omitted ...]\n{}",
        clean(h.trim_start()),
        body_len.saturating_sub(h.len() + t.len()),
        clean(t.trim_end())
    ))
}

/// How many pending names `current_state.md` lists.
const PENDING_SHOWN: usize = 20;
/// Up to how many pending tasks (the supervisor's count) `pending/` is listed
/// at a merge; above, `current_state.md` gives the count only. A listing costs
/// about as much as the lookups it spares at this size, and it is made at
/// every merge.
const PENDING_LISTED: usize = 200;

/// Regenerates `context/current_state.md`: what runs (from `assigned/`, at
/// most a few dozen entries), what is pending (the supervisor's count, or a
/// listing of `pending/` when it is small), and the recent history with the
/// totals from the log's tail. Its cost does not grow with history.
/// `finishing`: the task being merged, still in `assigned/` until its commit
/// move right after, which is not "running" any more.
pub fn write_current_state(
    layout: &Layout,
    pending_hint: Option<usize>,
    finishing: Option<&str>,
) -> io::Result<()> {
    let mut md = String::from(
        "# Current state\n\n_Regenerated by mailroom after every finished task. Do not edit._\n\n",
    );
    let recent = recent(layout, RECENT);
    // A task whose run's line is in the log is finishing, not running: its
    // commit moves it out of assigned/ right after its merge (this one's,
    // or one whose regeneration was left to this merge).
    let merged_runs: std::collections::HashSet<&str> = recent
        .iter()
        .filter_map(|e| e.get("run_id").and_then(|v| v.as_str()))
        .collect();
    let mut running = crate::tree::books::list(layout, State::Assigned).unwrap_or_default();
    running.retain(|(n, _)| {
        Some(n.as_str()) != finishing
            && !(recent
                .iter()
                .any(|e| e.get("task").and_then(|v| v.as_str()) == Some(n))
                && crate::tree::books::read_state(layout, n)
                    .run
                    .and_then(|r| r.run_id)
                    .is_some_and(|id| merged_runs.contains(id.as_str())))
    });
    let running_names: std::collections::HashSet<&str> =
        running.iter().map(|(n, _)| n.as_str()).collect();
    // Names are worth listing (agents plan around them) while pending/ is small.
    let pending: Option<Vec<(String, String)>> = match pending_hint {
        Some(n) if n > PENDING_LISTED => None,
        _ => crate::tree::books::list(layout, State::Pending).ok(),
    };
    let pending_count = pending.as_ref().map(Vec::len).or(pending_hint).unwrap_or(0);
    let pending_names: Option<std::collections::HashSet<&str>> = pending
        .as_ref()
        .map(|p| p.iter().map(|(n, _)| n.as_str()).collect());
    let (done, failed) = recent
        .last()
        .map(|v| {
            let n = |k: &str| v["totals"][k].as_u64().unwrap_or(0);
            (n("completed"), n("failed"))
        })
        .unwrap_or((0, 0));
    md.push_str(&format!(
        "{} running, {} pending; {} completed and {} failed so far (as of {}).\n\n",
        running.len(),
        pending_count,
        done,
        failed,
        crate::model::record::now()
    ));
    if !running.is_empty() {
        md.push_str("## Running\n\n");
        for (name, _) in running.iter().take(50) {
            let st = crate::tree::books::read_state(layout, name);
            match st.run {
                Some(r) => md.push_str(&format!(
                    "- {name} (agent {}, attempt {}, since {})\n",
                    r.agent, r.attempt, r.started_at
                )),
                None => md.push_str(&format!("- {name}\n")),
            }
        }
        md.push('\n');
    }
    if pending_count > 0 {
        md.push_str("## Pending\n\n");
        if let Some(p) = &pending {
            for (name, _) in p.iter().take(PENDING_SHOWN) {
                md.push_str(&format!("- {name}\n"));
            }
        }
        if pending_count > PENDING_SHOWN || pending.is_none() {
            md.push_str(&format!(
                "- … {} in all (`mailroom list --state pending`)\n",
                pending_count
            ));
        }
        md.push('\n');
    }
    if !recent.is_empty() {
        md.push_str("## Recently finished (newest first)\n\n");
        // A retried task ran more than once: list it once, as it ended last.
        let mut seen = std::collections::HashSet::new();
        for e in recent.iter().rev() {
            let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
            if !seen.insert(s("task").to_owned()) {
                continue;
            }
            // Only a pending or running task is marked, from the listings
            // read above (a lookup per failed entry only when pending/ is
            // too large to list): this runs for each entry at each merge.
            // Only a failed task comes back under its name (`mailroom
            // retry`); a file of a completed task's name waiting in pending/
            // is a clash to be filed, not a retry, and is not looked up (at
            // three lookups per entry when pending/ is not listed).
            let retryable = s("status") == "failed";
            let is_pending = retryable
                && match &pending_names {
                    Some(p) => p.contains(s("task")),
                    None => layout.find(State::Pending, s("task")).is_some(),
                };
            let again = if is_pending {
                " (retried: pending again)"
            } else if retryable && running_names.contains(s("task")) {
                " (retried: running again)"
            } else {
                ""
            };
            md.push_str(&format!(
                "### {} — {}{again} ({})\n\n",
                s("task"),
                s("status"),
                s("finished_at")
            ));
            if !s("output_file").is_empty() {
                md.push_str(&format!("Output: `{}`\n\n", s("output_file")));
            }
            // Cleaned again: a line may be older than the cleaning, or
            // written by another tool.
            if s("status") == "failed" && !s("error").is_empty() {
                md.push_str(&format!("Error: {}\n\n", clean(s("error"))));
            }
            if !s("summary").is_empty() {
                md.push_str(&format!("Summary:\n\n{}\n\n", clean(s("summary"))));
            }
        }
    }
    // Not fsynced: it is regenerated at every merge, so a host crash costs
    // at most the view of the last few merges, until the next one.
    let path = layout.context.join("current_state.md");
    or_set_aside(layout, &path, || {
        fsx::write_atomic_volatile(&path, md.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Log lines parsed by this test's thread.
        pub(super) static PARSED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn clean_drops_escapes_and_shows_other_control_characters() {
        assert!(matches!(
            clean("plain\ttext\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(clean("a\0b"), "a\u{fffd}b");
        assert_eq!(clean("\x1b[1;31mred\x1b[0m"), "red");
        assert_eq!(clean("\x1b]0;title\x07x\x1b]8;;u\x1b\\y"), "xy");
        assert_eq!(clean("a\r\nb\rc"), "a\nb\nc");
        assert_eq!(clean("\x1bcd\x7f\u{85}"), "d\u{fffd}\u{fffd}");
        // An escape cut at the end of the text loses only itself.
        assert_eq!(clean("ok\x1b["), "ok");
        // One left open, or cut short, takes nothing that is not its own.
        assert_eq!(clean("a\x1b]0;title\nb"), "a\nb");
        assert_eq!(clean("a\x1b]0;title\rb\rc\n"), "a\nb\nc\n");
        assert_eq!(clean("a\x1b\nb"), "a\nb");
        assert_eq!(clean("\x1b[1\u{e9}t\u{e9}"), "\u{e9}t\u{e9}");
        let long = format!("\x1b]{}ok", "x".repeat(5000));
        assert!(clean(&long).ends_with("ok"));
        assert_eq!(
            summary("[SUMMARY]a\0\x1b[2Kb[/SUMMARY]").unwrap(),
            "a\u{fffd}b"
        );
    }

    #[test]
    fn totals_come_from_the_last_good_line() {
        let t = "{\"totals\":{\"completed\":3,\"failed\":1}}\n{\"totals\":{\"completed\":4,\"failed\":1}}\ntorn";
        assert_eq!(last_totals(t.as_bytes(), false), (4, 1));
        assert_eq!(last_totals(b"", false), (0, 0));
        // A first line cut by the read's start is not taken for a whole one.
        assert_eq!(last_totals(b"\"completed\":9}}\ntorn", true), (0, 0));
    }

    /// "(retried: pending again)" marks a failed task that `mailroom retry`
    /// queued again, whether pending/ is listed or too large to list; a file
    /// of a completed task's name waiting in pending/ (a clash) is not a
    /// retry.
    /// The commands' reader of the log: every line, a giant one skipped
    /// whole, the unfinished last one too; a FIFO in its place is not read.
    #[test]
    fn the_log_is_read_a_line_at_a_time_and_a_giant_line_is_skipped() {
        let tmp = crate::tree::fsx::tests::tempdir();
        let layout = Layout::new(&tmp);
        std::fs::create_dir_all(&layout.context).unwrap();
        let log = layout.context.join(JSONL);
        let giant = "g".repeat(3 << 20);
        std::fs::write(&log, format!("one\n{giant}\ntwo\r\n\nthree")).unwrap();
        let mut seen = Vec::new();
        each_log_line(&layout, |l| seen.push(l.to_owned()));
        assert_eq!(seen, ["one", "two", "", "three"]);
        std::fs::remove_file(&log).unwrap();
        let c = std::ffi::CString::new(log.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let mut n = 0;
        each_log_line(&layout, |_| n += 1);
        assert_eq!(n, 0);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn only_a_failed_task_is_marked_as_retried() {
        let tmp = crate::tree::fsx::tests::tempdir();
        let layout = Layout::new(&tmp);
        std::fs::create_dir_all(&layout.context).unwrap();
        std::fs::create_dir_all(&layout.pending).unwrap();
        std::fs::create_dir_all(layout.dir(State::Assigned)).unwrap();
        let mut log = String::new();
        for (t, st) in [("f", "failed"), ("c", "completed")] {
            log.push_str(&format!(
                "{{\"totals\":{{\"completed\":1,\"failed\":1}},\"task\":\"{t}\",\"status\":\"{st}\",\"finished_at\":\"x\"}}\n"
            ));
        }
        std::fs::write(layout.context.join(JSONL), log).unwrap();
        std::fs::write(layout.pending.join("f.yaml"), "description: again\n").unwrap();
        std::fs::write(layout.pending.join("c.yaml"), "description: clash\n").unwrap();
        // Listed (no hint), and looked up one by one (a hint over the limit).
        for hint in [None, Some(PENDING_LISTED + 1)] {
            write_current_state(&layout, hint, None).unwrap();
            let md = std::fs::read_to_string(layout.context.join("current_state.md")).unwrap();
            assert!(
                md.contains("### f — failed (retried: pending again) (x)"),
                "{hint:?}: {md}"
            );
            assert!(md.contains("### c — completed (x)"), "{hint:?}: {md}");
        }
        std::fs::remove_dir_all(tmp).unwrap();
    }

    /// A merge with another of its tree queued behind it leaves
    /// `current_state.md` to that one, which then shows both; a task whose
    /// run's line is in the log is not listed as running, even while its
    /// file is still in assigned/.
    #[test]
    fn a_merge_with_another_queued_behind_leaves_current_state_to_it() {
        let tmp = crate::tree::fsx::tests::tempdir();
        let layout = Layout::new(&tmp);
        for d in [&layout.context, &layout.outputs, &layout.pending] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(layout.dir(State::Assigned)).unwrap();
        let rec = |t: &str| -> ResultRecord {
            serde_json::from_str(&format!(
                r#"{{"task":"{t}","status":"completed","outcome":"success","attempts":1,
                    "finished_at":"2026-01-15T10:00:00.000Z","host":"h","run_id":"run-{t}"}}"#
            ))
            .unwrap()
        };
        // `a` is still in assigned/ (its commit moves it after the merge).
        std::fs::write(
            layout.task_file(State::Assigned, "a", "yaml"),
            "description: a\n",
        )
        .unwrap();
        std::fs::write(
            layout.state_file("a"),
            r#"{"task":"a","attempts":1,"run":{"attempt":1,"agent":"x","host":"h","supervisor_pid":1,
                "supervisor_start":1,"started_at":"s","deadline":"d","run_id":"run-a"}}"#,
        )
        .unwrap();
        let state = layout.context.join("current_state.md");
        let queued = InFlight::enter(&layout.context);
        merge(&layout, &rec("a"), Some(("out a", false)), None, None).unwrap();
        assert!(!state.exists(), "made although another merge was queued");
        assert!(layout.output_file("a").exists(), "the output waits too");
        drop(queued);
        merge(&layout, &rec("b"), Some(("out b", false)), None, None).unwrap();
        let md = std::fs::read_to_string(&state).unwrap();
        assert!(
            md.contains("### a — completed") && md.contains("### b — completed"),
            "{md}"
        );
        assert!(
            md.starts_with("# Current state") && md.contains("\n0 running,"),
            "{md}"
        );
        // Nothing owed any more, and nothing kept for the tree.
        assert!(
            IN_FLIGHT
                .lock()
                .unwrap()
                .iter()
                .all(|(p, _, _)| p != &layout.context)
        );
        std::fs::remove_dir_all(tmp).unwrap();
    }

    /// The entries kept between reads are those of the log as it is: an
    /// append, and a log replaced by one of the same length, are read anew.
    #[test]
    fn recent_sees_every_change_of_the_log() {
        let tmp = crate::tree::fsx::tests::tempdir();
        let layout = Layout::new(&tmp);
        std::fs::create_dir_all(&layout.context).unwrap();
        let log = layout.context.join(JSONL);
        let tasks = || -> Vec<String> {
            recent(&layout, RECENT)
                .iter()
                .map(|e| e["task"].as_str().unwrap().to_owned())
                .collect()
        };
        std::fs::write(&log, "{\"task\":\"a\"}\n").unwrap();
        assert_eq!(tasks(), ["a"]);
        assert_eq!(tasks(), ["a"], "read again, unchanged");
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"task\":\"b\"}\n").unwrap();
        assert_eq!(tasks(), ["a", "b"]);
        // Another file of the same length, at once (the same time stamp, and
        // perhaps the same inode number).
        std::fs::remove_file(&log).unwrap();
        std::fs::write(&log, "{\"task\":\"c\"}\n{\"task\":\"d\"}\n").unwrap();
        assert_eq!(tasks(), ["c", "d"], "same length, another file");
        // After an append only the new line is parsed; a line changed in
        // place is parsed anew.
        let parsed = || PARSED.with(|c| c.get());
        let before = parsed();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"task\":\"e\"}\n").unwrap();
        assert_eq!(tasks(), ["c", "d", "e"]);
        assert_eq!(parsed() - before, 1, "only the appended line is parsed");
        std::fs::write(
            &log,
            "{\"task\":\"c\"}\n{\"task\":\"x\"}\n{\"task\":\"e\"}\n",
        )
        .unwrap();
        assert_eq!(tasks(), ["c", "x", "e"]);
        assert_eq!(parsed() - before, 2, "only the changed line is parsed");
        // A read of one entry (the metrics') keeps what the others know.
        f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"task\":\"f\"}\n").unwrap();
        assert_eq!(recent(&layout, 1)[0]["task"], "f");
        assert_eq!(tasks(), ["c", "x", "e", "f"]);
        assert_eq!(parsed() - before, 3, "f alone is parsed, once");
        std::fs::remove_dir_all(tmp).unwrap();
    }

    #[test]
    fn recent_reads_further_back_until_it_has_enough_entries() {
        let tmp = std::env::temp_dir().join(format!("mailroom-recent-{}", std::process::id()));
        let layout = Layout::new(&tmp);
        std::fs::create_dir_all(&layout.context).unwrap();
        // 3 KiB entries: 15 of them need more than the first 16 KiB window.
        let pad = "p".repeat(3000);
        let mut log = String::from("torn line without an end");
        log.push('\n');
        for i in 0..40 {
            log.push_str(&format!("{{\"task\":\"t{i}\",\"pad\":\"{pad}\"}}\n"));
        }
        log.push_str("{\"torn\":");
        std::fs::write(layout.context.join(JSONL), &log).unwrap();
        let tasks = |n| -> Vec<String> {
            recent(&layout, n)
                .iter()
                .map(|v| v["task"].as_str().unwrap().to_owned())
                .collect()
        };
        let want: Vec<String> = (25..40).map(|i| format!("t{i}")).collect();
        assert_eq!(tasks(15), want, "the last 15, oldest first");
        assert_eq!(tasks(1), ["t39"]);
        // More than the log holds: all of it.
        assert_eq!(tasks(100).len(), 40);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn head_and_tail_keep_both_ends_within_the_limit() {
        assert_eq!(head_and_tail("short", 100), "short");
        let body = format!("{}{}{}", "H".repeat(100), "m".repeat(1000), "T".repeat(100));
        let e = head_and_tail(&body, 200);
        assert!(e.starts_with(&"H".repeat(100)), "{e}");
        assert!(e.ends_with(&"T".repeat(100)), "{e}");
        assert!(e.contains("\n[... 1000 bytes omitted ...]\n"), "{e}");
        // Multi-byte characters are never split.
        let e = head_and_tail(&"é".repeat(500), 101);
        assert!(e.contains("bytes omitted"));
    }

    #[test]
    fn the_summary_of_an_output_over_the_cap_comes_from_its_end() {
        let dir = std::env::temp_dir().join(format!("mailroom-sum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = String::from("[SUMMARY]a stale one[/SUMMARY]\n");
        out.push_str(&"filler line\n".repeat(2 * OUTPUT_CAP as usize / 12));
        out.push_str("[SUMMARY]the last one[/SUMMARY]\n");
        std::fs::write(dir.join("output.md"), &out).unwrap();
        let (text, cut, s) = read_output_and_summary(&dir);
        assert!(cut);
        assert_eq!(text.len(), OUTPUT_CAP as usize);
        assert_eq!(s.as_deref(), Some("the last one"));
        // Under the cap, the last block of the whole.
        std::fs::write(
            dir.join("output.md"),
            "[SUMMARY]one[/SUMMARY] [SUMMARY]two[/SUMMARY]",
        )
        .unwrap();
        assert_eq!(read_output_and_summary(&dir).2.as_deref(), Some("two"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn summary_takes_the_last_block() {
        let t = "x [SUMMARY]old[/SUMMARY] y [SUMMARY]\n new one \n[/SUMMARY] z";
        assert_eq!(summary(t).as_deref(), Some("new one"));
        assert_eq!(summary("none"), None);
        assert_eq!(
            summary("[SUMMARY]unterminated").as_deref(),
            Some("unterminated")
        );
    }
}
