//! Integration tests of the mailbox core: the real binary on temporary roots
//! with fake agents from tests/agents/.

use crate::common::*;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

#[test]
fn seed_task_completes_with_output_in_context() {
    let root = Root::new().task(
        "task_001.yaml",
        "id: task_001\ndescription: \"Implement user authentication\"\npriority: 1\n\
         created_at: \"2025-01-15T10:00:00Z\"\ndependencies: []\n\
         context_files: [\"context/project_overview.md\", \"context/current_state.md\"]\n",
    );
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["task_001"]);
    let rec = root.record("completed", "task_001");
    assert_eq!(rec["status"], "completed");
    assert_eq!(rec["outcome"], "success");
    assert_eq!(rec["attempts"], 1);
    assert_eq!(rec["exit_code"], 0);
    let out = root.read("context/agent_outputs/task_001.md");
    assert!(out.contains("Implement user authentication"), "{out}");
    let log = root.read("context/completed_tasks.jsonl");
    assert_eq!(log.lines().count(), 1);
    assert!(root.read("context/current_state.md").contains("task_001"));
    assert!(
        root.entries("tasks/assigned").is_empty(),
        "{:?}",
        root.entries("tasks/assigned")
    );
}

#[test]
fn appendix_style_task_is_accepted() {
    let root = Root::new().task(
        "api.yaml",
        "description: Build the API\npriority: high\npreferred_agent: demo\ntimeout_minutes: 5\n\
         context_required: [context/project_overview.md]\nsubtasks:\n  - description: a\n",
    );
    root.run_until_idle();
    // Its subtask ran as a child, then the parent completed without an agent.
    assert_eq!(root.names("completed"), vec!["api", "api.1"]);
    let rec = root.record("completed", "api");
    assert_eq!(rec["children"], serde_json::json!(["api.1"]), "{rec}");
    let child = root.read("tasks/completed/api.1.yaml");
    assert!(child.contains("parent: \"api\""), "{child}");
}

#[test]
fn typo_goes_to_failed_with_file_line_column_and_hint() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("typo.yaml", "description: hello\npriorty: high\n");
    root.run_until_idle();
    assert_eq!(root.names("failed"), vec!["typo"]);
    let rec = root.record("failed", "typo");
    let err = rec["error"].as_str().unwrap();
    assert!(err.starts_with("tasks/pending/typo.yaml:2:1:"), "{err}");
    assert!(err.contains("did you mean `priority`"), "{err}");
    assert_eq!(rec["error_location"]["line"], 2);
    assert_eq!(rec["outcome"], "invalid");
}

#[test]
fn wrong_type_and_malformed_yaml_fail_with_location() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("wt.yaml", "description: x\nretries: many\n")
        .task("bad.yaml", "description: [unclosed\n")
        .task("empty.yaml", "")
        .task("bin.yaml", "\u{0}\u{1}\u{2}binary");
    root.run_until_idle();
    assert_eq!(root.names("failed"), vec!["bad", "bin", "empty", "wt"]);
    let e = root.record("failed", "wt")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(e.starts_with("tasks/pending/wt.yaml:2:"), "{e}");
    let e = root.record("failed", "bad")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(e.starts_with("tasks/pending/bad.yaml:1:"), "{e}");
    assert!(
        root.record("failed", "empty")["error"]
            .as_str()
            .unwrap()
            .contains("empty")
    );
    assert!(
        root.record("failed", "bin")["error"]
            .as_str()
            .unwrap()
            .contains("binary")
    );
}

#[test]
fn failing_task_is_retried_then_failed_then_retry_runs_it_again() {
    let marker = std::env::temp_dir().join(format!("mailroom-succeed-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let root = Root::new()
        .config(&format!(
            "retries: 2\nretry_delay: 20ms\nagents:\n  a:\n    command: [{:?}]\n    env:\n      SUCCEED_IF: {:?}\n",
            agent("fail.sh"),
            marker.display().to_string()
        ))
        .task("f.yaml", "description: break\n");
    root.run_until_idle();
    assert_eq!(root.names("failed"), vec!["f"]);
    let rec = root.record("failed", "f");
    assert_eq!(rec["attempts"], 3, "{rec}");
    assert_eq!(rec["outcome"], "exit");
    assert_eq!(rec["exit_code"], 3);
    assert_eq!(rec["history"].as_array().unwrap().len(), 3);
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("something broke on attempt 3"), "{err}");
    assert!(!root.exists("tasks/assigned/f.state.json"));

    std::fs::write(&marker, "").unwrap();
    let out = root.mailroom(&["retry", "f"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.names("pending"), vec!["f"]);
    assert!(!root.exists("tasks/failed/f.result.json"));
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["f"]);
    assert_eq!(root.record("completed", "f")["attempts"], 1);
    let _ = std::fs::remove_file(&marker);
    // Retrying something that is not failed says why.
    let out = root.mailroom(&["retry", "f"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`f` completed; to run it again: mailroom retry --completed f"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_agent_command_fails_at_once_without_retries() {
    let root = Root::new()
        .config("retries: 5\nagents:\n  a:\n    command: [\"no-such-agent-xyz\", \"-p\"]\n")
        .task("m.yaml", "description: hi\n");
    root.run_until_idle();
    let rec = root.record("failed", "m");
    assert_eq!(rec["outcome"], "spawn");
    assert_eq!(rec["attempts"], 1);
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("`no-such-agent-xyz` was not found on PATH"),
        "{rec}"
    );
    // The next agent reads why, not an empty section.
    let out = root.read("context/agent_outputs/m.md");
    assert!(out.contains("was not found on PATH"), "{out}");
    assert!(out.trim_end().ends_with("the error is above)"), "{out}");
}

#[test]
fn timeout_kills_the_agent_and_its_grandchild() {
    let root = Root::new();
    let pidfile = root.p("pid");
    let root = root
        .config(&format!(
            "retries: 0\nagents:\n  a:\n    command: [{:?}]\n    timeout: 500ms\n    grace: 300ms\n    env:\n      PIDFILE: {:?}\n",
            agent("hang.sh"),
            pidfile.display().to_string()
        ))
        .task("h.yaml", "description: hang\n");
    root.run_until_idle();
    let rec = root.record("failed", "h");
    assert_eq!(rec["outcome"], "timeout", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 500ms")
    );
    let gc: i32 = root.pid("pid.grandchild");
    let ag: i32 = root.pid("pid.agent");
    wait_for(Duration::from_secs(5), "grandchild to be gone", || {
        !alive(gc)
    });
    assert!(!alive(ag));
}

#[test]
fn prompt_with_shell_metacharacters_arrives_verbatim_and_runs_nothing() {
    let root = Root::new().agent_config(&[&agent("args.sh"), "{prompt}", "--task={task}"], "");
    let canary = root.p("pwned");
    let prompt = format!(
        "$(touch {c}) `touch {c}` ; touch {c} && echo {{task}} | cat > {c} 'q' \"dq\" \\ $HOME *",
        c = canary.display()
    );
    std::fs::write(
        root.p("tasks/pending/inj.yaml"),
        format!("description: {}\n", serde_json::to_string(&prompt).unwrap()),
    )
    .unwrap();
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["inj"]);
    let args = std::fs::read(root.p("inj.args")).unwrap();
    let args: Vec<&[u8]> = args.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    assert_eq!(args.len(), 2, "the prompt must be one argv element");
    assert_eq!(String::from_utf8_lossy(args[0]), prompt);
    assert_eq!(String::from_utf8_lossy(args[1]), "--task=inj");
    assert!(!canary.exists(), "a shell ran the prompt");
}

#[test]
fn agent_gets_mailroom_environment() {
    let root = Root::new()
        .agent_config(&[&agent("args.sh")], "")
        .task("env.yaml", "description: show env\n");
    root.run_until_idle();
    let env = root.read("env.env");
    for k in [
        "MAILROOM_TASK=env",
        "MAILROOM_ATTEMPT=1",
        "MAILROOM_TASK_FILE=",
        "MAILROOM_ROOT=",
        "MAILROOM_CONTEXT=",
        "MAILROOM_OUTPUT=",
    ] {
        assert!(env.contains(k), "{k} missing in {env}");
    }
    // The prompt went in as the last argument (no placeholder in the command).
    let args = root.read("env.args");
    assert_eq!(args, "show env\0");
}

#[test]
fn name_clash_is_reported_and_nothing_is_overwritten() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    root.write("tasks/completed/dup.yaml", "description: old\n");
    root.write("tasks/pending/dup.yaml", "description: new\n");
    root.run_until_idle();
    assert_eq!(root.read("tasks/completed/dup.yaml"), "description: old\n");
    assert_eq!(root.names("failed"), vec!["dup.clash-1"]);
    let rec = root.record("failed", "dup.clash-1");
    assert_eq!(rec["outcome"], "clash");
    assert_eq!(rec["submitted_as"], "tasks/pending/dup.yaml");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("tasks/completed/dup.yaml")
    );
    assert_eq!(
        root.read("tasks/failed/dup.clash-1.yaml"),
        "description: new\n"
    );
}

#[test]
fn fifo_symlink_and_directory_are_refused_without_hanging() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let outside = root.p("outside.txt");
    std::fs::write(&outside, "description: secret\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.p("tasks/pending/link.yaml")).unwrap();
    let fifo = std::ffi::CString::new(root.p("tasks/pending/fifo.yaml").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(root.p("tasks/pending/dir.yaml")).unwrap();
    root.run_until_idle();
    assert_eq!(root.names("failed"), vec!["dir", "fifo", "link"]);
    assert!(
        root.record("failed", "link")["error"]
            .as_str()
            .unwrap()
            .contains("symbolic link")
    );
    assert!(
        root.record("failed", "fifo")["error"]
            .as_str()
            .unwrap()
            .contains("FIFO")
    );
    assert!(
        root.record("failed", "dir")["error"]
            .as_str()
            .unwrap()
            .contains("directory")
    );
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "description: secret\n"
    );
}

unsafe extern "C" {
    fn mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}

/// A tree with one task, `long`, whose agent (`hang.sh`) hangs and writes
/// its pid to `pid.agent`; `retries: 0`, a short `shutdown_grace`.
fn long_hang_root() -> Root {
    let root = Root::new();
    let pidfile = root.p("pid");
    root.config(&format!(
        "retries: 0\nshutdown_grace: 100ms\nagents:\n  a:\n    command: [{:?}]\n    grace: 200ms\n    env:\n      PIDFILE: {:?}\n",
        agent("hang.sh"),
        pidfile.display().to_string()
    ))
    .task("long.yaml", "description: long\n")
}

/// A task whose runs shutdowns stopped 8 times is charged for the next
/// stop: a supervisor restarted again and again (a restart loop) does not
/// restart the same run for ever. With `retries: 0` it fails `interrupted`,
/// saying why.
#[test]
fn a_ninth_stop_by_shutdown_counts_against_the_retries() {
    let root = long_hang_root();
    let stop = |root: &Root| {
        let _ = std::fs::remove_file(root.p("pid.agent"));
        let mut sup = root.spawn();
        root.pid("pid.agent");
        sup.signal(SIGTERM);
        assert!(sup.wait_exit(Duration::from_secs(20)).success());
    };
    stop(&root);
    assert_eq!(root.names("pending"), ["long"]);
    // As after 8 such stops: 8 free attempts, each interrupted.
    let path = "tasks/assigned/long.state.json";
    let mut state: serde_json::Value = serde_json::from_str(&root.read(path)).unwrap();
    let one = state["history"][0].clone();
    assert_eq!(one["outcome"], "interrupted", "{state}");
    state["history"] = serde_json::json!(vec![one; 8]);
    state["attempts"] = 8.into();
    state["free_attempts"] = 8.into();
    root.write(path, &state.to_string());
    stop(&root);
    assert!(root.names("pending").is_empty());
    let rec = root.record("failed", "long");
    assert_eq!(rec["outcome"], "interrupted", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .is_some_and(|e| e.contains("stopped by a shutdown 9 times")),
        "{rec}"
    );
}

#[test]
fn sigterm_requeues_a_running_task_without_using_an_attempt() {
    let root = long_hang_root();
    let mut sup = root.spawn();
    let ag: i32 = root.pid("pid.agent");
    sup.signal(SIGTERM);
    let st = sup.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "{st:?}");
    assert!(!alive(ag), "agent outlived the supervisor's shutdown");
    assert_eq!(root.names("pending"), vec!["long"]);
    let state: serde_json::Value =
        serde_json::from_str(&root.read("tasks/assigned/long.state.json")).unwrap();
    assert_eq!(state["attempts"], 1);
    assert_eq!(state["free_attempts"], 1);
    assert!(root.names("assigned").is_empty());
    // `show` says the attempt was free (with `retries: 0`, none is used up).
    let shown = String::from_utf8(root.mailroom(&["show", "long"]).stdout).unwrap();
    assert!(
        shown.contains("attempts: 1 (1 not counted against retries)"),
        "{shown}"
    );
}

#[test]
fn cli_status_list_show_and_validate() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("one.yaml", "description: first\n")
        .task("two.yaml", "description: second\nbogus: 1\n");
    root.run_until_idle();
    let s = root.mailroom(&["status", "--json"]);
    assert!(s.status.success());
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(v["completed"], 1);
    assert_eq!(v["failed"], 1);
    let l = root.mailroom(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let l = root.mailroom(&["list", "--state", "failed"]);
    assert!(stdout(&l).contains("two"), "{}", stdout(&l));
    let sh = root.mailroom(&["show", "one", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&sh.stdout).unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["record"]["status"], "completed");
    let sh = root.mailroom(&["show", "one"]);
    assert!(stdout(&sh).contains("first"));
    let sh = root.mailroom(&["show", "nope"]);
    assert!(!sh.status.success());

    root.write("good.yaml", "description: fine\n");
    root.write("bad.yaml", "description: fine\ntimeout: 90\n");
    let ok = root.mailroom(&["validate", root.p("good.yaml").to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    let bad = root.mailroom(&["validate", root.p("bad.yaml").to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(stdout(&bad).contains("no unit"), "{}", stdout(&bad));
    // What the supervisor would refuse is refused here too: an agent the
    // config does not have. A command not on PATH is a warning.
    root.write("stray.yaml", "description: fine\nagent: nope\n");
    let stray = root.mailroom(&["validate", root.p("stray.yaml").to_str().unwrap()]);
    assert!(!stray.status.success(), "{}", stdout(&stray));
    assert!(
        stdout(&stray).contains("agent `nope` is not configured"),
        "{}",
        stdout(&stray)
    );
    let root = root.config(
        "agents:\n  a:\n    command: [/bin/true]\n  gone:\n    command: [nosuchbinary-xyz]\ndefault_agent: a\n",
    );
    let v = root.mailroom(&["validate"]);
    assert!(v.status.success(), "{}", stdout(&v));
    assert!(
        stdout(&v).contains("agent `gone`: its command `nosuchbinary-xyz` is not found on PATH"),
        "{}",
        stdout(&v)
    );
}

#[test]
fn bad_config_is_refused_at_start_naming_the_key() {
    let root = Root::new().config("concurency: 2\n");
    let out = root.mailroom(&["run", "--exit-when-idle"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("mailroom.yaml:1:1"), "{e}");
    assert!(e.contains("did you mean `concurrency`"), "{e}");
}

#[test]
fn init_lays_out_a_tree_that_runs_the_builtin_demo() {
    let root = Root::new();
    let dir = root.p("fresh");
    let out = root.mailroom(&["init", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A second init says the tree is there and touches nothing.
    let again = root.mailroom(&["init", dir.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("is already a mailroom tree; nothing to do"),
        "{}",
        stdout(&again)
    );
    for d in [
        "tasks/pending",
        "tasks/tmp",
        "tasks/assigned",
        "context/agent_outputs",
    ] {
        assert!(dir.join(d).is_dir(), "{d}");
    }
    assert!(dir.join("mailroom.yaml").exists());
    let add = run_bounded(
        {
            let mut c = std::process::Command::new(BIN);
            c.args([
                "--root",
                dir.to_str().unwrap(),
                "add",
                "Write a haiku",
                "--name",
                "haiku",
            ]);
            c
        },
        MIN,
    );
    assert!(add.status.success(), "{}", stderr(&add));
    assert_eq!(stdout(&add).trim(), "haiku");
    // Nothing runs yet: `add` says so, on stderr (stdout is the name alone).
    assert!(
        stderr(&add).contains("no supervisor is running on this tree; `haiku` waits"),
        "{}",
        stderr(&add)
    );
    let run = run_bounded(
        {
            let mut c = std::process::Command::new(BIN);
            c.args(["--root", dir.to_str().unwrap(), "run", "--exit-when-idle"]);
            c
        },
        MIN,
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let out = std::fs::read_to_string(dir.join("context/agent_outputs/haiku.md")).unwrap();
    assert!(out.contains("Write a haiku"), "{out}");
}

#[test]
fn clash_of_a_name_at_the_length_limit_is_filed_not_looped_on() {
    let long = "n".repeat(195);
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    root.write(
        &format!("tasks/completed/{long}.yaml"),
        "description: old\n",
    );
    root.write(&format!("tasks/pending/{long}.yaml"), "description: new\n");
    root.run_until_idle();
    let failed = root.names("failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].ends_with(".clash-1") && failed[0].len() <= 200,
        "{failed:?}"
    );
}

#[test]
fn one_file_under_two_names_after_an_interrupted_link_unlink_runs_once() {
    // On NFS a claim is link + unlink; a crash between them leaves the task
    // in pending/ and assigned/ as one inode. It is one task, not a clash.
    let root = Root::new();
    let runlog = root.p("runs.log");
    let root = root.config(&format!(
        "agents:\n  a:\n    command: [{:?}]\n    env:\n      RUNLOG: {:?}\n",
        agent("ok.sh"),
        runlog.display().to_string()
    ));
    root.write("tasks/pending/twin.yaml", "description: twin\n");
    std::fs::hard_link(
        root.p("tasks/pending/twin.yaml"),
        root.p("tasks/assigned/twin.yaml"),
    )
    .unwrap();
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["twin"]);
    assert!(
        root.names("failed").is_empty(),
        "{:?}",
        root.names("failed")
    );
    assert!(root.names("pending").is_empty());
    assert_eq!(std::fs::read_to_string(&runlog).unwrap().lines().count(), 1);
}

/// Claims `name` from `pending/<name>.<ext>` through the library, holding
/// its lock as the supervisor does.
fn claim(root: &Root, name: &str, ext: &str) -> mailroom::tree::moves::Claim {
    let layout = mailroom::tree::layout::Layout::new(&root.path);
    let lock = mailroom::tree::lock::TaskLock::try_acquire(&layout, name)
        .unwrap()
        .expect("nobody holds the lock");
    let claim = mailroom::tree::moves::claim(&layout, name, ext, &lock).unwrap();
    lock.release();
    claim
}

#[test]
fn claim_never_clobbers_an_assigned_file() {
    // The name check before the move lets it through: the `x` it finds in
    // assigned/ (x.yaml) is the very file being claimed (pending/x.yml under
    // a second name). But assigned/x.yml, where the move goes, holds another
    // task's file. The move itself must refuse to replace it: a replacing
    // rename would destroy that file.
    let root = Root::new();
    root.write("tasks/pending/x.yml", "description: the newcomer\n");
    std::fs::hard_link(
        root.p("tasks/pending/x.yml"),
        root.p("tasks/assigned/x.yaml"),
    )
    .unwrap();
    root.write(
        "tasks/assigned/x.yml",
        "description: the task already here\n",
    );
    let c = claim(&root, "x", "yml");
    assert_eq!(
        root.read("tasks/assigned/x.yml"),
        "description: the task already here\n",
        "the claim replaced a file in assigned/"
    );
    assert!(
        matches!(&c, mailroom::tree::moves::Claim::Clash(p) if p == &root.p("tasks/assigned/x.yml")),
        "claim into an occupied name: {c:?}"
    );
    assert_eq!(
        root.read("tasks/pending/x.yml"),
        "description: the newcomer\n"
    );
}

#[test]
fn claim_finishing_a_half_done_move_leaves_the_file_under_one_name() {
    // An interrupted link + unlink claim left one file as pending/t.yaml and
    // assigned/t.yaml. Claiming it again must end with the file in assigned/
    // only: rename(2) between two names of one file does nothing and reports
    // success, which would leave the task in pending/ to be claimed again.
    let root = Root::new();
    root.write("tasks/pending/t.yaml", "description: twin\n");
    std::fs::hard_link(
        root.p("tasks/pending/t.yaml"),
        root.p("tasks/assigned/t.yaml"),
    )
    .unwrap();
    let c = claim(&root, "t", "yaml");
    assert!(matches!(c, mailroom::tree::moves::Claim::Claimed), "{c:?}");
    assert!(
        !root.exists("tasks/pending/t.yaml"),
        "the claimed task is still in pending/"
    );
    use std::os::unix::fs::MetadataExt;
    let links = std::fs::metadata(root.p("tasks/assigned/t.yaml"))
        .unwrap()
        .nlink();
    assert_eq!(links, 1, "the claimed file still has a second name");
}

#[test]
fn a_stale_record_does_not_finish_an_orphan_that_never_wrote_it() {
    // An old record lies in completed/ (its task file was moved back by hand);
    // the task's rerun was interrupted. Recovery must rerun it, not file it
    // with the old record.
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    root.write(
        "tasks/completed/st.result.json",
        r#"{"version":1,"task":"st","status":"completed","outcome":"success","attempts":1,
            "finished_at":"2020-01-01T00:00:00Z","history":[],"host":"old","run_id":"old-run"}"#,
    );
    root.write("tasks/assigned/st.yaml", "description: rerun me\n");
    root.write(
        "tasks/assigned/st.state.json",
        r#"{"version":1,"task":"st","attempts":1,"history":[],
            "run":{"attempt":1,"agent":"a","host":"gone","supervisor_pid":1,"supervisor_start":1,
                   "started_at":"2020-01-01T00:00:00Z","deadline":"2020-01-01T01:00:00Z"}}"#,
    );
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["st"]);
    let rec = root.record("completed", "st");
    assert_ne!(rec["run_id"], "old-run");
    assert_eq!(rec["attempts"], 2, "{rec}");
    assert_eq!(rec["history"][0]["outcome"], "interrupted");
}

/// A terminal commit leaves nothing of the task in `assigned/`: its lock and
/// its state file move into the run directory (no inode is freed), and the
/// state there is the run's last.
#[test]
fn a_terminal_commit_moves_the_lock_and_the_state_file_into_the_run_directory() {
    let root = Root::new()
        .config("default_agent: a\nagents:\n  a:\n    command: [\"true\"]\n  f:\n    command: [\"false\"]\n")
        .task("t.yaml", "description: x\n")
        .task("u.yaml", "description: x\nagent: f\nretries: 0\n");
    root.run_until_idle();
    let left: Vec<_> = std::fs::read_dir(root.p("tasks/assigned"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in assigned/: {left:?}");
    for (state, t) in [("completed", "t"), ("failed", "u")] {
        let run = root.p(&format!("tasks/{state}/{t}.run"));
        let lock = std::fs::metadata(run.join("lock")).expect("the lock in the run directory");
        assert_eq!(lock.len(), 0);
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("state.json")).unwrap()).unwrap();
        assert_eq!(st["attempts"], 1, "{st}");
        assert_eq!(st["task"], t, "{st}");
    }
}

#[test]
fn a_cli_that_never_started_records_no_session() {
    // mailroom names claude's session before the start (--session-id); a
    // binary that is not there made none, and the record must not name one.
    let root = Root::new()
        .config(
            "retries: 0\nagents:\n  c:\n    kind: claude\n    command: [\"no-such-claude-xyz\", \"-p\", \"--output-format\", \"json\", \"--\", \"{prompt}\"]\n",
        )
        .task("s.yaml", "description: hi\n");
    root.run_until_idle();
    let rec = root.record("failed", "s");
    assert_eq!(rec["outcome"], "spawn", "{rec}");
    assert!(rec["session_id"].is_null(), "{rec}");
    assert!(rec["history"][0]["session_id"].is_null(), "{rec}");
}

/// Each run gets a TMPDIR of its own (mode 0700, under mailroom's), removed
/// with whatever the agent left in it, even a directory it made unreadable;
/// an agent whose `env` names a TMPDIR keeps that one. With and without keepers.
#[test]
fn each_run_gets_a_private_tmpdir_removed_afterwards() {
    let script = r#"d="$MAILROOM_ROOT/$MAILROOM_TASK.tmpdir"
printf '%s\n' "$TMPDIR" > "$d"; stat -c %a "$TMPDIR" >> "$d"
mkdir "$TMPDIR/locked" && echo secret > "$TMPDIR/locked/f" && chmod 000 "$TMPDIR/locked""#;
    for keeper in [true, false] {
        let root = Root::new().config(&format!(
            "retry_delay: 50ms\nsettle: 300ms\nrun_keeper: {keeper}\ndefault_agent: a\nagents:\n  a:\n    command: [sh, -c, {s}]\n  \
             own:\n    command: [sh, -c, {s}]\n    env: {{TMPDIR: {own}}}\n",
            s = serde_json::to_string(script).unwrap(),
            own = serde_json::to_string(&root_tmp_own()).unwrap(),
        ));
        let base = root.p("systmp");
        std::fs::create_dir(&base).unwrap();
        std::fs::create_dir_all(root_tmp_own()).unwrap();
        // Left by a keeper that was killed (its pid is no process), and one
        // of a live process (pid 1): the supervisor removes the first only.
        let dead = base.join("mailroom-run.4194305.0123456789abcdef");
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        let live = base.join("mailroom-run.1.0123456789abcdef");
        std::fs::create_dir(&live).unwrap();
        root.write("tasks/pending/t.yaml", "description: x\n");
        root.write("tasks/pending/o.yaml", "description: x\nagent: own\n");
        let mut c = root.cmd(&["run", "--exit-when-idle"]);
        c.env("TMPDIR", &base);
        let out = run_bounded(c, Duration::from_secs(60));
        assert!(out.status.success(), "{}", stderr(&out));
        let mut names = root.names("completed");
        names.sort();
        assert_eq!(names, vec!["o", "t"], "keeper {keeper}: {}", stderr(&out));
        let seen = root.read("t.tmpdir");
        let mut lines = seen.lines();
        let dir = std::path::PathBuf::from(lines.next().unwrap());
        assert_eq!(
            dir.parent(),
            Some(base.as_path()),
            "keeper {keeper}: {seen}"
        );
        assert!(
            dir.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("mailroom-run."),
            "{seen}"
        );
        assert_eq!(lines.next(), Some("700"), "keeper {keeper}: {seen}");
        assert!(
            !dir.exists(),
            "keeper {keeper}: {} left behind",
            dir.display()
        );
        assert!(!dead.exists(), "a dead keeper's temp directory stays");
        assert!(live.exists(), "a live process's temp directory was removed");
        std::fs::remove_dir(&live).unwrap();
        assert_eq!(
            std::fs::read_dir(&base).unwrap().count(),
            0,
            "keeper {keeper}: something left in the base temp directory"
        );
        // The agent that names its own TMPDIR gets it, untouched.
        let own = root.read("o.tmpdir");
        assert_eq!(own.lines().next(), Some(root_tmp_own().as_str()), "{own}");
        assert!(
            std::path::Path::new(&root_tmp_own())
                .join("locked")
                .exists()
        );
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwx", &root_tmp_own()])
            .status();
        let _ = std::fs::remove_dir_all(root_tmp_own());
    }
}

fn root_tmp_own() -> String {
    format!(
        "{}/mailroom-test-own-tmp-{}",
        std::env::temp_dir().display(),
        std::process::id()
    )
}

/// An agent that exits 0 but says `status: failed` in `$MAILROOM_RESULT` has
/// failed (`agent_error`, with its summary); `status: completed` changes nothing.
#[test]
fn a_failure_reported_in_mailroom_result_is_no_success() {
    let root = Root::new()
        .agent_config(
            &[
                "sh",
                "-c",
                "printf 'status: %s\\nsummary: tests still red\\n' \"$S\" > \"$MAILROOM_RESULT\"; echo done",
            ],
            "retries: 0",
        )
        .task("bad.yaml", "description: x\n")
        .task("good.yaml", "description: x\n");
    // The status comes from the task's name: `bad` fails, `good` completes.
    let cfg = root.read("mailroom.yaml").replace(
        "\"printf",
        "\"S=$(case $MAILROOM_TASK in bad) echo failed;; *) echo completed;; esac); printf",
    );
    root.write("mailroom.yaml", &cfg);
    root.run_until_idle();
    assert_eq!(root.names("failed"), ["bad"]);
    assert_eq!(root.names("completed"), ["good"]);
    let rec = root.record("failed", "bad");
    assert_eq!(rec["outcome"], "agent_error", "{rec}");
    assert_eq!(rec["exit_code"], 0, "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("reported `status: failed` in $MAILROOM_RESULT: tests still red"),
        "{err}"
    );
}

/// An agent that stopped itself (SIGSTOP) gets its SIGTERM at the timeout
/// and is continued, so it can end cleanly within the grace instead of
/// being killed at its end. With and without keepers.
#[test]
fn a_stopped_agent_is_continued_with_its_sigterm() {
    let script = r#"trap 'echo term > "$MAILROOM_ROOT/$MAILROOM_TASK.term"; exit 3' TERM
kill -STOP $$
# (a shell runs its trap between commands)
while :; do sleep 0.1; done"#;
    for keeper in [true, false] {
        let root = Root::new()
            .config(&format!(
                "retry_delay: 50ms\nsettle: 300ms\nretries: 0\nrun_keeper: {keeper}\ndefault_agent: a\n\
                 agents:\n  a:\n    command: [sh, -c, {}]\n    timeout: 1s\n    grace: 30s\n",
                serde_json::to_string(script).unwrap()
            ))
            .task("t.yaml", "description: x\n");
        let started = std::time::Instant::now();
        root.run_until_idle_within(Duration::from_secs(60));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "keeper {keeper}: took {:?}, the grace ran out",
            started.elapsed()
        );
        assert!(root.exists("t.term"), "keeper {keeper}: its trap never ran");
        assert_eq!(root.record("failed", "t")["outcome"], "timeout");
    }
}

/// `validate` agrees with the scanner: a valid task under a name no
/// supervisor claims is an error in `pending/` (it would wait there for
/// ever, unreported) and a warning elsewhere.
#[test]
fn validate_refuses_a_task_file_the_scanner_would_never_claim() {
    let root = Root::new()
        .task("upper.YAML", "description: x\n")
        .task("fine.yaml", "description: x\n");
    std::fs::write(root.p("draft.txt"), "description: x\n").unwrap();
    let p = |rel: &str| root.p(rel).display().to_string();
    let out = root.mailroom(&["validate", &p("tasks/pending/upper.YAML")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("never claims a file of this name"), "{text}");
    let out = root.mailroom(&["validate", &p("draft.txt"), &p("tasks/pending/fine.yaml")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("draft.txt\n  warning: in tasks/pending/"),
        "{text}"
    );
    assert!(text.contains("fine.yaml\n"), "{text}");
    assert_eq!(text.matches("warning").count(), 1, "{text}");
    // `status` names it too; an editor's leftover is not named.
    std::fs::write(root.p("tasks/pending/.fine.yaml.swp"), "x").unwrap();
    let st = String::from_utf8(root.mailroom(&["status"]).stdout).unwrap();
    assert!(st.contains("1 pending,"), "{st}");
    assert!(
        st.contains("1 file in tasks/pending/ never claimed (task files end in .yaml, .yml or .md): upper.YAML\n"),
        "{st}"
    );
    let js: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        js["ignored_in_pending"],
        serde_json::json!(["upper.YAML"]),
        "{js}"
    );
}

/// `validate` and `add` say when a task lists a context file that is not
/// there (the task would fail as `invalid` when it starts); the file may
/// still come, so it is a warning.
#[test]
fn validate_and_add_warn_of_a_missing_context_file() {
    let root = Root::new();
    root.write("notes.md", "hello\n");
    root.write(
        "draft.yaml",
        "description: x\ncontext_files: [notes.md, missing.md]\n",
    );
    let out = root.mailroom(&["validate", &root.p("draft.yaml").display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: context file `missing.md` does not exist (yet)"),
        "{text}"
    );
    assert_eq!(text.matches("warning").count(), 1, "{text}");
    let out = root.mailroom(&["add", "--file", &root.p("draft.yaml").display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: context file `missing.md` does not exist (yet)"),
        "{}",
        stderr(&out)
    );
}

/// `show` says until when a pending task's own `delay:` or `not_before:`
/// holds it back (nothing else did: it looked stuck).
#[test]
fn show_and_list_say_until_when_a_delay_or_not_before_holds_a_task() {
    let root = Root::new()
        .task("later.yaml", "description: x\ndelay: 1h\n")
        .task("now.yaml", "description: x\n")
        .task(
            "nb.yaml",
            &format!(
                "description: x\nnot_before: {}\n",
                humantime::format_rfc3339_seconds(
                    std::time::SystemTime::now() + Duration::from_secs(2 * 86400)
                )
            ),
        );
    let show = |n: &str| String::from_utf8(root.mailroom(&["show", n]).stdout).unwrap();
    let later = show("later");
    assert!(
        later.contains("held: its `delay: 1h` holds it until 20"),
        "{later}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["show", "later", "--json"]).stdout).unwrap();
    assert!(json["starts_at"].as_str().is_some(), "{json}");
    assert!(!show("now").contains("holds it until"), "{}", show("now"));
    let nb = show("nb");
    assert!(
        nb.contains("held: its `not_before` holds it until 20"),
        "{nb}"
    );
    // `list` says it too, and a task nothing holds is listed plain.
    let list = stdout(&root.mailroom(&["list", "--state", "pending"]));
    assert!(
        list.contains("later  (held by its `delay: 1h` until 20"),
        "{list}"
    );
    assert!(
        list.contains("nb  (held by its `not_before` until 20"),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l.trim_end() == "pending   now"),
        "{list}"
    );
    let js: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["list", "--json"]).stdout).unwrap();
    let starts: std::collections::HashMap<&str, &serde_json::Value> = js
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), &i["starts_at"]))
        .collect();
    assert!(starts["later"].is_string(), "{js}");
    assert!(starts["now"].is_null(), "{js}");
}

/// `run --exit-when-idle` with only a delayed task left says what it waits
/// for and until when (it looked hung in CI), then runs it and exits.
#[test]
fn exit_when_idle_says_what_it_waits_for() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("later.yaml", "description: x\ndelay: 2s\n");
    let out = root.run_until_idle();
    let err = stderr(&out);
    assert!(
        err.contains(
            "nothing runs now; --exit-when-idle waits for 1 task held until a time \
             (the first, `later`, until 20"
        ),
        "{err}"
    );
    assert_eq!(
        err.matches("--exit-when-idle waits for").count(),
        1,
        "said once: {err}"
    );
    assert_eq!(root.names("completed"), ["later"]);
}

/// `add`'s note that nothing runs is left out under `-q`, and while a
/// supervisor runs.
#[test]
fn add_says_nothing_of_supervisors_when_one_runs_or_when_quiet() {
    let root = Root::new().agent_config(&["true"], "");
    let quiet = root.mailroom(&["-q", "add", "x", "--name", "q"]);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert_eq!(stderr(&quiet), "");
    let _sup = root.spawn();
    wait_for(MIN, "the supervisor's heartbeat", || {
        !root.entries("tasks/supervisors").is_empty()
    });
    let add = root.mailroom(&["add", "y", "--name", "y"]);
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(!stderr(&add).contains("no supervisor"), "{}", stderr(&add));
}
