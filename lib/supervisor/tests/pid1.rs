//! PID 1 conditions in an ordinary process: the only thread blocks SIGCHLD,
//! SIGTERM, SIGINT and SIGHUP and hands over a real signalfd; the process is a
//! child subreaper and the supervisor reaps every child (`reap_orphans`).
//! `harness = false`: no test threads whose children could be reaped by it.
// A test (plain `main`, so clippy's allow-unwrap-in-tests does not apply).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use bramble_supervisor::{
    ExitStatus, Options, RestartPolicy, ServiceState, Shutdown, Supervisor, signals,
};
use common::*;
use rustix::process::{Signal, WaitOptions, getpid};

fn main() {
    let signal_fd = signals::block_and_open().expect("signalfd");
    rustix::process::set_child_subreaper(Some(getpid())).expect("subreaper");

    let mut mask = sh("mask", "grep -E '^Sig(Blk|Ign)' /proc/self/status");
    mask.restart = RestartPolicy::Never;
    let mut exiter = sh("exiter", "exit 7");
    exiter.restart = RestartPolicy::Never;
    let mut svc = sh("svc", "echo READY=1 >&$BRAMBLE_READY_FD; exec sleep 100");
    svc.notify_ready = true;
    let opts = Options {
        signal_fd: Some(signal_fd),
        reap_orphans: true,
        ..Options::default()
    };
    let mut s = Supervisor::new(vec![mask, exiter, svc], opts).expect("supervisor");

    assert!(wait_for(&mut s, LONG, |s| {
        is(s, "mask", ServiceState::Exited(ExitStatus::Code(0)))
            && is(s, "exiter", ServiceState::Exited(ExitStatus::Code(7)))
            && is(s, "svc", ServiceState::Ready)
    }));

    // Children start with an empty signal mask and default dispositions even
    // though the supervisor's thread blocks signals.
    let lines: Vec<String> = s
        .logs("mask", 10)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert!(
        lines.contains(&"SigBlk:\t0000000000000000".to_string()),
        "{lines:?}"
    );
    // (Only standard signals 1-31: realtime ones may be ignored by whatever
    // started this test, and that is inherited, not our doing.)
    let ign = lines
        .iter()
        .find_map(|l| l.strip_prefix("SigIgn:\t"))
        .unwrap();
    let ign = u64::from_str_radix(ign, 16).unwrap();
    assert_eq!(ign & 0x7fff_ffff, 0, "{lines:?}");

    // An orphan: reparented to this (subreaper) process, reaped on SIGCHLD,
    // its status discarded.
    let out = Command::new("/bin/sh")
        .args(["-c", "/bin/sleep 0.3 >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("sh");
    let orphan: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    let proc_dir = format!("/proc/{orphan}");
    assert!(
        wait_for(&mut s, LONG, |_| !Path::new(&proc_dir).exists()),
        "orphan not reaped"
    );
    assert!(is(&s, "svc", ServiceState::Ready));

    // SIGTERM → orderly poweroff.
    rustix::process::kill_process(getpid(), Signal::TERM).expect("kill");
    assert_eq!(s.run_until(Instant::now() + LONG), Some(Shutdown::PowerOff));
    let st = s.status("svc").unwrap();
    assert_eq!(st.state, ServiceState::Stopped);
    assert_eq!(st.last_exit, Some(ExitStatus::Signal(15)));

    // Nothing is left to reap: no zombies.
    assert_eq!(
        rustix::process::wait(WaitOptions::NOHANG).err(),
        Some(rustix::io::Errno::CHILD)
    );
    println!("pid1: ok");
}
