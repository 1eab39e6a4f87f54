//! The shipped examples stay valid: every agent preset under examples/presets/,
//! examples/mailroom-mvp.yaml and every task under examples/tasks/ pass the real
//! `mailroom validate`, and the editor helper examples/editor/mailroom-task.sh
//! submits into a tree made by `mailroom init`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use mailroom::parse::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_mailroom");

/// The CLIs with a preset, and the `kind` each must declare (it selects the
/// usage-limit patterns).
const PRESETS: &[(&str, &str)] = &[
    ("aider", "aider"),
    ("claude", "claude"),
    ("codex", "codex"),
    ("cursor-agent", "cursor-agent"),
    ("gemini", "gemini"),
];

/// The task examples the docs point to.
const TASKS: &[&str] = &[
    "after.yaml",
    "appendix.yaml",
    "follow_up.yaml",
    "full.yaml",
    "heavy.yaml",
    "minimal.yaml",
    "not_before.yaml",
    "requires.yaml",
    "task_001.yaml",
];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// An empty temporary directory, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn new() -> Temp {
        let p = std::env::temp_dir().join(format!(
            "mailroom-presets-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Temp(p)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `mailroom --root ROOT validate FILES...`, with no MAILROOM_* from the
/// environment of whoever runs the tests.
fn validate(root: &Path, files: &[PathBuf]) -> Output {
    Command::new(BIN)
        .arg("--root")
        .arg(root)
        .arg("validate")
        .args(files)
        .env_remove("MAILROOM_ROOT")
        .env_remove("MAILROOM_TASK")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_valid(root: &Path, file: &Path) {
    let o = validate(root, &[file.to_path_buf()]);
    assert!(o.status.success(), "{}: {}", file.display(), text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("ok: {}", file.display())),
        "{}",
        text(&o)
    );
}

/// A copy of `yaml` with `from` replaced by `to` must be refused, naming `expect`.
fn assert_broken_copy_fails(yaml: &str, from: &str, to: &str, expect: &str) {
    assert!(yaml.contains(from), "`{from}` not found in:\n{yaml}");
    let t = Temp::new();
    let cfg = t.0.join("mailroom.yaml");
    fs::write(&cfg, yaml.replacen(from, to, 1)).unwrap();
    let o = validate(&t.0, &[cfg]);
    assert!(!o.status.success(), "a broken copy passed: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(expect),
        "expected `{expect}`: {}",
        text(&o)
    );
}

#[test]
fn every_preset_is_a_valid_config_for_its_cli() {
    let dir = examples().join("presets");
    let mut found: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let wanted: Vec<&str> = PRESETS.iter().map(|(d, _)| *d).collect();
    assert_eq!(
        found,
        wanted,
        "one directory per CLI under {}",
        dir.display()
    );
    for (cli, kind) in PRESETS {
        let file = dir.join(cli).join("mailroom.yaml");
        // Named mailroom.yaml, so `validate` reads it as a config (a task parse
        // would refuse `agents:` anyway); its own directory is the root.
        assert_valid(&dir.join(cli), &file);
        let yaml = fs::read_to_string(&file).unwrap();
        let c = Config::parse(yaml.as_bytes(), "mailroom.yaml").unwrap();
        assert!(!c.default_agent.is_empty(), "{cli}: no default_agent");
        let a = &c.agents[&c.default_agent];
        assert_eq!(a.kind, *kind, "{cli}: kind");
        assert!(
            a.command.iter().any(|w| w.contains("{prompt}")),
            "{cli}: the prompt must be passed explicitly: {:?}",
            a.command
        );
        assert!(
            yaml.contains("https://"),
            "{cli}: cite the documentation of the flags"
        );
        assert!(
            prompt_is_not_an_option(&a.command),
            "{cli}: a prompt that starts with `-` could be read as an option: {:?}",
            a.command
        );
        // The comments describe what mailroom does now (issue #10): it reads the CLI's
        // output itself and agents get an allowlisted environment.
        for stale in [
            "does not extract a field from JSON",
            "passes the supervisor's environment through",
            "passes the supervisor's own environment through",
            "still exits 0 counts as a success",
        ] {
            assert!(!yaml.contains(stale), "{cli}: stale comment `{stale}`");
        }
        assert!(
            yaml.contains("allowlist"),
            "{cli}: say which environment the agent gets"
        );
        assert!(
            yaml.contains("Exit codes"),
            "{cli}: say what the exit codes mean"
        );
    }
}

/// The prompt word is glued to its option (`--prompt={prompt}`), or follows `--`, or the
/// prompt goes through a file: never a bare `{prompt}` a parser could take for a flag.
fn prompt_is_not_an_option(argv: &[String]) -> bool {
    argv.iter().enumerate().all(|(i, w)| {
        if !w.contains("{prompt}") {
            return true;
        }
        if w.starts_with('-') && w.contains('=') {
            return true;
        }
        w.starts_with("{prompt}") && argv[..i].iter().any(|x| x == "--")
    })
}

#[test]
fn presets_use_the_documented_non_interactive_flags() {
    let argv = |cli: &str| -> Vec<String> {
        let y = fs::read(examples().join("presets").join(cli).join("mailroom.yaml")).unwrap();
        let c = Config::parse(&y, "mailroom.yaml").unwrap();
        c.agents[&c.default_agent].command.clone()
    };
    let has = |v: &[String], words: &[&str]| v.windows(words.len()).any(|w| w == words);
    let claude = argv("claude");
    assert!(has(&claude, &["claude", "-p"]), "{claude:?}");
    assert!(has(&claude, &["--output-format", "json"]), "{claude:?}");
    assert!(
        has(&claude, &["--permission-mode", "acceptEdits"]),
        "{claude:?}"
    );
    assert!(has(&claude, &["--", "{prompt}"]), "{claude:?}");
    let codex = argv("codex");
    assert!(has(&codex, &["codex", "exec", "--json"]), "{codex:?}");
    assert!(has(&codex, &["--skip-git-repo-check"]), "{codex:?}");
    assert!(has(&codex, &["--sandbox", "workspace-write"]), "{codex:?}");
    assert!(has(&codex, &["-o", "{output_file}"]), "{codex:?}");
    assert!(has(&codex, &["--", "{prompt}"]), "{codex:?}");
    let gemini = argv("gemini");
    assert!(has(&gemini, &["--skip-trust"]), "{gemini:?}");
    assert!(has(&gemini, &["--output-format", "json"]), "{gemini:?}");
    assert!(has(&gemini, &["--prompt={prompt}"]), "{gemini:?}");
    let aider = argv("aider");
    assert!(has(&aider, &["--message={prompt}"]), "{aider:?}");
    assert!(has(&aider, &["--yes-always"]), "{aider:?}");
    assert!(has(&aider, &["--no-git"]), "{aider:?}");
    let cursor = argv("cursor-agent");
    assert!(has(&cursor, &["cursor-agent", "-p"]), "{cursor:?}");
    assert!(has(&cursor, &["--output-format", "json"]), "{cursor:?}");
    assert!(has(&cursor, &["--", "{prompt}"]), "{cursor:?}");
}

#[test]
fn validate_really_checks_a_preset_as_a_config() {
    // Proof that a passing preset was checked as a config: the same file with
    // one fault, under the name mailroom.yaml, is refused with the fault named.
    for (cli, _) in PRESETS {
        let yaml =
            fs::read_to_string(examples().join("presets").join(cli).join("mailroom.yaml")).unwrap();
        assert_broken_copy_fails(&yaml, "    kind:", "    knd:", "did you mean `kind`");
        assert_broken_copy_fails(&yaml, "    timeout: ", "    timeout: 5 #", "no unit");
        assert_broken_copy_fails(
            &yaml,
            "default_agent: ",
            "default_agent: nobody #",
            "nobody",
        );
    }
}

#[test]
fn mvp_config_is_valid_and_routes_heavy_work_to_codex() {
    let src = examples().join("mailroom-mvp.yaml");
    let yaml = fs::read_to_string(&src).unwrap();
    // `validate` reads a config only under the name mailroom.yaml.
    let t = Temp::new();
    let cfg = t.0.join("mailroom.yaml");
    fs::write(&cfg, &yaml).unwrap();
    assert_valid(&t.0, &cfg);
    assert_broken_copy_fails(&yaml, "fallback: [codex]", "fallback: [codx]", "codx");

    let c = Config::parse(yaml.as_bytes(), "mailroom.yaml").unwrap();
    assert_eq!(c.concurrency, 2);
    assert_eq!(c.default_agent, "claude");
    assert_eq!(c.retries, 2);
    assert_eq!(c.retry_delay, std::time::Duration::from_secs(30));
    assert_eq!(c.agents["claude"].fallback, vec!["codex"]);
    assert_eq!(c.agents["claude"].kind, "claude");
    assert_eq!(c.agents["codex"].kind, "codex");

    let first = |task: &str| -> Vec<String> {
        let t = mailroom::parse::task::parse("t", task.as_bytes()).unwrap();
        mailroom::sched::routing::route(&c, &t, &[])
            .unwrap()
            .0
            .agents
    };
    assert_eq!(first("description: small\n"), vec!["claude", "codex"]);
    assert_eq!(
        first("description: big\nlabels: [heavy]\n")[0],
        "codex",
        "label heavy"
    );
    let long = format!("description: {}\n", "x".repeat(2001));
    assert_eq!(first(&long)[0], "codex", "over 2,000 characters");
    let edge = format!("description: {}\n", "x".repeat(2000));
    assert_eq!(first(&edge)[0], "claude", "2,000 characters is not over");
}

#[test]
fn every_task_example_is_valid() {
    let dir = examples().join("tasks");
    let mut found: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, TASKS, "the task examples under {}", dir.display());
    // An empty root: no mailroom.yaml of the repository gets checked along.
    let t = Temp::new();
    let files: Vec<PathBuf> = TASKS.iter().map(|f| dir.join(f)).collect();
    let o = validate(&t.0, &files);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for f in &files {
        assert!(
            out.contains(&format!("ok: {}", f.display())),
            "{}",
            text(&o)
        );
    }
    // Between them, the examples show every key a task file may hold.
    let all: String = files
        .iter()
        .map(|f| fs::read_to_string(f).unwrap())
        .collect();
    for key in mailroom::parse::task::TASK_KEYS {
        assert!(
            all.lines().any(|l| l.starts_with(&format!("{key}:"))),
            "no example under examples/tasks/ shows `{key}:`"
        );
    }
    // The seed task, exactly as the original design wrote it.
    assert_eq!(
        fs::read_to_string(dir.join("task_001.yaml")).unwrap(),
        "id: task_001\ndescription: \"Implement user authentication\"\npriority: 1\n\
         created_at: \"2025-01-15T10:00:00Z\"\ndependencies: []\n\
         context_files: [\"context/project_overview.md\", \"context/current_state.md\"]\n"
    );
}

/// Runs the editor helper from `cwd` with the mailroom binary's directory
/// first on PATH, and `stdin` as its standard input.
fn submit(cwd: &Path, args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>) -> Output {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut dirs = vec![bin_dir.to_path_buf()];
            dirs.extend(std::env::split_paths(&p));
            std::env::join_paths(dirs).unwrap()
        }
        None => bin_dir.as_os_str().to_owned(),
    };
    let mut cmd = Command::new(examples().join("editor/mailroom-task.sh"));
    cmd.args(args)
        .current_dir(cwd)
        .env("PATH", path)
        .env_remove("MAILROOM_ROOT")
        .env_remove("MAILROOM_TASK")
        .env_remove("MAILROOM_BIN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

#[test]
fn editor_script_submits_a_file_or_stdin_from_any_directory() {
    let t = Temp::new();
    let root = t.0.join("queue");
    let o = Command::new(BIN).arg("init").arg(&root).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The file lives elsewhere, and the script runs from there.
    let elsewhere = t.0.join("notes");
    fs::create_dir_all(&elsewhere).unwrap();
    let task = "description: fix the login form\npriority: high\n";
    fs::write(elsewhere.join("fix-login.yaml"), task).unwrap();

    let o = submit(
        &elsewhere,
        &["--root", root.to_str().unwrap(), "fix-login.yaml"],
        &[],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "fix-login");
    assert_eq!(
        fs::read_to_string(root.join("tasks/pending/fix-login.yaml")).unwrap(),
        task
    );

    // Standard input, the tree from MAILROOM_ROOT, an explicit name.
    let o = submit(
        &elsewhere,
        &["--name", "from-vim"],
        &[("MAILROOM_ROOT", &root)],
        Some("description: written in an editor buffer\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "from-vim");
    assert!(root.join("tasks/pending/from-vim.yaml").is_file());

    // Standard input without a name: mailroom makes one up and prints it.
    let o = submit(
        &elsewhere,
        &["-"],
        &[("MAILROOM_ROOT", &root)],
        Some("Write a haiku about queues\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let name = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(!name.is_empty(), "{}", text(&o));
    assert!(
        root.join(format!("tasks/pending/{name}.yaml")).is_file(),
        "{}",
        text(&o)
    );

    // A bad task is refused with its line, and nothing is queued; so is a
    // second submission under a name already taken.
    let before = fs::read_dir(root.join("tasks/pending")).unwrap().count();
    let o = submit(
        &elsewhere,
        &["--root", root.to_str().unwrap(), "--name", "typo"],
        &[],
        Some("description: x\npriorty: high\n"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did you mean `priority`"),
        "{}",
        text(&o)
    );
    let o = submit(
        &elsewhere,
        &["--root", root.to_str().unwrap(), "fix-login.yaml"],
        &[],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        fs::read_dir(root.join("tasks/pending")).unwrap().count(),
        before
    );
    assert_eq!(fs::read_dir(root.join("tasks/tmp")).unwrap().count(), 0);

    // A usage error: exit 2, like mailroom.
    let o = submit(&elsewhere, &["--bogus"], &[], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
