//! `mailroom-keeper RUN_DIR`: a run's keeper and nothing else (see
//! `mailroom::run::keeper`). A supervisor starts one per run; this binary is
//! a fraction of `mailroom`'s size, so its exec costs less (fewer pages to
//! map and relocate). `mailroom keeper RUN_DIR` is the same keeper.
//!
//! `mailroom-keeper --launcher` is a supervisor's keeper launcher,
//! which forks keepers without an exec (`mailroom::run::launcher`).
//!
//! `mailroom-keeper --identity` prints one line, the version and build it
//! belongs to: the supervisor asks once at start and uses this binary only
//! when the line is its own.

use std::io::Write;
use std::process::ExitCode;

use mailroom::run::{keeper, launcher};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next()) {
        // The keeper launcher (`mailroom::run::launcher`).
        (Some(a), None) if a == launcher::ARG => ExitCode::from(launcher::serve()),
        (Some(a), None) if a == "--identity" => {
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{}", keeper::IDENTITY).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        (Some(dir), None) if !dir.as_encoded_bytes().starts_with(b"-") => {
            ExitCode::from(keeper::main(std::path::Path::new(&dir)))
        }
        _ => {
            eprintln!(
                "usage: mailroom-keeper RUN_DIR | --identity\n\
                 A run's keeper, started by `mailroom run` for each run (see PROTOCOL.md)."
            );
            ExitCode::from(2)
        }
    }
}
