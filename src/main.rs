//! The `mailroom` binary: parses arguments, sets up logging and signals, calls
//! into the library, and maps the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use mailroom::cli::{self, Cli, Command, LogFormat};
use mailroom::parse::config::Config;
use mailroom::supervisor::{Control, RunOptions, Supervisor};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // A run's keeper starts once per run: it skips building the whole command
    // line parser (`mailroom keeper RUN_DIR`, written only by a supervisor).
    let mut args = std::env::args_os();
    if let (Some(_), Some(cmd), Some(dir), None) =
        (args.next(), args.next(), args.next(), args.next())
        && cmd == "keeper"
        && !dir.as_encoded_bytes().starts_with(b"-")
    {
        return ExitCode::from(mailroom::run::keeper::main(std::path::Path::new(&dir)));
    }
    // `COMPLETE=bash mailroom -- ...`: the shell asking for completions.
    {
        use clap::CommandFactory;
        clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A bad command line asked for JSON gets its error as JSON too.
            if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or_default();
                json_error(
                    first.strip_prefix("error: ").unwrap_or(first),
                    e.exit_code(),
                );
            }
            e.exit()
        }
    };
    if let Command::DemoAgent { args } = &cli.command {
        return ExitCode::from(mailroom::run::demo::main(args) as u8);
    }
    if let Command::Keeper { run_dir } = &cli.command {
        return ExitCode::from(mailroom::run::keeper::main(run_dir));
    }
    if !matches!(cli.command, Command::Run { .. }) {
        restore_sigpipe();
    }
    init_logging(&cli);
    let json = cli.command.json();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            say(&format!("mailroom: {e:#}"));
            let code = if e.is::<cli::control::NoSupervisor>() {
                cli::control::NoSupervisor::EXIT
            } else if e.is::<cli::UsageError>() {
                cli::UsageError::EXIT
            } else if e.is::<cli::ConfigUnusable>() {
                cli::ConfigUnusable::EXIT
            } else {
                1
            };
            if json {
                json_error(&format!("{e:#}"), code.into());
            }
            ExitCode::from(code)
        }
    }
}

/// A failed `--json` command's error as one JSON document on standard output
/// (the message is on standard error too): a caller that reads standard
/// output (`jq -r .error`) sees the failure, not nothing.
fn json_error(error: &str, exit_code: i32) {
    use std::io::Write;
    let doc = serde_json::json!({ "error": error, "exit_code": exit_code });
    let _ = writeln!(std::io::stdout(), "{doc}");
}

/// A one-shot command whose reader went away (`mailroom list | head`) ends
/// quietly, as `cat` does, instead of panicking in `println!`. Rust starts
/// with SIGPIPE ignored; the supervisor keeps it so (a closed log pipe must
/// not kill it), and child processes get the default back from the standard
/// library anyway.
fn restore_sigpipe() {
    // SAFETY: resetting one signal's disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Colour only for a person at a terminal, and never with `NO_COLOR` set
/// (https://no-color.org): files, pipes and journald get plain text.
fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Standard error for the log, where a failed write is dropped, not
/// reported: `tracing` reports a failed write with `eprintln!`, which
/// panics when standard error cannot be written either (a full disk under
/// `mailroom start`'s log file, a closed pipe, `2>/dev/full`). A log that
/// cannot be written must never end the supervisor.
struct LossyStderr;

/// A line on standard error, dropped if it cannot be written (`eprintln!`
/// would panic, and the exit status would be 101 instead of the one meant).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_logging(cli: &Cli) {
    let level = match (cli.verbose as i8) - (cli.quiet as i8) {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_ansi(use_colour());
    // journald stamps every line itself.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    match (cli.log_format, under_journal) {
        (LogFormat::Json, _) => b.json().init(),
        (LogFormat::Text, true) => b.without_time().with_target(false).init(),
        (LogFormat::Text, false) => b.with_target(false).init(),
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let root = cli.root.clone();
    let quiet = cli.quiet;
    match cli.command {
        Command::Run {
            exit_when_idle,
            init,
            agents,
        } => {
            // A typo in --root must not become a healthy-looking empty queue.
            if !init {
                cli::open_tree(&root)?;
            }
            let limits = agents
                .as_deref()
                .map(cli::daemon::parse_agent_limits)
                .transpose()?
                .unwrap_or_default();
            run(&root, exit_when_idle, limits)
        }
        Command::Start { agents } => {
            match cli::daemon::start(&root, agents.as_deref(), cli.verbose, cli.quiet)? {
                cli::daemon::Started::New(pid) => {
                    println!("{pid}");
                    eprintln!(
                        "mailroom: supervisor {pid} started; log in {}",
                        cli::daemon::LOG_FILE
                    );
                }
                cli::daemon::Started::Already(pid) => {
                    println!("{pid}");
                    eprintln!(
                        "mailroom: supervisor {pid} already runs on this tree; none started \
                         (`mailroom stop` first to restart it; `mailroom run` adds another)"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { now, timeout } => {
            let t = timeout
                .map(|t| mailroom::parse::task::parse_duration(&t))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            cli::daemon::stop(&root, now, t)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::New { name } => {
            println!("{}", cli::new(&root, &name)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { dir } => {
            cli::init(dir.as_deref().unwrap_or(&root))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Add {
            description,
            agent,
            priority,
            name,
            file,
            after,
            timeout,
            retries,
            delay,
            not_before,
            label,
            context,
            workdir,
            wait,
        } => {
            let n = cli::add(
                &root,
                cli::AddArgs {
                    description: description.as_deref(),
                    agent: agent.as_deref(),
                    priority: priority.as_deref(),
                    name: name.as_deref(),
                    file: file.as_deref(),
                    after: &after,
                    timeout: timeout.as_deref(),
                    more: cli::AddMore {
                        retries,
                        delay: delay.as_deref(),
                        not_before: not_before.as_deref(),
                        labels: &label,
                        context_files: &context,
                        workdir: workdir.as_deref(),
                    },
                },
            )?;
            if !wait {
                println!("{n}");
                // Said where a person reads it, not in a script's output.
                let layout = mailroom::tree::layout::Layout::new(&root);
                if quiet == 0 && !mailroom::tree::registry::any_alive(&layout) {
                    eprintln!(
                        "mailroom: note: no supervisor is running on this tree; `{n}` waits in \
                         tasks/pending/ until one starts (`mailroom run`, or `mailroom start` in \
                         the background)"
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("{n}");
            mailroom::cli::control::wait(&root, std::slice::from_ref(&n), None, false).map_err(
                |e| {
                    // Say that the task is queued all the same: a script that
                    // adds it again gets a clash, or, without --name, a twin.
                    if e.is::<mailroom::cli::control::NoSupervisor>() {
                        e.context(format!(
                            "`{n}` is queued in tasks/pending/ and runs when a supervisor \
                             starts (`mailroom cancel {n}` takes it back)"
                        ))
                    } else {
                        e
                    }
                },
            )?;
            mailroom::cli::control::report(&root, &n)
        }
        Command::Status { json, watch } => {
            if watch {
                use std::io::IsTerminal;
                // Clear the screen only on a terminal; a pipe or a file gets
                // one report after another, separated by a blank line.
                let tty = std::io::stdout().is_terminal();
                let mut first = true;
                loop {
                    if tty {
                        print!("\x1b[2J\x1b[H");
                    } else if !first {
                        println!();
                    }
                    first = false;
                    cli::status(&root, false)?;
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
            cli::status(&root, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Cancel { names, timeout } => {
            let t = mailroom::parse::task::parse_duration(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            mailroom::cli::control::cancel_all(&root, &names, t)
        }
        Command::Pause { agent, force } => {
            mailroom::cli::control::pause(&root, agent.as_deref(), true, force)
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Resume { agent } => {
            mailroom::cli::control::pause(&root, agent.as_deref(), false, false)
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Logs { name, follow, raw } => {
            mailroom::cli::control::logs(&root, &name, follow, raw)
        }
        Command::Wait {
            names,
            timeout,
            json,
        } => {
            let t = timeout
                .map(|t| mailroom::parse::task::parse_duration(&t))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            mailroom::cli::control::wait(&root, &names, t, json)
        }
        Command::Usage { by, since, json } => {
            mailroom::cli::usage::usage(&root, by, since.as_deref(), json)
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Agents { json } => {
            mailroom::cli::control::agents(&root, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Serve { listen, token_file } => {
            cli::open_tree(&root)?;
            serve(&root, listen.as_deref(), token_file.as_deref())
        }
        Command::Completions { shell } => {
            cli::complete::registration(shell, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            use std::io::Write;
            std::io::stdout().write_all(&cli::man::main_page()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            for p in cli::man::write_pages(&dir)? {
                println!("{}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { state, label, json } => {
            cli::list(&root, state.as_deref(), label.as_deref(), json).map(|()| ExitCode::SUCCESS)
        }
        Command::Show { name, json, prompt } => if prompt {
            cli::show_prompt(&root, &name)
        } else {
            cli::show(&root, &name, json)
        }
        .map(|()| ExitCode::SUCCESS),
        Command::Retry {
            names,
            outcome,
            completed,
        } => cli::retry(&root, &names, outcome.as_deref(), completed),
        Command::Clean {
            names,
            failed,
            older_than,
            dry_run,
        } => cli::clean(
            &root,
            cli::CleanArgs {
                names: &names,
                failed,
                older_than: older_than
                    .map(|d| mailroom::parse::task::parse_duration(&d))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--older-than: {e}"))?,
                dry_run,
            },
        ),
        Command::Validate { files } => Ok(if cli::validate(&root, &files)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::DemoAgent { .. } | Command::Keeper { .. } => {
            unreachable!("handled before logging is set up")
        }
    }
}

/// Descriptors this process inherited from its parent (a jobserver pipe, a
/// terminal's extra fds) must not reach the agents: mark them close-on-exec.
/// Not closed: whoever passed them may still expect them open here.
fn seal_inherited_fds() {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD on a descriptor number; a stale one (the
        // directory listing's own) just fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The config's `serve:` as `run` starts (a reload does not move the dashboard).
fn sup_serve_config(root: &std::path::Path) -> Option<mailroom::parse::config::Serve> {
    Config::load(root).ok().and_then(|c| c.serve)
}

/// `mailroom serve`: binds where told, prints the address on stdout (for
/// scripts and tests that asked for port 0), and serves until SIGINT or SIGTERM.
fn serve(
    root: &std::path::Path,
    listen: Option<&str>,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    // The config's `serve:` gives the defaults; a broken config is no reason
    // not to show the tree.
    let cfg = Config::load(root).ok().and_then(|c| c.serve);
    let addr: std::net::SocketAddr = match listen {
        Some(l) => l.parse().with_context(|| {
            format!("--listen {l}: give an address and a port, e.g. 127.0.0.1:8787")
        })?,
        None => cfg.as_ref().map_or_else(
            || {
                mailroom::parse::config::DEFAULT_LISTEN
                    .parse()
                    .expect("a valid address")
            },
            |c| c.listen,
        ),
    };
    let token = match token_file {
        Some(f) => Some(mailroom::serve::actions::read_token_file(f).map_err(anyhow::Error::msg)?),
        None => mailroom::serve::config_token(root, cfg.as_ref().and_then(|c| c.token.as_ref()))
            .map_err(anyhow::Error::msg)?,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let _ = tx.send(());
            }
        })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() {
            tracing::warn!(
                %local,
                "listening beyond loopback: anyone who can reach this address can read every task"
            );
        }
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{local}/")?;
            out.flush()?;
        }
        mailroom::serve::serve(listener, root, mailroom::serve::Options { token }, async {
            let _ = rx.await;
        })
        .await
        .context("serving the dashboard")
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run(
    root: &std::path::Path,
    exit_when_idle: bool,
    agent_limits: Vec<(String, usize)>,
) -> anyhow::Result<ExitCode> {
    seal_inherited_fds();
    // Its own exit status, so that systemd does not restart a supervisor
    // that cannot start until someone fixes the file.
    let config = Config::load(root).map_err(|e| cli::ConfigUnusable(e.to_string()))?;
    // An `--agents` name the file lacks is the command line's mistake.
    let config = config
        .with_agent_limits(&agent_limits)
        .map_err(cli::UsageError)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Signals become control events in the main loop; a plain thread forwards them.
    let mut signals = signal_hook::iterator::SignalsInfo::<
        signal_hook::iterator::exfiltrator::WithOrigin,
    >::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let c = if s.signal == signal_hook::consts::SIGHUP {
                    Control::Reload
                } else {
                    // Only this user's processes can be our agents; read
                    // what the sender is now, before its pid can be reused.
                    let me = nix::unistd::geteuid().as_raw();
                    Control::Shutdown {
                        from: s
                            .process
                            .filter(|p| p.uid == me)
                            .map(|p| mailroom::supervisor::SignalSender::of(p.pid as u32)),
                    }
                };
                if tx.send(c).is_err() {
                    break;
                }
            }
        })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sup = Supervisor::new(root, config)
        .map_err(|e| anyhow::anyhow!("preparing the tree under {}: {e}", root.display()))?
        .with_agent_limits(agent_limits);
    let notifier = mailroom::ops::sdnotify::Notifier::from_env().map(std::sync::Arc::new);
    let serve_cfg = sup_serve_config(root);
    rt.block_on(async {
        // `serve:`: the dashboard on this runtime, for as long as the loop runs.
        let dashboard = match &serve_cfg {
            None => None,
            Some(cfg) => match mailroom::serve::spawn(root, cfg).await {
                Ok((local, stop, task)) => {
                    if !local.ip().is_loopback() {
                        tracing::warn!(%local, "the dashboard listens beyond loopback: anyone who can reach it can read every task");
                    }
                    tracing::info!(%local, "dashboard on http://{local}/");
                    Some((format!("http://{local}/"), stop, task))
                }
                Err(e) => {
                    tracing::error!(error = %e, "no dashboard (serve: in mailroom.yaml); supervising without it");
                    None
                }
            },
        };
        let sup = match &dashboard {
            Some((url, ..)) => sup.with_dashboard(url.clone()),
            None => sup,
        };
        let res = sup
            .run(
                rx,
                RunOptions {
                    exit_when_idle,
                    notifier,
                },
            )
            .await;
        if let Some((_, stop, task)) = dashboard {
            let _ = stop.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        res
    })?;
    Ok(ExitCode::SUCCESS)
}
