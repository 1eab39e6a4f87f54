//! The keeper's spawn of its agent: `posix_spawn(3)`, not fork and exec.
//!
//! glibc's `posix_spawn` starts the child with `CLONE_VM | CLONE_VFORK`: it
//! copies no page tables and takes no copy-on-write faults, where a fork of
//! the keeper copied its whole address space only to throw it away at the
//! exec (BENCHMARKS.md measures the difference). The standard library would
//! take that path too, but it keeps the parent's signal mask for the child,
//! and a keeper blocks its stop signals (it reads them from a signalfd): an
//! agent started with them blocked would never see a SIGTERM. Here the child
//! starts with an empty mask (`POSIX_SPAWN_SETSIGMASK`) and `SIGPIPE` at its
//! default, in its own process group, in its working directory, with exactly
//! its environment, as `std::process::Command` with a `pre_exec` did.
//!
//! A program named without a slash is looked up in the agent's own `PATH`
//! (glibc's default `/bin:/usr/bin` without one), and a file the kernel
//! cannot execute (`ENOEXEC`: a script without a `#!` line) is run by
//! `/bin/sh`, as `execvp(3)` does.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

/// What the agent is started with.
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    /// The environment, exactly: later entries replace earlier ones of the
    /// same name.
    pub env: &'a [(OsString, OsString)],
    pub cwd: &'a Path,
    /// `/dev/null` when None.
    pub stdin: Option<&'a std::fs::File>,
    pub stdout: &'a std::fs::File,
    pub stderr: &'a std::fs::File,
}

/// A started agent, to be awaited with [`Agent::try_wait`] or [`Agent::wait`].
pub struct Agent {
    pid: libc::pid_t,
    status: Option<ExitStatus>,
}

impl Agent {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Its exit status, if it has exited (reaping it), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.wait_flags(libc::WNOHANG)
    }

    /// Waits for it to exit, and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(st) = self.wait_flags(0)? {
                return Ok(st);
            }
        }
    }

    fn wait_flags(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if let Some(st) = self.status {
            return Ok(Some(st));
        }
        let mut raw: libc::c_int = 0;
        loop {
            // SAFETY: waitpid writes the status into `raw`, a valid c_int.
            let r = unsafe { libc::waitpid(self.pid, &mut raw, flags) };
            if r == -1 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Ok(None);
            }
            let st = ExitStatus::from_raw(raw);
            self.status = Some(st);
            return Ok(Some(st));
        }
    }
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or environment entry holds a NUL byte",
        )
    })
}

/// Starts the agent as [`Launch`] says, with `execvp(3)`'s rules for finding
/// the program: a name with a slash is run as it is; a bare name is tried in
/// each directory of the agent's `PATH` in turn (an empty entry is the
/// working directory, a relative one is relative to it), going on past a
/// candidate that fails with `ENOENT`, `ENOTDIR`, `ESTALE`, `ENODEV`,
/// `ETIMEDOUT` or `EACCES` (a broken `#!` line, a directory of that name,
/// a directory that may not be searched), and the error is `EACCES` if a
/// candidate was refused, else `ENOENT`. The error of a start is the exec's
/// own.
pub fn spawn(l: &Launch<'_>) -> io::Result<Agent> {
    let mut env = std::collections::BTreeMap::new();
    for (k, v) in l.env {
        env.insert(k.as_os_str(), v.as_os_str());
    }
    let envs: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv)
        })
        .collect::<io::Result<_>>()?;
    let mut args: Vec<CString> = Vec::with_capacity(l.args.len() + 2);
    // argv[0] as given, as Command::new(program) passes it.
    args.push(cstring(l.program.as_os_str().as_bytes())?);
    for a in l.args {
        args.push(cstring(a.as_bytes())?);
    }
    let cwd = cstring(l.cwd.as_os_str().as_bytes())?;
    let name = l.program.as_os_str().as_bytes();
    if name.contains(&b'/') {
        return spawn_file(cstring(name)?, &args, &envs, &cwd, l);
    }
    if name.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    let path = env
        .get(OsStr::new("PATH"))
        .map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes());
    let mut denied = false;
    for dir in path.split(|&b| b == b':') {
        // As execvp builds it: the entry, a slash unless it is empty, the name.
        let mut file = dir.to_vec();
        if !file.is_empty() {
            file.push(b'/');
        }
        file.extend_from_slice(name);
        // A candidate that is not there is skipped without a spawn (the
        // exec would fail the same way); the exec, in the working
        // directory, decides about the others.
        let here = l.cwd.join(OsStr::from_bytes(&file));
        if let Err(e) = std::fs::metadata(&here)
            && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
        {
            continue;
        }
        match spawn_file(cstring(&file)?, &args, &envs, &cwd, l) {
            Ok(agent) => return Ok(agent),
            Err(e) => match e.raw_os_error() {
                Some(libc::EACCES) => denied = true,
                Some(
                    libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT,
                ) => {}
                _ => return Err(e),
            },
        }
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

/// Runs `file`, or `/bin/sh file` when the kernel cannot execute it
/// (`ENOEXEC`: no `#!` line), as execvp does.
fn spawn_file(
    file: CString,
    args: &[CString],
    envs: &[CString],
    cwd: &CString,
    l: &Launch<'_>,
) -> io::Result<Agent> {
    match spawn_raw(&file, args, envs, cwd, l) {
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            let mut sh_args = vec![cstring(b"/bin/sh")?, file];
            sh_args.extend(args.iter().skip(1).cloned());
            spawn_raw(&sh_args[0], &sh_args, envs, cwd, l)
        }
        r => r,
    }
}

fn spawn_raw(
    file: &CString,
    args: &[CString],
    envs: &[CString],
    cwd: &CString,
    l: &Launch<'_>,
) -> io::Result<Agent> {
    fn check(r: libc::c_int) -> io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }
    struct Actions(libc::posix_spawn_file_actions_t);
    impl Drop for Actions {
        fn drop(&mut self) {
            // SAFETY: initialised by posix_spawn_file_actions_init below.
            unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
        }
    }
    struct Attr(libc::posix_spawnattr_t);
    impl Drop for Attr {
        fn drop(&mut self) {
            // SAFETY: initialised by posix_spawnattr_init below.
            unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
        }
    }
    let mut argv: Vec<*mut libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr() as *mut libc::c_char)
        .collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = envs
        .iter()
        .map(|e| e.as_ptr() as *mut libc::c_char)
        .collect();
    envp.push(std::ptr::null_mut());
    // SAFETY: every structure is initialised before use and destroyed once
    // (the Drop guards); every pointer handed to posix_spawn points into
    // CStrings and vectors that outlive the call, and the descriptors are
    // open files borrowed for its duration.
    unsafe {
        let mut actions = Actions(std::mem::zeroed());
        check(libc::posix_spawn_file_actions_init(&mut actions.0))?;
        let mut attr = Attr(std::mem::zeroed());
        check(libc::posix_spawnattr_init(&mut attr.0))?;
        let a = &mut actions.0;
        match l.stdin {
            Some(f) => check(libc::posix_spawn_file_actions_adddup2(a, f.as_raw_fd(), 0))?,
            None => check(libc::posix_spawn_file_actions_addopen(
                a,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?,
        }
        check(libc::posix_spawn_file_actions_adddup2(
            a,
            l.stdout.as_raw_fd(),
            1,
        ))?;
        check(libc::posix_spawn_file_actions_adddup2(
            a,
            l.stderr.as_raw_fd(),
            2,
        ))?;
        check(libc::posix_spawn_file_actions_addchdir_np(a, cwd.as_ptr()))?;
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::posix_spawnattr_setsigmask(&mut attr.0, &empty))?;
        let mut default: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut default);
        libc::sigaddset(&mut default, libc::SIGPIPE);
        check(libc::posix_spawnattr_setsigdefault(&mut attr.0, &default))?;
        check(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
        let flags = libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF
            | libc::POSIX_SPAWN_SETPGROUP;
        check(libc::posix_spawnattr_setflags(
            &mut attr.0,
            flags as libc::c_short,
        ))?;
        let mut pid: libc::pid_t = 0;
        check(libc::posix_spawn(
            &mut pid,
            file.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        ))?;
        Ok(Agent { pid, status: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::fsx::tests::tempdir;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn run(
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        cwd: &Path,
    ) -> (io::Result<ExitStatus>, String) {
        let dir = tempdir();
        let out_path = dir.join("out");
        let out = std::fs::File::create(&out_path).unwrap();
        let err = std::fs::File::create(dir.join("err")).unwrap();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(OsString, OsString)> = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        let launch = Launch {
            program: Path::new(program),
            args: &args,
            env: &env,
            cwd,
            stdin: None,
            stdout: &out,
            stderr: &err,
        };
        let st = spawn(&launch).and_then(|mut a| a.wait());
        let mut s = String::new();
        std::fs::File::open(&out_path)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        (st, s)
    }

    #[test]
    fn the_agent_starts_unblocked_in_its_own_group_dir_and_environment() {
        let cwd = tempdir();
        let env = [("PATH", "/usr/bin:/bin"), ("A", "x"), ("A", "y z")];
        // Block a signal here, as a keeper does: the child must not inherit
        // it. The program reads its own mask (a shell may reset its own).
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        }
        let (st, blocked) = run("grep", &["^SigBlk", "/proc/self/status"], &env, &cwd);
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        assert!(st.unwrap().success());
        assert_eq!(blocked, "SigBlk:\t0000000000000000\n");
        let (st, out) = run(
            "sh",
            &[
                "-c",
                "pwd; echo \"$A\"; echo \"${HOME-unset}\"; \
                 read -r pid comm state ppid pgrp rest </proc/$$/stat; echo \"$pid $pgrp\"",
            ],
            &env,
            &cwd,
        );
        assert!(st.unwrap().success());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], cwd.canonicalize().unwrap().to_str().unwrap());
        assert_eq!(lines[1], "y z", "the later entry of a name wins");
        assert_eq!(lines[2], "unset", "exactly the given environment");
        let ids: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(ids[0], ids[1], "its own process group");
        std::fs::remove_dir_all(cwd).unwrap();
    }

    #[test]
    fn a_missing_program_and_a_script_without_interpreter_line() {
        let dir = tempdir();
        let (st, _) = run("no-such-agent-xyz", &[], &[("PATH", "/usr/bin:/bin")], &dir);
        assert_eq!(st.unwrap_err().kind(), io::ErrorKind::NotFound);
        let (st, _) = run("/no/such/agent", &[], &[], &dir);
        assert_eq!(st.unwrap_err().kind(), io::ErrorKind::NotFound);
        // Not executable: found, but refused.
        let plain = dir.join("plain");
        std::fs::write(&plain, "echo hi\n").unwrap();
        let (st, _) = run("plain", &[], &[("PATH", dir.to_str().unwrap())], &dir);
        assert_eq!(st.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        // Executable without `#!`: run by /bin/sh, with its arguments.
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&plain, "echo \"hi $1\"\n").unwrap();
        let (st, out) = run(
            "plain",
            &["there"],
            &[("PATH", dir.to_str().unwrap())],
            &dir,
        );
        assert!(st.unwrap().success());
        assert_eq!(out, "hi there\n");
        // An empty PATH entry is the working directory.
        let (st, out) = run("plain", &["cwd"], &[("PATH", "/nonexistent:")], &dir);
        assert!(st.unwrap().success());
        assert_eq!(out, "hi cwd\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// execvp's search: on past a candidate whose `#!` interpreter is
    /// missing and past a directory of that name, to the next; a relative
    /// entry is relative to the working directory and passed as written
    /// (the script's `$0`). With only refused candidates, EACCES.
    #[test]
    fn the_path_search_goes_on_past_broken_candidates_as_execvp_does() {
        let dir = tempdir();
        for d in ["b1", "b2/ag", "b3"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let script = |p: &str, text: &str| {
            std::fs::write(dir.join(p), text).unwrap();
            std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("b1/ag", "#!/nonexistent/interp\n");
        script("b3/ag", "#!/bin/sh\necho \"ok $0\"\n");
        let (st, out) = run("ag", &[], &[("PATH", "/nonexistent:b1:b2:b3")], &dir);
        assert!(st.unwrap().success());
        assert_eq!(out, "ok b3/ag\n");
        let (st, _) = run("ag", &[], &[("PATH", "b1:b2")], &dir);
        assert_eq!(st.unwrap_err().raw_os_error(), Some(libc::EACCES));
        let (st, _) = run("ag", &[], &[("PATH", "b1")], &dir);
        assert_eq!(st.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
