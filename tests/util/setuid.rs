//! A setuid-root helper program, built from C with the system compiler when a test first asks
//! for it, for tests that check that a process which turns into a setuid-root program cannot
//! be read or written on the strength of who it was before.
//!
//! The program (`cc -no-pie -O0`, so that its static buffers have fixed addresses) has two
//! initialised static buffers:
//!
//! - `secret`: 4096 bytes starting with [`SETUID_SECRET`];
//! - `block`: 4096 bytes, 8-byte aligned, that the test may fill (`block HEX`) with what it
//!   wants a reader to find there, such as a probe block.
//!
//! Run as:
//!
//! - `helper addr`: prints `SECRET_ADDR BLOCK_ADDR` (hexadecimal, `0x...`) and exits;
//! - `helper ids`: prints `RUID EUID` and exits;
//! - `helper` or `helper block HEX`: copies the bytes HEX encodes (if any) into `block`, prints
//!   `ready`, then sleeps until killed.
//!
//! [`setuid_helper`] returns `None` (and says why on stderr) when the helper cannot be made to
//! work: not root, no `cc`, a compiler without `-no-pie`, or a filesystem that ignores the
//! setuid bit.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The marker string at the start of the helper's `secret` buffer.
pub const SETUID_SECRET: &str = "tokio-pvm setuid secret: 5b1e7d0c9a";

/// Size of each of the helper's two static buffers.
pub const BUFFER_LEN: usize = 4096;

/// The C source of the helper.
const SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char secret[4096] = "@SECRET@";
unsigned long long block[512] = { 1 };

static int hex(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "addr") == 0) {
        printf("%#lx %#lx\n", (unsigned long)secret, (unsigned long)block);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "ids") == 0) {
        printf("%u %u\n", (unsigned)getuid(), (unsigned)geteuid());
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "block") == 0) {
        const char *h = argv[2];
        size_t n = strlen(h) / 2;
        unsigned char *out = (unsigned char *)block;
        if (n > sizeof block) return 2;
        for (size_t i = 0; i < n; i++) {
            int hi = hex(h[2 * i]), lo = hex(h[2 * i + 1]);
            if (hi < 0 || lo < 0) return 2;
            out[i] = (unsigned char)(hi * 16 + lo);
        }
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"#;

/// The built helper: a setuid-root executable that every user may run.
#[derive(Debug, Clone)]
pub struct SetuidHelper {
    /// The executable (owner root, mode 4755), in a directory every user can traverse.
    pub path: PathBuf,
    /// Where `secret` is in every process running it.
    pub secret_addr: u64,
    /// Where `block` is in every process running it.
    pub block_addr: u64,
}

impl SetuidHelper {
    /// A command that runs the helper and sleeps, `block` filled with `block` (empty: left as
    /// it is), stdout piped (it prints `ready` once `block` is filled).
    pub fn command(&self, block: &[u8]) -> Command {
        let mut cmd = Command::new(&self.path);
        if !block.is_empty() {
            cmd.arg("block").arg(hex(block));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        cmd
    }

    /// The shell command line that `exec`s the helper as [`SetuidHelper::command`] runs it,
    /// for a process that is to turn into the helper.
    pub fn exec_line(&self, block: &[u8]) -> String {
        let path = self.path.to_str().expect("the helper's path is UTF-8");
        if block.is_empty() {
            format!("exec {path}")
        } else {
            format!("exec {path} block {}", hex(block))
        }
    }
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The helper, built once per test process; `None` (with the reason on stderr) when it cannot
/// be built or does not run as root when started by uid 65534.
pub fn setuid_helper() -> Option<SetuidHelper> {
    static HELPER: OnceLock<Result<SetuidHelper, String>> = OnceLock::new();
    match HELPER.get_or_init(build) {
        Ok(helper) => Some(helper.clone()),
        Err(why) => {
            eprintln!("skipped: no setuid-root helper: {why}");
            None
        }
    }
}

fn build() -> Result<SetuidHelper, String> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        return Err("making a setuid-root program needs root".into());
    }
    let dir = super::temp_dir("setuid");
    // Every user must be able to reach the program, no one else to replace it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod 0755 {}: {e}", dir.display()))?;
    let source = dir.join("helper.c");
    let path = dir.join("helper");
    std::fs::write(&source, SOURCE.replace("@SECRET@", SETUID_SECRET))
        .map_err(|e| format!("writing {}: {e}", source.display()))?;
    let out = Command::new("cc")
        .args(["-no-pie", "-O0", "-o"])
        .arg(&path)
        .arg(&source)
        .output()
        .map_err(|e| format!("running cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc -no-pie -O0 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::os::unix::fs::chown(&path, Some(0), Some(0))
        .map_err(|e| format!("chown root {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4755))
        .map_err(|e| format!("chmod 4755 {}: {e}", path.display()))?;

    let run = |arg: &str, uid: Option<u32>| -> Result<String, String> {
        let mut cmd = Command::new(&path);
        cmd.arg(arg).stdin(Stdio::null());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("running {} {arg}: {e}", path.display()))?;
        if !out.status.success() {
            return Err(format!("{} {arg} failed: {}", path.display(), out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let ids = run("ids", Some(65534))?;
    if ids != "65534 0" {
        return Err(format!(
            "started by uid 65534 it runs as (ruid euid) {ids}, not 65534 0: the filesystem of \
             {} ignores the setuid bit (nosuid?)",
            dir.display()
        ));
    }
    let addrs = run("addr", None)?;
    let parse = |s: Option<&str>| {
        s.and_then(|s| s.strip_prefix("0x"))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    };
    let mut words = addrs.split_whitespace();
    let (Some(secret_addr), Some(block_addr)) = (parse(words.next()), parse(words.next())) else {
        return Err(format!("unexpected output of `helper addr`: {addrs:?}"));
    };
    // Non-PIE: the same addresses in every run. Check it rather than trust it.
    if run("addr", Some(65534))? != addrs {
        return Err("the helper's buffers move between runs (built as PIE?)".into());
    }
    Ok(SetuidHelper {
        path,
        secret_addr,
        block_addr,
    })
}
