//! `mailroom validate`: task files and configs checked without running anything.

use crate::parse::config::{CONFIG_FILE, Config};
use crate::parse::task;
use crate::tree::fsx;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A YAML file with a top-level `agents:` or `concurrency:` key is a config
/// (whatever its name), not a task.
fn looks_like_config(f: &Path) -> bool {
    fsx::read_task_file(f, task::DEFAULT_MAX_TASK_BYTES)
        .ok()
        .map(|(b, _)| {
            String::from_utf8_lossy(&b).lines().any(|l| {
                ["agents:", "concurrency:", "default_agent:", "routing:"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
        })
        .unwrap_or(false)
}

/// `mailroom validate`: true when everything is valid.
pub fn validate(root: &Path, files: &[PathBuf]) -> Result<bool> {
    let mut ok = true;
    let cfg = root.join(CONFIG_FILE);
    let mut checked_cfg = false;
    for f in files {
        let shown = f.display().to_string();
        let is_cfg =
            f.file_name().and_then(|n| n.to_str()) == Some(CONFIG_FILE) || looks_like_config(f);
        let bytes = match fsx::read_task_file(f, task::DEFAULT_MAX_TASK_BYTES) {
            Ok((b, _)) => b,
            Err(e) => {
                println!("{shown}: {e}");
                ok = false;
                continue;
            }
        };
        if is_cfg {
            checked_cfg = checked_cfg || f.canonicalize().ok() == cfg.canonicalize().ok();
            match Config::parse_file(&bytes, &shown) {
                Ok(_) => println!("ok: {shown}"),
                Err(e) => {
                    println!("{e}");
                    ok = false;
                }
            }
            continue;
        }
        let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or("task");
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("yaml");
        match task::parse_as(name, ext, &bytes) {
            Ok(t) => {
                println!("ok: {shown}");
                for w in t.warnings {
                    println!("  warning: {w}");
                }
            }
            Err(e) => {
                println!("{}", e.display_at(&shown));
                ok = false;
            }
        }
    }
    if !checked_cfg && cfg.exists() {
        match Config::load(root) {
            Ok(_) => println!("ok: {}", cfg.display()),
            Err(e) => {
                println!("{e}");
                ok = false;
            }
        }
    }
    Ok(ok)
}
