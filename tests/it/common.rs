//! Test harness: a fresh temporary root, a builder for config and tasks, and
//! helpers that run the real `mailroom` binary and poll for conditions against
//! a deadline (never a fixed sleep).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailroom");

/// Absolute path of a fake agent under tests/agents/.
pub fn agent(name: &str) -> String {
    format!("{}/tests/agents/{name}", env!("CARGO_MANIFEST_DIR"))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A temporary mailroom root, removed on drop.
pub struct Root {
    pub path: PathBuf,
}

impl Root {
    pub fn new() -> Root {
        let path = std::env::temp_dir().join(format!(
            "mailroom-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        for d in ["tmp", "pending", "assigned", "completed", "failed"] {
            fs::create_dir_all(path.join("tasks").join(d)).unwrap();
        }
        fs::create_dir_all(path.join("context/agent_outputs")).unwrap();
        Root { path }
    }

    /// Writes mailroom.yaml.
    pub fn config(self, yaml: &str) -> Root {
        fs::write(self.path.join("mailroom.yaml"), yaml).unwrap();
        self
    }

    /// A config with one agent `a` running `cmd` (argv as YAML flow list items).
    pub fn agent_config(self, cmd: &[&str], extra: &str) -> Root {
        let argv: Vec<String> = cmd.iter().map(|s| format!("{s:?}")).collect();
        let y = format!(
            "retry_delay: 50ms\nsettle: 300ms\nrescan_interval: 1s\n{extra}\nagents:\n  a:\n    command: [{}]\n    grace: 1s\n    prompt_template: \"{{description}}\"\n",
            argv.join(", ")
        );
        self.config(&y)
    }

    /// Drops a task file straight into tasks/pending/.
    pub fn task(self, file: &str, content: &str) -> Root {
        self.write(&format!("tasks/pending/{file}"), content);
        self
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(p, content).unwrap();
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.p(rel)).is_ok()
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.p(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    /// The result record of a finished task, as JSON.
    pub fn record(&self, state: &str, name: &str) -> serde_json::Value {
        let rel = format!("tasks/{state}/{name}.result.json");
        match fs::read_to_string(self.p(&rel)) {
            Ok(t) => serde_json::from_str(&t).unwrap(),
            // Say where the task is instead, and why: a failure under load
            // is otherwise hard to tell from a wrong outcome.
            Err(e) => {
                let elsewhere: Vec<String> = ["pending", "assigned", "completed", "failed"]
                    .iter()
                    .filter(|s| self.names(s).iter().any(|n| n == name))
                    .map(|s| {
                        let r =
                            fs::read_to_string(self.p(&format!("tasks/{s}/{name}.result.json")))
                                .unwrap_or_default();
                        format!("{s}/ {r}")
                    })
                    .collect();
                panic!("reading {rel}: {e}; the task is in: {elsewhere:?}")
            }
        }
    }

    /// Task files (names without extension) in a state directory, sorted.
    pub fn names(&self, state: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.p(&format!("tasks/{state}")))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".yaml")
                    .or_else(|| n.strip_suffix(".yml"))
                    .or_else(|| n.strip_suffix(".md"))
                    .filter(|_| !n.starts_with('.'))
                    .map(str::to_owned)
            })
            .collect();
        v.sort();
        v
    }

    /// Every entry in a directory (for checking that nothing is left behind).
    pub fn entries(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.p(rel))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The pid a fake agent wrote into `rel` (`echo $$ > file`), waiting
    /// until the line is whole: the shell creates the file before it writes.
    pub fn pid(&self, rel: &str) -> i32 {
        let mut pid = 0;
        wait_for(Duration::from_secs(60), &format!("a pid in {rel}"), || {
            let text = fs::read_to_string(self.p(rel)).unwrap_or_default();
            match text.strip_suffix('\n').map(str::parse) {
                Some(Ok(p)) => {
                    pid = p;
                    true
                }
                _ => false,
            }
        });
        pid
    }

    /// The logs of the supervisors this root spawned (`sup-*` files), all in one.
    pub fn sup_logs(&self) -> String {
        self.entries(".")
            .iter()
            .filter(|e| e.starts_with("sup-"))
            .map(|e| self.read(e))
            .collect()
    }

    /// Temp files (`*.tmp`) left anywhere the protocol writes, as `dir/name`.
    pub fn temp_files(&self) -> Vec<String> {
        [
            "tasks/tmp",
            "tasks/pending",
            "tasks/assigned",
            "tasks/completed",
            "tasks/failed",
            "context",
            "context/agent_outputs",
        ]
        .iter()
        .flat_map(|d| {
            self.entries(d)
                .into_iter()
                .filter(|e| e.ends_with(".tmp"))
                .map(move |e| format!("{d}/{e}"))
        })
        .collect()
    }

    /// `mailroom --root R <args>`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_of(Path::new(BIN), args)
    }

    /// `exe --root R <args>`: another copy of mailroom (installed elsewhere,
    /// beside another keeper).
    pub fn cmd_of(&self, exe: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(exe);
        c.arg("--root").arg(&self.path).args(args);
        c.env_remove("MAILROOM_ROOT").env_remove("MAILROOM_TASK");
        c.env_remove("MAILROOM_KEEPER");
        c.env("RUST_LOG", "debug");
        c
    }

    /// Runs a command to completion (bounded) and returns its output.
    pub fn mailroom(&self, args: &[&str]) -> Output {
        run_bounded(self.cmd(args), Duration::from_secs(60))
    }

    /// `run --exit-when-idle`, asserting it exits successfully within 60 s.
    pub fn run_until_idle(&self) -> Output {
        self.run_until_idle_within(Duration::from_secs(60))
    }

    /// `run --exit-when-idle`, asserting it exits successfully within `limit`.
    pub fn run_until_idle_within(&self, limit: Duration) -> Output {
        let out = run_bounded(self.cmd(&["run", "--exit-when-idle"]), limit);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let _ = fs::write(self.p(&format!("run-{n}.log")), &out.stderr);
        assert!(
            out.status.success(),
            "supervisor failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts a supervisor in the background; killed (and awaited) on drop.
    pub fn spawn(&self) -> Sup {
        self.spawn_with(&[])
    }

    pub fn spawn_with(&self, envs: &[(&str, &str)]) -> Sup {
        let mut c = self.cmd(&["run"]);
        c.envs(envs.iter().copied());
        self.spawn_cmd(c).0
    }

    /// Starts `exe` as a supervisor in the background, like [`Root::spawn`];
    /// returns it with the path of its log.
    pub fn spawn_from(&self, exe: &Path) -> (Sup, PathBuf) {
        self.spawn_cmd(self.cmd_of(exe, &["run"]))
    }

    pub fn spawn_cmd(&self, mut c: Command) -> (Sup, PathBuf) {
        c.stdin(Stdio::null()).stdout(Stdio::null());
        let log = self.p(&format!("sup-{}.log", SEQ.fetch_add(1, Ordering::Relaxed)));
        c.stderr(fs::File::create(&log).unwrap());
        let sup = Sup {
            child: Some(c.spawn().unwrap()),
        };
        (sup, log)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // Keepers outlive their supervisor by design: stop every process
        // that still runs for this tree (keepers and agents carry its
        // MAILROOM_ROOT), or a failed test leaves its runs behind.
        stop_runs_of(&self.path);
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        } else {
            eprintln!("test root kept for inspection: {}", self.path.display());
        }
    }
}

/// A background supervisor process.
pub struct Sup {
    pub child: Option<Child>,
}

impl Sup {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc_kill(self.pid(), sig);
        }
    }
    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().unwrap();
        let until = Instant::now() + within;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < until,
                "supervisor did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        self.kill9();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
    fn getpgid(pid: i32) -> i32;
}

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;
pub const SIGHUP: i32 = 1;

/// The parent pid of `pid` (field 4 of `/proc/<pid>/stat`), 0 if unknown.
pub fn ppid_of(pid: i32) -> i32 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit_once(") ")
        .and_then(|(_, r)| r.split(' ').nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// For a test that needs root, a tool or a capability: `true` when `have`.
/// Otherwise the test fails, saying what is missing, unless
/// `MAILROOM_TEST_SKIP_MISSING=1` is set: then it prints
/// `SKIPPED: <test>: <what>` to stderr and returns `false`, and the caller
/// returns. Never a silent pass.
pub fn require(have: bool, what: &str) -> bool {
    if have {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var_os("MAILROOM_TEST_SKIP_MISSING").is_some_and(|v| v == "1") {
        // Straight to the descriptor: the harness hides what a passing test
        // prints through `eprintln!`.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {what}");
        return false;
    }
    panic!(
        "{test} cannot run: {what}. CI provides it; to skip such tests visibly instead, \
         set MAILROOM_TEST_SKIP_MISSING=1"
    );
}

/// [`require`] for root: mounting, giving files to other users.
pub fn require_root(why: &str) -> bool {
    require(unsafe { geteuid() } == 0, &format!("it needs root ({why})"))
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `within`.
pub fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command, killing it if it outlives `limit`.
pub fn run_bounded(mut c: Command, limit: Duration) -> Output {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wait_bounded(c.spawn().unwrap(), limit)
}

/// Waits for a started child (its output piped) and collects its output;
/// one still running after `limit` is killed, so that a hang fails the test.
pub fn wait_bounded(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let guard = std::thread::spawn(move || {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if d2.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe {
            libc_kill(pid, SIGKILL);
        }
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::Relaxed);
    let _ = guard.join();
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts that the command failed and said `text` on stderr.
pub fn fails_saying(o: &Output, text: &str) {
    assert!(!o.status.success(), "it succeeded: {}", stdout(o));
    assert!(stderr(o).contains(text), "{}", stderr(o));
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small deterministic generator (xorshift) for fixed-seed randomised tests.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

pub fn _unused(_: &Path) {}

/// Every process whose environment names `root` (raw or canonical path) as
/// its MAILROOM_ROOT: run keepers and agents.
pub fn processes_of(root: &Path) -> Vec<i32> {
    let mut wants = vec![format!("MAILROOM_ROOT={}", root.display())];
    if let Ok(c) = root.canonicalize() {
        wants.push(format!("MAILROOM_ROOT={}", c.display()));
    }
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|v| wants.iter().any(|w| v == w.as_bytes()))
            })
        })
        .collect()
}

/// SIGKILL to the process group of every process of `root`
/// ([`processes_of`]), never to this test process's own group.
pub fn stop_runs_of(root: &Path) {
    let own_group = unsafe { getpgid(0) };
    for pid in processes_of(root) {
        let group = unsafe { getpgid(pid) };
        unsafe {
            if group > 1 && group != own_group {
                libc_kill(-group, 9);
            }
            libc_kill(pid, 9);
        }
    }
}

/// Holds `context/.lock` as a supervisor's merge (or an agent) would, until
/// dropped.
pub fn hold_context_lock(root: &Root) -> fs::File {
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(root.p("context/.lock"))
        .unwrap();
    lock.lock().unwrap();
    lock
}
