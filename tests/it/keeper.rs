//! Run keepers (protocol version 2): an agent outlives its supervisor, the next
//! supervisor adopts the run or commits the outcome its keeper wrote, and no
//! run is ever repeated while it could still finish.

use crate::common::*;
use crate::crash::{KillGroupOnDrop, agents_of};
use std::time::Duration;

/// An agent that logs its start (attempt and pid) and then waits for the file
/// `go` in the root before it answers, so a test decides when it ends.
const WAITER: &str = r#"log="$MAILROOM_ROOT/agent.log"
echo "start $MAILROOM_ATTEMPT $$" >> "$log"
readlink "/proc/$$/fd/0" > "$MAILROOM_ROOT/stdin.txt"
i=0
while [ ! -e "$MAILROOM_ROOT/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
echo "end $MAILROOM_ATTEMPT" >> "$log"
echo "[SUMMARY]answered by attempt $MAILROOM_ATTEMPT[/SUMMARY]""#;

fn waiter_root(extra: &str) -> Root {
    Root::new()
        .agent_config(&["/bin/sh", "-c", WAITER], extra)
        .task("o.yaml", "description: outlives its supervisor\n")
}

fn log(root: &Root) -> String {
    std::fs::read_to_string(root.p("agent.log")).unwrap_or_default()
}

/// Waits for attempt 1 to start and returns the agent's pid.
fn started(root: &Root) -> i32 {
    let mut pid = 0;
    wait_for(Duration::from_secs(60), "attempt 1 to start", || {
        pid = log(root)
            .lines()
            .find_map(|l| l.strip_prefix("start 1 ")?.parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    pid
}

/// The agent started once: no run was repeated.
fn assert_started_once(root: &Root) {
    let log = log(root);
    let starts = log.lines().filter(|l| l.starts_with("start")).count();
    assert_eq!(starts, 1, "the run was repeated:\n{log}");
}

fn assert_ran_once(root: &Root, state: &str) -> serde_json::Value {
    assert_started_once(root);
    let rec = root.record(state, "o");
    assert_eq!(rec["attempts"], 1, "{rec}");
    assert_eq!(rec["history"].as_array().unwrap().len(), 1, "{rec}");
    rec
}

/// Lets the run end (`go`), waits until it completes, and checks that it ran
/// once and succeeded; returns its record.
fn completes_once(root: &Root) -> serde_json::Value {
    root.write("go", "");
    wait_for(
        Duration::from_secs(30),
        "the adopted run to complete",
        || root.names("completed") == ["o"],
    );
    let rec = assert_ran_once(root, "completed");
    assert_eq!(rec["outcome"], "success", "{rec}");
    rec
}

/// Waits until a supervisor has said it adopts a run.
fn adopted(root: &Root, what: &str) {
    wait_for(Duration::from_secs(30), what, || {
        root.sup_logs()
            .contains("adopting a run whose supervisor died")
    });
}

/// Kills `sup` (SIGKILL) mid-run and starts the next supervisor, once it has
/// adopted the run.
fn adopted_after_killing(root: &Root, mut sup: Sup) -> Sup {
    sup.kill9();
    let next = root.spawn();
    adopted(root, "the new supervisor to adopt the run");
    next
}

/// Lets the run of attempt 2 end (`go`), waits until the task completes,
/// and checks that attempt 1 did not run on beside it.
fn completes_without_attempt_1(root: &Root) {
    root.write("go", "");
    wait_for(Duration::from_secs(30), "the task to complete", || {
        root.names("completed") == ["o"]
    });
    let log = log(root);
    assert!(
        !log.contains("end 1"),
        "attempt 1 ran on beside attempt 2:\n{log}"
    );
}

/// Lets the run end (`go`), waits until it is filed, and checks that it ran
/// once and was filed tampered for its removed or replaced lock file.
fn filed_tampered_for_its_lock(root: &Root, what: &str) {
    root.write("go", "");
    filed_once(root);
    assert_started_once(root);
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "tampered", "{what}: {rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("its lock file tasks/assigned/o.lock was removed"),
        "{what}: {err}"
    );
}

#[test]
fn the_agent_never_gets_the_lock() {
    let root = waiter_root("");
    root.write("go", "");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["o"]);
    assert_eq!(root.read("stdin.txt").trim(), "/dev/null");
    // The keeper's record of the run lands with the task.
    let out: serde_json::Value =
        serde_json::from_str(&root.read("tasks/completed/o.run/1/outcome.json")).unwrap();
    assert_eq!(out["end"]["exited"]["code"], 0, "{out}");
}

#[test]
fn a_run_whose_supervisor_was_killed_is_adopted_not_rerun() {
    let root = waiter_root("");
    let mut sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    // The keeper's parent: the supervisor's keeper launcher.
    let keeper = ppid_of(pid);
    let launcher = ppid_of(keeper);
    assert_eq!(ppid_of(launcher), sup.pid());
    sup.kill9();
    assert!(alive(pid), "the agent died with its supervisor");
    // The launcher ends with its supervisor; the keeper does not.
    wait_for(Duration::from_secs(10), "the launcher to end", || {
        !alive(launcher)
    });
    assert!(alive(keeper), "the keeper died with its launcher");
    let next = root.spawn();
    adopted(&root, "the new supervisor to adopt the run");
    assert!(alive(pid), "the adopting supervisor stopped the agent");
    // show names the run's supervisor (gone), the one that adopted it, and
    // its keeper (alive).
    let shown = stdout(&root.mailroom(&["show", "o"]));
    let adopter = format!("(gone; adopted by pid {}), keeper pid", next.pid());
    assert!(
        shown.contains("supervisor pid") && shown.contains(&adopter),
        "{shown}"
    );
    assert!(shown.contains("(alive), since"), "{shown}");
    // So does the dashboard's page of the task.
    let srv = crate::serve::Server::start(&root);
    let page = srv.json("/api/tasks/o");
    assert_eq!(page["run_holder"]["supervisor_alive"], false, "{page}");
    assert_eq!(page["run_holder"]["adopted_by"], next.pid(), "{page}");
    let html = srv.get("/tasks/o").body;
    assert!(
        html.contains(&format!("(gone; adopted by pid {})", next.pid())),
        "{html}"
    );
    let status = stdout(&root.mailroom(&["status"]));
    assert!(status.contains("is gone (last beat"), "{status}");
    // The adopted run counts as the adopter's.
    let line = status
        .lines()
        .find(|l| l.contains(&format!(":{} (mailroom", next.pid())))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains(", 1 running, last beat"), "{status}");
    let rec = completes_once(&root);
    assert_eq!(rec["summary"], "answered by attempt 1", "{rec}");
}

/// Two live supervisors find the run of a dead one: one adopts it, the
/// other says who has it and leaves it be.
#[test]
fn an_orphaned_run_is_adopted_by_one_supervisor_only() {
    let root = waiter_root("");
    let mut sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    sup.kill9();
    let (_b, _c) = (root.spawn(), root.spawn());
    wait_for(
        Duration::from_secs(30),
        "one supervisor to adopt the run and the other to leave it",
        || {
            let logs = root.sup_logs();
            logs.contains("adopting a run whose supervisor died")
                && logs.contains("to the supervisor (pid")
        },
    );
    let logs = root.sup_logs();
    assert_eq!(
        logs.matches("adopting a run whose supervisor died").count(),
        1,
        "{logs}"
    );
    completes_once(&root);
}

/// A supervisor that sees another of its tree die (kill -9) adopts that
/// one's run at once, not at its next rescan (ten minutes here): until then
/// the run would look as if it were running, and its dependants would wait.
#[test]
fn a_live_supervisor_adopts_a_dead_peers_run_at_once() {
    let root = Root::new()
        .config(&format!(
            "settle: 300ms\nrescan_interval: 10m\nagents:\n  a:\n    command: [\"/bin/sh\", \"-c\", {WAITER:?}]\n    grace: 1s\n    prompt_template: \"{{description}}\"\n"
        ))
        .task("o.yaml", "description: outlives its supervisor\n");
    let mut a = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    let _b = root.spawn();
    // B is ready once it has looked for peers (at its first heartbeat) and
    // made its first recovery pass, which found a's run alive.
    wait_for(Duration::from_secs(30), "b to be ready", || {
        root.sup_logs().matches("supervisor ready").count() == 2
    });
    a.kill9();
    adopted(&root, "the live supervisor to adopt the dead one's run");
    assert!(
        root.sup_logs()
            .contains("a supervisor of this tree ended; recovering what it left"),
        "{}",
        root.sup_logs()
    );
    completes_once(&root);
}

/// Tasks `p` and `q` (two slots of agent `a`, whose run waits for its own
/// `go-<task>`), a 10-minute rescan, and `extra` config.
fn two_waiting_tasks(extra: &str) -> Root {
    let waiter = r#"log="$MAILROOM_ROOT/agent.log"
echo "start $MAILROOM_TASK" >> "$log"
i=0
while [ ! -e "$MAILROOM_ROOT/go-$MAILROOM_TASK" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
echo "end $MAILROOM_TASK" >> "$log""#;
    Root::new()
        .config(&format!(
            "concurrency: 2\nsettle: 300ms\nrescan_interval: 10m\n{extra}agents:\n  a:\n    command: [\"/bin/sh\", \"-c\", {waiter:?}]\n    max_instances: 2\n    grace: 1s\n    prompt_template: \"{{description}}\"\n"
        ))
        .task("p.yaml", "description: one\n")
        .task("q.yaml", "description: two\n")
}

/// How many runs of [`two_waiting_tasks`] started.
fn starts(root: &Root) -> usize {
    log(root).lines().filter(|l| l.starts_with("start")).count()
}

/// A peer that starts, claims a task and dies between two heartbeats of a
/// live supervisor is still seen: the watcher names it when it writes its
/// first heartbeat, and its run is adopted at once, not at the next rescan
/// (ten minutes here). So also when a junk file in the registry brought on
/// a look just before (the peer's look is then put off, not dropped), and
/// after an operator removed `tasks/supervisors/` (its watch comes back).
#[test]
fn a_peer_that_dies_before_the_next_heartbeat_is_still_noticed() {
    for case in ["plain", "junk first", "registry removed"] {
        peer_dies_early(case);
    }
}

fn peer_dies_early(case: &str) {
    let root = two_waiting_tasks("");
    // a runs one task at most (concurrency and instances are the tree's).
    let _a = root.spawn_cmd(root.cmd(&["run", "--agents", "a:1"])).0;
    wait_for(Duration::from_secs(30), "a's run", || starts(&root) == 1);
    match case {
        "junk first" => root.write("tasks/supervisors/junk.4000000.json", "junk"),
        "registry removed" => {
            std::fs::remove_dir_all(root.p("tasks/supervisors")).unwrap();
            // a notices (its watch ended) and makes the directory again.
            wait_for(Duration::from_secs(30), "the registry to be back", || {
                root.exists("tasks/supervisors")
            });
        }
        _ => {}
    }
    let mut b = root.spawn();
    // Killed as soon as its run starts: well within a's 5 s between beats.
    wait_for(Duration::from_secs(30), "b's run", || starts(&root) == 2);
    b.kill9();
    adopted(&root, &format!("{case}: a to adopt b's run at once"));
    root.write("go-p", "");
    root.write("go-q", "");
    wait_for(Duration::from_secs(30), "both to complete", || {
        root.names("completed") == ["p", "q"]
    });
    assert_eq!(starts(&root), 2, "{case}: {}", log(&root));
}

/// A heartbeat file that names a live process which is no supervisor of the
/// tree (an agent can write the registry) is not believed: nothing watches
/// that process, and its end brings on no recovery pass.
#[test]
fn a_forged_heartbeat_is_not_watched() {
    let root = Root::new().agent_config(&["true"], "");
    let mut sleeper = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let pid = sleeper.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start: u64 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let host_file: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    root.write(
        &format!("tasks/supervisors/{host_file}.{pid}.json"),
        &serde_json::json!({
            "host": host, "pid": pid, "start": start, "version": "forged", "protocol": 3,
            "started_at": "2026-01-01T00:00:00Z", "last_beat": "2999-01-01T00:00:00Z",
            "running": 0, "pending": 0
        })
        .to_string(),
    );
    let _sup = root.spawn();
    let said = format!("names no live supervisor of this tree; not watched pid={pid}");
    wait_for(
        Duration::from_secs(30),
        "the forged file to be read",
        || root.sup_logs().contains(&said),
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let logs = root.sup_logs();
    assert!(
        !logs.contains("watching a supervisor of this tree"),
        "{logs}"
    );
}

/// A supervisor shutting down takes on no run of a peer that dies meanwhile:
/// its shutdown would wait for that run too. The next supervisor adopts it.
#[test]
fn a_supervisor_shutting_down_leaves_a_dead_peers_run_to_the_next() {
    let root = two_waiting_tasks("shutdown_grace: 1h\n");
    // a runs one task at most (concurrency and instances are the tree's).
    let mut a = root.spawn_cmd(root.cmd(&["run", "--agents", "a:1"])).0;
    wait_for(Duration::from_secs(30), "the first run", || {
        starts(&root) == 1
    });
    let mut b = root.spawn();
    wait_for(Duration::from_secs(30), "the second run", || {
        starts(&root) == 2
    });
    let runs_of = |pid: i32| -> String {
        ["p", "q"]
            .into_iter()
            .find(|t| {
                let st: serde_json::Value =
                    serde_json::from_str(&root.read(&format!("tasks/assigned/{t}.state.json")))
                        .unwrap();
                st["run"]["supervisor_pid"] == pid
            })
            .unwrap()
            .to_owned()
    };
    let (of_a, of_b) = (runs_of(a.pid()), runs_of(b.pid()));
    b.signal(SIGTERM);
    wait_for(Duration::from_secs(30), "b to begin its shutdown", || {
        root.sup_logs().contains("shutting down")
    });
    a.kill9();
    wait_for(Duration::from_secs(20), "b to notice a's end", || {
        root.sup_logs()
            .contains("a supervisor of this tree ended; recovering what it left")
    });
    // b's own run ends, and b with it: it did not take a's run on.
    root.write(&format!("go-{of_b}"), "");
    assert!(b.wait_exit(Duration::from_secs(30)).success());
    assert!(
        !root
            .sup_logs()
            .contains("adopting a run whose supervisor died"),
        "{}",
        root.sup_logs()
    );
    let _c = root.spawn();
    adopted(&root, "the next supervisor to adopt");
    root.write(&format!("go-{of_a}"), "");
    wait_for(Duration::from_secs(30), "both to complete", || {
        root.names("completed") == ["p", "q"]
    });
    assert_eq!(starts(&root), 2, "{}", log(&root));
}

#[test]
fn an_outcome_written_while_no_supervisor_ran_is_committed_as_it_is() {
    let root = waiter_root("");
    let mut sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    sup.kill9();
    root.write("go", "");
    wait_for(
        Duration::from_secs(30),
        "the keeper to record the outcome",
        || root.exists("tasks/assigned/o.run/1/outcome.json") && agents_of(&root).is_empty(),
    );
    let kept: serde_json::Value =
        serde_json::from_str(&root.read("tasks/assigned/o.run/1/outcome.json")).unwrap();
    // `status` says the run has ended and waits to be filed.
    let st = stdout(&root.mailroom(&["status"]));
    assert!(
        st.contains("finished: its keeper wrote the outcome, which a supervisor files"),
        "{st}"
    );
    let js: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
    assert_eq!(js["running_tasks"][0]["ended"], true, "{js}");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["o"]);
    let rec = assert_ran_once(&root, "completed");
    // Its times are the run's, as its keeper wrote them, not the commit's.
    assert_eq!(rec["finished_at"], kept["finished_at"], "{rec}\n{kept}");
    assert_eq!(
        rec["history"][0]["finished_at"], kept["finished_at"],
        "{rec}"
    );
}

#[test]
fn cancel_reaches_an_adopted_run() {
    let root = waiter_root("");
    let sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    let _sup = adopted_after_killing(&root, sup);
    let out = root.mailroom(&["cancel", "o"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        Duration::from_secs(30),
        "the cancelled run to be filed",
        || root.names("failed") == ["o"],
    );
    let rec = assert_ran_once(&root, "failed");
    assert_eq!(rec["outcome"], "cancelled", "{rec}");
    assert!(!alive(pid));
}

#[test]
fn a_shutdown_with_leave_running_hands_the_run_to_the_next_supervisor() {
    let root = waiter_root("on_shutdown: leave_running");
    let mut sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    // `mailroom stop` says what becomes of the running agent.
    let out = root.mailroom(&["stop", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("running agents carry on with their keepers"),
        "{}",
        stderr(&out)
    );
    let st = sup.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "{st:?}");
    assert!(alive(pid), "the agent was stopped despite leave_running");
    assert_eq!(root.names("completed"), Vec::<String>::new());
    let _sup = root.spawn();
    root.write("go", "");
    wait_for(
        Duration::from_secs(30),
        "the handed-over run to complete",
        || root.names("completed") == ["o"],
    );
    assert_ran_once(&root, "completed");
}

#[test]
fn a_daemon_the_agent_left_behind_is_stopped_before_the_commit_and_named() {
    // The agent starts a daemon in a session of its own (out of its process
    // group) and exits: as a subreaper the keeper still sees it, stops it and
    // only then lets the run end.
    let script = r#"setsid sh -c 'echo $$ > "$MAILROOM_ROOT/daemon.pid"; exec sleep 600' </dev/null >/dev/null 2>&1 &
i=0; while [ ! -s "$MAILROOM_ROOT/daemon.pid" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
echo started a daemon"#;
    let root = Root::new()
        .agent_config(&["/bin/sh", "-c", script], "")
        .task("d.yaml", "description: leaves a daemon\n");
    let out = root.run_until_idle();
    assert_eq!(root.names("completed"), ["d"], "{}", stderr(&out));
    let daemon: i32 = root.read("daemon.pid").trim().parse().unwrap();
    let _cleanup = KillGroupOnDrop(daemon);
    assert!(!alive(daemon), "the daemon outlived its run");
    let kept: serde_json::Value =
        serde_json::from_str(&root.read("tasks/completed/d.run/1/outcome.json")).unwrap();
    assert_eq!(kept["leftovers_stopped"], 1, "{kept}");
    assert!(agents_of(&root).is_empty());
    // The record says so (it did not: a plain success).
    let rec = root.record("completed", "d");
    assert!(
        rec["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w
                .as_str()
                .unwrap_or_default()
                .starts_with("the agent left 1 process(es) running when it ended"))),
        "{rec}"
    );
}

/// The keeper says what went wrong in `keeper.log`, and only then: a run
/// that goes well leaves no log, one whose keeper cannot read its spec
/// leaves the reason, and the supervisor's record points at it.
#[test]
fn the_keeper_writes_its_log_only_when_it_has_something_to_say() {
    let root = Root::new()
        .config("default_agent: a\nagents:\n  a:\n    command: [\"true\"]\n")
        .task("t.yaml", "description: x\n");
    root.run_until_idle();
    assert!(root.exists("tasks/completed/t.run/1/outcome.json"));
    assert!(
        !root.exists("tasks/completed/t.run/1/keeper.log"),
        "a run that went well left a keeper.log"
    );
    // A keeper started on a directory without its spec.
    let dir = root.p("bare.run");
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("keeper")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(dir.join("keeper.log")).expect("keeper.log");
    assert!(log.contains("cannot read spec.json"), "{log}");
    assert!(!dir.join("outcome.json").exists());
}

/// A run directory `dir` under `root` with a keeper spec that runs
/// `sleep 30` (and waits for one of `slot_paths` first, if any), and its
/// keeper started on it, the way a supervisor starts one. The guard kills
/// the keeper's session if the test fails.
fn start_keeper(
    root: &Root,
    dir: &str,
    slot_paths: &[std::path::PathBuf],
) -> (std::process::Child, std::path::PathBuf, KillGroupOnDrop) {
    let dir = root.p(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = serde_json::json!({
        "run_id": "r1", "argv": ["sleep", "30"], "workdir": root.path, "root": root.path,
        "stdout": dir.join("stdout.log"), "stderr": dir.join("stderr.log"), "output": null,
        "timeout_ms": 60000, "grace_ms": 1000, "max_output": 1048576, "durable": false,
        "slot_paths": slot_paths,
    });
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    let keeper = std::process::Command::new(BIN)
        .arg("keeper")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillGroupOnDrop(keeper.id() as i32);
    (keeper, dir, guard)
}

/// The `end` of the outcome a keeper wrote in `dir`.
fn kept_end(dir: &std::path::Path) -> serde_json::Value {
    let out: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("outcome.json")).unwrap()).unwrap();
    out["end"].clone()
}

/// A stop request that arrives while the keeper is still setting up is not
/// lost: it is blocked from the keeper's first instruction and read when the
/// agent runs, which is then stopped at once (SIGUSR2).
#[test]
fn a_stop_request_during_the_keepers_setup_is_kept_for_the_run() {
    let root = Root::new();
    // The keeper waits for a slot (none is free: the only slot file is held
    // here), so the signal surely arrives during its setup.
    let slot = root.p("slot.lock");
    let held = std::fs::File::create(&slot).unwrap();
    held.lock().unwrap();
    let (mut keeper, dir, _guard) = start_keeper(&root, "early.run", &[slot]);
    wait_for(
        Duration::from_secs(20),
        "the keeper to wait for a slot",
        || std::fs::read_to_string(dir.join("keeper.log")).is_ok_and(|l| l.contains("waiting")),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keeper.id() as i32),
        nix::sys::signal::Signal::SIGUSR2, // stop at once
    )
    .unwrap();
    drop(held);
    let started = std::time::Instant::now();
    let status = keeper.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the agent was not stopped"
    );
    let end = kept_end(&dir);
    assert!(end.get("stopped").is_some(), "{end}");
}

/// A stop request sent the instant a keeper starts (before it has blocked
/// the stop signals) must not kill it: `keeper::signal` waits until the
/// keeper blocks them, and the run ends cancelled, with its outcome written.
#[test]
fn a_cancel_sent_as_the_keeper_starts_ends_the_run_cancelled() {
    let root = Root::new();
    for i in 0..20 {
        let (mut keeper, dir, _guard) = start_keeper(&root, &format!("r{i}.run"), &[]);
        mailroom::run::keeper::signal(keeper.id(), mailroom::run::process::Stop::Cancel);
        let status = keeper.wait().unwrap();
        assert!(status.success(), "round {i}: the keeper died: {status:?}");
        let end = kept_end(&dir);
        assert!(end.get("cancelled").is_some(), "round {i}: {end}");
    }
}

/// [`WAITER`] that first does `$ACT` to its own task (see the cases) and
/// exits with `$CODE`.
const TAMPERER: &str = r#"log="$MAILROOM_ROOT/agent.log"
echo "start $MAILROOM_ATTEMPT $$" >> "$log"
a="$MAILROOM_ROOT/tasks/assigned/$MAILROOM_TASK"
case "$ACT" in
  delete) rm -f "$MAILROOM_TASK_FILE" ;;
  move-completed) mv "$MAILROOM_TASK_FILE" "$MAILROOM_ROOT/tasks/completed/" ;;
  rm-lock) rm -f "$a.lock" "$a.state.json" ;;
  garble) printf 'description: [broken\n' > "$MAILROOM_TASK_FILE" ;;
  edit-in-place) printf 'description: EDITED by the agent\n' 1<> "$MAILROOM_TASK_FILE" ;;
  to-pending) mv "$MAILROOM_TASK_FILE" "$MAILROOM_ROOT/tasks/pending/" ;;
  rm-run-dir) rm -rf "$a.run" ;;
  rm-state) rm -f "$a.state.json" ;;
  rm-lock-only) rm -f "$a.lock" ;;
  hold-adopter) exec 9>"$MAILROOM_RUN_DIR/adopter.lock"; flock 9 ;;
  replace-lock-later)
    i=0
    while [ ! -e "$MAILROOM_ROOT/rmlock" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
    rm -f "$a.lock"
    exec 8>"$a.lock"
    flock 8
    touch "$MAILROOM_ROOT/lock-removed" ;;
  rm-lock-later)
    i=0
    while [ ! -e "$MAILROOM_ROOT/rmlock" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
    rm -f "$a.lock"
    touch "$MAILROOM_ROOT/lock-removed" ;;
  rm-lock-to-pending)
    rm -f "$a.lock"
    mv "$MAILROOM_TASK_FILE" "$MAILROOM_ROOT/tasks/pending/" ;;
esac
i=0
while [ ! -e "$MAILROOM_ROOT/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
case "$ACT" in
  rewrite-kill)
    rm -f "$MAILROOM_TASK_FILE"
    printf 'description: INJECTED by the agent\n' > "$MAILROOM_TASK_FILE"
    kill -KILL "$PPID" ;;
  term-keeper) kill -TERM "$PPID"; sleep 30 ;;
  rm-lock-at-end) rm -f "$a.lock" ;;
esac
echo "end $MAILROOM_ATTEMPT" >> "$log"
exit "${CODE:-0}""#;

/// Starts a supervisor, waits for attempt 1's agent, and kills the
/// supervisor with SIGKILL mid-run; the guard stops the agent's group.
fn killed_mid_run(root: &Root) -> KillGroupOnDrop {
    let mut sup = root.spawn();
    let guard = KillGroupOnDrop(started(root));
    sup.kill9();
    guard
}

/// Lets the run of a killed supervisor end (`go`) and waits until its keeper
/// has recorded the outcome and no agent is left.
fn end_unwatched(root: &Root) {
    root.write("go", "");
    wait_for(Duration::from_secs(30), "the unwatched run to end", || {
        root.exists("tasks/assigned/o.run/1/outcome.json") && agents_of(root).is_empty()
    });
}

/// Starts the next supervisor, lets the run end (`go`) and waits until the
/// task is filed.
fn restarted_and_filed(root: &Root) -> Sup {
    let sup = root.spawn();
    root.write("go", "");
    filed_once(root);
    sup
}

/// Waits until the task is in `completed/` or `failed/`.
fn filed_once(root: &Root) {
    wait_for(Duration::from_secs(30), "the task to be filed", || {
        root.names("completed").len() + root.names("failed").len() == 1
    });
}

fn tamperer_root(act: &str, code: u8) -> Root {
    Root::new()
        .config(&format!(
            "rescan_interval: 1s\nsettle: 200ms\nretry_delay: 50ms\nagents:\n  a:\n    \
             command: [\"/bin/sh\", \"-c\", {TAMPERER:?}]\n    grace: 1s\n    \
             env: {{ACT: {act}, CODE: \"{code}\"}}\n"
        ))
        .task("o.yaml", "description: tampers with its task\n")
}

/// The keeper of attempt 1, from its keeper.json.
fn keeper_pid(root: &Root) -> i32 {
    let mut pid = 0;
    wait_for(Duration::from_secs(30), "keeper.json", || {
        pid = std::fs::read_to_string(root.p("tasks/assigned/o.run/1/keeper.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["pid"].as_i64())
            .unwrap_or(0) as i32;
        pid > 0
    });
    pid
}

#[test]
fn a_task_file_deleted_while_no_supervisor_watched_is_put_back_and_filed_tampered() {
    // The agent deletes its task file, its supervisor is killed, the run
    // ends unwatched: the next supervisor must not lose the task (nor its
    // run directory), but put it back from the link to the claimed file.
    let root = tamperer_root("delete", 0);
    let _cleanup = killed_mid_run(&root);
    end_unwatched(&root);
    root.run_until_idle();
    assert_eq!(root.names("failed"), ["o"]);
    assert!(root.names("completed").is_empty());
    assert_eq!(
        root.read("tasks/failed/o.yaml"),
        "description: tampers with its task\n"
    );
    let rec = assert_ran_once(&root, "failed");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("deleted") && err.contains("no supervisor saw end"),
        "{err}"
    );
    assert!(root.exists("tasks/failed/o.run/1/outcome.json"));
    assert!(root.entries("tasks/assigned").is_empty());
}

#[test]
fn a_failed_run_whose_agent_moved_its_task_to_completed_unwatched_is_not_completed() {
    let root = tamperer_root("move-completed", 1);
    let _cleanup = killed_mid_run(&root);
    // The next supervisor runs while the keeper still does.
    let _sup = root.spawn();
    root.write("go", "");
    wait_for(Duration::from_secs(30), "the task to be filed", || {
        root.names("failed") == ["o"]
    });
    assert!(
        root.names("completed").is_empty(),
        "{:?}",
        root.names("completed")
    );
    let rec = assert_ran_once(&root, "failed");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("tasks/completed/o.yaml"), "{err}");
    assert!(err.contains("exit"), "{err}");
}

#[test]
fn an_agent_whose_supervisor_and_keeper_died_is_stopped_before_the_task_runs_again() {
    // A rescan only every 10 minutes: the task must run again once its
    // orphaned agent is gone (after its 1 s grace), not at the next rescan.
    let root = waiter_root("");
    let cfg = root.read("mailroom.yaml");
    root.write(
        "mailroom.yaml",
        &cfg.replace("rescan_interval: 1s", "rescan_interval: 10m"),
    );
    let mut sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    let keeper = keeper_pid(&root);
    sup.kill9();
    unsafe {
        libc::kill(keeper, libc::SIGKILL);
    }
    wait_for(Duration::from_secs(10), "the keeper to die", || {
        !alive(keeper)
    });
    assert!(alive(pid), "the agent died with its keeper");
    let _sup = root.spawn();
    wait_for(
        Duration::from_secs(30),
        "the orphaned agent to be stopped",
        || !alive(pid),
    );
    wait_for(Duration::from_secs(30), "attempt 2 to start", || {
        log(&root).contains("start 2")
    });
    completes_without_attempt_1(&root);
    // Attempt 1's error says that both died.
    let rec = root.record("completed", "o");
    let e = rec["history"][0]["error"].as_str().unwrap_or_default();
    assert!(
        e.contains(&format!(
            "and the run's keeper (pid {keeper}) ended without an outcome"
        )),
        "{rec}"
    );
}

/// The keeper of an *adopted* run is killed: its agent lives on, and must be
/// stopped before the task runs again (never two attempts at once, never
/// more agents than the slots), and the record says what happened.
#[test]
fn an_adopted_run_whose_keeper_is_killed_is_stopped_before_the_task_runs_again() {
    let root = waiter_root("");
    let sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    let keeper = keeper_pid(&root);
    let _sup = adopted_after_killing(&root, sup);
    unsafe {
        libc::kill(keeper, libc::SIGKILL);
    }
    wait_for(Duration::from_secs(30), "attempt 2 to start", || {
        log(&root).contains("start 2")
    });
    assert!(!alive(pid), "attempt 2 started beside attempt 1");
    completes_without_attempt_1(&root);
    let rec = root.record("completed", "o");
    let first = &rec["history"][0];
    let err = first["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("without writing the outcome") && err.contains("was stopped"),
        "{rec}"
    );
    assert_ne!(first["outcome"], "interrupted", "{rec}");
    assert!(
        root.sup_logs().contains("without writing the outcome"),
        "the log is silent"
    );
}

/// An agent that removes its lock file or its state file under a live
/// supervisor: the run is filed once as tampered, the record says what went,
/// as when no supervisor saw the run end.
#[test]
fn a_run_that_removes_its_lock_or_state_file_is_tampered_under_a_live_supervisor() {
    for (act, want) in [
        (
            "rm-lock",
            "its lock file tasks/assigned/o.lock and its state file",
        ),
        (
            "rm-state",
            "its state file tasks/assigned/o.state.json was removed",
        ),
    ] {
        let root = tamperer_root(act, 0);
        root.write("go", "");
        root.run_until_idle_within(Duration::from_secs(60));
        assert_started_once(&root);
        let rec = root.record("failed", "o");
        assert_eq!(rec["outcome"], "tampered", "{act}: {rec}");
        let err = rec["error"].as_str().unwrap();
        assert!(err.contains(want), "{act}: {err}");
        assert!(root.entries("tasks/assigned").is_empty(), "{act}");
    }
}

/// The agent removes its lock file and its supervisor is killed: the next
/// supervisor finds the lock free beside a live keeper, leaves the run be,
/// and files it tampered once it ends, as its own supervisor would have.
#[test]
fn a_lock_file_removed_before_its_supervisor_died_still_makes_the_run_tampered() {
    let root = tamperer_root("rm-lock-only", 0);
    let _cleanup = killed_mid_run(&root);
    let _sup = root.spawn();
    wait_for(
        Duration::from_secs(30),
        "the next supervisor to look",
        || root.sup_logs().contains("though its lock was free"),
    );
    filed_tampered_for_its_lock(&root, "");
}

/// An agent that holds its run's adoption lock cannot keep its run from
/// being adopted (and so from cancels and shutdowns): only a supervisor of
/// the tree holding it makes another leave the run alone.
#[test]
fn an_agent_that_holds_the_adoption_lock_is_adopted_anyway() {
    let root = tamperer_root("hold-adopter", 0);
    let sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    let _sup = adopted_after_killing(&root, sup);
    assert!(
        root.sup_logs()
            .contains("held by no supervisor of this tree"),
        "{}",
        root.sup_logs()
    );
    root.write("tasks/control/cancel/o", "");
    filed_once(&root);
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "cancelled", "{rec}");
}

/// The agent of an adopted run removes its lock file (the adopter then takes
/// the name's lock while the keeper still runs: it must not take the run
/// for one whose keeper died and stop it), replaces it with one it holds,
/// or removes it just before it ends. The adopter waits for the keeper and
/// files the run tampered.
#[test]
fn an_adopted_run_whose_lock_file_is_removed_or_replaced_is_waited_for_and_tampered() {
    for act in ["rm-lock-later", "replace-lock-later", "rm-lock-at-end"] {
        let root = tamperer_root(act, 0);
        let sup = root.spawn();
        let pid = started(&root);
        let _cleanup = KillGroupOnDrop(pid);
        let _sup = adopted_after_killing(&root, sup);
        if act != "rm-lock-at-end" {
            root.write("rmlock", "");
            wait_for(Duration::from_secs(30), "the agent to act", || {
                root.exists("lock-removed")
            });
        }
        if act == "rm-lock-later" {
            // The adopter looks every 100 ms: give it the lock file to find.
            wait_for(
                Duration::from_secs(30),
                "the adopter to take the lock",
                || root.exists("tasks/assigned/o.lock"),
            );
            assert!(alive(pid), "the adopter stopped the agent of a live keeper");
        }
        filed_tampered_for_its_lock(&root, act);
    }
}

/// The agent removes its lock file, then its supervisor dies: the next one
/// finds the lock free beside a live keeper. It adopts the run, so that a
/// cancel reaches it.
#[test]
fn a_cancel_reaches_a_run_whose_agent_removed_its_lock_before_its_supervisor_died() {
    let root = tamperer_root("rm-lock-only", 0);
    let _cleanup = killed_mid_run(&root);
    let _sup = root.spawn();
    wait_for(Duration::from_secs(30), "the run to be adopted", || {
        root.sup_logs()
            .contains("adopting a run whose supervisor died")
    });
    root.write("tasks/control/cancel/o", "");
    // No `go`: only the cancel can end the run before the agent's minute.
    filed_once(&root);
    assert!(!log(&root).contains("end 1"), "the agent ran to its end");
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("cancelled"), "{err}");
}

#[test]
fn a_run_whose_lock_file_its_agent_removed_is_not_taken_by_another_supervisor() {
    // The agent removes its lock file and state file: a second supervisor
    // can lock the name anew, but the run's live keeper says it goes on.
    let root = tamperer_root("rm-lock", 0);
    let _a = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    let _b = root.spawn();
    wait_for(
        Duration::from_secs(30),
        "the second supervisor to look",
        || root.sup_logs().contains("still runs it"),
    );
    root.write("go", "");
    filed_once(&root);
    wait_for(Duration::from_secs(10), "the runs to end", || {
        agents_of(&root).is_empty()
    });
    assert_started_once(&root);
    assert_eq!(
        root.names("completed").len() + root.names("failed").len(),
        1,
        "filed twice"
    );
}

#[test]
fn a_kept_run_whose_task_file_no_longer_parses_is_still_committed() {
    // The agent rewrites its task file in place with YAML that does not
    // parse; its supervisor is killed. The next supervisor cannot read the
    // task, but must not leave the finished run in assigned/ for ever.
    let root = tamperer_root("garble", 0);
    let _cleanup = killed_mid_run(&root);
    let _sup = restarted_and_filed(&root);
    // The commit's last steps (state file, lock) follow the task file's move.
    wait_for(Duration::from_secs(10), "assigned/ to be empty", || {
        root.entries("tasks/assigned").is_empty()
    });
    assert_started_once(&root);
}

#[test]
fn status_names_the_agents_pid_not_its_keepers() {
    let root = waiter_root("");
    let _sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    let st: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
    assert_eq!(st["running_tasks"][0]["pid"], pid, "{st}");
    assert!(
        st["root"].as_str().is_some_and(|r| r.starts_with('/')),
        "the root as given, not absolute: {st}"
    );
    root.write("go", "");
    wait_for(Duration::from_secs(30), "the run to end", || {
        root.names("completed") == ["o"]
    });
}

#[test]
fn an_agent_that_replaces_its_task_file_and_kills_its_keeper_unwatched_never_runs_its_own_text() {
    // Supervisor gone; the agent writes its own task in its file's place and
    // kills its keeper. The next supervisor must not requeue the agent's
    // text as the task: the claimed file goes back, the run is tampered.
    let root = tamperer_root("rewrite-kill", 0);
    let _cleanup = killed_mid_run(&root);
    root.write("go", "");
    wait_for(Duration::from_secs(30), "the agent to end", || {
        agents_of(&root).is_empty()
    });
    root.run_until_idle();
    assert_eq!(root.names("failed"), ["o"]);
    assert_eq!(
        root.read("tasks/failed/o.yaml"),
        "description: tampers with its task\n"
    );
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("replaced by another file"),
        "{rec}"
    );
    assert_started_once(&root);
}

#[test]
fn a_task_file_edited_in_place_while_no_supervisor_watched_is_tampered() {
    let root = tamperer_root("edit-in-place", 0);
    let _cleanup = killed_mid_run(&root);
    let _sup = root.spawn();
    wait_for(
        Duration::from_secs(30),
        "the new supervisor to adopt the run",
        || {
            root.sup_logs()
                .contains("adopting a run whose supervisor died")
        },
    );
    root.write("go", "");
    filed_once(&root);
    assert_eq!(root.names("failed"), ["o"], "{:?}", root.names("completed"));
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    assert!(
        rec["error"].as_str().unwrap().contains("changed in place"),
        "{rec}"
    );
}

#[test]
fn a_task_file_replaced_between_retries_is_the_one_an_adopted_retry_runs_and_files() {
    // Attempt 1 fails; during its backoff someone submits a new version of
    // the file. Attempt 2 is adopted by a new supervisor after a crash: the
    // new version is the claimed one, not attempt 1's.
    let script = r#"log="$MAILROOM_ROOT/agent.log"
echo "start $MAILROOM_ATTEMPT $$" >> "$log"
[ "$MAILROOM_ATTEMPT" = 1 ] && exit 3
i=0
while [ ! -e "$MAILROOM_ROOT/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
echo "end $MAILROOM_ATTEMPT" >> "$log""#;
    let root = Root::new()
        .config(&format!(
            "rescan_interval: 1s\nsettle: 200ms\nretries: 2\nretry_delay: 3s\nagents:\n  a:\n    \
             command: [\"/bin/sh\", \"-c\", {script:?}]\n    grace: 1s\n"
        ))
        .task("o.yaml", "description: version one\n");
    let sup = root.spawn();
    wait_for(Duration::from_secs(30), "attempt 1 to fail", || {
        root.exists("tasks/pending/o.yaml") && root.exists("tasks/assigned/o.state.json")
    });
    // A new version, as an editor saves it: written beside, renamed over.
    root.write("tasks/tmp/o.yaml", "description: version two\n");
    std::fs::rename(root.p("tasks/tmp/o.yaml"), root.p("tasks/pending/o.yaml")).unwrap();
    let mut pid = 0;
    wait_for(Duration::from_secs(30), "attempt 2 to start", || {
        pid = log(&root)
            .lines()
            .find_map(|l| l.strip_prefix("start 2 ")?.parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    let _cleanup = KillGroupOnDrop(pid);
    let _sup = adopted_after_killing(&root, sup);
    root.write("go", "");
    filed_once(&root);
    assert_eq!(root.names("completed"), ["o"]);
    assert_eq!(
        root.read("tasks/completed/o.yaml"),
        "description: version two\n"
    );
    assert!(!root.exists("tasks/completed/o.run/task-file.replaced"));
}

#[test]
fn an_agent_that_stops_its_keeper_while_no_supervisor_watched_uses_an_attempt() {
    // The keeper records who sent the stop: not its supervisor, so the next
    // supervisor counts the run (as a live one would) instead of requeueing
    // it for free, which an agent could repeat across restarts forever.
    let root = tamperer_root("term-keeper", 0);
    let _cleanup = killed_mid_run(&root);
    end_unwatched(&root);
    let kept: serde_json::Value =
        serde_json::from_str(&root.read("tasks/assigned/o.run/1/outcome.json")).unwrap();
    assert!(kept["end"].get("stopped").is_some(), "{kept}");
    let agent = log(&root)
        .lines()
        .find_map(|l| l.strip_prefix("start 1 ")?.parse::<u64>().ok())
        .unwrap();
    assert_eq!(kept["stopped_by"], agent, "{kept}");
    root.run_until_idle_within(Duration::from_secs(60));
    assert_eq!(root.names("failed"), ["o"]);
    let rec = root.record("failed", "o");
    let starts = log(&root)
        .lines()
        .filter(|l| l.starts_with("start"))
        .count();
    assert_eq!(
        rec["attempts"], starts as u64,
        "an attempt went uncounted: {rec}"
    );
    let first = &rec["history"][0];
    assert_eq!(first["outcome"], "signal", "{rec}");
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains(&format!("by another process than mailroom (pid {agent})")),
        "{rec}"
    );
}

#[test]
fn a_task_file_its_agent_moved_back_to_pending_is_not_claimed_again_after_a_crash() {
    // The agent moves its task file into pending/ and its supervisor dies;
    // the next one finds it there once the keeper ends. The run is filed
    // (tampered), never run a second time, and its attempt is recorded.
    let root = tamperer_root("to-pending", 0);
    let _cleanup = killed_mid_run(&root);
    let _sup = restarted_and_filed(&root);
    wait_for(Duration::from_secs(10), "the run to end", || {
        agents_of(&root).is_empty()
    });
    let rec = assert_ran_once(&root, "failed");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("tasks/pending/o.yaml"),
        "{rec}"
    );
    assert!(
        root.names("pending").is_empty(),
        "{:?}",
        root.names("pending")
    );
}

#[test]
fn a_task_its_agent_unlocked_and_moved_to_pending_never_runs_twice_at_once() {
    // The agent removes its lock file and moves its task file into
    // pending/: the name locks anew, but the supervisor that runs it must
    // not claim it a second time beside the first run.
    let root = tamperer_root("rm-lock-to-pending", 0);
    let _sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    wait_for(
        Duration::from_secs(30),
        "the supervisor to hold it back",
        || {
            root.sup_logs()
                .contains("not claimed again: its run still goes on here")
        },
    );
    root.write("go", "");
    filed_once(&root);
    wait_for(Duration::from_secs(10), "the run to end", || {
        agents_of(&root).is_empty()
    });
    assert_started_once(&root);
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    assert_eq!(rec["attempts"], 1, "{rec}");
    assert!(
        root.names("pending").is_empty(),
        "{:?}",
        root.names("pending")
    );
}

#[test]
fn an_adopted_run_whose_keeper_is_stopped_still_times_out() {
    // Keeper SIGSTOPped, supervisor killed: the adopter continues the
    // keeper once the run is overdue, so that it enforces the timeout.
    let root = Root::new()
        .config(
            "rescan_interval: 1s\nsettle: 200ms\nretries: 0\nagents:\n  a:\n    \
             command: [\"/bin/sh\", \"-c\", \"echo start $MAILROOM_ATTEMPT $$ >> agent.log; sleep 60\"]\n    \
             timeout: 2s\n    grace: 1s\n",
        )
        .task("o.yaml", "description: overruns\n");
    let mut sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    let keeper = keeper_pid(&root);
    // SAFETY: kill(2) with a pid and a signal.
    assert_eq!(unsafe { libc::kill(keeper, libc::SIGSTOP) }, 0);
    sup.kill9();
    let _sup = root.spawn();
    wait_for(Duration::from_secs(30), "the run to be filed", || {
        root.names("failed") == ["o"]
    });
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "timeout", "{rec}");
    assert!(root.sup_logs().contains("continuing it"));
}

#[test]
fn a_pending_task_whose_state_names_a_run_with_no_copy_is_still_run() {
    // A state file naming an unfinished run (of an older version: no copy
    // of the claimed file) and the task file in pending/: nothing to check
    // it against, so it runs rather than wait for ever.
    let root = waiter_root("");
    root.write("go", "");
    std::fs::rename(root.p("tasks/pending/o.yaml"), root.p("o.yaml")).unwrap();
    root.write(
        "tasks/assigned/o.state.json",
        r#"{"version":2,"task":"o","attempts":1,"run":{"attempt":1,"agent":"a","host":"gone-host","supervisor_pid":999999999,"supervisor_start":1,"started_at":"2026-01-01T00:00:00.000Z","deadline":"2026-01-01T00:30:00.000Z","run_id":"r-old"}}"#,
    );
    std::fs::rename(root.p("o.yaml"), root.p("tasks/pending/o.yaml")).unwrap();
    let out = root.run_until_idle_within(Duration::from_secs(60));
    assert_eq!(root.names("completed"), ["o"], "{}", stderr(&out));
    assert!(
        stderr(&out).contains("there is no copy of its claimed file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_cancel_an_adopter_forwarded_stays_a_cancel_after_the_adopter_dies() {
    // S1 dies, S2 adopts the run and forwards a cancel, S2 dies before the
    // keeper ends: the keeper's stop came from S2, which S3 must take for a
    // supervisor's (S2 noted it in the run directory), not the agent's.
    let root = Root::new()
        .config(
            "rescan_interval: 1s\nsettle: 200ms\nretries: 1\nagents:\n  a:\n    \
             command: [\"/bin/sh\", \"-c\", \"echo start $MAILROOM_ATTEMPT $$ >> agent.log; trap '' TERM; sleep 30\"]\n    \
             grace: 3s\n",
        )
        .task("o.yaml", "description: cancelled while adopted\n");
    let mut s1 = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    s1.kill9();
    let mut s2 = root.spawn();
    wait_for(Duration::from_secs(30), "S2 to adopt the run", || {
        root.sup_logs()
            .contains("adopting a run whose supervisor died")
    });
    let _ = root.mailroom(&["cancel", "o", "--timeout", "100ms"]);
    wait_for(
        Duration::from_secs(30),
        "S2 to note its stop request",
        || root.exists("tasks/assigned/o.run/1/stop-requests"),
    );
    s2.kill9();
    wait_for(Duration::from_secs(30), "the keeper to end the run", || {
        root.exists("tasks/assigned/o.run/1/outcome.json") && agents_of(&root).is_empty()
    });
    let kept: serde_json::Value =
        serde_json::from_str(&root.read("tasks/assigned/o.run/1/outcome.json")).unwrap();
    assert!(kept["end"].get("cancelled").is_some(), "{kept}");
    root.run_until_idle_within(Duration::from_secs(60));
    assert_started_once(&root);
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "cancelled", "{rec}");
}

#[test]
fn a_run_directory_its_agent_removed_while_no_supervisor_watched_is_tampered_not_retried() {
    // The attempt's directory exists before the state names the run: gone,
    // its agent removed it, and the run is filed once as tampered rather
    // than taken for a crash and run again.
    let root = tamperer_root("rm-run-dir", 0);
    let _cleanup = killed_mid_run(&root);
    root.write("go", "");
    wait_for(Duration::from_secs(30), "the unwatched run to end", || {
        agents_of(&root).is_empty()
    });
    root.run_until_idle_within(Duration::from_secs(60));
    assert_started_once(&root);
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("its run directory tasks/assigned/o.run/1 was removed or moved"),
        "{rec}"
    );
}

#[test]
fn a_state_file_its_agent_deleted_while_no_supervisor_watched_is_rebuilt_not_rerun() {
    // Without its state file the run looked like a task that never ran: its
    // finished run ran again and its attempts started over. The run
    // directory's spec.json shows the run: the state is written back, and
    // the run is filed once, as tampered.
    let root = tamperer_root("rm-state", 0);
    let _cleanup = killed_mid_run(&root);
    end_unwatched(&root);
    assert!(!root.exists("tasks/assigned/o.state.json"));
    root.run_until_idle_within(Duration::from_secs(60));
    assert_started_once(&root);
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    assert_eq!(rec["attempts"], 1, "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("its state file tasks/assigned/o.state.json was deleted"),
        "{rec}"
    );
}

/// The same for a run directory of protocol 2 or older, whose attempt's
/// files are directly in `<name>.run/` (attempt 0): it was taken for the run
/// of another task, and the task ran again.
#[test]
fn a_lost_state_of_an_attempt_zero_run_is_rebuilt_not_rerun() {
    let root = tamperer_root("rm-state", 0);
    let _cleanup = killed_mid_run(&root);
    end_unwatched(&root);
    assert!(!root.exists("tasks/assigned/o.run/0"));
    // As an older supervisor laid the run out: its files in o.run/ itself.
    let run = root.p("tasks/assigned/o.run");
    for e in std::fs::read_dir(run.join("1")).unwrap().flatten() {
        std::fs::rename(e.path(), run.join(e.file_name())).unwrap();
    }
    std::fs::remove_dir(run.join("1")).unwrap();
    let spec = root.read("tasks/assigned/o.run/spec.json");
    let moved = spec.replace("o.run/1/", "o.run/");
    assert_ne!(spec, moved);
    root.write("tasks/assigned/o.run/spec.json", &moved);
    root.run_until_idle_within(Duration::from_secs(60));
    assert_started_once(&root);
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
}

/// `show` of a run without a keeper (`run_keeper: false`) says so, rather
/// than a keeper pid `null` on another host.
#[test]
fn show_of_a_run_without_a_keeper_says_no_keeper() {
    let root = waiter_root("run_keeper: false");
    let _sup = root.spawn();
    let pid = started(&root);
    let _cleanup = KillGroupOnDrop(pid);
    let shown = stdout(&root.mailroom(&["show", "o"]));
    assert!(shown.contains("(alive), no keeper, since"), "{shown}");
    assert!(!shown.contains("null"), "{shown}");
    root.write("go", "");
    wait_for(Duration::from_secs(30), "the run to complete", || {
        root.names("completed") == ["o"]
    });
}

/// The keeper reads its stop signals from a signalfd, so it blocks them; an
/// agent exec'd straight from it (no shell to reset the mask) inherited the
/// mask and never saw a SIGTERM: a timeout, cancel or shutdown could only
/// SIGKILL it after its grace. Agents start with no signal blocked.
#[test]
fn an_agent_starts_with_no_signal_blocked() {
    let root = Root::new()
        .config(
            "agents:\n  a:\n    command: [\"/bin/grep\", \"SigBlk\", \"/proc/self/status\", \"{task_file}\"]\n",
        )
        .task("o.yaml", "description: x\n");
    root.run_until_idle();
    let out = root.read("tasks/completed/o.run/1/stdout.log");
    assert!(
        out.contains("/proc/self/status:SigBlk:\t0000000000000000"),
        "{out}"
    );
}

/// An agent that leaves a child in its process group (one that ignores
/// SIGTERM) and exits; its keeper is killed while it stops that child. The
/// group has no leader any more, and must still be found and stopped
/// before the task runs again (it ran on beside attempt 2, for ever).
#[test]
fn a_leftover_whose_group_leader_exited_is_stopped_before_the_task_runs_again() {
    const LEAVER: &str = r#"log="$MAILROOM_ROOT/agent.log"
echo "start $MAILROOM_ATTEMPT $$" >> "$log"
if [ "$MAILROOM_ATTEMPT" = 1 ]; then
  sh -c 'trap "" TERM; echo $$ > "$MAILROOM_ROOT/left.pid"; while :; do sleep 0.1; done' &
  # Its SIGTERM is ignored before the agent exits, when the test says.
  while [ ! -e "$MAILROOM_ROOT/go" ]; do sleep 0.01; done
fi
echo "[SUMMARY]answered by attempt $MAILROOM_ATTEMPT[/SUMMARY]""#;
    let root = Root::new()
        .config(&format!(
            "retry_delay: 50ms\nrescan_interval: 1s\nagents:\n  a:\n    command: \
             [\"/bin/sh\", \"-c\", {LEAVER:?}]\n    grace: 3s\n"
        ))
        .task("o.yaml", "description: leaves a child behind\n");
    let _sup = root.spawn();
    let agent = started(&root);
    let _cleanup = KillGroupOnDrop(agent);
    let left = root.pid("left.pid");
    let keeper = keeper_pid(&root);
    // The keeper, which would stop the child once the agent has exited (a
    // SIGTERM it ignores, a SIGKILL 2 s later), is held still while the
    // agent exits, then killed: it never gets to.
    unsafe {
        libc::kill(keeper, libc::SIGSTOP);
    }
    root.write("go", "");
    wait_for(Duration::from_secs(30), "the agent to exit", || {
        !alive(agent)
    });
    unsafe {
        libc::kill(keeper, libc::SIGKILL);
    }
    assert!(alive(left), "the child died with the keeper");
    wait_for(Duration::from_secs(30), "attempt 2 to start", || {
        log(&root).contains("start 2")
    });
    assert!(
        !alive(left),
        "attempt 2 started while attempt 1's child still ran"
    );
    wait_for(Duration::from_secs(30), "the task to complete", || {
        root.names("completed") == ["o"]
    });
}

/// `logs -f` of a run whose supervisor was killed follows it while its
/// keeper runs it (past the 3 s that `wait` gives a supervisor), shows its
/// end, and then ends as `wait` does (69): nobody will file the task.
#[test]
fn logs_follow_a_kept_run_to_its_end_then_say_nobody_files_it() {
    let root = waiter_root("");
    let _cleanup = killed_mid_run(&root);
    let mut follower = root
        .cmd(&["logs", "-f", "o"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Still following after 4 s without a supervisor: the keeper runs.
    let since = std::time::Instant::now();
    wait_for(Duration::from_secs(30), "4 s of following", || {
        assert!(
            follower.try_wait().unwrap().is_none(),
            "logs -f ended while the keeper still ran the agent"
        );
        since.elapsed() >= Duration::from_secs(4)
    });
    root.write("go", "");
    let out = wait_bounded(follower, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("answered by attempt 1"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("no supervisor is running"),
        "{}",
        stderr(&out)
    );
}
