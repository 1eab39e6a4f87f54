//! Any writer works: each kind of writer drops one task into a running
//! supervisor, and each task runs exactly once with its complete content.
//! Editor leftovers are neither run nor moved.

use crate::common::*;
use std::process::Command;
use std::time::Duration;

fn sh(root: &Root, script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(&root.path)
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

#[test]
fn every_kind_of_writer_is_processed_once_with_complete_content() {
    let root = Root::new();
    let runlog = root.p("runs.log");
    let root = root.config(&format!(
        "settle: 300ms\nrescan_interval: 30s\nagents:\n  a:\n    command: [{:?}]\n    env:\n      RUNLOG: {:?}\n",
        agent("ok.sh"),
        runlog.display().to_string()
    ));
    let _sup = root.spawn();
    wait_for(Duration::from_secs(30), "supervisor to start", || {
        root.entries(".").iter().any(|e| e.starts_with("sup-"))
    });

    // Leftovers first: they must stay exactly where they are.
    let leftovers = [
        ".w-old.yaml.swp",
        "w-vim.yaml~",
        "4913",
        ".hidden.yaml",
        "x.tmp",
        "#w.yaml#",
        "notes.txt",
    ];
    for l in leftovers {
        root.write(&format!("tasks/pending/{l}"), "description: must not run\n");
    }

    // 1. mailroom add
    let out = root.mailroom(&["add", "from add", "--name", "w-add"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // 2. Maildir style: write in tmp/, rename into pending/
    sh(
        &root,
        "printf 'description: from mv\\n' > tasks/tmp/w-mv.yaml && mv tasks/tmp/w-mv.yaml tasks/pending/",
    );
    // 3. cp from elsewhere
    root.write("src.yaml", "description: from cp\n");
    sh(&root, "cp src.yaml tasks/pending/w-cp.yaml");
    // 4. shell redirection, in two writes
    sh(
        &root,
        "{ printf 'description: |\\n  from shell\\n'; printf '  second line\\n'; } > tasks/pending/w-sh.yaml",
    );
    // 5. Python
    let st = Command::new("python3")
        .arg("-c")
        .arg("open('tasks/pending/w-py.yml','w').write('description: from python\\n')")
        .current_dir(&root.path)
        .status()
        .unwrap();
    assert!(st.success());
    // 6. vim writing a new file (swap file, probe file and all)
    let st = Command::new("vim")
        .args([
            "-u",
            "NONE",
            "-i",
            "NONE",
            "-N",
            "-es",
            "-c",
            "call setline(1, 'description: from vim')",
            "-c",
            "wq",
            "tasks/pending/w-vim.yaml",
        ])
        .current_dir(&root.path)
        .stdin(std::process::Stdio::null())
        .env("TERM", "dumb")
        .status()
        .unwrap();
    assert!(st.success(), "vim failed");
    // 7. A slow writer that keeps the file open, pausing longer than `settle`,
    //    while every prefix it has written is itself valid YAML.
    let st = Command::new("python3")
        .arg("-c")
        .arg(
            "import time\n\
             f = open('tasks/pending/w-slow.yaml', 'w')\n\
             f.write('description: |\\n  slow start\\n'); f.flush()\n\
             for i in range(8):\n    time.sleep(0.1); f.write('  line %d\\n' % i); f.flush()\n\
             time.sleep(0.5); f.write('  END-OF-SLOW\\n'); f.close()\n",
        )
        .current_dir(&root.path)
        .status()
        .unwrap();
    assert!(st.success());

    let all = ["w-add", "w-cp", "w-mv", "w-py", "w-sh", "w-slow", "w-vim"];
    wait_for(
        Duration::from_secs(60),
        "all writers' tasks to complete",
        || root.names("completed").len() >= all.len(),
    );
    assert_eq!(root.names("completed"), all);
    assert!(
        root.names("failed").is_empty(),
        "{:?}",
        root.names("failed")
    );
    let slow = root.read("context/agent_outputs/w-slow.md");
    assert!(
        slow.contains("line 7") && slow.contains("END-OF-SLOW"),
        "{slow}"
    );
    assert!(
        root.read("context/agent_outputs/w-sh.md")
            .contains("second line")
    );
    assert!(
        root.read("context/agent_outputs/w-vim.md")
            .contains("from vim")
    );

    let runs = std::fs::read_to_string(&runlog).unwrap();
    for t in all {
        let n = runs
            .lines()
            .filter(|l| l.split(' ').next() == Some(t))
            .count();
        assert_eq!(n, 1, "{t} ran {n} times:\n{runs}");
    }
    let mut left: Vec<String> = root.entries("tasks/pending");
    left.retain(|e| !e.starts_with(".w-vim.yaml.sw"));
    let mut want: Vec<String> = leftovers.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(left, want);
}
