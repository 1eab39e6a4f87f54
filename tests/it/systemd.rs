//! The systemd notify protocol, through a fake NOTIFY_SOCKET: READY after the
//! first scan, STATUS as things change, WATCHDOG from the main loop, RELOADING
//! then READY on SIGHUP, STOPPING on SIGTERM; and agents never see the socket.

use crate::common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn recv_until(
    sock: &UnixDatagram,
    within: Duration,
    mut want: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out; got {got:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{e}; got {got:?}"));
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = want(&m);
        got.push(m);
        if done {
            return got;
        }
    }
}

#[test]
fn notify_messages_arrive_in_order_and_agents_do_not_see_the_socket() {
    let root = Root::new().agent_config(&[&agent("env.sh")], "");
    let sock_path = root.p("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let sup = root.spawn_with(&[
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let first = recv_until(&sock, Duration::from_secs(30), |_| true);
    assert!(
        first[0].starts_with("READY=1\nSTATUS=0 running, 0 pending"),
        "{first:?}"
    );
    // Watchdog pings at half of WATCHDOG_USEC.
    let got = recv_until(&sock, Duration::from_secs(10), |m| m == "WATCHDOG=1");
    assert!(
        got.iter()
            .all(|m| m == "WATCHDOG=1" || m.starts_with("STATUS=")),
        "{got:?}"
    );

    root.write("tasks/pending/job.yaml", "description: env\n");
    wait_for(Duration::from_secs(30), "the task to complete", || {
        root.names("completed") == ["job"]
    });
    let env = root.read("job.fullenv");
    assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
    assert!(!env.contains("WATCHDOG_USEC"), "{env}");
    assert!(env.contains("MAILROOM_TASK=job"));

    sup.signal(SIGHUP);
    let got = recv_until(&sock, Duration::from_secs(10), |m| m == "READY=1");
    let reloading = got
        .iter()
        .position(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert!(reloading.is_some(), "{got:?}");
    assert_eq!(got.last().unwrap(), "READY=1");

    sup.signal(SIGTERM);
    let got = recv_until(&sock, Duration::from_secs(10), |m| m == "STOPPING=1");
    assert_eq!(got.last().unwrap(), "STOPPING=1");
    let mut sup = sup;
    assert!(sup.wait_exit(Duration::from_secs(20)).success());
}
