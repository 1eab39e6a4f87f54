//! The small keeper binary (issue 15): a supervisor starts its runs' keepers
//! as `mailroom-keeper` from beside its own executable when that binary is
//! from the same build, and as `mailroom keeper` otherwise; runs complete
//! either way, and a foreign or hanging `mailroom-keeper` neither runs a task
//! nor holds up the start.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KEEPER_BIN: &str = env!("CARGO_BIN_EXE_mailroom-keeper");

/// An agent that records its parent, the run's keeper: its executable and
/// its command line.
const WHO: &str = r#"readlink "/proc/$PPID/exe" > "$MAILROOM_ROOT/keeper-exe.txt"
tr '\0' ' ' < "/proc/$PPID/cmdline" > "$MAILROOM_ROOT/keeper-cmd.txt""#;

fn who_root() -> Root {
    Root::new()
        .agent_config(&["/bin/sh", "-c", WHO], "")
        .task("k.yaml", "description: who keeps me\n")
}

/// `exe --root R run --exit-when-idle` (bounded); asserts success and that
/// the task completed; returns the supervisor's log.
fn run_with(root: &Root, exe: &Path, envs: &[(&str, &str)], limit: Duration) -> String {
    let mut c = root.cmd_of(exe, &["run", "--exit-when-idle"]);
    c.envs(envs.iter().copied());
    let out = run_bounded(c, limit);
    let log = stderr(&out);
    assert!(out.status.success(), "supervisor failed:\n{log}");
    assert_eq!(root.names("completed"), ["k"], "{log}");
    log
}

/// The keeper's executable and command line, as the agent saw them.
fn keeper_of(root: &Root) -> (PathBuf, String) {
    (
        PathBuf::from(root.read("keeper-exe.txt").trim()),
        root.read("keeper-cmd.txt"),
    )
}

/// `mailroom` installed alone in `<root>/bin` (a hard link to the built
/// binary, a copy if the file system has none).
fn lone_mailroom(root: &Root) -> PathBuf {
    let dir = root.p("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("mailroom");
    if std::fs::hard_link(BIN, &exe).is_err() {
        std::fs::copy(BIN, &exe).unwrap();
    }
    exe
}

/// A shell script as `<root>/bin/mailroom-keeper`, installed the way an
/// upgrade installs a file: written beside it, then renamed over it.
fn fake_keeper(root: &Root, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let new = root.p("bin/.mailroom-keeper.new");
    std::fs::write(&new, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&new, root.p("bin/mailroom-keeper")).unwrap();
}

#[test]
fn the_small_binary_answers_with_this_builds_identity() {
    let out = Command::new(KEEPER_BIN).arg("--identity").output().unwrap();
    assert!(out.status.success());
    let line = stdout(&out);
    assert_eq!(line, format!("{}\n", mailroom::run::keeper::IDENTITY));
    let re = regex::Regex::new(r"^mailroom-keeper \d+\.\d+\.\d+\S* build [0-9a-f]{16}\n$").unwrap();
    assert!(re.is_match(&line), "{line:?}");
    // Anything else is a usage error, never a run.
    for args in [&[][..], &["--help"], &["a", "b"]] {
        let out = Command::new(KEEPER_BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("usage: mailroom-keeper RUN_DIR"));
    }
}

#[test]
fn runs_are_kept_by_the_small_binary_beside_the_supervisor() {
    let root = who_root();
    run_with(&root, Path::new(BIN), &[], Duration::from_secs(60));
    let (exe, cmd) = keeper_of(&root);
    assert_eq!(exe, Path::new(KEEPER_BIN).canonicalize().unwrap());
    // `mailroom-keeper RUN_DIR`: no subcommand.
    let run_dir = root
        .path
        .canonicalize()
        .unwrap()
        .join("tasks/assigned/k.run/1");
    assert_eq!(
        cmd.trim_end(),
        format!("{KEEPER_BIN} {}", run_dir.display())
    );
}

#[test]
fn keeper_self_forces_the_supervisors_own_binary() {
    let root = who_root();
    let log = run_with(
        &root,
        Path::new(BIN),
        &[("MAILROOM_KEEPER", "self")],
        Duration::from_secs(60),
    );
    let (exe, cmd) = keeper_of(&root);
    assert_eq!(exe, Path::new(BIN).canonicalize().unwrap());
    assert!(cmd.starts_with(&format!("{BIN} keeper ")), "{cmd}");
    assert!(log.contains("MAILROOM_KEEPER=self"), "{log}");
}

#[test]
fn without_the_small_binary_runs_are_kept_by_mailroom_keeper() {
    let root = who_root();
    let exe = lone_mailroom(&root);
    let log = run_with(&root, &exe, &[], Duration::from_secs(60));
    let (kept_by, cmd) = keeper_of(&root);
    assert_eq!(kept_by, exe);
    assert!(
        cmd.starts_with(&format!("{} keeper ", exe.display())),
        "{cmd}"
    );
    // Said once, at info level: an install of `mailroom` alone is allowed.
    let line = log
        .lines()
        .find(|l| l.contains("no mailroom-keeper beside"))
        .unwrap_or_else(|| panic!("no notice in:\n{log}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn mailroom_keeper_names_a_small_binary_elsewhere() {
    let root = who_root();
    let exe = lone_mailroom(&root);
    let log = run_with(
        &root,
        &exe,
        &[("MAILROOM_KEEPER", KEEPER_BIN)],
        Duration::from_secs(60),
    );
    let (kept_by, _) = keeper_of(&root);
    assert_eq!(kept_by, Path::new(KEEPER_BIN).canonicalize().unwrap());
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn a_small_binary_of_another_build_is_never_used() {
    let root = who_root();
    let exe = lone_mailroom(&root);
    // Were it used as a keeper, it would write no outcome and the run would fail.
    fake_keeper(&root, "echo 'mailroom-keeper 0.0.1 build 0123456789abcdef'");
    let log = run_with(&root, &exe, &[], Duration::from_secs(60));
    let (kept_by, _) = keeper_of(&root);
    assert_eq!(kept_by, exe);
    let line = log
        .lines()
        .find(|l| l.contains("is not this build's keeper"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("0.0.1 build 0123456789abcdef"), "{line}");
}

/// Kills the processes whose pids are in these files when dropped.
struct KillPidsOnDrop(Vec<PathBuf>);

impl Drop for KillPidsOnDrop {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Ok(pid) = std::fs::read_to_string(f)
                .unwrap_or_default()
                .trim()
                .parse::<i32>()
            {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

#[test]
fn a_small_binary_that_hangs_is_stopped_and_not_used() {
    let root = who_root();
    let exe = lone_mailroom(&root);
    // The fake and a child of it (same process group) wait for 300 s.
    fake_keeper(
        &root,
        r#"d=$(dirname "$0")
echo $$ > "$d/fake.pid"
sleep 300 &
echo $! > "$d/child.pid"
wait"#,
    );
    let _cleanup = KillPidsOnDrop(vec![root.p("bin/fake.pid"), root.p("bin/child.pid")]);
    let t = Instant::now();
    let log = run_with(&root, &exe, &[], Duration::from_secs(60));
    let took = t.elapsed();
    let (kept_by, _) = keeper_of(&root);
    assert_eq!(kept_by, exe);
    let timeout = mailroom::run::keeper_program::HANDSHAKE_TIMEOUT;
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(20),
        "took {took:?}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("gave no answer within 2s; stopped")),
        "{log}"
    );
    // The whole group was killed, not only the script.
    for f in ["bin/fake.pid", "bin/child.pid"] {
        let pid: i32 = root.read(f).trim().parse().unwrap();
        assert!(!alive(pid), "{f}: {pid} still runs");
    }
}

#[test]
fn a_small_binary_replaced_under_a_running_supervisor_is_not_used() {
    // `mailroom` and a copy of this build's `mailroom-keeper` side by side.
    let root = who_root();
    let exe = lone_mailroom(&root);
    let small = root.p("bin/mailroom-keeper");
    std::fs::copy(KEEPER_BIN, &small).unwrap();
    let (mut sup, log) = root.spawn_from(&exe);
    let minute = Duration::from_secs(60);
    wait_for(minute, "k to complete", || root.names("completed") == ["k"]);
    assert_eq!(keeper_of(&root).0, small.canonicalize().unwrap());
    // An upgrade renames another build's keeper over it. Were it used, the
    // run would leave a mark and fail (it writes no outcome).
    fake_keeper(
        &root,
        "echo 'mailroom-keeper 9.9.9 build 0123456789abcdef'\ntouch \"$(dirname \"$0\")/fake-ran\"\nexit 1",
    );
    root.write("tasks/tmp/k2.yaml", "description: after the upgrade\n");
    std::fs::rename(root.p("tasks/tmp/k2.yaml"), root.p("tasks/pending/k2.yaml")).unwrap();
    wait_for(minute, "k2 to complete", || {
        root.names("completed").contains(&"k2".to_owned())
    });
    // Kept by the supervisor's own image, shown under its own path.
    let (kept_by, cmd) = keeper_of(&root);
    assert_eq!(kept_by, exe);
    assert!(
        cmd.starts_with(&format!("{} keeper ", exe.display())),
        "{cmd}"
    );
    assert!(!root.exists("bin/fake-ran"), "the replaced keeper ran");
    sup.signal(SIGTERM);
    sup.wait_exit(minute);
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("changed since this supervisor started"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("WARN"), "{text}");
}

/// `--help` to either keeper says what it is instead of taking `--help` for
/// a run directory.
#[test]
fn keeper_help_says_what_it_is() {
    let out = run_bounded(
        {
            let mut c = Command::new(BIN);
            c.args(["keeper", "--help"]);
            c
        },
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("RUN_DIR"), "{}", stdout(&out));
    let out = run_bounded(
        {
            let mut c = Command::new(KEEPER_BIN);
            c.arg("--help");
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("usage: mailroom-keeper RUN_DIR"),
        "{}",
        stderr(&out)
    );
}

/// An agent that records its keeper's pid, command line and environment,
/// and its keeper's parent's pid and command line; with `kill` in its
/// description it then kills that parent (the launcher).
const FAMILY: &str = r#"d="$MAILROOM_ROOT/$MAILROOM_TASK"
mkdir -p "$d"
echo $PPID > "$d/keeper.pid"
tr '\0' ' ' < "/proc/$PPID/cmdline" > "$d/keeper-cmd.txt"
tr '\0' '\n' < "/proc/$PPID/environ" > "$d/keeper-env.txt"
L=$(cut -d' ' -f4 < "/proc/$PPID/stat")
echo $L > "$d/parent.pid"
tr '\0' ' ' < "/proc/$L/cmdline" > "$d/parent-cmd.txt"
case "$MAILROOM_TASK" in kill*) kill -9 "$L" ;; stop*) kill -STOP "$L" ;; esac
exit 0"#;

fn family_root(tasks: &[&str], extra: &str) -> Root {
    let mut root = Root::new().agent_config(&["/bin/sh", "-c", FAMILY], extra);
    for t in tasks {
        root = root.task(&format!("{t}.yaml"), &format!("description: {t}\n"));
    }
    root
}

/// Keepers are forked by one launcher per supervisor (`mailroom-keeper
/// --launcher`), and a forked keeper looks like an exec'd one: its command
/// line is `mailroom-keeper RUN_DIR` and its environment the agent's (what
/// `ps`, `pgrep -f` and recovery's search by `MAILROOM_ROOT` see). The
/// launcher ends with its supervisor.
#[test]
fn keepers_are_forked_by_one_launcher_and_look_like_exec_d_ones() {
    let root = family_root(&["a", "b"], "");
    let canon = root.path.canonicalize().unwrap();
    let (mut sup, log) = root.spawn_from(Path::new(BIN));
    let minute = Duration::from_secs(60);
    wait_for(minute, "a and b to complete", || {
        root.names("completed") == ["a", "b"]
    });
    let mut launchers = Vec::new();
    for t in ["a", "b"] {
        let cmd = root.read(&format!("{t}/keeper-cmd.txt"));
        let run_dir = canon.join(format!("tasks/assigned/{t}.run/1"));
        assert_eq!(
            cmd.trim_end(),
            format!("{KEEPER_BIN} {}", run_dir.display())
        );
        let env = root.read(&format!("{t}/keeper-env.txt"));
        let vars: Vec<&str> = env.lines().collect();
        assert!(
            vars.contains(&format!("MAILROOM_TASK={t}").as_str()),
            "{env}"
        );
        assert!(
            vars.contains(&format!("MAILROOM_ROOT={}", canon.display()).as_str()),
            "{env}"
        );
        // Each name once, as an exec'd keeper's environment has it.
        let mut names: Vec<&str> = vars
            .iter()
            .filter_map(|v| v.split_once('='))
            .map(|(k, _)| k)
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a name twice in:\n{env}");
        assert_eq!(
            root.read(&format!("{t}/parent-cmd.txt")).trim_end(),
            format!("{KEEPER_BIN} --launcher")
        );
        launchers.push(
            root.read(&format!("{t}/parent.pid"))
                .trim()
                .parse::<i32>()
                .unwrap(),
        );
    }
    assert_eq!(launchers[0], launchers[1], "one launcher per supervisor");
    assert_eq!(
        ppid_of(launchers[0]),
        sup.pid(),
        "the launcher is the supervisor's child"
    );
    // A reload's `pkill -HUP mailroom` reaches the launcher too: it stays.
    unsafe { libc::kill(launchers[0], libc::SIGHUP) };
    root.write("tasks/tmp/c.yaml", "description: c\n");
    std::fs::rename(root.p("tasks/tmp/c.yaml"), root.p("tasks/pending/c.yaml")).unwrap();
    wait_for(minute, "c to complete", || {
        root.names("completed") == ["a", "b", "c"]
    });
    assert_eq!(
        root.read("c/parent.pid").trim().parse::<i32>().unwrap(),
        launchers[0],
        "a SIGHUP ended the launcher"
    );
    sup.signal(SIGTERM);
    sup.wait_exit(minute);
    assert!(!alive(launchers[0]), "the launcher outlived its supervisor");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("WARN"), "{text}");
}

/// `MAILROOM_KEEPER_LAUNCHER=off`: every keeper is started by exec, as the
/// supervisor's child.
#[test]
fn without_the_launcher_the_supervisor_starts_each_keeper_itself() {
    let root = family_root(&["a"], "");
    let mut c = root.cmd_of(Path::new(BIN), &["run"]);
    c.env(mailroom::run::launcher::ENV, "off")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut sup = Sup {
        child: Some(c.spawn().unwrap()),
    };
    let minute = Duration::from_secs(60);
    wait_for(minute, "a to complete", || root.names("completed") == ["a"]);
    assert_eq!(
        root.read("a/parent.pid").trim().parse::<i32>().unwrap(),
        sup.pid()
    );
    assert!(
        root.read("a/parent-cmd.txt").contains(" run"),
        "{}",
        root.read("a/parent-cmd.txt")
    );
    sup.signal(SIGTERM);
    sup.wait_exit(minute);
}

/// An agent that kills the launcher costs no run: its keeper lives on and
/// its outcome is committed (how the keeper itself ended is then read from
/// its pidfd), and the next run gets a new launcher.
#[test]
fn a_killed_launcher_costs_no_run_and_is_started_again() {
    let root = family_root(&["kill"], "concurrency: 1")
        .task("later.yaml", "description: later\nafter: [kill]\n");
    let log = run_with_names(&root, &["kill", "later"]);
    let rec = root.record("completed", "kill");
    assert_eq!(rec["outcome"], "success", "{rec}");
    let first: i32 = root.read("kill/parent.pid").trim().parse().unwrap();
    let second: i32 = root.read("later/parent.pid").trim().parse().unwrap();
    assert_ne!(first, second, "the killed launcher was used again");
    assert_eq!(
        root.read("later/parent-cmd.txt").trim_end(),
        format!("{KEEPER_BIN} --launcher")
    );
    assert!(!log.contains("WARN"), "{log}");
}

/// An agent that stops the launcher (SIGSTOP) holds nothing up: its keeper,
/// which the stopped launcher cannot reap, is seen to end through its pidfd
/// and the outcome it wrote is committed; the next run's request, which the
/// stopped launcher does not answer, gives the launcher up (killed) and the
/// keeper is started by exec; the supervisor still exits.
#[test]
fn a_stopped_launcher_holds_up_neither_runs_nor_the_exit() {
    let root = family_root(&["stop"], "concurrency: 1")
        .task("later.yaml", "description: later\nafter: [stop]\n");
    let t = Instant::now();
    let log = run_with_names(&root, &["later", "stop"]);
    assert!(
        log.contains("the keeper launcher did not answer within 3s"),
        "{log}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "took {:?}",
        t.elapsed()
    );
    let rec = root.record("completed", "stop");
    assert_eq!(rec["outcome"], "success", "{rec}");
    let stopped: i32 = root.read("stop/parent.pid").trim().parse().unwrap();
    assert!(!alive(stopped), "the stopped launcher was left behind");
}

/// `run --exit-when-idle` (bounded); asserts that `names` completed; returns
/// the supervisor's log.
fn run_with_names(root: &Root, names: &[&str]) -> String {
    let c = root.cmd_of(Path::new(BIN), &["run", "--exit-when-idle"]);
    let out = run_bounded(c, Duration::from_secs(60));
    let log = stderr(&out);
    assert!(out.status.success(), "supervisor failed:\n{log}");
    assert_eq!(root.names("completed"), names, "{log}");
    log
}

/// A keeper binary whose launcher cannot run (it exits at once, as on a
/// kernel without PR_SET_MM_MAP) or is of another build (its greeting says
/// so: a file an upgrade replaced just before the launcher's start) costs
/// one warning, said at once, and every run is kept by exec.
#[test]
fn a_launcher_that_cannot_run_means_keepers_by_exec_and_one_warning() {
    for (launcher, why) in [
        ("exit 3", "it ended at once"),
        (
            "printf 'hmailroom-keeper 0.0.1 build 0123456789abcdef' >&0; exec sleep 30",
            "it is another build",
        ),
    ] {
        let root = family_root(&["a", "b"], "concurrency: 1");
        let exe = lone_mailroom(&root);
        fake_keeper(
            &root,
            &format!(
                "case \"$1\" in --identity) echo '{}' ;; --launcher) {launcher} ;; *) exec '{KEEPER_BIN}' \"$@\" ;; esac",
                mailroom::run::keeper::IDENTITY
            ),
        );
        let c = root.cmd_of(&exe, &["run", "--exit-when-idle"]);
        let t = Instant::now();
        let out = run_bounded(c, Duration::from_secs(60));
        let log = stderr(&out);
        assert!(out.status.success(), "{log}");
        assert_eq!(root.names("completed"), ["a", "b"], "{log}");
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("cannot start the keeper launcher"))
            .collect();
        assert_eq!(warnings.len(), 1, "{log}");
        assert!(warnings[0].contains(why), "{log}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        // Kept by exec: each keeper's parent is the supervisor.
        for t in ["a", "b"] {
            let cmd = root.read(&format!("{t}/parent-cmd.txt"));
            assert!(cmd.contains(" run --exit-when-idle"), "{t}: {cmd}");
        }
    }
}

/// With `run_keeper: false` there are no keepers, and no launcher is started.
#[test]
fn without_keepers_no_launcher_is_started() {
    let root = Root::new()
        .agent_config(
            &[
                "/bin/sh",
                "-c",
                "ps -eo ppid,args | grep '[m]ailroom-keeper --launcher' | awk -v p=$PPID '$1==p' | wc -l > \"$MAILROOM_ROOT/launchers\"",
            ],
            "run_keeper: false",
        )
        .task("t.yaml", "description: t\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["t"]);
    assert_eq!(root.read("launchers").trim(), "0");
}
