//! The keeper launcher: one small process per supervisor that forks run
//! keepers without an exec (the zygote model of Android and of Chromium).
//!
//! Starting a keeper by exec costs a dynamic load of `mailroom-keeper` and
//! its page faults, about as much CPU as the agent's own start. The
//! launcher is `mailroom-keeper --launcher`, started once by the supervisor
//! with one end of a `SOCK_SEQPACKET` socket pair as its stdin. For each run
//! the supervisor sends one message: the run directory, the root (the
//! keeper's working directory), the agent's environment, and up to three
//! descriptors (the task's lock, the agent's slot, the tree's slot) that
//! become the keeper's stdin, stdout and stderr. The launcher forks; the
//! child sets up exactly the state an exec of `mailroom-keeper RUN_DIR`
//! would have (descriptors, environment, working directory, signal mask,
//! its command line as `ps` shows it) and runs [`keeper::main`]. The keeper
//! is then the same program as an exec'd one: it leaves the session, holds
//! the lock, writes `keeper.json` and `outcome.json`, survives its
//! supervisor.
//!
//! The launcher first greets with `h` and its build identity: a supervisor
//! uses only a launcher of its own build. Replies, in order: `p` with the
//! keeper's pid and a pidfd of it (or a
//! negated errno when the fork failed), and, when a keeper ends, `x` with
//! its pid and raw wait status (the launcher is its parent and reaps it).
//! The supervisor waits for that status; if the launcher is gone, it waits
//! on the pidfd and the status is unknown.
//!
//! The launcher ends when its supervisor's end of the socket closes (the
//! supervisor exited, however it died) or on SIGTERM or SIGINT; keepers it
//! forked run on. A launcher that cannot be started or that died is
//! started again for the next run, and a run it cannot take is started by
//! exec as before (`MAILROOM_KEEPER_LAUNCHER=off` makes that the rule).
//!
//! The stop signals a keeper reads (SIGTERM, SIGUSR1, SIGUSR2, SIGINT,
//! SIGHUP) are blocked in the launcher, so a forked keeper has them blocked
//! from its first instruction: there is no window in which one kills it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use super::keeper;

/// The environment variable that turns the launcher off (`off`): every
/// keeper is then started by exec.
pub const ENV: &str = "MAILROOM_KEEPER_LAUNCHER";

/// The argument that makes `mailroom-keeper` a launcher.
pub const ARG: &str = "--launcher";

/// The largest request: a run directory, a root and an environment. A
/// larger one (a huge environment) is started by exec instead.
const MAX_REQUEST: usize = 192 * 1024;

// ---------------------------------------------------------------------------
// The launcher process (`mailroom-keeper --launcher`).

/// Runs the launcher on the socket that is its stdin. Returns the exit
/// code: 0 when its supervisor went away or it was asked to stop.
pub fn serve() -> u8 {
    // The signals first: a `pkill -HUP mailroom` (a reload) must not end a
    // launcher that is starting, and its children inherit the mask.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut watched: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: signal sets on the stack and this process's own mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigemptyset(&mut watched);
        for s in super::blocking::STOP_SIGNALS {
            libc::sigaddset(&mut set, s as libc::c_int);
        }
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut watched, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    // SAFETY: plain descriptor and signal calls on this process's own
    // state, before any thread exists (the launcher is single-threaded).
    let sock = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if sock < 0 {
        return 1;
    }
    // SAFETY: `sock` was just made and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return 1;
    };
    // stdin, stdout and stderr become /dev/null: received descriptors are
    // then never 0, 1 or 2, and the launcher holds no terminal.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(null.as_raw_fd(), 2);
    }
    let _ = nix::unistd::setsid();
    // A forked keeper must look like an exec'd one in /proc (its command
    // line and environment are how tools and recovery find a root's
    // processes). Without PR_SET_MM_MAP that cannot be, and the supervisor
    // starts keepers by exec: it is told by the missing greeting.
    let program = std::env::args_os().next().unwrap_or_default();
    let (Ok(cmdline), Ok(environ)) = (
        std::fs::read("/proc/self/cmdline"),
        std::fs::read("/proc/self/environ"),
    ) else {
        return 3;
    };
    if show_as(cmdline, environ).is_err() {
        return 3;
    }
    // The greeting carries the build identity: a launcher started from a
    // file that an upgrade replaced a moment before is never used.
    let hello = [b"h".as_slice(), keeper::IDENTITY.as_bytes()].concat();
    // SAFETY: sends from a live buffer.
    unsafe {
        libc::send(
            sock.as_raw_fd(),
            hello.as_ptr().cast(),
            hello.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    let sfd = unsafe { libc::signalfd(-1, &watched, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if sfd < 0 {
        return 1;
    }
    // SAFETY: just made, owned here.
    let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return 1;
        }
        if fds[1].revents != 0 {
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let mut stop = false;
            // SAFETY: reads whole siginfo records into `info`.
            while unsafe { libc::read(sfd.as_raw_fd(), (&raw mut info).cast(), size) }
                == size as isize
            {
                stop |= info.ssi_signo as i32 != libc::SIGCHLD;
            }
            reap(&sock);
            if stop {
                return 0;
            }
        }
        if fds[0].revents != 0 {
            match receive(&sock, &mut buf) {
                Ok(None) => return 0,
                Ok(Some((req, handed))) => launch(&sock, &sfd, &program, &set, req, handed),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                // A request too large for the buffer was cut: refuse it.
                Err(nix::errno::Errno::EMSGSIZE) => {
                    reply(&sock, b'p', -libc::E2BIG, 0, None);
                }
                Err(_) => return 1,
            }
        }
    }
}

/// One request: the run directory, the root, the environment, and which of
/// stdin, stdout and stderr were handed over.
struct Request {
    run_dir: OsString,
    root: OsString,
    env: Vec<OsString>,
}

/// Receives one message into `buf`, with the descriptors that came with it
/// (close-on-exec, owned here, at most three), and whether the message or
/// its descriptors were cut.
fn recv_with_fds(
    sock: &OwnedFd,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>, bool), nix::errno::Errno> {
    let mut cmsg = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(rights) = c {
            // SAFETY: descriptors received with SCM_RIGHTS are new and ours.
            fds.extend(
                rights
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let cut = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    Ok((msg.bytes, fds, cut))
}

/// Reads one request. `None` at the end of the stream (the supervisor is
/// gone). Handed descriptors come with it, as `[stdin, stdout, stderr]`.
#[allow(clippy::type_complexity)]
fn receive(
    sock: &OwnedFd,
    buf: &mut [u8],
) -> Result<Option<(Request, [Option<OwnedFd>; 3])>, nix::errno::Errno> {
    let (len, mut owned, cut) = recv_with_fds(sock, buf)?;
    if len == 0 && owned.is_empty() {
        return Ok(None);
    }
    if cut {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    let body = &buf[..len];
    let (&mask, body) = body.split_first().ok_or(nix::errno::Errno::EINVAL)?;
    let mut parts = body.split(|b| *b == 0);
    let mut next = || parts.next().map(|p| OsStr::from_bytes(p).to_owned());
    let run_dir = next().ok_or(nix::errno::Errno::EINVAL)?;
    let root = next().ok_or(nix::errno::Errno::EINVAL)?;
    let mut env = Vec::new();
    while let Some(kv) = next() {
        if !kv.is_empty() {
            env.push(kv);
        }
    }
    let mut handed: [Option<OwnedFd>; 3] = [None, None, None];
    let mut it = owned.drain(..);
    for (i, slot) in handed.iter_mut().enumerate() {
        if mask & (1 << i) != 0 {
            *slot = it.next();
        }
    }
    Ok(Some((Request { run_dir, root, env }, handed)))
}

/// Forks a keeper for `req` and replies with its pid and a pidfd.
///
/// The child waits for a go-ahead on a pipe, written only once the reply is
/// in the supervisor's socket: a keeper runs only if its supervisor can
/// learn its pid. A launcher that dies in between (killed by an agent, say)
/// closes the pipe, and its child exits without running anything; the
/// supervisor, which then got no reply, may start the run by exec without
/// ever running it twice.
fn launch(
    sock: &OwnedFd,
    sfd: &OwnedFd,
    program: &OsStr,
    blocked: &libc::sigset_t,
    req: Request,
    handed: [Option<OwnedFd>; 3],
) {
    let mut go = [0 as RawFd; 2];
    // SAFETY: a new pipe into `go`.
    if unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        reply(sock, b'p', -e, 0, None);
        return;
    }
    // SAFETY: both ends were just made and are owned here.
    let (go_r, go_w) = unsafe { (OwnedFd::from_raw_fd(go[0]), OwnedFd::from_raw_fd(go[1])) };
    // SAFETY: the launcher is single-threaded, so the child may do anything
    // the parent could.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(go_w);
        let mut b = [0u8; 1];
        // SAFETY: reads one byte into `b`.
        let n = loop {
            let n = unsafe { libc::read(go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break n;
            }
        };
        if n != 1 {
            // SAFETY: ends the child at once, touching nothing.
            unsafe { libc::_exit(1) };
        }
        drop(go_r);
        let code = child(sock, sfd, program, blocked, &req, handed);
        std::process::exit(i32::from(code));
    }
    drop(go_r);
    drop(handed);
    if pid < 0 {
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        reply(sock, b'p', -e, 0, None);
        return;
    }
    // A pidfd made by the parent, before the child can be reaped: it always
    // names this keeper.
    let pidfd = super::blocking::pidfd_open(pid as u32);
    if reply(sock, b'p', pid, 0, pidfd.as_ref().map(|f| f.as_raw_fd())) {
        // SAFETY: writes one byte from a live buffer.
        unsafe { libc::write(go_w.as_raw_fd(), b"g".as_ptr().cast(), 1) };
    }
}

/// In the forked child: becomes `mailroom-keeper RUN_DIR` and runs it.
fn child(
    sock: &OwnedFd,
    sfd: &OwnedFd,
    program: &OsStr,
    blocked: &libc::sigset_t,
    req: &Request,
    handed: [Option<OwnedFd>; 3],
) -> u8 {
    // SAFETY: this process's own descriptors and signal mask.
    unsafe {
        libc::close(sock.as_raw_fd());
        libc::close(sfd.as_raw_fd());
        for (i, h) in handed.iter().enumerate() {
            if let Some(f) = h {
                // dup2 leaves the new descriptor without close-on-exec, as
                // an exec'd keeper has its standard descriptors.
                libc::dup2(f.as_raw_fd(), i as RawFd);
            }
        }
        // What an exec'd keeper starts with: the stop signals blocked (its
        // `Stops` keeps them so), SIGCHLD not.
        let mut mask = *blocked;
        libc::sigdelset(&mut mask, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
    }
    drop(handed);
    if let Err(e) = std::env::set_current_dir(&req.root) {
        keeper::Log::of(Path::new(&req.run_dir))
            .say(&format!("cannot change to the root {:?}: {e}", req.root));
        return 1;
    }
    // SAFETY: single-threaded (a fresh fork of a single-threaded process).
    unsafe {
        for (k, _) in std::env::vars_os() {
            std::env::remove_var(k);
        }
        for kv in &req.env {
            let b = kv.as_bytes();
            if let Some(i) = b.iter().position(|c| *c == b'=')
                && i > 0
            {
                std::env::set_var(OsStr::from_bytes(&b[..i]), OsStr::from_bytes(&b[i + 1..]));
            }
        }
    }
    // What an exec of `mailroom-keeper RUN_DIR` shows in /proc.
    let mut cmdline = program.as_bytes().to_vec();
    cmdline.push(0);
    cmdline.extend_from_slice(req.run_dir.as_bytes());
    cmdline.push(0);
    let mut environ = Vec::new();
    for kv in &req.env {
        environ.extend_from_slice(kv.as_bytes());
        environ.push(0);
    }
    if let Err(e) = show_as(cmdline, environ) {
        keeper::Log::of(Path::new(&req.run_dir)).say(&format!(
            "cannot set its command line and environment (PR_SET_MM_MAP): {e}"
        ));
        return 1;
    }
    keeper::main(Path::new(&req.run_dir))
}

/// Reaps every ended keeper and reports each: `x`, pid, raw status.
fn reap(sock: &OwnedFd) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child, not blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        reply(sock, b'x', pid, status, None);
    }
}

/// Sends one reply; whether it went out.
fn reply(sock: &OwnedFd, tag: u8, pid: i32, status: i32, fd: Option<RawFd>) -> bool {
    let mut msg = [0u8; 9];
    msg[0] = tag;
    msg[1..5].copy_from_slice(&pid.to_le_bytes());
    msg[5..9].copy_from_slice(&status.to_le_bytes());
    let fds = fd.map(|f| [f]);
    let cmsgs: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    // A supervisor that is gone reads nothing: its end of the stream shows
    // on the next poll.
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&msg)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .is_ok()
}

/// `struct prctl_mm_map` of linux/prctl.h.
#[repr(C)]
struct MmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

/// Makes `/proc/self/cmdline` and `/proc/self/environ` show `cmdline` and
/// `environ` (NUL-terminated strings), with `prctl(PR_SET_MM_MAP)`: the
/// process's argument and environment areas are pointed at new heap
/// memory, which stays for the process's life. Needs no privilege, only a
/// kernel with `CONFIG_CHECKPOINT_RESTORE` (every major distribution's).
fn show_as(cmdline: Vec<u8>, environ: Vec<u8>) -> std::io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or_else(|| std::io::Error::other("no /proc/self/stat"))?;
    // Field n of stat(5) is rest's (n - 3)th word.
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    let field = |n: usize| f.get(n - 3).copied().unwrap_or(0);
    if f.len() < 49 || cmdline.is_empty() {
        return Err(std::io::Error::other("short /proc/self/stat"));
    }
    // Leaked on purpose: /proc reads these areas for the process's life.
    let cmdline = cmdline.leak();
    let environ = environ.leak();
    // SAFETY: sbrk(0) only reads the program break.
    let brk = unsafe { libc::sbrk(0) } as u64;
    let map = MmMap {
        start_code: field(26),
        end_code: field(27),
        start_data: field(45),
        end_data: field(46),
        start_brk: field(47),
        brk,
        start_stack: field(28),
        arg_start: cmdline.as_ptr() as u64,
        arg_end: cmdline.as_ptr() as u64 + cmdline.len() as u64,
        env_start: environ.as_ptr() as u64,
        env_end: environ.as_ptr() as u64 + environ.len() as u64,
        auxv: 0,
        auxv_size: 0,
        exe_fd: u32::MAX,
    };
    // SAFETY: a prctl_mm_map of this process's own values, its size given.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP,
            &raw const map,
            std::mem::size_of::<MmMap>(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------
// The supervisor's side.

/// A supervisor's launcher: started at the first run, started again after
/// it died.
pub struct Launcher {
    program: PathBuf,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Set once a launcher could not be started, or died too often: runs
    /// are started by exec from then on (said once).
    broken: std::sync::atomic::AtomicBool,
    /// When the last launchers were started (at most five).
    starts: Mutex<std::collections::VecDeque<std::time::Instant>>,
}

/// One running launcher.
struct Conn {
    sock: OwnedFd,
    /// Replies to spawn requests, in order; held for a whole request so that
    /// each reply is the one to its request.
    replies: Mutex<std::sync::mpsc::Receiver<Spawned>>,
    dead: Arc<std::sync::atomic::AtomicBool>,
    /// The launcher's pid (a child of this process until its reader thread
    /// reaps it).
    pid: u32,
    /// The thread that reads its replies and reaps it.
    reader: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Conn {
    /// Gives up on this launcher: it is stopped, and the next run starts a
    /// new one.
    fn abandon(&self) {
        if !self.dead.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: our unreaped child (its reader thread reaps it).
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// The reply to a spawn request.
enum Spawned {
    Ok(u32, Option<OwnedFd>, tokio::sync::oneshot::Receiver<i32>),
    Failed(i32),
}

/// Why the launcher did not take a run.
#[derive(Debug)]
pub enum Refused {
    /// No keeper of the run was started: start it by exec.
    NotStarted(std::io::Error),
    /// Whether a keeper started is unknown (a launcher that neither answered
    /// nor ended): the run must not be started again now.
    Unknown(std::io::Error),
}

/// A keeper the launcher forked: its pid, and its end.
pub struct Forked {
    pid: u32,
    /// Its start time (`/proc`), to tell it from a later process with its
    /// pid when there is no pidfd.
    start: Option<u64>,
    pidfd: Option<OwnedFd>,
    exit: tokio::sync::oneshot::Receiver<i32>,
    launcher_gone: bool,
}

impl Forked {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits until the keeper has ended. Its wait status comes from the
    /// launcher, which reaps it; when the launcher cannot say (it went away,
    /// or an agent stopped it, and its children wait unreaped), the keeper's
    /// end is read from its pidfd, and its status is then unknown (an error)
    /// unless this process reaps it itself (it became the keeper's parent:
    /// a supervisor that is PID 1 or a subreaper). Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let gone = || std::io::Error::other("the keeper launcher cannot tell how the keeper ended");
        let Some(fd) = &self.pidfd else {
            // No pidfd (a kernel before 5.3): the launcher's word, or else
            // the pid watched, by its start time.
            if !self.launcher_gone {
                match (&mut self.exit).await {
                    Ok(raw) => return Ok(ExitStatus::from_raw(raw)),
                    Err(_) => self.launcher_gone = true,
                }
            }
            while self
                .start
                .is_some_and(|s| crate::tree::books::same_process(self.pid, s))
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return Err(gone());
        };
        // SAFETY: the pidfd is owned by `self` and outlives this borrow.
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                fd.as_fd(),
                tokio::io::Interest::READABLE,
            )
        }?;
        if !self.launcher_gone {
            tokio::select! {
                r = &mut self.exit => match r {
                    Ok(raw) => return Ok(ExitStatus::from_raw(raw)),
                    Err(_) => self.launcher_gone = true,
                },
                r = afd.readable() => {
                    r?.retain_ready();
                    // Ended: the launcher's report follows at once, unless
                    // the launcher is stopped or gone.
                    if let Ok(Ok(raw)) =
                        tokio::time::timeout(Duration::from_secs(1), &mut self.exit).await
                    {
                        return Ok(ExitStatus::from_raw(raw));
                    }
                    self.launcher_gone = true;
                }
            }
        }
        let _ = afd.readable().await?;
        reap_own(fd).map(ExitStatus::from_raw).ok_or_else(gone)
    }
}

/// The wait status of the ended process behind `pidfd` when it is this
/// process's child (reparented to it), reaping it; `None` otherwise.
fn reap_own(pidfd: &OwnedFd) -> Option<i32> {
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(P_PIDFD) into `info`, not blocking.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    // SAFETY: filled in by a successful waitid for an ended child.
    let pid = unsafe { info.si_pid() };
    if r != 0 || pid == 0 {
        return None;
    }
    let code = unsafe { info.si_status() };
    // Back to a wait(2) status word.
    Some(match info.si_code {
        libc::CLD_EXITED => (code & 0xff) << 8,
        libc::CLD_DUMPED => (code & 0x7f) | 0x80,
        _ => code & 0x7f,
    })
}

impl Launcher {
    /// A launcher of `program` (the small keeper binary that answered with
    /// this build's identity), or none when `MAILROOM_KEEPER_LAUNCHER=off`.
    pub fn new(program: &Path) -> Option<Launcher> {
        if std::env::var_os(ENV).is_some_and(|v| v == "off" || v == "0") {
            tracing::info!("{ENV}=off: each run's keeper is started by exec");
            return None;
        }
        Some(Launcher {
            program: program.to_path_buf(),
            conn: Mutex::new(None),
            broken: Default::default(),
            starts: Default::default(),
        })
    }

    /// Starts a keeper for `run_dir` with `root` as its working directory,
    /// `env` as its whole environment, and `handed` as its stdin, stdout and
    /// stderr (/dev/null where `None`). `Err` when the launcher cannot take
    /// the run: start it by exec then.
    pub fn spawn(
        &self,
        run_dir: &Path,
        root: &Path,
        env: &[(OsString, OsString)],
        handed: [Option<&dyn AsFd>; 3],
    ) -> Result<Forked, Refused> {
        let conn = self.conn().map_err(Refused::NotStarted)?;
        let mut mask = 0u8;
        let mut raw = Vec::new();
        for (i, h) in handed.iter().enumerate() {
            if let Some(f) = h {
                mask |= 1 << i;
                raw.push(f.as_fd().as_raw_fd());
            }
        }
        let mut body = vec![mask];
        body.extend_from_slice(run_dir.as_os_str().as_bytes());
        body.push(0);
        body.extend_from_slice(root.as_os_str().as_bytes());
        body.push(0);
        // A later value of a name replaces an earlier one, as with
        // `Command::envs`.
        let mut vars: Vec<(&OsStr, &OsStr)> = Vec::new();
        let mut at: HashMap<&OsStr, usize> = HashMap::new();
        for (k, v) in env {
            if k.is_empty() || k.as_bytes().contains(&b'=') {
                continue;
            }
            match at.get(k.as_os_str()) {
                Some(&i) => vars[i].1 = v,
                None => {
                    at.insert(k, vars.len());
                    vars.push((k, v));
                }
            }
        }
        for (k, v) in vars {
            if k.as_bytes().contains(&0) || v.as_bytes().contains(&0) {
                continue;
            }
            body.extend_from_slice(k.as_bytes());
            body.push(b'=');
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        if body.len() > MAX_REQUEST {
            return Err(Refused::NotStarted(std::io::Error::other(
                "the environment is too large for the launcher",
            )));
        }
        let replies = conn.replies.lock().unwrap_or_else(|e| e.into_inner());
        // Given up by an earlier request while this one waited for its turn.
        if conn.dead.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Refused::NotStarted(std::io::Error::other(
                "the keeper launcher was given up",
            )));
        }
        let cmsgs: Vec<ControlMessage> = if raw.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        if let Err(e) = sendmsg::<()>(
            conn.sock.as_raw_fd(),
            &[IoSlice::new(&body)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            // Not sent: no keeper of it can start.
            conn.abandon();
            return Err(Refused::NotStarted(e.into()));
        }
        use std::sync::mpsc::RecvTimeoutError;
        let reply = match replies.recv_timeout(Duration::from_secs(3)) {
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    launcher = conn.pid,
                    "the keeper launcher did not answer within 3s (stopped by an agent?); it is \
                     killed, this run's keeper is started by exec, and the next run starts a \
                     new launcher"
                );
                // No reply in time: the launcher is stopped and not used
                // again. A reply already on its way still counts (a keeper
                // whose pid was sent may run); once its stream has ended,
                // no keeper of this request can start.
                conn.abandon();
                replies.recv_timeout(Duration::from_secs(10))
            }
            r => r,
        };
        match reply {
            Ok(Spawned::Ok(pid, pidfd, exit)) => Ok(Forked {
                pid,
                start: crate::tree::books::proc_start_time(pid),
                pidfd,
                exit,
                launcher_gone: false,
            }),
            Ok(Spawned::Failed(e)) => {
                Err(Refused::NotStarted(std::io::Error::from_raw_os_error(e)))
            }
            Err(RecvTimeoutError::Disconnected) => {
                conn.abandon();
                Err(Refused::NotStarted(std::io::Error::other(
                    "the keeper launcher ended without an answer",
                )))
            }
            Err(RecvTimeoutError::Timeout) => Err(Refused::Unknown(std::io::Error::other(
                "the keeper launcher did not answer, nor end when killed",
            ))),
        }
    }

    /// Starts the launcher now, if it is not running, so that the first run
    /// does not wait for it. Blocking (an exec and a greeting).
    pub fn warm(&self) {
        let _ = self.conn();
    }

    /// Ends the launcher (keepers it forked run on) and waits, briefly, until
    /// it is reaped. For a supervisor that stops.
    pub fn close(&self) {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(conn) = conn else { return };
        // The end of the stream for both sides: the launcher exits, and the
        // reader thread reaps it.
        // SAFETY: shutdown of our own socket.
        unsafe { libc::shutdown(conn.sock.as_raw_fd(), libc::SHUT_RDWR) };
        let reader = conn.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = reader {
            let _ = t.join();
        }
    }

    /// The running launcher, started when there is none.
    fn conn(&self) -> std::io::Result<Arc<Conn>> {
        if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("no keeper launcher"));
        }
        let mut g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.as_ref()
            && !c.dead.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(c.clone());
        }
        // A launcher that keeps dying (five starts within ten minutes) is not
        // worth a start per run.
        let started = {
            let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if starts.len() >= 5
                && starts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(600))
            {
                Err(std::io::Error::other("it ended five times in ten minutes"))
            } else {
                if starts.len() >= 5 {
                    starts.pop_front();
                }
                starts.push_back(now);
                start(&self.program)
            }
        };
        match started {
            Ok(c) => {
                let c = Arc::new(c);
                *g = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                if !self.broken.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        "cannot start the keeper launcher ({} {ARG}): {e}; each run's keeper is \
                         started by exec instead",
                        self.program.display()
                    );
                }
                *g = None;
                Err(e)
            }
        }
    }
}

/// Starts `program --launcher` on a new socket pair, and the thread that
/// reads its replies.
fn start(program: &Path) -> std::io::Result<Conn> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // The command goes with its copy of the launcher's end of the socket: a
    // launcher that ends at once must end the stream.
    let mut launcher = std::process::Command::new(program)
        .arg(ARG)
        .stdin(std::process::Stdio::from(theirs))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .current_dir("/")
        .spawn()?;
    let pid = launcher.id();
    // Its greeting says it can make keepers that look exec'd (see `serve`).
    if let Err(e) = greeted(&ours) {
        let _ = launcher.kill();
        let _ = launcher.wait();
        return Err(e);
    }
    let reader = ours.try_clone()?;
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let dead_r = dead.clone();
    let reader_thread = std::thread::Builder::new()
        .name("keeper-launcher".into())
        .spawn(move || {
            read_replies(&reader, &tx);
            dead_r.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(reader);
            // It ends at the end of its stream (or it already has): reaped
            // here, so that its CPU time and its keepers' count as this
            // process's children's. One that does not end is stopped.
            let until = std::time::Instant::now() + Duration::from_secs(2);
            while matches!(launcher.try_wait(), Ok(None)) {
                if std::time::Instant::now() >= until {
                    let _ = launcher.kill();
                    let _ = launcher.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })?;
    Ok(Conn {
        sock: ours,
        replies: Mutex::new(rx),
        dead,
        pid,
        reader: Mutex::new(Some(reader_thread)),
    })
}

/// Waits (up to 2 s) for a new launcher's greeting.
fn greeted(sock: &OwnedFd) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 2000) };
    let mut buf = [0u8; 256];
    // SAFETY: reads into `buf`, without blocking.
    let len = (n == 1).then(|| unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    });
    match len {
        Some(n @ 1..) if buf[0] == b'h' => {
            let said = &buf[1..n as usize];
            if said == keeper::IDENTITY.as_bytes() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "it is another build ({:?}; this supervisor is {:?})",
                    String::from_utf8_lossy(said),
                    keeper::IDENTITY
                )))
            }
        }
        Some(0) => Err(std::io::Error::other(
            "it ended at once (its kernel cannot show a forked keeper's command line and \
             environment: PR_SET_MM_MAP, CONFIG_CHECKPOINT_RESTORE)",
        )),
        _ => Err(std::io::Error::other("it did not answer")),
    }
}

/// Reads the launcher's replies until it is gone: spawn replies go to the
/// requester, each keeper's end to its waiter.
fn read_replies(sock: &OwnedFd, spawned: &std::sync::mpsc::Sender<Spawned>) {
    let mut waiters: HashMap<u32, tokio::sync::oneshot::Sender<i32>> = HashMap::new();
    loop {
        let mut buf = [0u8; 16];
        let (len, fds, _) = match recv_with_fds(sock, &mut buf) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let mut fds = fds.into_iter();
        if len < 9 {
            // The end of the stream: the launcher is gone. Waiters see their
            // senders dropped and watch their keepers' pidfds.
            return;
        }
        let pid = i32::from_le_bytes(buf[1..5].try_into().unwrap_or_default());
        let status = i32::from_le_bytes(buf[5..9].try_into().unwrap_or_default());
        match buf[0] {
            b'p' if pid > 0 => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                waiters.insert(pid as u32, tx);
                let _ = spawned.send(Spawned::Ok(pid as u32, fds.next(), rx));
            }
            b'p' => {
                let _ = spawned.send(Spawned::Failed(-pid));
            }
            b'x' => {
                if let Some(tx) = waiters.remove(&(pid as u32)) {
                    let _ = tx.send(status);
                }
            }
            _ => {}
        }
    }
}

/// A run's keeper, as the supervisor watches it: started by exec (its
/// child), or forked by the launcher.
pub enum KeeperChild {
    Exec(tokio::process::Child),
    Forked(Forked),
}

impl KeeperChild {
    pub fn id(&self) -> Option<u32> {
        match self {
            KeeperChild::Exec(c) => c.id(),
            KeeperChild::Forked(f) => Some(f.id()),
        }
    }

    /// Waits until the keeper has ended. Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            KeeperChild::Exec(c) => c.wait().await,
            KeeperChild::Forked(f) => f.wait().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keeper that became this process's child (reparented to a
    /// supervisor that is PID 1 or a subreaper) is reaped through its pidfd,
    /// with its real status; another process's is not touched.
    #[test]
    fn an_ended_child_is_reaped_through_its_pidfd_with_its_status() {
        use std::os::unix::process::ExitStatusExt;
        for (script, code, signal) in [("exit 3", Some(3), None), ("kill -9 $$", None, Some(9))] {
            // Reaped below through its pidfd, not by `wait`.
            #[allow(clippy::zombie_processes)]
            let child = std::process::Command::new("/bin/sh")
                .args(["-c", script])
                .spawn()
                .unwrap();
            let fd = super::super::blocking::pidfd_open(child.id()).expect("a pidfd");
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1);
            let st = ExitStatus::from_raw(reap_own(&fd).expect("reaped"));
            assert_eq!(st.code(), code);
            assert_eq!(st.signal(), signal);
            // Reaped: nothing left to wait for.
            assert!(reap_own(&fd).is_none());
        }
        // Not our child: left alone.
        if let Some(fd) = super::super::blocking::pidfd_open(1) {
            assert!(reap_own(&fd).is_none());
        }
    }
}
