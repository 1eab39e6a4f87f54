//! Access control: the tree must not be open to other users, other users'
//! task files are refused, agents get a minimal environment and no
//! descriptor of the supervisor's beyond stdin (the task lock), stdout, stderr.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_world_writable_tree_is_refused_unless_shared() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let pending = root.p("tasks/pending");
    std::fs::set_permissions(&pending, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = root.mailroom(&["run", "--exit-when-idle"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("refusing to start: tasks/pending is writable by other users"),
        "{e}"
    );
    assert!(e.contains("chmod go-w tasks/pending"), "{e}");
    // Shared trees may be group- and world-writable, the latter only with the sticky bit.
    let root = root.agent_config(&[&agent("ok.sh")], "shared: true");
    let out = root.mailroom(&["run", "--exit-when-idle"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without the sticky bit"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&pending, std::fs::Permissions::from_mode(0o1777)).unwrap();
    root.run_until_idle();
}

#[test]
fn a_task_file_owned_by_another_user_is_refused() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("theirs.yaml", "description: x\n");
    if !require_root("giving a file to another user") {
        return;
    }
    let f = std::ffi::CString::new(root.p("tasks/pending/theirs.yaml").to_str().unwrap()).unwrap();
    assert_eq!(
        unsafe { chown(f.as_ptr(), 65534, 65534) },
        0,
        "chown failed as root: {}",
        std::io::Error::last_os_error()
    );
    root.run_until_idle();
    let rec = root.record("failed", "theirs");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("belongs to uid 65534"),
        "{rec}"
    );
}

unsafe extern "C" {
    fn chown(path: *const std::ffi::c_char, uid: u32, gid: u32) -> i32;
}

#[test]
fn agents_get_a_minimal_environment_and_no_stray_descriptors() {
    // `sh -c`, not a script: dash keeps a script file open in its children.
    let script = "env > \"$MAILROOM_ROOT/$MAILROOM_TASK.fullenv\"; ls /proc/self/fd > \"$MAILROOM_ROOT/$MAILROOM_TASK.fds\"";
    let root = Root::new()
        .agent_config(&["/bin/sh", "-c", script], "")
        .task("e.yaml", "description: x\n");
    let out = {
        let mut c = root.cmd(&["run", "--exit-when-idle"]);
        c.env("SECRET_DB_PASSWORD", "hunter2")
            .env("ANTHROPIC_API_KEY", "sk-test")
            .env("NOTIFY_SOCKET", "/run/x");
        run_bounded(c, std::time::Duration::from_secs(60))
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let env = root.read("e.fullenv");
    assert!(!env.contains("SECRET_DB_PASSWORD"), "{env}");
    assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
    assert!(env.contains("ANTHROPIC_API_KEY=sk-test"), "{env}");
    assert!(env.contains("PATH="), "{env}");
    assert!(env.contains("MAILROOM_OUTBOX="), "{env}");
    // The agent's open descriptors, as `ls` saw them: 0, 1, 2 and its own listing.
    let fds = root.read("e.fds");
    let fds: Vec<&str> = fds.split_whitespace().collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "the agent inherited more than it should"
    );
}

/// With `shared: true` records, state files and locks were mode 0600: the
/// group could neither read results nor take a lock to recover an orphan.
/// Now records and state files are 0640, locks 0660, and the directories
/// mailroom creates are setgid (so the group carries on down the tree).
#[test]
fn a_shared_tree_gives_the_group_its_records_state_files_and_locks() {
    let root = Root::new();
    let release = root.p("release");
    let root = root.config(&format!(
        "shared: true\nrescan_interval: 1s\nagents:\n  a:\n    command: [{:?}]\n    grace: 1s\n\
         \x20   prompt_template: \"{{description}}\"\n    env: {{RELEASE: {:?}}}\n",
        agent("tamper.sh"),
        release.to_string_lossy()
    ));
    root.write("tasks/pending/t.yaml", "description: wait\n");
    let _sup = root.spawn();
    let mode = |rel: &str| {
        std::fs::symlink_metadata(root.p(rel))
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0)
    };
    wait_for(
        std::time::Duration::from_secs(60),
        "the run to start",
        || root.exists("tasks/assigned/t.run/1/prompt.md"),
    );
    assert_eq!(mode("tasks/assigned/t.lock"), 0o660, "lock");
    assert_eq!(mode("tasks/assigned/t.state.json"), 0o640, "state file");
    assert_eq!(mode("tasks/assigned/t.run") & 0o2000, 0o2000, "run dir");
    assert_eq!(
        mode("tasks/assigned/t.run/1") & 0o2000,
        0o2000,
        "attempt dir"
    );
    for d in ["tasks/cooldowns", "tasks/control", "tasks/control/cancel"] {
        assert_eq!(mode(d) & 0o2000, 0o2000, "{d} is not setgid");
    }
    root.write("release", "");
    wait_for(
        std::time::Duration::from_secs(60),
        "the task to complete",
        || root.names("completed") == ["t"],
    );
    assert_eq!(mode("tasks/completed/t.result.json"), 0o640, "record");
    assert_eq!(mode("context/current_state.md"), 0o640, "current_state.md");
}

/// An agent (of an unprivileged supervisor) that takes every permission away
/// from its own run directory hides whether its run started: that is a lost
/// run, said so, never a free "could not start" (`spawn`).
#[test]
fn an_agent_that_locks_its_run_directory_is_not_a_spawn_failure() {
    let root = Root::new()
        .agent_config(
            &["sh", "-c", "chmod 000 \"$MAILROOM_RUN_DIR\"; echo ok"],
            "retries: 0",
        )
        .task("t.yaml", "description: x\n");
    if !run_as_nobody_until_idle(&root) {
        return;
    }
    let rec = root.record("failed", "t");
    assert_ne!(rec["outcome"], "spawn", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("cannot be read"), "{err}");
}

/// An agent (of an unprivileged supervisor) that writes a follow-up and then
/// takes every permission away from its outbox: the record says the outbox
/// could not be read and nothing was queued, instead of saying nothing.
#[test]
fn an_outbox_its_agent_made_unreadable_is_said_in_the_record() {
    let root = Root::new()
        .agent_config(
            &[
                "sh",
                "-c",
                "printf 'description: next\n' > \"$MAILROOM_OUTBOX/next.yaml\"; \
                 chmod 000 \"$MAILROOM_OUTBOX\"; echo ok",
            ],
            "retries: 0",
        )
        .task("t.yaml", "description: x\n");
    if !run_as_nobody_until_idle(&root) {
        return;
    }
    let rec = root.record("completed", "t");
    assert!(rec.get("followups").is_none(), "{rec}");
    let w = rec["warnings"].to_string();
    assert!(
        w.contains("the outbox tasks/completed/t.run/1/outbox could not be read")
            && w.contains("Permission denied")
            && w.contains("no follow-up was queued"),
        "{rec}"
    );
    assert!(root.names("pending").is_empty());
}

/// A root this user may not enter is said to be one, with the system's
/// error, not called "not a mailroom root" (which sends a user to `init`).
#[test]
fn a_root_the_user_cannot_enter_is_not_called_missing() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    if as_nobody(&root, &[], std::path::Path::new("/")).is_none() {
        return;
    }
    std::fs::set_permissions(&root.path, std::fs::Permissions::from_mode(0o700)).unwrap();
    for args in [
        &["status"][..],
        &["add", "hello"],
        &["run", "--exit-when-idle"],
    ] {
        let c = as_nobody(&root, args, std::path::Path::new("/")).expect("checked above");
        let out = run_bounded(c, std::time::Duration::from_secs(30));
        assert!(!out.status.success(), "{args:?}");
        let e = stderr(&out);
        assert!(e.contains("cannot look at"), "{args:?}: {e}");
        assert!(e.contains("Permission denied"), "{args:?}: {e}");
        assert!(!e.contains("not a mailroom root"), "{args:?}: {e}");
    }
    std::fs::set_permissions(&root.path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An agent can run `mailroom add`, as its prompt tells it, even when the
/// supervisor's PATH (a systemd unit's short one) does not lead to the
/// binary: its directory is added last. An agent's own `env: PATH` wins.
#[test]
fn agents_find_mailroom_on_their_path() {
    let script = "command -v mailroom > \"$MAILROOM_ROOT/$MAILROOM_TASK.where\"; echo \"$PATH\" > \"$MAILROOM_ROOT/$MAILROOM_TASK.path\"";
    let root = Root::new()
        .config(&format!(
            "agents:\n  a:\n    command: [/bin/sh, -c, {script:?}]\n  own:\n    command: [/bin/sh, -c, {script:?}]\n    env: {{PATH: /bin}}\n"
        ))
        .task("t.yaml", "description: x\nagent: a\n")
        .task("o.yaml", "description: x\nagent: own\n");
    let mut c = root.cmd(&["run", "--exit-when-idle"]);
    c.env("PATH", "/usr/bin:/bin");
    let out = run_bounded(c, std::time::Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    assert_eq!(
        root.read("t.where").trim(),
        bin_dir.join("mailroom").to_str().unwrap()
    );
    assert_eq!(
        root.read("t.path").trim(),
        format!("/usr/bin:/bin:{}", bin_dir.display())
    );
    assert_eq!(root.read("o.path").trim(), "/bin");
}

/// `mailroom run --exit-when-idle` as user nobody, on a root given to
/// nobody first and given back (u+rwx) after, so that it can be removed;
/// asserts that the run succeeded. False (said so) when it cannot run.
fn run_as_nobody_until_idle(root: &Root) -> bool {
    let Some(c) = as_nobody(root, &["run", "--exit-when-idle"], &root.path) else {
        return false;
    };
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&root.path)
        .status()
        .unwrap();
    assert!(chown.success());
    let out = run_bounded(c, std::time::Duration::from_secs(60));
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+rwx"])
        .arg(&root.path)
        .status();
    assert!(out.status.success(), "{}", stderr(&out));
    true
}

/// `mailroom --root <root> <args>` as user nobody (65534), through setpriv,
/// or None (said so) when this test cannot run as root with setpriv.
fn as_nobody(root: &Root, args: &[&str], home: &std::path::Path) -> Option<std::process::Command> {
    if !require_root("running mailroom as another user (setpriv)") {
        return None;
    }
    let have = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(have, "setpriv (util-linux) to run mailroom as nobody") {
        return None;
    }
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "--root",
    ])
    .arg(&root.path)
    .args(args)
    .env_remove("MAILROOM_ROOT")
    .env_remove("MAILROOM_TASK")
    .env("HOME", home);
    Some(c)
}
