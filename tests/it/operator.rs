//! The operator's day (issue 12): a typo'd root, config reloads, start and
//! stop, the rough edges a new user hits, history across retries, hooks and
//! Markdown tasks.

use crate::common::*;
use std::time::{Duration, Instant};

const MIN: Duration = Duration::from_secs(60);

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
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    assert!(root.mailroom(&["pause"]).status.success());
    assert!(root.mailroom(&["pause", "--agent", "a"]).status.success());
    let st = stdout(&root.mailroom(&["status"]));
    assert!(st.contains("paused: no new tasks"), "{st}");
    assert!(st.contains("agent a paused"), "{st}");
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
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
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
