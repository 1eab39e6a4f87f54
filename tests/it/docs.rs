//! What the docs promise (issue 12, items 9 to 11): one man page per
//! subcommand with FILES, ENVIRONMENT and EXIT STATUS in mailroom(1),
//! completion of task names, and a sample config that matches the README.

use crate::common::*;
use std::collections::BTreeMap;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn man_dir_writes_one_page_per_subcommand_and_see_also_names_only_those() {
    let root = Root::new();
    let dir = root.p("man1");
    let out = root.mailroom(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    // Every visible subcommand has its page (the hidden keeper and demo agent do not).
    for sub in [
        "run",
        "start",
        "stop",
        "add",
        "new",
        "show",
        "list",
        "retry",
        "wait",
        "man",
        "completions",
    ] {
        assert!(pages.contains(&format!("mailroom-{sub}.1")), "{pages:?}");
    }
    assert!(
        !pages
            .iter()
            .any(|p| p.contains("keeper") || p.contains("demo"))
    );
    let main = std::fs::read_to_string(dir.join("mailroom.1")).unwrap();
    // `mailroom man` prints the same mailroom(1).
    assert_eq!(stdout(&root.mailroom(&["man"])), main);
    for section in [
        ".SH FILES",
        ".SH ENVIRONMENT",
        ".SH \"EXIT STATUS\"",
        ".SH \"SEE ALSO\"",
    ] {
        assert!(main.contains(section), "no {section}");
    }
    // Every page named anywhere (SEE ALSO, SUBCOMMANDS) exists.
    let named = regex::Regex::new(r"(mailroom(?:\\-[a-z]+)?)(?:\\fR)?\(1\)").unwrap();
    let mut seen = 0;
    for p in &pages {
        let text = std::fs::read_to_string(dir.join(p)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH "),
            "{p} is not roff"
        );
        for c in named.captures_iter(&text) {
            let page = format!("{}.1", c[1].replace("\\-", "-"));
            assert!(
                pages.contains(&page),
                "{p} names {page}, which does not exist"
            );
            seen += 1;
        }
    }
    assert!(seen > pages.len(), "SEE ALSO sections missing");
    // Rendered by man(1) when it is installed; the roff text was checked above.
    if have("man") {
        for p in &pages {
            let out = Command::new("man")
                .arg("-l")
                .arg(dir.join(p))
                .env("MANWIDTH", "80")
                .env("MANPAGER", "cat")
                .env("PAGER", "cat")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{p}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("NAME") && text.contains("SYNOPSIS"),
                "{p}: {text}"
            );
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(!warnings.contains("warning"), "{p}: {warnings}");
            if p == "mailroom.1" {
                for s in [
                    "FILES",
                    "ENVIRONMENT",
                    "EXIT STATUS",
                    "tasks/pending/",
                    "MAILROOM_ROOT",
                    "78",
                ] {
                    assert!(text.contains(s), "mailroom(1) lacks {s}:\n{text}");
                }
            }
        }
    } else {
        eprintln!("man is not installed: the pages were checked as roff text only");
    }
}

/// Asks the binary for completions the way the shells' scripts do.
fn complete(root: &Root, shell: &str, words: &[&str], index: usize) -> String {
    let mut c = Command::new(BIN);
    c.arg("--").args(words).current_dir(&root.path);
    c.env_remove("MAILROOM_ROOT")
        .env("COMPLETE", shell)
        .env("_CLAP_COMPLETE_INDEX", index.to_string())
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "true")
        .env("_CLAP_IFS", "\n");
    let out = run_bounded(c, std::time::Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn completion_offers_the_trees_task_names_in_bash_zsh_and_fish() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    for n in ["fix-login", "fix-build", "docs"] {
        let out = root.mailroom(&["add", "x", "--name", n]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let names = |s: &str, sep: char| {
        let mut v: Vec<String> = s
            .lines()
            .map(|l| l.split(sep).next().unwrap().to_owned())
            .filter(|l| !l.starts_with('-'))
            .collect();
        v.sort();
        v
    };
    // The tree is the current directory.
    let bash = complete(&root, "bash", &["mailroom", "show", "fix"], 2);
    assert_eq!(names(&bash, '\t'), ["fix-build", "fix-login"], "{bash}");
    let zsh = complete(&root, "zsh", &["mailroom", "retry", ""], 2);
    assert_eq!(
        names(&zsh, ':'),
        ["docs", "fix-build", "fix-login"],
        "{zsh}"
    );
    assert!(zsh.contains("docs:pending"), "{zsh}");
    let fish = complete(&root, "fish", &["mailroom", "wait", "d"], 2);
    assert_eq!(names(&fish, '\t'), ["docs"], "{fish}");
    // --root on the line, from elsewhere; and agent names for --agent.
    let other = Root::new();
    let r = root.path.to_str().unwrap();
    let bash = complete(
        &other,
        "bash",
        &["mailroom", "--root", r, "cancel", "fix-l"],
        4,
    );
    assert_eq!(names(&bash, '\t'), ["fix-login"], "{bash}");
    let bash = complete(
        &other,
        "bash",
        &["mailroom", "--root", r, "add", "--agent", ""],
        5,
    );
    assert_eq!(names(&bash, '\t'), ["a"], "{bash}");
    // The registration script from `mailroom completions`, run by a real bash.
    let reg = stdout(&root.mailroom(&["completions", "bash"]));
    assert!(
        reg.contains("COMPLETE=\"bash\"") || reg.contains("COMPLETE=bash"),
        "{reg}"
    );
    if have("bash") {
        let script = format!(
            "source <({BIN} completions bash)\nCOMP_WORDS=(mailroom show fix); COMP_CWORD=2\n\
             COMP_LINE='mailroom show fix'; COMP_POINT=${{#COMP_LINE}}\n\
             _clap_complete_mailroom mailroom fix show\nprintf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(&root.path)
            .env_remove("MAILROOM_ROOT")
            .output()
            .unwrap();
        assert_eq!(
            names(&stdout(&out), '\t'),
            ["fix-build", "fix-login"],
            "{}",
            stderr(&out)
        );
    }
    for sh in ["zsh", "fish"] {
        let reg = root.mailroom(&["completions", sh]);
        assert!(
            reg.status.success() && stdout(&reg).contains("COMPLETE"),
            "{sh}"
        );
    }
}

/// `key: value  # comment` lines of a YAML text (commented-out keys too).
fn key_comments(text: &str) -> BTreeMap<String, String> {
    let re = regex::Regex::new(r"^(?:# ?)?([a-z_]+):[^#]*#\s*(.+)$").unwrap();
    text.lines()
        .filter_map(|l| {
            re.captures(l)
                .map(|c| (c[1].to_owned(), c[2].trim().to_owned()))
        })
        .collect()
}

#[test]
fn the_sample_config_validates_and_its_comments_are_the_readmes() {
    let root = Root::new();
    let dir = root.p("fresh");
    let out = root.mailroom(&["init", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg = dir.join("mailroom.yaml");
    let out = root.mailroom(&["validate", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let sample = std::fs::read_to_string(&cfg).unwrap();
    // The commented-out keys and agents validate too, once uncommented.
    let key = regex::Regex::new(r"^( *)# ((?:[a-z_]+:| ).*)$").unwrap();
    let all: String = sample
        .lines()
        .map(|l| match key.captures(l) {
            Some(c) => format!("{}{}", &c[1], &c[2]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let full = root.p("full.yaml");
    std::fs::write(&full, format!("{all}\n")).unwrap();
    let parsed = mailroom::parse::config::Config::parse(all.as_bytes(), "full.yaml");
    let c = parsed.unwrap_or_else(|e| panic!("{e}\n{all}"));
    assert!(c.hooks.on_fail.is_some() && c.agents.contains_key("codex"));
    // Its comments are the README's reference, word for word.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let reference = readme
        .split("## The config: `mailroom.yaml`")
        .nth(1)
        .and_then(|r| r.split("```yaml").nth(1))
        .and_then(|r| r.split("```").next())
        .unwrap();
    let (s, r) = (key_comments(&sample), key_comments(reference));
    assert!(s.len() >= 15, "{s:?}");
    for (k, comment) in &s {
        if let Some(rc) = r.get(k) {
            assert_eq!(comment, rc, "the sample and the README disagree on `{k}`");
        }
    }
    assert!(s["concurrency"].contains("on the whole tree"), "{s:?}");
    // The agents' commands are the presets' (the codex sandbox above all).
    for (agent, preset) in [("claude", "claude"), ("codex", "codex")] {
        let p = std::fs::read_to_string(format!(
            "{}/examples/presets/{preset}/mailroom.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let pc = mailroom::parse::config::Config::parse(p.as_bytes(), "preset").unwrap();
        assert_eq!(c.agents[agent].command, pc.agents[agent].command, "{agent}");
        let readme_row = format!("| `{agent}` | `{}` |", pc.agents[agent].command.join(" "));
        assert!(readme.contains(&readme_row), "README lacks {readme_row}");
    }
}
