//! The operator's day (issue 12): a typo'd root, config reloads, start and
//! stop, the rough edges a new user hits, history across retries, hooks and
//! Markdown tasks.

use crate::common::*;
use std::time::{Duration, Instant};

const MIN: Duration = Duration::from_secs(60);

/// A log that cannot be written (a full disk under `mailroom start`'s log
/// file; here standard error is /dev/full) ends nothing: the tasks run and
/// the supervisor exits as it would have, and so does a command that fails.
#[test]
fn a_log_that_cannot_be_written_does_not_end_the_supervisor() {
    if !require(
        std::path::Path::new("/dev/full").exists(),
        "/dev/full, a device whose writes fail with ENOSPC",
    ) {
        return;
    }
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "retries: 0")
        .task("a.yaml", "description: one\n")
        .task("b.yaml", "description: two\n");
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let bounded = |mut c: std::process::Command| {
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        wait_bounded(c.spawn().unwrap(), MIN).status
    };
    let mut c = root.cmd(&["-v", "run", "--exit-when-idle"]);
    c.stderr(full());
    let st = bounded(c);
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_eq!(root.names("completed"), ["a", "b"]);
    // A command's own error: its exit status, not a panic's 101.
    let mut c = root.cmd(&["show", "nope"]);
    c.stderr(full());
    let st = bounded(c);
    assert_eq!(st.code(), Some(1), "{st:?}");
    root.write("mailroom.yaml", "concurrency: [\n");
    let mut c = root.cmd(&["run", "--exit-when-idle"]);
    c.stderr(full());
    let st = bounded(c);
    assert_eq!(st.code(), Some(78), "{st:?}");
}

/// A supervisor restarted many times leaves a heartbeat each (forgotten an
/// hour later): `status` shows the live one first, then a few gone ones by
/// name and a count of the rest, not a screenful before what matters.
#[test]
fn status_puts_the_live_supervisor_first_and_counts_the_gone_ones() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let minute_ago =
        mailroom::model::record::ts(std::time::SystemTime::now() - Duration::from_secs(60));
    for pid in 4240..4250 {
        root.write(
            &format!("tasks/supervisors/far-away.{pid}.json"),
            &format!(
                r#"{{"host":"far-away","pid":{pid},"start":1,"version":"0.0.9","protocol":2,"started_at":"{minute_ago}","last_beat":"{minute_ago}","running":0,"pending":0}}"#
            ),
        );
    }
    let _sup = root.spawn();
    wait_for(MIN, "the supervisor to start", || {
        root.sup_logs().contains("supervisor ready")
    });
    let out = root.mailroom(&["status"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("supervisor")).collect();
    assert!(
        lines[0].contains(") since "),
        "the live one is not first: {text}"
    );
    assert_eq!(text.matches("is gone").count(), 3, "{text}");
    assert!(text.contains("and 7 more supervisors gone"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&root.mailroom(&["status", "--json"]))).unwrap();
    assert_eq!(json["supervisors"].as_array().unwrap().len(), 11);
}

/// A supervisor whose process is there but does not beat (stopped with
/// SIGSTOP; hung) is not shown as a healthy one: `status` says it is not
/// responding and for how long, and `--json` has `silent_for_secs`.
#[test]
fn status_says_a_stopped_supervisor_is_not_responding() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let sup = root.spawn();
    wait_for(MIN, "the supervisor to start", || {
        root.sup_logs().contains("supervisor ready")
    });
    let suffix = format!(".{}.json", sup.pid());
    let beat = || {
        root.entries("tasks/supervisors")
            .into_iter()
            .find(|n| n.ends_with(&suffix))
            .map(|n| format!("tasks/supervisors/{n}"))
    };
    wait_for(MIN, "its heartbeat", || beat().is_some());
    let beat = beat().unwrap();
    let out = stdout(&root.mailroom(&["status"]));
    assert!(!out.contains("not responding"), "{out}");
    sup.signal(libc::SIGSTOP);
    // Its last beat a minute old, as a minute after the stop: the stopped
    // process writes no other.
    let minute_ago =
        mailroom::model::record::ts(std::time::SystemTime::now() - Duration::from_secs(60));
    let mut hb: serde_json::Value = serde_json::from_str(&root.read(&beat)).unwrap();
    hb["last_beat"] = serde_json::json!(minute_ago);
    root.write(&beat, &hb.to_string());
    let out = stdout(&root.mailroom(&["status"]));
    let json = stdout(&root.mailroom(&["status", "--json"]));
    sup.signal(libc::SIGCONT);
    assert!(
        out.contains("not responding: no beat for 1m"),
        "a stopped supervisor looks healthy: {out}"
    );
    assert!(!out.contains("no supervisor is running"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let secs = json["supervisors"][0]["silent_for_secs"].as_u64();
    assert!(secs.is_some_and(|s| (60..120).contains(&s)), "{json}");
    // Resumed, it beats again within a beat (5 s), and is healthy again.
    wait_for(MIN, "its next beat", || {
        !stdout(&root.mailroom(&["status"])).contains("not responding")
    });
}

/// A task file that cannot be read (here a link) is said to be one, not
/// given a parse error of the placeholder shown in its place.
#[test]
fn show_says_a_task_file_cannot_be_read_rather_than_parse_it() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    std::os::unix::fs::symlink("/etc/passwd", root.p("tasks/completed/lnk.yaml")).unwrap();
    let out = root.mailroom(&["show", "lnk"]);
    let text = stdout(&out);
    assert!(
        text.contains("error: tasks/completed/lnk.yaml: cannot be read: it is a symbolic link"),
        "{text}"
    );
    assert!(!text.contains("unknown key"), "{text}");
    assert!(
        !text.contains("root:"),
        "the link's target was shown: {text}"
    );
}

/// A command asked for JSON that fails still prints one JSON document on
/// standard output (`{"error": ..., "exit_code": ...}`), besides its message
/// on standard error and its exit status, so that `mailroom ... --json | jq`
/// sees the failure. Before, standard output was empty.
#[test]
fn json_commands_that_fail_print_the_error_as_json() {
    let root = Root::new();
    let typo = not_a_tree(&root);
    let typo = typo.to_str().unwrap();
    let cases: [(&[&str], &str, i32); 7] = [
        (&["--root", typo, "status", "--json"], "does not exist", 1),
        (&["--root", typo, "list", "--json"], "does not exist", 1),
        (&["--root", typo, "usage", "--json"], "does not exist", 1),
        (&["--root", typo, "agents", "--json"], "does not exist", 1),
        (&["show", "nobody", "--json"], "nobody", 1),
        (&["list", "--state", "nowhere", "--json"], "nowhere", 2),
        (&["wait", "nobody", "--json"], "no task named", 1),
    ];
    for (args, says, code) in cases {
        let out = if args[0] == "--root" {
            let mut c = std::process::Command::new(BIN);
            c.args(args);
            run_bounded(c, MIN)
        } else {
            root.mailroom(args)
        };
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_str(stdout(&out).trim())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {:?}", stdout(&out)));
        let error = doc["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{args:?}: {doc}");
        assert_eq!(doc["exit_code"], code, "{args:?}: {doc}");
        assert!(stderr(&out).contains(error), "{args:?}: {}", stderr(&out));
    }
    // Without --json, standard output stays empty.
    let out = root.mailroom(&["show", "nobody"]);
    assert_eq!(stdout(&out), "");
}

/// A directory next to the test root that is not a tree.
fn not_a_tree(root: &Root) -> std::path::PathBuf {
    root.p("typo")
}

#[test]
fn run_refuses_a_directory_without_tasks_unless_init() {
    let root = Root::new();
    let dir = not_a_tree(&root);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = std::process::Command::new(BIN);
    c.args(["--root", dir.to_str().unwrap(), "run", "--exit-when-idle"]);
    let out = run_bounded(c, MIN);
    assert!(
        !out.status.success(),
        "run accepted a directory without tasks/"
    );
    let list = {
        let mut c = std::process::Command::new(BIN);
        c.args(["--root", dir.to_str().unwrap(), "list"]);
        run_bounded(c, MIN)
    };
    // The same message as every other command.
    assert_eq!(stderr(&out), stderr(&list));
    assert!(
        stderr(&out).contains("is not a mailroom root"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("tasks").exists(), "run created a tree anyway");
    // A root that does not exist at all is said to be missing.
    let mut c = std::process::Command::new(BIN);
    c.args(["--root", dir.join("nope").to_str().unwrap(), "status"]);
    let gone = run_bounded(c, MIN);
    assert!(
        stderr(&gone).contains("nope does not exist"),
        "{}",
        stderr(&gone)
    );
    let mut c = std::process::Command::new(BIN);
    c.args([
        "--root",
        dir.to_str().unwrap(),
        "run",
        "--init",
        "--exit-when-idle",
    ]);
    let out = run_bounded(c, MIN);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("tasks/pending").is_dir());
}

fn logs(root: &Root) -> String {
    root.entries(".")
        .iter()
        .filter(|e| e.starts_with("sup-"))
        .map(|e| root.read(e))
        .collect()
}

#[test]
fn a_saved_config_is_applied_within_a_second_and_a_bad_one_reported_at_once() {
    let cfg = |n: u32| {
        format!(
            "rescan_interval: 60s\nagents:\n  a:\n    command: [{:?}]\n    max_instances: {n}\n",
            agent("ok.sh")
        )
    };
    let root = Root::new().config(&cfg(1));
    let _sup = root.spawn();
    wait_for(MIN, "the supervisor to be ready", || {
        logs(&root).contains("supervisor ready")
    });
    let replace = |text: &str| {
        root.write("mailroom.yaml.new", text);
        std::fs::rename(root.p("mailroom.yaml.new"), root.p("mailroom.yaml")).unwrap();
    };
    replace(&cfg(2));
    let saved = Instant::now();
    wait_for(MIN, "the new config to be applied", || {
        logs(&root).contains("configuration reloaded")
    });
    assert!(
        saved.elapsed() < Duration::from_secs(1),
        "reloaded {:?} after the save",
        saved.elapsed()
    );
    replace("concurency: 9\n");
    let saved = Instant::now();
    wait_for(MIN, "the bad config to be reported", || {
        logs(&root).contains("changed but is invalid")
    });
    assert!(
        saved.elapsed() < Duration::from_secs(1),
        "reported {:?} after the save",
        saved.elapsed()
    );
    let st = root.mailroom(&["status"]);
    assert!(stdout(&st).contains("config invalid"), "{}", stdout(&st));
    assert!(stdout(&st).contains("concurency"), "{}", stdout(&st));
    let js: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
    assert!(js["config_error"].is_string(), "{js}");
}

#[test]
fn status_shows_a_pause() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("p.yaml", "description: x\n");
    assert!(root.mailroom(&["pause"]).status.success());
    // A pause of the tree holds every agent, and `agents` says so.
    let ag = stdout(&root.mailroom(&["agents"]));
    assert!(ag.contains("paused (the whole tree"), "{ag}");
    let ag: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["agents", "--json"]).stdout).unwrap();
    assert_eq!(ag[0]["paused"], true, "{ag}");
    assert!(root.mailroom(&["pause", "--agent", "a"]).status.success());
    let st = stdout(&root.mailroom(&["status"]));
    assert!(st.contains("paused: no new tasks"), "{st}");
    assert!(st.contains("agent a paused"), "{st}");
    // `show` of a pending task says what holds it.
    let sh = stdout(&root.mailroom(&["show", "p"]));
    for held in [
        "held: no supervisor is running on this tree",
        "held: claiming is paused on this tree (mailroom resume)",
        "held: agent a is paused (mailroom resume --agent a)",
    ] {
        assert!(sh.contains(held), "{held}: {sh}");
    }
    let js: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
    assert_eq!(js["paused"], true);
    assert_eq!(js["paused_agents"][0], "a");
    assert!(root.mailroom(&["resume"]).status.success());
    let st = stdout(&root.mailroom(&["status"]));
    assert!(!st.contains("paused: no new tasks"), "{st}");
}

/// Whether a finished command died of SIGPIPE or exited 0: both are quiet.
fn quiet_end(st: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    st.success() || st.signal() == Some(13)
}

#[test]
fn list_and_status_watch_into_a_closed_pipe_end_quietly() {
    use std::io::BufRead;
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    // More than a pipe's buffer of output, so `list` writes after the reader left.
    for i in 0..4000 {
        root.write(&format!("tasks/pending/t{i:05}.yaml"), "description: x\n");
    }
    for args in [&["list"][..], &["status", "--watch"][..]] {
        let mut c = root.cmd(args);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        // The reader goes away, as `head -1` does.
        let until = Instant::now() + MIN;
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < until, "{args:?} kept running");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(quiet_end(st), "{args:?}: {st:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn status_watch_into_a_pipe_prints_no_screen_codes() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let mut c = root.cmd(&["status", "--watch"]);
    c.stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    // Two reports, then stop it.
    while text.matches("pending,").count() < 2 {
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "status --watch ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!text.contains('\x1b'), "{text:?}");
}

#[test]
fn logs_into_a_pipe_or_with_no_color_carry_no_ansi_codes() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("t.yaml", "description: x\n");
    let out = root.run_until_idle();
    let err = stderr(&out);
    assert!(err.contains("supervisor ready"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
    let mut c = root.cmd(&["run", "--exit-when-idle"]);
    c.env("NO_COLOR", "1");
    let out = run_bounded(c, MIN);
    assert!(!stderr(&out).contains('\x1b'));
}

#[test]
fn add_takes_the_task_files_other_keys_as_flags() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let cfg = root
        .read("mailroom.yaml")
        .replace("{description}\"", "{description} {context}\"");
    root.write("mailroom.yaml", &cfg);
    root.write("notes.md", "the notes say 42\n");
    let out = root.mailroom(&[
        "add",
        "do it",
        "--name",
        "t",
        "--retries",
        "2",
        "--delay",
        "10m",
        "--label",
        "x,y",
        "--label",
        "z",
        "--context",
        "notes.md",
        "--workdir",
        ".",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = root.read("tasks/pending/t.yaml");
    for key in [
        "retries: 2",
        "delay: 10m",
        "- x",
        "- z",
        "- notes.md",
        "workdir:",
    ] {
        assert!(file.contains(key), "{key} in {file}");
    }
    // It parses as written, its delay holds it, its context is in the prompt.
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&root.mailroom(&["show", "t", "--json"]))).unwrap();
    assert_eq!(show["valid"], true, "{show}");
    assert!(show["starts_at"].is_string(), "{show}");
    let prompt = stdout(&root.mailroom(&["show", "t", "--prompt"]));
    assert!(prompt.contains("the notes say 42"), "{prompt}");
    // `list --label` finds it by its label.
    let listed = stdout(&root.mailroom(&["list", "--label", "y"]));
    assert!(listed.contains(" t"), "{listed}");
    let listed = stdout(&root.mailroom(&["list", "--label", "nosuch"]));
    assert!(listed.trim().is_empty(), "{listed}");
    let out = root.mailroom(&[
        "add",
        "x",
        "--not-before",
        "2026-01-15T10:00:00Z",
        "--name",
        "nb",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.read("tasks/pending/nb.yaml").contains("not_before:"));
    // A bad value names its flag, and nothing is queued.
    for (args, says) in [
        (
            &["--not-before", "tomorrow"][..],
            "--not-before: `not_before: tomorrow`",
        ),
        (&["--workdir", "../.."][..], "--workdir:"),
        (&["--delay", "1M"][..], "`M` means months"),
        (&["--retries", "many"][..], "--retries"),
    ] {
        let mut a = vec!["add", "bad", "--name", "bad"];
        a.extend_from_slice(args);
        let out = root.mailroom(&a);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(
        root.names("pending").len(),
        2,
        "{:?}",
        root.names("pending")
    );
    // With --file, the keys go in the file.
    root.write("f.yaml", "description: x\n");
    let out = root.mailroom(&[
        "add",
        "--file",
        root.p("f.yaml").to_str().unwrap(),
        "--label",
        "q",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn add_refuses_an_unknown_agent_a_non_task_file_and_an_empty_description() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let out = root.mailroom(&["add", "x", "--agent", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no agent `nosuch`"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("agents: a"), "{}", stderr(&out));
    // In the file too.
    root.write("in-file.yaml", "description: x\nagent: nosuch\n");
    let out = root.mailroom(&["add", "--file", root.p("in-file.yaml").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no agent `nosuch`"),
        "{}",
        stderr(&out)
    );
    let out = root.mailroom(&["add", "--file", "/etc/passwd"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--file takes a task file"),
        "{}",
        stderr(&out)
    );
    let out = root.mailroom(&["add", ""]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("the description is empty"), "{err}");
    assert!(
        !err.contains("task:1"),
        "a position in a file nobody wrote: {err}"
    );
    assert!(
        root.names("pending").is_empty(),
        "{:?}",
        root.names("pending")
    );
    assert!(root.entries("tasks/tmp").is_empty());
    // A known agent is fine.
    let out = root.mailroom(&["add", "x", "--agent", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `--priority` takes what a task file takes, written as its canonical name.
    let out = root.mailroom(&["add", "y", "--priority", "medium", "--name", "prio"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        root.read("tasks/pending/prio.yaml")
            .contains("priority: normal")
    );
    let out = root.mailroom(&["add", "y", "--priority", "urgent"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A config with an error elsewhere still tells an agent it lacks: an
    // agent written under `hooks:` by mistake is refused, not queued to fail.
    let cfg = root.read("mailroom.yaml");
    root.write(
        "mailroom.yaml",
        &format!("{cfg}hooks:\n  slow:\n    command: [sleep, '1']\n"),
    );
    let out = root.mailroom(&["add", "x", "--agent", "slow"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no agent `slow` in mailroom.yaml (agents: a)"),
        "{err}"
    );
    assert!(err.contains("unknown hook `slow`"), "{err}");
    // The agents it has still pass, with a warning.
    let out = root.mailroom(&["add", "x", "--agent", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot check agent `a`"),
        "{}",
        stderr(&out)
    );
    // A file without `agents:` runs the built-in demo agent: with an error
    // elsewhere, `demo` still passes.
    root.write("mailroom.yaml", "concurrency: 2\nretries: many\n");
    let out = root.mailroom(&["add", "x", "--agent", "demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn retry_of_a_running_task_says_it_is_running() {
    let pidfile = std::env::temp_dir().join(format!("mailroom-op-retry-{}", std::process::id()));
    let pf = pidfile.display().to_string();
    let root = Root::new()
        .config(&format!(
            "agents:\n  a:\n    command: [{:?}]\n    grace: 1s\n    env: {{PIDFILE: {pf:?}}}\n",
            agent("hang.sh")
        ))
        .task("busy.yaml", "description: x\n");
    let _sup = root.spawn();
    wait_for(MIN, "the agent to start", || {
        std::fs::read_to_string(format!("{pf}.agent")).is_ok_and(|t| t.ends_with('\n'))
    });
    let out = root.mailroom(&["retry", "busy"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("busy is running; cancel it first"),
        "{}",
        stderr(&out)
    );
    assert!(root.mailroom(&["cancel", "busy"]).status.success());
    let _ = std::fs::remove_file(format!("{pf}.agent"));
    let _ = std::fs::remove_file(format!("{pf}.grandchild"));
}

#[test]
fn show_escapes_terminal_sequences_from_task_text() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    // Raw escape bytes: a file that is not even valid YAML still gets shown.
    root.write(
        "tasks/pending/esc.yaml",
        "description: clear \x1b[2J\x1b]0;owned\x07 title\n",
    );
    let out = root.mailroom(&["show", "esc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("\\u{1b}[2J"), "{text}");
}

#[test]
fn a_socket_and_a_fifo_in_pending_get_the_same_message() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let _sock = std::os::unix::net::UnixListener::bind(root.p("tasks/pending/sock.yaml")).unwrap();
    let fifo = std::ffi::CString::new(root.p("tasks/pending/fifo.yaml").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { mkfifo(fifo.as_ptr(), 0o600) }, 0);
    root.run_until_idle();
    let msg = |n: &str| {
        root.record("failed", n)["error"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(msg("sock"), "refused: it is not a regular file (a socket)");
    assert_eq!(msg("fifo"), "refused: it is not a regular file (a FIFO)");
}

unsafe extern "C" {
    fn mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}

#[test]
fn numbers_are_refused_alike_in_every_text_field() {
    // An agent with the capability the quoted `requires` below asks for:
    // validate refuses a task no agent of the config could run.
    let root = Root::new().config(&format!(
        "agents:\n  a:\n    command: [{:?}]\n    capabilities: [\"3\"]\ndefault_agent: a\n",
        agent("ok.sh")
    ));
    for (i, (key, line)) in [
        ("description", "description: 42\n"),
        ("workdir", "description: x\nworkdir: 42\n"),
        ("id", "description: x\nid: 7\n"),
        ("requires", "description: x\nrequires: [3]\n"),
        ("context_files", "description: x\ncontext_files: [1]\n"),
        ("labels", "description: x\nlabels: [2]\n"),
        ("agent", "description: x\nagent: 5\n"),
    ]
    .iter()
    .enumerate()
    {
        let f = format!("n{i}.yaml");
        root.write(&f, line);
        let out = root.mailroom(&["validate", root.p(&f).to_str().unwrap()]);
        assert!(!out.status.success(), "{key}: accepted");
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(text.contains(&format!("`{key}` must be")), "{key}: {text}");
        assert!(text.contains("quotes"), "{key}: {text}");
    }
    // Quoted, they are text.
    root.write(
        "q.yaml",
        "description: \"42\"\nrequires: [\"3\"]\nlabels: [\"2\"]\n",
    );
    let out = root.mailroom(&["validate", root.p("q.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `(task, ns)` lines an agent of `stamp.sh` wrote.
fn stamps(path: &std::path::Path) -> Vec<(String, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, t) = l.split_once(' ')?;
            Some((n.to_owned(), t.parse().ok()?))
        })
        .collect()
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
fn add_starts_as_soon_as_cp_and_tasks_added_in_a_row_start_in_order() {
    let root = Root::new();
    let log = root.p("stamps.log");
    let root = root.config(&format!(
        "settle: 2s\nagents:\n  a:\n    command: [{:?}]\n    max_instances: 1\n    env: {{STAMPS: {:?}}}\n",
        agent("stamp.sh"),
        log.display().to_string()
    ));
    let _sup = root.spawn();
    wait_for(MIN, "the supervisor to be ready", || {
        logs(&root).contains("supervisor ready")
    });
    root.write("src.yaml", "description: x\n");
    let (mut by_add, mut by_cp) = (Vec::new(), Vec::new());
    for i in 0..8 {
        for how in ["add", "cp"] {
            let name = format!("{how}{i}");
            let before = stamps(&log).len();
            let t0 = now_ns();
            let st = if how == "add" {
                root.mailroom(&["add", "x", "--name", &name]).status
            } else {
                std::process::Command::new("cp")
                    .arg(root.p("src.yaml"))
                    .arg(root.p(&format!("tasks/pending/{name}.yaml")))
                    .status()
                    .unwrap()
            };
            assert!(st.success());
            wait_for(MIN, "the agent to start", || stamps(&log).len() > before);
            let ms = (stamps(&log)[before].1 - t0) as f64 / 1e6;
            if how == "add" {
                by_add.push(ms)
            } else {
                by_cp.push(ms)
            }
        }
    }
    let (add, cp) = (median(by_add.clone()), median(by_cp.clone()));
    // Printed for the record (the harness shows it with --nocapture).
    println!(
        "submit-to-spawn median: add {add:.1} ms, cp {cp:.1} ms; add {by_add:?}, cp {by_cp:?}"
    );
    // The open-writer hold alone was 250 ms; the rest is add's own start-up.
    assert!(add < cp + 150.0, "add {add:.1} ms vs cp {cp:.1} ms");

    // Twenty in a row, as fast as add goes: they start in that order.
    let before = stamps(&log).len();
    let names: Vec<String> = (0..20).map(|i| format!("row{i:02}")).collect();
    for n in &names {
        let out = root.mailroom(&["add", "x", "--name", n]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    wait_for(MIN, "all twenty to start", || {
        stamps(&log).len() >= before + 20
    });
    let order: Vec<String> = stamps(&log)[before..].iter().map(|s| s.0.clone()).collect();
    println!("start order of 20 tasks added in a row: {order:?}");
    assert_eq!(order, names);
}

#[test]
fn add_closes_its_file_before_the_rename() {
    // The timing above is noisy; this is the cause, checked exactly: a file
    // still open at its rename is held back by the supervisor's writer probe.
    let strace = "/usr/bin/strace";
    if !require(
        std::path::Path::new(strace).exists(),
        "strace is not installed",
    ) {
        return;
    }
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let trace = root.p("add.strace");
    let mut c = std::process::Command::new(strace);
    c.args([
        "-f",
        "-y",
        "-qq",
        "-e",
        "trace=close,rename,renameat,renameat2",
        "-o",
    ])
    .arg(&trace)
    .arg(BIN)
    .arg("--root")
    .arg(&root.path)
    .args(["add", "x", "--name", "closed"]);
    let out = run_bounded(c, MIN);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let closed = lines
        .iter()
        .position(|l| l.contains("close(") && l.contains("/tasks/tmp/"))
        .unwrap_or_else(|| panic!("no close of the temp file:\n{text}"));
    let renamed = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains("closed.yaml"))
        .unwrap_or_else(|| panic!("no rename into pending/:\n{text}"));
    assert!(
        closed < renamed,
        "the file was still open at its rename:\n{text}"
    );
}

/// The pid `start` printed, and the supervisor's start time against reuse.
fn started(root: &Root, args: &[&str]) -> i32 {
    let out = root.mailroom(args);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().parse().expect("start prints a pid")
}

/// Two `start`s at the same moment start one supervisor: the other names it.
#[test]
fn two_starts_at_once_start_one_supervisor() {
    /// Stops the tree's supervisors at the end, the test failed or not.
    struct StopAll<'a>(&'a Root);
    impl Drop for StopAll<'_> {
        fn drop(&mut self) {
            let _ = self.0.mailroom(&["stop"]);
        }
    }
    let root = Root::new().agent_config(&["true"], "");
    let _stop = StopAll(&root);
    for round in 0..3 {
        let spawn = || {
            root.cmd(&["start"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let (a, b) = (wait_bounded(a, MIN), wait_bounded(b, MIN));
        assert!(a.status.success(), "{}", stderr(&a));
        assert!(b.status.success(), "{}", stderr(&b));
        let pids: Vec<String> = [&a, &b]
            .iter()
            .map(|o| stdout(o).trim().to_owned())
            .collect();
        assert_eq!(pids[0], pids[1], "round {round}: two supervisors started");
        let said = stderr(&a) + &stderr(&b);
        assert_eq!(
            said.matches("already runs").count(),
            1,
            "round {round}: {said}"
        );
        let st: serde_json::Value =
            serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
        assert_eq!(st["supervisors"].as_array().map(Vec::len), Some(1), "{st}");
        let out = root.mailroom(&["stop"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

#[test]
fn start_runs_in_the_background_with_its_log_in_the_tree_and_stop_waits_for_it() {
    let root = Root::new();
    let log = root.p("spans.log");
    let root = root
        .config(&format!(
            "concurrency: 1\nagents:\n  a:\n    command: [{:?}]\n    max_instances: 1\n    env: {{RUNLOG: {:?}, SPAN_MS: \"1500\"}}\n",
            agent("span.sh"),
            log.display().to_string()
        ))
        .task("one.yaml", "description: x\n")
        .task("two.yaml", "description: x\n");
    // --agents a:2 overrides max_instances 1 (and concurrency 1): both run at once.
    let pid = started(&root, &["start", "--agents", "a:2"]);
    assert!(alive(pid));
    assert!(root.read("logs/mailroom.log").contains("supervisor ready"));
    // Again: safe to repeat, as `systemctl start` is. The one running is
    // named, and no second one starts.
    let out = root.mailroom(&["start"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), pid.to_string());
    assert!(stderr(&out).contains("already runs"), "{}", stderr(&out));
    let st: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
    assert_eq!(st["supervisors"].as_array().map(Vec::len), Some(1), "{st}");
    let spans = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(MIN, "both agents to start", || {
        spans().lines().filter(|l| l.starts_with("S ")).count() == 2
    });
    assert!(
        spans().lines().filter(|l| l.starts_with("E ")).count() == 0,
        "the second started only after the first ended:\n{}",
        spans()
    );
    wait_for(MIN, "both to complete", || {
        root.names("completed").len() == 2
    });
    let out = root.mailroom(&["stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!alive(pid), "stop returned before the supervisor was gone");
    assert!(
        root.read("logs/mailroom.log")
            .contains("supervisor stopped")
    );
    let out = root.mailroom(&["stop"]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("no supervisor"), "{}", stderr(&out));
    // A wrong agent name is refused before anything starts.
    let out = root.mailroom(&["start", "--agents", "nosuch:2"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no agent `nosuch`"),
        "{}",
        stderr(&out)
    );
    // A configuration that cannot be used: refused with `run`'s status for
    // it (EX_CONFIG), nothing started.
    let yaml = root.read("mailroom.yaml");
    std::fs::write(root.p("mailroom.yaml"), format!("{yaml}\nretries: lots\n")).unwrap();
    let out = root.mailroom(&["start"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("mailroom.yaml:"), "{}", stderr(&out));
}

#[test]
fn stop_now_puts_a_running_task_back_and_stops_a_foreground_run_too() {
    let pidfile = std::env::temp_dir().join(format!("mailroom-op-stop-{}", std::process::id()));
    let pf = pidfile.display().to_string();
    let root = Root::new()
        .config(&format!(
            "shutdown_grace: 10m\nagents:\n  a:\n    command: [{:?}]\n    grace: 1s\n    env: {{PIDFILE: {pf:?}}}\n",
            agent("hang.sh")
        ))
        .task("long.yaml", "description: x\n");
    let mut sup = root.spawn();
    // An absolute path: joined to the root, it stays itself.
    let agent_pid = root.pid(&format!("{pf}.agent"));
    wait_for(MIN, "the task to run", || root.names("assigned").len() == 1);
    let listed = stdout(&root.mailroom(&["tasks", "--status", "active"]));
    assert!(listed.contains("long"), "{listed}");
    let t0 = Instant::now();
    let out = root.mailroom(&["stop", "--now"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Not the ten minutes of shutdown_grace.
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(sup.wait_exit(Duration::from_secs(5)).success());
    assert_eq!(root.names("pending"), ["long"]);
    assert!(!alive(agent_pid), "the agent outlived stop --now");
    let _ = std::fs::remove_file(format!("{pf}.agent"));
    let _ = std::fs::remove_file(format!("{pf}.grandchild"));
}

#[test]
fn under_systemd_start_and_stop_say_to_use_systemctl() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let mut c = root.cmd(&["start"]);
    c.env("INVOCATION_ID", "0123456789abcdef");
    let out = run_bounded(c, MIN);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("systemctl"), "{}", stderr(&out));
    // A supervisor systemd started is left to systemd.
    let sup = root.spawn_with(&[("INVOCATION_ID", "0123456789abcdef")]);
    wait_for(MIN, "the supervisor to be ready", || {
        logs(&root).contains("supervisor ready")
    });
    let out = root.mailroom(&["stop"]);
    assert!(
        stderr(&out).contains("runs under systemd"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("systemctl"), "{}", stderr(&out));
    assert!(alive(sup.pid()));
    let out = root.mailroom(&["start"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("systemctl"), "{}", stderr(&out));
}

#[test]
fn a_retried_task_keeps_its_history_and_is_listed_once() {
    let marker = std::env::temp_dir().join(format!("mailroom-op-hist-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let root = Root::new()
        .config(&format!(
            "retries: 1\nretry_delay: 3s\nagents:\n  a:\n    command: [{:?}]\n    env: {{SUCCEED_IF: {:?}}}\n",
            agent("fail.sh"),
            marker.display().to_string()
        ))
        .task("flaky.yaml", "description: x\n");
    // The first run fails and waits 3 s for its retry: list and status say so.
    let mut sup = root.spawn();
    wait_for(MIN, "the first failure", || {
        root.exists("tasks/pending/flaky.yaml") && root.exists("tasks/assigned/flaky.state.json")
    });
    let listed = stdout(&root.mailroom(&["list"]));
    assert!(listed.contains("waiting for a retry at"), "{listed}");
    let st = stdout(&root.mailroom(&["status"]));
    assert!(st.contains("1 waiting for a retry: flaky"), "{st}");
    wait_for(MIN, "the task to fail for good", || {
        root.names("failed") == ["flaky"]
    });
    sup.signal(SIGTERM);
    sup.wait_exit(MIN);
    // Round 2 succeeds.
    std::fs::write(&marker, "").unwrap();
    let out = root.mailroom(&["retry", "flaky"]);
    assert!(out.status.success(), "{}", stderr(&out));
    root.run_until_idle();
    let _ = std::fs::remove_file(&marker);
    assert_eq!(root.names("completed"), ["flaky"]);
    let shown = stdout(&root.mailroom(&["show", "flaky"]));
    assert!(
        shown.contains("round 1: failed (exit)") && shown.contains("2 attempts"),
        "{shown}"
    );
    assert!(shown.contains("round 2: completed (success)"), "{shown}");
    let js: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["show", "flaky", "--json"]).stdout).unwrap();
    assert_eq!(js["rounds"].as_array().unwrap().len(), 1, "{js}");
    assert_eq!(js["rounds"][0]["history"].as_array().unwrap().len(), 2);
    // current_state.md lists it once, as it ended last.
    let cs = root.read("context/current_state.md");
    assert_eq!(cs.matches("### flaky").count(), 1, "{cs}");
    assert!(cs.contains("### flaky — completed"), "{cs}");
    // The agent's counts: one task, completed.
    let ag: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["agents", "--json"]).stdout).unwrap();
    assert_eq!(ag[0]["completed"], 1, "{ag}");
    assert_eq!(ag[0]["failed"], 0, "{ag}");
}

#[test]
fn a_task_cancelled_while_it_waits_for_its_retry_keeps_its_attempts() {
    // It ran once and failed; cancelled before its second run, its record
    // still counts that run, keeps its history and says what it ended with,
    // and its state file goes into its run directory with the attempt's files.
    let root = Root::new()
        .config(&format!(
            "retries: 2\nretry_delay: 1h\nagents:\n  a:\n    command: [{:?}]\n",
            agent("fail.sh"),
        ))
        .task("rw.yaml", "description: x\n");
    let mut sup = root.spawn();
    wait_for(MIN, "the first failure", || {
        root.exists("tasks/pending/rw.yaml") && root.exists("tasks/assigned/rw.state.json")
    });
    let out = root.mailroom(&["cancel", "rw"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("while it waited for its next attempt"),
        "{}",
        stdout(&out)
    );
    wait_for(MIN, "the cancelled task to be filed", || {
        root.names("failed") == ["rw"]
    });
    sup.signal(SIGTERM);
    sup.wait_exit(MIN);
    let rec = root.record("failed", "rw");
    assert_eq!(rec["outcome"], "cancelled", "{rec}");
    assert_eq!(rec["attempts"], 1, "{rec}");
    assert_eq!(rec["history"].as_array().unwrap().len(), 1, "{rec}");
    assert_eq!(rec["history"][0]["outcome"], "exit", "{rec}");
    assert_eq!(
        rec["history"][0]["run_dir"], "tasks/failed/rw.run/1",
        "{rec}"
    );
    assert_eq!(rec["run_dir"], "tasks/failed/rw.run/1", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("cancelled while it waited for its next attempt")
            && err.contains("after 1 run")
            && err.contains("exited with code 3"),
        "{err}"
    );
    assert!(root.exists("tasks/failed/rw.run/state.json"));
    assert!(!root.exists("tasks/assigned/rw.state.json"));
    // `show` names its agent without a placeholder for a reason it lacks.
    let shown = stdout(&root.mailroom(&["show", "rw"]));
    assert!(shown.contains("\nagent: a\n"), "{shown}");
    // The context log says the same: its agent and attempt, not `(none)`
    // in `mailroom usage`.
    let log = root.read("context/completed_tasks.jsonl");
    let line: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .rfind(|v: &serde_json::Value| v["task"] == "rw")
        .unwrap();
    assert_eq!(line["agent"], "a", "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    let usage = stdout(&root.mailroom(&["usage"]));
    assert!(!usage.contains("(none)"), "{usage}");
}

#[test]
fn a_config_error_exits_78_and_the_units_do_not_restart_on_it() {
    let root = Root::new().config("concurency: 9\n");
    let out = root.mailroom(&["run", "--exit-when-idle"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("concurency"), "{}", stderr(&out));
    let v = root.mailroom(&["validate"]);
    assert!(!v.status.success(), "validate passed a broken config");
    for unit in ["mailroom.service", "mailroom-user.service"] {
        let text =
            std::fs::read_to_string(format!("{}/systemd/{unit}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        assert!(text.contains("RestartPreventExitStatus=78"), "{unit}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("ExecStartPre=") && l.ends_with(" validate")),
            "{unit}"
        );
    }
    let user = std::fs::read_to_string(format!(
        "{}/systemd/mailroom-user.service",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert!(user.contains("ExecStart=%h/.cargo/bin/mailroom"), "{user}");
}

#[test]
fn an_unknown_agent_in_agents_exits_2_not_78() {
    // A name `mailroom.yaml` lacks is a mistake on the command line: the
    // config is fine, and 78 would tell systemd not to restart for a file
    // nobody needs to fix.
    let root = Root::new().config(&format!(
        "agents:\n  a:\n    command: [{ok:?}]\n  b:\n    command: [{ok:?}]\n",
        ok = agent("ok.sh")
    ));
    for cmd in ["run", "start"] {
        let out = root.mailroom(&[cmd, "--agents", "nope:2"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("no agent `nope`") && err.contains("agents: a, b"),
            "{cmd}: {err}"
        );
    }
    assert!(
        !root.p("logs/mailroom.log").exists(),
        "no supervisor was started"
    );
    // A broken file is still the config's 78, whatever --agents says.
    root.write("mailroom.yaml", "concurency: 9\n");
    let out = root.mailroom(&["run", "--agents", "nope:2"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    // Under systemd, restarting cannot mend an ExecStart= line either.
    for unit in ["mailroom.service", "mailroom-user.service"] {
        let text =
            std::fs::read_to_string(format!("{}/systemd/{unit}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        assert!(text.contains("RestartPreventExitStatus=78 2\n"), "{unit}");
    }
}

#[test]
fn help_separates_global_options_describes_every_argument_and_shows_examples() {
    use clap::CommandFactory;
    let cmd = mailroom::cli::Cli::command();
    let mut missing = Vec::new();
    for sub in cmd.get_subcommands() {
        for a in sub.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{} {id}", sub.get_name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "arguments without a description: {missing:?}"
    );
    let root = Root::new();
    for sub in ["add", "run", "list", "show", "wait"] {
        let out = root.mailroom(&[sub, "--help"]);
        let text = stdout(&out);
        assert!(text.contains("Global options:"), "{sub}: {text}");
        assert!(text.contains("Examples:\n  mailroom"), "{sub}: {text}");
        // The command's own options come first, the global ones after.
        assert!(
            text.find("Options:").unwrap() < text.find("Global options:").unwrap(),
            "{sub}: {text}"
        );
    }
}

#[test]
fn stop_finds_a_supervisor_whose_binary_an_upgrade_replaced() {
    // The supervisor runs from a copy; an upgrade then renames a new file
    // over it, and /proc/PID/exe says `mailroom (deleted)`.
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let bin = root.p("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("mailroom");
    std::fs::copy(BIN, &exe).unwrap();
    let (mut sup, log) = root.spawn_from(&exe);
    wait_for(MIN, "the supervisor to be ready", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("supervisor ready"))
    });
    let new = bin.join(".mailroom.new");
    std::fs::copy(BIN, &new).unwrap();
    std::fs::rename(&new, &exe).unwrap();
    let link = std::fs::read_link(format!("/proc/{}/exe", sup.pid())).unwrap();
    assert!(link.to_string_lossy().ends_with(" (deleted)"), "{link:?}");
    let out = root.mailroom(&["stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("no supervisor"), "{}", stderr(&out));
    assert!(sup.wait_exit(MIN).success());
}
