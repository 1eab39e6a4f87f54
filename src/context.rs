//! The context merge: after every finished task, under a lock on `context/`,
//! the agent's output lands in `context/agent_outputs/<name>.md`, one line is
//! appended to `context/completed_tasks.jsonl`, and `context/current_state.md`
//! is regenerated for the next agent to read.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::fsx;
use crate::layout::{Layout, State};
use crate::record::{ResultRecord, Status};

/// How much of an agent's output goes into `agent_outputs/<name>.md`.
pub const OUTPUT_CAP: u64 = 1024 * 1024;
/// How many finished tasks `current_state.md` shows.
const RECENT: usize = 15;
const JSONL: &str = "completed_tasks.jsonl";

/// Takes the exclusive lock on `context/.lock` (blocking: merges are short).
fn lock_context(layout: &Layout) -> io::Result<File> {
    fsx::create_dir_all(&layout.outputs)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(layout.context.join(".lock"))?;
    f.lock()?;
    Ok(f)
}

/// Extracts the last `[SUMMARY]…[/SUMMARY]` block of an output.
pub fn summary(text: &str) -> Option<String> {
    let start = text.rfind("[SUMMARY]")?;
    let body = &text[start + "[SUMMARY]".len()..];
    let end = body.find("[/SUMMARY]").unwrap_or(body.len());
    let s = body[..end].trim();
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

/// The agent's output for a finished run: `output.md` if the agent wrote one
/// (via `$MAILROOM_OUTPUT`), otherwise its stdout. Capped.
pub fn read_output(run_dir: &Path) -> (String, bool) {
    for f in ["output.md", "stdout.log"] {
        if let Ok((b, cut)) = fsx::read_head(&run_dir.join(f), OUTPUT_CAP)
            && !b.iter().all(u8::is_ascii_whitespace)
        {
            return (String::from_utf8_lossy(&b).into_owned(), cut);
        }
    }
    (String::new(), false)
}

/// Merges one finished task into `context/`. Idempotent: a record whose
/// `run_id` is already in the log is not appended again.
pub fn merge(layout: &Layout, rec: &ResultRecord, output: Option<(&str, bool)>) -> io::Result<()> {
    let _guard = lock_context(layout)?;
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
            md.push_str(&format!("- error: {e}\n"));
        }
        md.push_str("\n---\n\n");
        md.push_str(text);
        if cut {
            md.push_str(&format!(
                "\n\n[output truncated at {OUTPUT_CAP} bytes; the full output is in {}]\n",
                rec.run_dir.as_deref().unwrap_or("the run directory")
            ));
        }
        fsx::write_atomic(&layout.output_file(&rec.task), md.as_bytes())?;
    }
    append_log(layout, rec)?;
    write_current_state(layout)
}

fn status_word(rec: &ResultRecord) -> &'static str {
    match rec.status {
        Status::Completed => "completed",
        Status::Failed => "failed",
    }
}

/// One line of `completed_tasks.jsonl`.
fn log_line(rec: &ResultRecord) -> serde_json::Value {
    serde_json::json!({
        "task": rec.task,
        "status": status_word(rec),
        "outcome": rec.outcome,
        "agent": rec.agent,
        "attempts": rec.attempts,
        "started_at": rec.started_at,
        "finished_at": rec.finished_at,
        "duration_ms": rec.duration_ms,
        "exit_code": rec.exit_code,
        "error": rec.error,
        "summary": rec.summary,
        "output_file": rec.output_file,
        "run_id": rec.run_id,
    })
}

fn append_log(layout: &Layout, rec: &ResultRecord) -> io::Result<()> {
    let path = layout.context.join(JSONL);
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    let (tail, _) = tail_of(&mut f, 64 * 1024)?;
    if tail.contains(&format!("\"run_id\":\"{}\"", rec.run_id)) {
        return Ok(());
    }
    let mut line = serde_json::to_string(&log_line(rec)).map_err(io::Error::other)?;
    line.push('\n');
    // A crash may have left a torn last line: start on a fresh one.
    if !tail.is_empty() && !tail.ends_with('\n') {
        line.insert(0, '\n');
    }
    f.write_all(line.as_bytes())?;
    fsx::sync_data(&f)
}

fn tail_of(f: &mut File, limit: u64) -> io::Result<(String, bool)> {
    let len = f.metadata()?.len();
    let start = len.saturating_sub(limit);
    f.seek(SeekFrom::Start(start))?;
    let mut b = Vec::new();
    f.take(limit).read_to_end(&mut b)?;
    Ok((String::from_utf8_lossy(&b).into_owned(), start > 0))
}

/// The last `n` parseable entries of the log, newest last.
pub fn recent(layout: &Layout, n: usize) -> Vec<serde_json::Value> {
    let Ok(mut f) = File::open(layout.context.join(JSONL)) else {
        return Vec::new();
    };
    let Ok((tail, cut)) = tail_of(&mut f, 256 * 1024) else {
        return Vec::new();
    };
    let mut lines: Vec<&str> = tail.lines().collect();
    if cut && !lines.is_empty() {
        lines.remove(0);
    }
    let mut out: Vec<serde_json::Value> = lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str(l).ok())
        .take(n)
        .collect();
    out.reverse();
    out
}

/// Regenerates `context/current_state.md` from the tree and the log's tail.
/// Bounded: counts, the running tasks, the first pending ones, recent history.
pub fn write_current_state(layout: &Layout) -> io::Result<()> {
    let mut md = String::from(
        "# Current state\n\n_Regenerated by mailroom after every finished task. Do not edit._\n\n",
    );
    let pending = crate::mailbox::list(layout, State::Pending).unwrap_or_default();
    let running = crate::mailbox::list(layout, State::Assigned).unwrap_or_default();
    let done = crate::mailbox::count(layout, State::Completed);
    let failed = crate::mailbox::count(layout, State::Failed);
    md.push_str(&format!(
        "{} running, {} pending, {} completed, {} failed (as of {}).\n\n",
        running.len(),
        pending.len(),
        done,
        failed,
        crate::record::now()
    ));
    if !running.is_empty() {
        md.push_str("## Running\n\n");
        for (name, _) in running.iter().take(50) {
            let st = crate::mailbox::read_state(layout, name);
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
    if !pending.is_empty() {
        md.push_str("## Pending\n\n");
        for (name, _) in pending.iter().take(20) {
            md.push_str(&format!("- {name}\n"));
        }
        if pending.len() > 20 {
            md.push_str(&format!("- … and {} more\n", pending.len() - 20));
        }
        md.push('\n');
    }
    let recent = recent(layout, RECENT);
    if !recent.is_empty() {
        md.push_str("## Recently finished (newest first)\n\n");
        for e in recent.iter().rev() {
            let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
            md.push_str(&format!(
                "### {} — {} ({})\n\n",
                s("task"),
                s("status"),
                s("finished_at")
            ));
            if !s("output_file").is_empty() {
                md.push_str(&format!("Output: `{}`\n\n", s("output_file")));
            }
            if s("status") == "failed" && !s("error").is_empty() {
                md.push_str(&format!("Error: {}\n\n", s("error")));
            }
            if !s("summary").is_empty() {
                md.push_str(&format!("Summary:\n\n{}\n\n", s("summary")));
            }
        }
    }
    fsx::write_atomic(&layout.context.join("current_state.md"), md.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

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
