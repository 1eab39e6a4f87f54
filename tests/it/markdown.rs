//! Tasks as Markdown (issue 12, item 4): `tasks/pending/NAME.md` with YAML
//! front matter and the body as the description, `add --file x.md`, and
//! `mailroom new` through a fake editor.

use crate::common::*;

fn editor() -> String {
    format!("{}/tests/editors/write-task.sh", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_markdown_task_runs_with_its_body_as_the_description_and_keeps_its_extension() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh"), "{prompt}"], "")
        .task(
            "fix-login.md",
            "---\npriority: high\ntimeout: 5m\n---\n\n# Fix the login form\n\nIt *hangs* on submit.\n",
        )
        .task("typo.md", "---\nagent: a\npriorty: high\n---\nBody\n")
        .task("open.md", "---\nagent: a\n\nThe front matter is never closed.\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["fix-login"]);
    assert!(root.exists("tasks/completed/fix-login.md"));
    // The agent got the body, not the front matter.
    let out = root.read("context/agent_outputs/fix-login.md");
    assert!(
        out.contains("# Fix the login form\n\nIt *hangs* on submit."),
        "{out}"
    );
    assert!(!out.contains("priority: high"), "{out}");
    // Errors name the line of the whole file, as for YAML task files.
    assert_eq!(root.names("failed"), ["open", "typo"]);
    let e = root.record("failed", "typo")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(e.starts_with("tasks/pending/typo.md:3:1:"), "{e}");
    assert!(e.contains("did you mean `priority`"), "{e}");
    let e = root.record("failed", "open")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        e.starts_with("tasks/pending/open.md:1:1:") && e.contains("never closed"),
        "{e}"
    );
    assert!(root.exists("tasks/failed/typo.md"));
    // list and show know it.
    let listed = stdout(&root.mailroom(&["list"]));
    assert!(listed.contains("fix-login"), "{listed}");
    let shown = root.mailroom(&["show", "fix-login"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(stdout(&shown).contains("hangs"), "{}", stdout(&shown));
}

#[test]
fn add_file_md_validates_and_submits_it() {
    let root = Root::new().agent_config(&[&agent("ok.sh"), "{prompt}"], "");
    let bad = root.p("bad.md");
    std::fs::write(&bad, "---\nagent: a\nretries: lots\n---\nBody\n").unwrap();
    let out = root.mailroom(&["add", "--file", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.md:3:"), "{}", stderr(&out));
    assert!(root.names("pending").is_empty());
    let nosuch = root.p("nosuch.md");
    std::fs::write(&nosuch, "---\nagent: nosuch\n---\nBody\n").unwrap();
    let out = root.mailroom(&["add", "--file", nosuch.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no agent `nosuch`"),
        "{}",
        stderr(&out)
    );
    let good = root.p("write-docs.md");
    std::fs::write(&good, "---\npriority: low\n---\nDocument the *API*.\n").unwrap();
    let out = root.mailroom(&["add", "--file", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "write-docs");
    assert_eq!(
        root.read("tasks/pending/write-docs.md"),
        "---\npriority: low\n---\nDocument the *API*.\n"
    );
    assert!(root.temp_files().is_empty(), "{:?}", root.temp_files());
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["write-docs"]);
}

#[test]
fn new_opens_the_editor_on_a_template_and_submits_what_was_saved() {
    let root = Root::new().agent_config(&[&agent("ok.sh"), "{prompt}"], "");
    // Unchanged: nothing submitted, no draft left.
    let mut c = root.cmd(&["new", "unchanged"]);
    c.env("EDITOR", editor()).env_remove("TASK_BODY");
    let out = run_bounded(c, std::time::Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unchanged"), "{}", stderr(&out));
    assert!(root.names("pending").is_empty());
    assert!(!root.exists("tasks/tmp/unchanged.md"));
    // An editor that cannot be started: said so, nothing left behind.
    let mut c = root.cmd(&["new", "noeditor"]);
    c.env("EDITOR", "/nonexistent-editor").env_remove("VISUAL");
    let out = run_bounded(c, std::time::Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("starting the editor `/nonexistent-editor`"),
        "{}",
        stderr(&out)
    );
    assert!(!root.exists("tasks/tmp/noeditor.md"));
    // Invalid: refused with its line, the draft kept for the next try.
    let mut c = root.cmd(&["new", "fix-login"]);
    c.env("EDITOR", editor())
        .env("TASK_BODY", "Fix the login form.")
        .env("TASK_FRONT", "priorty: high");
    let out = run_bounded(c, std::time::Duration::from_secs(60));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("fix-login.md:2:1:") && err.contains("priority"),
        "{err}"
    );
    assert!(err.contains("mailroom new fix-login"), "{err}");
    assert!(root.names("pending").is_empty());
    let draft = root.read("tasks/tmp/fix-login.md");
    assert!(draft.contains("priorty: high") && draft.contains("Fix the login form."));
    // Fixed (VISUAL is used when EDITOR is unset): the draft is reopened and submitted.
    root.write(
        "tasks/tmp/fix-login.md",
        &draft.replace("priorty: high", "priority: high"),
    );
    let mut c = root.cmd(&["new", "fix-login"]);
    c.env_remove("EDITOR")
        .env("VISUAL", editor())
        .env_remove("TASK_BODY")
        .env_remove("TASK_FRONT");
    let out = run_bounded(c, std::time::Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "fix-login");
    assert!(!root.exists("tasks/tmp/fix-login.md"));
    let t = root.read("tasks/pending/fix-login.md");
    assert!(
        t.starts_with("---\npriority: high\n# Task `fix-login`"),
        "{t}"
    );
    // A name in use is refused before the editor opens.
    let mut c = root.cmd(&["new", "fix-login"]);
    c.env("EDITOR", "/nonexistent-editor");
    let out = run_bounded(c, std::time::Duration::from_secs(60));
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["fix-login"]);
    let out = root.read("context/agent_outputs/fix-login.md");
    assert!(out.contains("Fix the login form."), "{out}");
}
