//! The supervisor registry: `tasks/supervisors/<host>.<pid>.json`, one
//! heartbeat file per running supervisor, rewritten every few seconds and
//! removed when it stops. It lets `status` tell "busy" from "nobody is
//! running", and `wait` say so at once instead of hanging. Advisory only: no
//! decision of the protocol rests on it (locks and keepers do that).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::tree::layout::Layout;
use crate::tree::{books, fsx};

/// How often a supervisor rewrites its heartbeat.
pub const BEAT: Duration = Duration::from_secs(5);

/// A heartbeat older than this (on another host, where the pid cannot be
/// checked) means the supervisor is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(20);

/// One supervisor's heartbeat file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host: String,
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc), with `pid` the process's identity.
    pub start: u64,
    /// mailroom's version.
    pub version: String,
    pub protocol: u32,
    pub started_at: String,
    pub last_beat: String,
    pub running: usize,
    pub pending: usize,
    /// The dashboard it serves (`serve:`), as the URL it is bound to: with
    /// `listen: ...:0` only the supervisor knows the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<String>,
    /// Until when and why it claims nothing new: a run it could not
    /// prepare (a full disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims_held: Option<ClaimsHeld>,
}

/// A hold of new claims, in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimsHeld {
    /// RFC 3339.
    pub until: String,
    pub why: String,
}

/// The registry's directory.
pub fn dir(layout: &Layout) -> PathBuf {
    layout.tasks.join("supervisors")
}

/// A host name as it is spelled in heartbeat file names.
fn host_in_name(host: &str) -> String {
    // Host names are not file names: keep what is safe.
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn file(layout: &Layout, host: &str, pid: u32) -> PathBuf {
    dir(layout).join(format!("{}.{pid}.json", host_in_name(host)))
}

/// The heartbeat files named for `host` (one listing, no file read), as
/// (pid, path): what a supervisor looks at to find its peers on its host.
pub fn local(layout: &Layout, host: &str) -> Vec<(u32, PathBuf)> {
    let prefix = format!("{}.", host_in_name(host));
    let mut v = Vec::new();
    let d = dir(layout);
    let _ = fsx::for_each_name(&d, |name| {
        if let Some(pid) = pid_in(name, &prefix) {
            v.push((pid, d.join(std::ffi::OsStr::from_bytes(name))));
        }
    });
    v
}

/// The pid a heartbeat file's name gives, when it is named for `host`.
pub fn local_pid(file_name: &std::ffi::OsStr, host: &str) -> Option<u32> {
    pid_in(file_name.as_bytes(), &format!("{}.", host_in_name(host)))
}

fn pid_in(name: &[u8], prefix: &str) -> Option<u32> {
    std::str::from_utf8(name)
        .ok()
        .and_then(|n| n.strip_prefix(prefix)?.strip_suffix(".json"))
        .and_then(|p| p.parse::<u32>().ok())
}

/// Writes (or rewrites) this supervisor's heartbeat: atomically, never
/// fsynced. A heartbeat says "this process is up"; a host crash ends the
/// process too, and a heartbeat it left stale, old or missing says the same.
/// An fsync here cost the scheduling thread up to seconds every 5 s on a
/// busy disk.
pub fn beat(layout: &Layout, hb: &Heartbeat) -> std::io::Result<()> {
    fsx::create_dir_all(&dir(layout))?;
    let bytes = serde_json::to_vec_pretty(hb).map_err(std::io::Error::other)?;
    fsx::write_atomic_volatile(&file(layout, &hb.host, hb.pid), &bytes)
}

/// Removes this supervisor's heartbeat (at a clean exit).
pub fn remove(layout: &Layout, host: &str, pid: u32) {
    let _ = std::fs::remove_file(file(layout, host, pid));
}

/// Whether a supervisor is still there: on this host, by its pid and start
/// time; on another, by the age of its last beat.
pub fn alive(hb: &Heartbeat, this_host: &str, now: SystemTime) -> bool {
    if hb.host == this_host {
        return books::same_process(hb.pid, hb.start);
    }
    beat_age(hb, now).is_some_and(|age| age <= STALE_AFTER)
}

/// How long ago `hb` last beat; a beat in the future (a host whose clock is
/// ahead) is a beat just now. None: unreadable.
pub fn beat_age(hb: &Heartbeat, now: SystemTime) -> Option<Duration> {
    crate::model::record::parse_ts(&hb.last_beat)
        .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
}

/// How long the heartbeat of a supervisor that is gone (killed, or its host
/// lost) stays for `status` to name, after its last beat.
pub const KEEP_GONE: Duration = Duration::from_secs(3600);

/// Removes the heartbeats of supervisors that are gone and last beat more
/// than [`KEEP_GONE`] ago: a supervisor killed or lost never removes its own,
/// and they would pile up for ever. Called by live supervisors.
pub fn prune(layout: &Layout) {
    let now = SystemTime::now();
    for (hb, live) in list(layout) {
        let old = beat_age(&hb, now).is_some_and(|age| age > KEEP_GONE);
        if !live && old {
            remove(layout, &hb.host, hb.pid);
        }
    }
}

/// Whether any supervisor of the tree is alive (per its heartbeat).
pub fn any_alive(layout: &Layout) -> bool {
    // Read one file at a time, up to the first live one: `add` asks this.
    let host = books::hostname();
    let now = SystemTime::now();
    heartbeats(layout).any(|hb| alive(&hb, &host, now))
}

/// The registry's heartbeats, each read as the iterator gets to it.
fn heartbeats(layout: &Layout) -> impl Iterator<Item = Heartbeat> {
    std::fs::read_dir(dir(layout))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|f| f.ends_with(".json") && !f.starts_with('.'))
        })
        .filter_map(|e| read(&e.path()))
}

/// Every heartbeat in the registry, each with whether its supervisor is alive.
pub fn list(layout: &Layout) -> Vec<(Heartbeat, bool)> {
    let host = books::hostname();
    let now = SystemTime::now();
    let mut v: Vec<(Heartbeat, bool)> = heartbeats(layout)
        .map(|hb| {
            let live = alive(&hb, &host, now);
            (hb, live)
        })
        .collect();
    v.sort_by(|a, b| (&a.0.host, a.0.pid).cmp(&(&b.0.host, b.0.pid)));
    v
}

/// The heartbeat in file `p`, if it reads as one.
pub fn read(p: &Path) -> Option<Heartbeat> {
    let (b, _) = fsx::read_head(p, 64 * 1024).ok()?;
    serde_json::from_slice(&b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(host: &str, pid: u32, start: u64, last: SystemTime) -> Heartbeat {
        Heartbeat {
            host: host.into(),
            pid,
            start,
            version: "0".into(),
            protocol: 2,
            started_at: crate::model::record::ts(last),
            last_beat: crate::model::record::ts(last),
            running: 0,
            pending: 0,
            dashboard: None,
            claims_held: None,
        }
    }

    #[test]
    fn liveness_by_pid_here_and_by_age_elsewhere() {
        let now = SystemTime::now();
        let me = std::process::id();
        let start = books::proc_start_time(me).unwrap();
        assert!(alive(&hb("here", me, start, now), "here", now));
        // Same pid, other start time: a later process reusing the pid.
        assert!(!alive(&hb("here", me, start + 1, now), "here", now));
        assert!(alive(
            &hb("there", 1, 0, now - Duration::from_secs(5)),
            "here",
            now
        ));
        // A host whose clock is ahead beats "in the future": alive.
        assert!(alive(
            &hb("there", 1, 0, now + Duration::from_secs(30)),
            "here",
            now
        ));
        assert!(!alive(
            &hb("there", 1, 0, now - STALE_AFTER * 2),
            "here",
            now
        ));
    }

    #[test]
    fn prune_removes_only_heartbeats_gone_for_long() {
        let tmp = std::env::temp_dir().join(format!("mailroom-prune-{}", std::process::id()));
        let layout = Layout::new(&tmp);
        let now = SystemTime::now();
        let old = now - KEEP_GONE - Duration::from_secs(60);
        let me = std::process::id();
        let my_start = books::proc_start_time(me).unwrap();
        let here = books::hostname();
        for h in [
            hb(&here, me, my_start, old), // alive, however old its beat
            hb("elsewhere", 7, 1, now),   // another host, beating
            hb("elsewhere", 8, 1, old),   // another host, gone long ago
            hb("ahead", 9, 1, now + Duration::from_secs(30)), // a clock ahead
            hb(&here, 999_999_999, 1, now), // gone, but just now
            hb(&here, 999_999_998, 1, old), // gone long ago
        ] {
            beat(&layout, &h).unwrap();
        }
        prune(&layout);
        let mut left: Vec<(String, u32)> = list(&layout)
            .into_iter()
            .map(|(h, _)| (h.host, h.pid))
            .collect();
        left.sort();
        let mut want = vec![
            (here.clone(), me),
            ("elsewhere".to_owned(), 7),
            ("ahead".to_owned(), 9),
            (here.clone(), 999_999_999),
        ];
        want.sort();
        assert_eq!(left, want);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
