//! Full disks and broken directories: on a tiny tmpfs the supervisor keeps
//! tasks where they were, reports the error, goes on once space is back and
//! loses nothing; a removed context/ or tasks/pending/ is recreated.

use crate::common::*;
use std::io::Write;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs(std::path::PathBuf);
impl Tmpfs {
    fn new(size: &str) -> Option<Tmpfs> {
        if !require_root("mounting a tmpfs") {
            return None;
        }
        let dir = Root::new().path.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount -t tmpfs failed although running as root"
        );
        Some(Tmpfs(dir))
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sup_logs(root: &Root) -> String {
    root.entries(".")
        .iter()
        .filter(|e| e.starts_with("sup-"))
        .map(|e| root.read(e))
        .collect()
}

#[test]
fn a_full_disk_keeps_tasks_reports_and_recovers_when_space_is_back() {
    let Some(fs) = Tmpfs::new("2m") else { return };
    let root = Root {
        path: fs.0.join("root"),
    };
    for d in ["tmp", "pending", "assigned", "completed", "failed"] {
        std::fs::create_dir_all(root.p(&format!("tasks/{d}"))).unwrap();
    }
    std::fs::create_dir_all(root.p("context/agent_outputs")).unwrap();
    let root = root
        .agent_config(&[&agent("ok.sh")], "")
        .task("a.yaml", "description: first\n")
        .task("b.yaml", "description: second\n")
        .task("c.yaml", "description: third\n");
    // Fill the file system to the last byte.
    let filler = fs.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Its log goes outside the full file system.
    let logs = Root::new();
    let log_path = logs.p("sup.log");
    let mut c = root.cmd(&["run"]);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let sup = Sup {
        child: Some(c.spawn().unwrap()),
    };
    wait_for(MIN, "the supervisor to report the full disk", || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("No space left on device")
    });
    // Nothing lost, nothing failed for want of space.
    let mut all: Vec<String> = ["pending", "assigned", "completed"]
        .iter()
        .flat_map(|s| root.names(s))
        .collect();
    all.sort();
    assert_eq!(all, ["a", "b", "c"], "a task went missing on a full disk");
    assert!(
        root.names("failed").is_empty(),
        "a full disk failed a task: {:?}",
        root.names("failed")
    );
    // Space is back: everything completes.
    std::fs::remove_file(&filler).unwrap();
    wait_for(MIN, "all tasks to complete once space is back", || {
        root.names("completed").len() == 3
    });
    drop(sup);
    root.run_until_idle();
    assert!(
        root.entries("tasks/assigned").is_empty(),
        "{:?}",
        root.entries("tasks/assigned")
    );
    let log = root.read("context/completed_tasks.jsonl");
    assert_eq!(log.lines().count(), 3, "{log}");
    std::mem::forget(root); // the tmpfs goes with `fs`
}

#[test]
fn removed_context_and_pending_directories_come_back() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let _sup = root.spawn();
    wait_for(MIN, "the supervisor to start", || {
        sup_logs(&root).contains("supervisor ready")
    });
    std::fs::remove_dir_all(root.p("context")).unwrap();
    std::fs::remove_dir_all(root.p("tasks/pending")).unwrap();
    wait_for(MIN, "tasks/pending to be recreated", || {
        root.p("tasks/pending").is_dir()
    });
    root.write(
        "tasks/pending/after.yaml",
        "description: after the removal\n",
    );
    wait_for(MIN, "the new task to complete", || {
        root.names("completed") == ["after"]
    });
    assert!(
        root.read("context/agent_outputs/after.md")
            .contains("after the removal")
    );
    assert!(
        root.read("context/completed_tasks.jsonl")
            .contains("\"task\":\"after\"")
    );
}
