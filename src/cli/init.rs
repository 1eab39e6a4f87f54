//! `mailroom init`: a new tree with a sample config and the demo tasks.

use crate::parse::config::{CONFIG_FILE, SAMPLE_CONFIG};
use crate::tree::layout::Layout;
use anyhow::{Context, Result};
use std::path::Path;

/// `mailroom init`.
pub fn init(dir: &Path) -> Result<()> {
    let layout = Layout::new(dir);
    let existed = layout.pending.is_dir();
    layout
        .ensure()
        .with_context(|| format!("creating the tree under {}", dir.display()))?;
    let mut made = Vec::new();
    let cfg = dir.join(CONFIG_FILE);
    if !cfg.exists() {
        std::fs::write(&cfg, SAMPLE_CONFIG)
            .with_context(|| format!("writing {}", cfg.display()))?;
        made.push(CONFIG_FILE.to_owned());
    }
    let ov = layout.context.join("project_overview.md");
    if !ov.exists() {
        std::fs::write(
            &ov,
            "# Project overview\n\nDescribe the project here. Every agent reads this file.\n",
        )?;
        made.push("context/project_overview.md".into());
    }
    if existed && made.is_empty() {
        println!(
            "{} is already a mailroom tree; nothing to do (its config and files are left as they are)",
            dir.display()
        );
    } else if existed {
        println!(
            "{} was already a mailroom tree; added what it lacked:",
            dir.display()
        );
    } else {
        println!("initialised {}", dir.display());
    }
    for m in made {
        println!("  wrote {m}");
    }
    println!("next: mailroom --root {} run", dir.display());
    Ok(())
}
