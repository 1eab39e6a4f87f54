//! The README's operator's tour, run as printed (issue 12): every command of
//! its console blocks in a fresh `$HOME`, with what the README shows it
//! printing compared to what it prints. Commands with placeholders (`NAME`,
//! `"..."`) or an editor are left out; `mailroom run` (terminal 1) runs in
//! the background until the block that says to stop it.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One `$ command` of a console block, its comment, and the lines shown after it.
#[derive(Debug)]
struct Step {
    cmd: String,
    comment: String,
    expected: Vec<String>,
}

/// The console blocks of the README's tour.
fn tour() -> Vec<Vec<Step>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## An operator's tour\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has an operator's tour");
    let comment = regex::Regex::new(r"\s{2,}# ").unwrap();
    let mut blocks = Vec::new();
    for block in section.split("```console\n").skip(1) {
        let body = block.split("```").next().unwrap();
        let mut steps: Vec<Step> = Vec::new();
        let mut lines = body.lines();
        while let Some(line) = lines.next() {
            if let Some(cmd) = line.strip_prefix("$ ") {
                let (mut cmd, note) = match comment.find(cmd) {
                    Some(m) => (cmd[..m.start()].to_owned(), cmd[m.end()..].to_owned()),
                    None => (cmd.to_owned(), String::new()),
                };
                if cmd.contains("<<'EOF'") {
                    for l in lines.by_ref() {
                        cmd.push('\n');
                        cmd.push_str(l);
                        if l == "EOF" {
                            break;
                        }
                    }
                }
                steps.push(Step {
                    cmd,
                    comment: note,
                    expected: Vec::new(),
                });
            } else if !line.trim().is_empty()
                && let Some(s) = steps.last_mut()
            {
                s.expected.push(line.to_owned());
            }
        }
        blocks.push(steps);
    }
    blocks
}

/// Digits stand for any number (names with timestamps, pids, counts), and
/// runs of white space for one space.
fn norm(s: &str) -> String {
    let digits = regex::Regex::new(r"[0-9]+").unwrap();
    digits
        .replace_all(s, "0")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The environment of a fresh user: `$HOME` is the test's, `mailroom` on PATH.
fn shell(home: &Path, cwd: &Path, script: &str) -> Command {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).current_dir(cwd);
    c.env("HOME", home)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("NO_COLOR", "1")
        .env_remove("MAILROOM_ROOT")
        .env_remove("MAILROOM_TASK")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG");
    c
}

/// The supervisors the tour starts, stopped however the test ends.
struct Running {
    home: PathBuf,
    run: Option<Child>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.run.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
        let queue = self.home.join("queue");
        if queue.is_dir() {
            let _ = run_bounded(
                shell(&self.home, &queue, "mailroom stop --now --timeout 30s"),
                Duration::from_secs(60),
            );
        }
    }
}

#[test]
fn the_readme_tour_runs_as_printed() {
    let root = Root::new();
    let home = root.p("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cwd = home.clone();
    let mut sups = Running {
        home: home.clone(),
        run: None,
    };
    let blocks = tour();
    assert!(blocks.len() >= 3, "{blocks:?}");
    let all: Vec<&Step> = blocks.iter().flatten().collect();
    for needed in [
        "mailroom start",
        "mailroom stop",
        "--file review.md",
        "hooks:",
        "mailroom retry",
    ] {
        assert!(
            all.iter().any(|s| s.cmd.contains(needed)),
            "the tour lacks `{needed}`"
        );
    }
    let mut ran = 0;
    for step in all {
        let cmd = step.cmd.as_str();
        if cmd.contains("NAME")
            || cmd.contains("\"...\"")
            || cmd.starts_with("vi ")
            || cmd.starts_with("mailroom new")
        {
            continue;
        }
        if cmd == "mailroom run" {
            let log = std::fs::File::create(root.p("run.log")).unwrap();
            let child = shell(&home, &cwd, "exec mailroom run")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            sups.run = Some(child);
            wait_for(
                Duration::from_secs(60),
                "the supervisor's heartbeat",
                || {
                    std::fs::read_dir(cwd.join("tasks/supervisors"))
                        .is_ok_and(|mut d| d.next().is_some())
                },
            );
            continue;
        }
        if cmd.starts_with("mailroom start") {
            // "Ctrl-C the run above first."
            let mut c = sups
                .run
                .take()
                .expect("the tour ran `mailroom run` before `start`");
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(c.id().to_string())
                .status();
            let st = c.wait().unwrap();
            assert!(
                st.success(),
                "run ended with {st}: {}",
                root.read("run.log")
            );
        }
        let script = format!("{cmd}\nrc=$?\necho \"__TOUR $rc $(pwd)\"");
        let out = run_bounded(shell(&home, &cwd, &script), Duration::from_secs(120));
        let (so, se) = (stdout(&out), stderr(&out));
        let (before, tail) = so
            .rsplit_once("__TOUR ")
            .unwrap_or_else(|| panic!("`{cmd}` did not finish:\n{so}{se}"));
        let printed = format!("{before}{se}");
        let (rc, dir) = tail.trim().split_once(' ').unwrap();
        cwd = PathBuf::from(dir);
        let want = if step.comment.contains("exit 1") {
            "1"
        } else {
            "0"
        };
        assert_eq!(rc, want, "`{cmd}` exited {rc}:\n{printed}");
        // What the README shows, in order, at the start of the lines printed.
        let got: Vec<String> = printed.lines().map(norm).collect();
        let mut at = 0;
        for e in &step.expected {
            let e = norm(e);
            match got[at..].iter().position(|g| g.starts_with(&e)) {
                Some(i) => at += i + 1,
                None => panic!("`{cmd}` did not print `{e}`; it printed:\n{printed}"),
            }
        }
        ran += 1;
    }
    assert!(ran >= 20, "only {ran} commands ran");
    // Nothing of the tour is left running.
    drop(sups);
}
