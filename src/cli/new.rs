//! `mailroom new NAME`: a Markdown task written in the user's editor, from a
//! template in `tasks/tmp/`, submitted through `add` when it is saved.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{AddArgs, add, check_task_name, open_tree};
use crate::tree::fsx;

/// The template a new task starts from; the front matter's keys are those of
/// a task file, commented out.
pub fn template(name: &str) -> String {
    format!(
        "---\n\
         # Task `{name}`. Every key is optional; uncomment what you need.\n\
         # priority: normal        # high, normal or low\n\
         # agent: claude           # an agent of mailroom.yaml\n\
         # after: [other-task]     # run once these completed\n\
         # timeout: 30m\n\
         # context_files: [README.md]\n\
         ---\n\
         \n"
    )
}

/// The editor: `$EDITOR`, then `$VISUAL`, then `vi`, split on white space
/// (`code -w` works; no shell is involved).
fn editor() -> Vec<String> {
    ["EDITOR", "VISUAL"]
        .into_iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| vec!["vi".to_owned()])
}

/// `mailroom new NAME`: returns the submitted task's name. A draft that does
/// not validate stays in `tasks/tmp/NAME.md`, and running `new NAME` again
/// reopens it.
pub fn new(root: &Path, name: &str) -> Result<String> {
    let layout = open_tree(root)?;
    check_task_name(name)?;
    if let Some((st, p, _)) = layout.locate(name) {
        bail!(
            "the name `{name}` is already used by {} ({}); choose another",
            layout.rel(&p),
            st.dir_name()
        );
    }
    fsx::create_dir_all(&layout.tmp)?;
    let draft: PathBuf = layout.tmp.join(format!("{name}.md"));
    let fresh = template(name);
    let resumed = std::fs::symlink_metadata(&draft).is_ok();
    if !resumed {
        fsx::write_atomic(&draft, fresh.as_bytes()).context("writing the template")?;
    }
    let argv = editor();
    let status = match Command::new(&argv[0]).args(&argv[1..]).arg(&draft).status() {
        Ok(s) => s,
        Err(e) => {
            // A template nobody could edit is not worth keeping.
            if !resumed {
                let _ = std::fs::remove_file(&draft);
            }
            return Err(e).with_context(|| {
                format!(
                    "starting the editor `{}` (set $EDITOR or $VISUAL)",
                    argv.join(" ")
                )
            });
        }
    };
    let kept = layout.rel(&draft);
    if !status.success() {
        bail!(
            "the editor `{}` failed ({status}); nothing submitted, the draft is in {kept}",
            argv[0]
        );
    }
    let (bytes, _) = fsx::read_task_file(&draft, crate::parse::task::DEFAULT_MAX_TASK_BYTES)
        .map_err(|e| anyhow::anyhow!("{kept}: {e}"))?;
    if bytes == fresh.as_bytes() || bytes.iter().all(u8::is_ascii_whitespace) {
        let _ = std::fs::remove_file(&draft);
        bail!("the template was left unchanged or empty; nothing submitted");
    }
    let added = add(
        root,
        AddArgs {
            description: None,
            agent: None,
            priority: None,
            name: Some(name),
            file: Some(&draft),
            after: &[],
            timeout: None,
            more: super::AddMore::default(),
        },
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nnothing submitted; the draft is kept: run `mailroom new {name}` again to fix it"
        )
    })?;
    std::fs::remove_file(&draft).context("removing the submitted draft")?;
    Ok(added)
}
