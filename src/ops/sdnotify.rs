//! The systemd notify protocol (`sd_notify(3)`) over a Unix datagram socket.
//!
//! Under `Type=notify` systemd passes the address of a Unix datagram socket in
//! `NOTIFY_SOCKET` (a path, or an abstract name written `@name`) and, with
//! `WatchdogSec=`, the watchdog period in `WATCHDOG_USEC` (for the process
//! named by `WATCHDOG_PID`, if set). Each notification is one datagram of
//! newline-separated `KEY=VALUE` assignments. Sending is best effort: a full
//! or missing socket is logged at debug level and otherwise ignored, so the
//! supervisor never stalls or fails because of its service manager.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A handle on systemd's notification socket.
///
/// Built by [`Notifier::from_env`] (`None` when not started by systemd with
/// `Type=notify`) or [`Notifier::with_socket`]. All methods take `&self`, never
/// block and never fail; the type is `Send + Sync`, so it can be shared in an
/// `Arc` between the main loop and the signal handling.
#[derive(Debug)]
pub struct Notifier {
    /// Where datagrams go; `None` if the address could not be used (every
    /// send is then a no-op).
    addr: Option<SocketAddr>,
    /// An unbound, non-blocking datagram socket to send from; `None` if it
    /// could not be created.
    sock: Option<UnixDatagram>,
    /// `WATCHDOG_USEC`, when the watchdog applies to this process.
    watchdog_usec: Option<u64>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    ///
    /// Returns `None` when `NOTIFY_SOCKET` is unset, empty or not a Unix
    /// socket address (e.g. systemd's `vsock:` form). The watchdog applies
    /// only if `WATCHDOG_USEC` is a positive number and `WATCHDOG_PID` is
    /// absent or equals our pid. The variables are left in the environment;
    /// the runner strips them from agents' environments.
    #[must_use]
    pub fn from_env() -> Option<Notifier> {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var_os("WATCHDOG_USEC"),
            std::env::var_os("WATCHDOG_PID"),
            std::process::id(),
        )
    }

    /// Builds a notifier for an explicit socket address (a path, or `@name`
    /// for an abstract socket) and watchdog period in microseconds. For tests
    /// and injection; an unusable address gives a notifier whose sends are
    /// no-ops.
    #[must_use]
    pub fn with_socket(path: impl AsRef<OsStr>, watchdog_usec: Option<u64>) -> Notifier {
        let path = path.as_ref();
        let addr = match parse_addr(path) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::debug!("sd_notify: unusable socket address {path:?}: {e}");
                None
            }
        };
        let sock = match UnixDatagram::unbound().and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!("sd_notify: cannot create a datagram socket: {e}");
                None
            }
        };
        Notifier {
            addr,
            sock,
            watchdog_usec: watchdog_usec.filter(|&u| u > 0),
        }
    }

    /// [`Notifier::from_env`] on explicit values, for tests.
    fn from_vars(
        socket: Option<OsString>,
        watchdog_usec: Option<OsString>,
        watchdog_pid: Option<OsString>,
        our_pid: u32,
    ) -> Option<Notifier> {
        let socket = socket.filter(|s| !s.is_empty())?;
        if let Err(e) = parse_addr(&socket) {
            tracing::debug!("sd_notify: ignoring NOTIFY_SOCKET={socket:?}: {e}");
            return None;
        }
        // Only the process WATCHDOG_PID names (if set) owns the watchdog.
        let pid_matches = watchdog_pid
            .is_none_or(|p| p.to_str().and_then(|p| p.trim().parse::<u32>().ok()) == Some(our_pid));
        let usec = watchdog_usec
            .and_then(|u| u.to_str().and_then(|u| u.trim().parse::<u64>().ok()))
            .filter(|_| pid_matches);
        Some(Notifier::with_socket(&socket, usec))
    }

    /// Startup is finished: `READY=1` and `STATUS=<status>`.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A free-form one-line status shown by `systemctl status`
    /// (`STATUS=<s>`; newlines are replaced by spaces).
    pub fn status(&self, s: &str) {
        self.notify(&format!("STATUS={}", one_line(s)));
    }

    /// Keep-alive ping for `WatchdogSec=` (`WATCHDOG=1`). Send it every
    /// [`Notifier::watchdog_interval`] from the main loop, so that a stuck
    /// loop (not merely a live process) gets the service restarted.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// Shutdown has begun (`STOPPING=1`).
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// A configuration reload has begun: `RELOADING=1` and
    /// `MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>` (which systemd 253 and later
    /// require for `Type=notify-reload`; older ones ignore it). Follow with
    /// [`Notifier::reloaded`] when done, whether or not the reload succeeded.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// A reload has finished (`READY=1`).
    pub fn reloaded(&self) {
        self.notify("READY=1");
    }

    /// How often to call [`Notifier::watchdog`]: half of `WATCHDOG_USEC`, or
    /// `None` when no watchdog applies to this process.
    #[must_use]
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_usec.map(|u| Duration::from_micros(u / 2))
    }

    /// Sends one raw datagram of newline-separated `KEY=VALUE` assignments.
    /// Never blocks; errors are logged at debug level and dropped.
    pub fn notify(&self, msg: &str) {
        let (Some(sock), Some(addr)) = (&self.sock, &self.addr) else {
            return;
        };
        match sock.send_to_addr(msg.as_bytes(), addr) {
            Ok(n) if n == msg.len() => {}
            Ok(n) => tracing::debug!("sd_notify: short send ({n} of {} bytes)", msg.len()),
            Err(e) => tracing::debug!("sd_notify: sending {msg:?} failed: {e}"),
        }
    }
}

/// `NOTIFY_SOCKET` to an address: `@name` is an abstract socket (Linux),
/// anything else a path (systemd itself only passes absolute paths).
fn parse_addr(s: &OsStr) -> std::io::Result<SocketAddr> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty socket address",
        ));
    }
    if let Some(name) = bytes.strip_prefix(b"@") {
        return abstract_addr(name);
    }
    if bytes.contains(&b':') && !bytes.starts_with(b"/") {
        // systemd's `vsock:CID:PORT` and the like: not a Unix socket.
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "not a Unix socket address",
        ));
    }
    SocketAddr::from_pathname(s)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets are Linux-only",
    ))
}

/// A value must not contain a newline: that would start a new assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares
/// `MONOTONIC_USEC` against.
fn monotonic_usec() -> u64 {
    let Ok(ts) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return 0;
    };
    let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    static SEQ: AtomicU32 = AtomicU32::new(0);

    fn tempdir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "mailroom-sdnotify-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn receiver(sock: &UnixDatagram) {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }

    #[test]
    fn datagrams_arrive_in_order_with_exact_contents() {
        let d = tempdir();
        let path = d.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        receiver(&rx);

        let n = Notifier::with_socket(&path, Some(60_000_000));
        n.ready("3 running, 12 pending");
        n.status("2 running,\n5 pending");
        n.watchdog();
        n.stopping();
        n.reloaded();

        assert_eq!(recv(&rx), "READY=1\nSTATUS=3 running, 12 pending");
        assert_eq!(recv(&rx), "STATUS=2 running, 5 pending");
        assert_eq!(recv(&rx), "WATCHDOG=1");
        assert_eq!(recv(&rx), "STOPPING=1");
        assert_eq!(recv(&rx), "READY=1");
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(30)));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let d = tempdir();
        let path = d.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        receiver(&rx);

        let before = monotonic_usec();
        Notifier::with_socket(&path, None).reloading();
        let after = monotonic_usec();

        let msg = recv(&rx);
        let usec: u64 = msg
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("unexpected {msg:?}"))
            .parse()
            .unwrap();
        assert!(
            before <= usec && usec <= after,
            "{before} <= {usec} <= {after}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn abstract_socket_names_are_parsed_and_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "mailroom-sdnotify-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let addr = parse_addr(OsStr::new(&format!("@{name}"))).unwrap();
        assert_eq!(addr.as_abstract_name(), Some(name.as_bytes()));
        assert!(addr.as_pathname().is_none());

        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        receiver(&rx);
        let n = Notifier::from_vars(Some(format!("@{name}").into()), None, None, 1).unwrap();
        n.status("abstract");
        assert_eq!(recv(&rx), "STATUS=abstract");
    }

    #[test]
    fn path_addresses_are_parsed() {
        let addr = parse_addr(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            addr.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(parse_addr(OsStr::new("")).is_err());
        assert!(parse_addr(OsStr::new("vsock:2:1234")).is_err());
        assert!(parse_addr(OsStr::new(&format!("/{}", "x".repeat(200)))).is_err());
    }

    #[test]
    fn environment_rules() {
        let sock = || Some(OsString::from("/run/systemd/notify"));
        let usec = || Some(OsString::from("10000000"));
        // No socket, or an empty or unusable one: not under systemd.
        assert!(Notifier::from_vars(None, usec(), None, 42).is_none());
        assert!(Notifier::from_vars(Some("".into()), usec(), None, 42).is_none());
        assert!(Notifier::from_vars(Some("vsock:2:1".into()), usec(), None, 42).is_none());
        // Watchdog without WATCHDOG_PID, or with ours: half the period.
        let n = Notifier::from_vars(sock(), usec(), None, 42).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        let n = Notifier::from_vars(sock(), usec(), Some("42".into()), 42).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        // Someone else's watchdog, a bad or zero value, none at all: no watchdog.
        let n = Notifier::from_vars(sock(), usec(), Some("41".into()), 42).unwrap();
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::from_vars(sock(), Some("soon".into()), None, 42).unwrap();
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::from_vars(sock(), Some("0".into()), None, 42).unwrap();
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::from_vars(sock(), None, None, 42).unwrap();
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn sending_never_fails_or_blocks() {
        let d = tempdir();
        let path = d.join("nobody-listens.sock");
        // Nobody bound: ECONNREFUSED/ENOENT, ignored.
        let n = Notifier::with_socket(&path, None);
        n.ready("x");
        n.watchdog();
        // A receiver that never reads: the queue fills, sends return EAGAIN
        // instead of blocking.
        let _rx = UnixDatagram::bind(&path).unwrap();
        for _ in 0..10_000 {
            n.watchdog();
        }
        // An unusable address: every send is a no-op.
        Notifier::with_socket("", None).stopping();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn notifier_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Notifier>();
    }
}
