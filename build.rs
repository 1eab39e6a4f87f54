//! The build identity both binaries embed (`MAILROOM_BUILD_ID`): a hash of
//! the sources, the manifest and the lock file. The supervisor starts the
//! small `mailroom-keeper` binary only when it reports the same identity
//! (`mailroom-keeper --identity`), so a keeper left over from another build
//! of the same version is never used. A hash of the sources rather than a
//! time stamp: two builds of one source tree agree (reproducible builds),
//! and any change to the code gives a new identity.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rerun-if-changed=src");
    println!("cargo::rerun-if-changed=Cargo.toml");
    println!("cargo::rerun-if-changed=Cargo.lock");
    let mut files = Vec::new();
    collect(Path::new("src"), &mut files);
    files.sort();
    files.push("Cargo.toml".into());
    files.push("Cargo.lock".into());
    let mut h = Fnv::new();
    for f in &files {
        // A missing lock file (a library build) counts as empty.
        let body = std::fs::read(f).unwrap_or_default();
        h.feed(f.to_string_lossy().as_bytes());
        h.feed(&[0]);
        h.feed(&(body.len() as u64).to_le_bytes());
        h.feed(&body);
    }
    println!("cargo::rustc-env=MAILROOM_BUILD_ID={:016x}", h.0);
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => collect(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// FNV-1a, 64 bits: no dependency, and the same on every platform and
/// compiler version (the standard library's hasher promises neither).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
