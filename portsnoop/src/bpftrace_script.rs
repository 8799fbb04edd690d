//! An equivalent bpftrace script, for users who want to tinker: the same
//! syscalls (filtered by pid) and the same evloop probes, printed one line
//! per event. Much slower than portsnoop (bpftrace formats every event in
//! userland), but easy to change.

use std::fmt::Write;
use std::path::Path;

use crate::event::SyscallName;

/// A path that cannot go into a script: it names the executable in probe
/// specs and a comment, and the script is run as root, so a newline or a
/// quote in it would add lines of someone else's choosing.
#[derive(Debug)]
pub struct UnsafePath(pub String);

impl std::fmt::Display for UnsafePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cannot be written into a bpftrace script safely: use a path of letters, digits and /._+-@~,= \
             (a symlink will do)",
            self.0
        )
    }
}

impl std::error::Error for UnsafePath {}

/// The script for `pid` (or `$1`, to be given on bpftrace's command line)
/// running `exe`.
pub fn script(pid: Option<u32>, exe: &Path) -> Result<String, UnsafePath> {
    let pid = pid.map_or("$1".to_string(), |p| p.to_string());
    let shown = crate::output::escape::path(exe);
    let exe = exe
        .to_str()
        .filter(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._+-@~,=".contains(&b))
        })
        .ok_or(UnsafePath(shown))?;
    let fd_calls: Vec<String> = SyscallName::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let list = |kind: &str, names: &[String]| -> String {
        names
            .iter()
            .map(|n| format!("tracepoint:syscalls:sys_{kind}_{n}"))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    let waits: Vec<String> = ["epoll_wait", "epoll_pwait", "epoll_pwait2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut s = String::new();
    let _ = writeln!(s, "#!/usr/bin/env bpftrace");
    let _ = writeln!(s, "// portsnoop --bpftrace: {exe}, pid {pid}");
    let _ = writeln!(
        s,
        "// Run: bpftrace -p PID this-file   (USDT probes need -p and the full binary path)"
    );
    let _ = writeln!(s, "BEGIN {{ printf(\"%-16s %-7s %-24s %5s %s\\n\", \"TIME(ns)\", \"TID\", \"EVENT\", \"FD\", \"DETAILS\"); }}\n");
    let _ = writeln!(
        s,
        "{}\n/pid == {pid}/\n{{ @fd[tid] = args->fd; @ts[tid] = nsecs; }}\n",
        list("enter", &fd_calls)
    );
    let _ = writeln!(
        s,
        "{}\n/pid == {pid} && @ts[tid]/\n{{\n  printf(\"%-16lu %-7d %-24s %5d = %d (%d ns)\\n\", @ts[tid], tid, probe, @fd[tid], args->ret, nsecs - @ts[tid]);\n  delete(@fd[tid]); delete(@ts[tid]);\n}}\n",
        list("exit", &fd_calls)
    );
    let _ = writeln!(s, "tracepoint:syscalls:sys_enter_epoll_ctl\n/pid == {pid}/\n{{ printf(\"%-16lu %-7d %-24s %5d op %d events 0x%x\\n\", nsecs, tid, probe, args->fd, args->op, args->event->events); }}\n");
    let _ = writeln!(
        s,
        "{}\n/pid == {pid}/\n{{ @wts[tid] = nsecs; }}\n",
        list("enter", &waits)
    );
    let _ = writeln!(
        s,
        "{}\n/pid == {pid} && @wts[tid]/\n{{ printf(\"%-16lu %-7d %-24s %5s %d events\\n\", @wts[tid], tid, probe, \"-\", args->ret); delete(@wts[tid]); }}\n",
        list("exit", &waits)
    );
    let usdt = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("usdt:{exe}:evloop:{n}"))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    let _ =
        writeln!(
        s,
        "{}\n{{ printf(\"%-16lu %-7d %-24s %5d len %d\\n\", nsecs, tid, probe, arg0, arg2); }}\n",
        usdt(&["eventer-accept-entry", "eventer-read-entry", "eventer-write-entry"])
    );
    let _ = writeln!(
        s,
        "{}\n{{ printf(\"%-16lu %-7d %-24s %5d = %d\\n\", nsecs, tid, probe, arg0, arg5); }}\n",
        usdt(&[
            "eventer-accept-return",
            "eventer-read-return",
            "eventer-write-return"
        ])
    );
    let _ = writeln!(
        s,
        "{}\n{{ printf(\"%-16lu %-7d %-24s %5d\\n\", nsecs, tid, probe, arg0); }}\n",
        usdt(&["eventer-close-entry"])
    );
    let _ = writeln!(
        s,
        "{}\n{{ printf(\"%-16lu %-7d %-24s %5d = %d\\n\", nsecs, tid, probe, arg0, arg3); }}\n",
        usdt(&["eventer-close-return"])
    );
    let _ = writeln!(
        s,
        "{}\n{{ printf(\"%-16lu %-7d %-24s %5d %s mask 0x%x\\n\", nsecs, tid, probe, arg3, str(arg2), arg4); }}\n",
        usdt(&["eventer-callback-entry"])
    );
    let _ = writeln!(
        s,
        "{}\n{{ printf(\"%-16lu %-7d %-24s %5s %s = 0x%x\\n\", nsecs, tid, probe, \"-\", str(arg2), arg3); }}",
        usdt(&["eventer-callback-return"])
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_could_add_lines_is_refused() {
        let ok = script(Some(7), Path::new("/opt/app-1.2/bin/echo_mio")).unwrap();
        assert!(ok.contains("usdt:/opt/app-1.2/bin/echo_mio:evloop:"));
        for bad in [
            "/tmp/a\nEND { system(\"id\") }",
            "/tmp/a\"b",
            "/tmp/a b",
            "/tmp/a:b",
        ] {
            let e = script(Some(7), Path::new(bad)).unwrap_err();
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
