//! Restart policies, backoff, crash loop, dependencies, conditions, stopping.
//! Real child processes; every test bounded; timing asserted with lower bounds
//! (timers never fire early) and generous upper bounds only.

mod common;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use bramble_supervisor::{
    ExitStatus, Options, RestartPolicy, ServiceDef, ServiceState, Shutdown, Supervisor, signals,
};
use common::*;

fn sup(defs: Vec<ServiceDef>) -> Supervisor {
    Supervisor::new(defs, Options::default()).expect("valid definitions")
}

#[test]
fn crash_restarts_with_growing_backoff() {
    let mut d = ServiceDef::new("crash", ["/usr/bin/false"]);
    d.restart_delay = Duration::from_millis(100);
    d.restart_delay_max = Duration::from_secs(10);
    d.crash_loop_restarts = 100;
    let mut s = sup(vec![d]);
    assert!(wait_for(&mut s, LONG, |s| start_times(s, "crash").len() >= 5));
    let starts = start_times(&s, "crash");
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Scheduled delays: 100, 200, 400, 800 ms. A timer never fires early.
    for (k, g) in gaps.iter().take(4).enumerate() {
        let want = Duration::from_millis(100 << k);
        assert!(*g >= want, "gap {k} = {g:?} < {want:?}; gaps {gaps:?}");
    }
    assert!(
        gaps[3] > gaps[0] && gaps[2] > gaps[0],
        "gaps do not grow: {gaps:?}"
    );
    let st = s.status("crash").unwrap();
    assert!(st.restarts >= 4);
    assert_eq!(st.last_exit, Some(ExitStatus::Code(1)));
    shutdown(&mut s);
}

#[test]
fn crash_loop_keeps_retrying_at_max_delay() {
    let mut d = ServiceDef::new("loop", ["/usr/bin/false"]);
    d.restart_delay = Duration::from_millis(20);
    d.restart_delay_max = Duration::from_millis(300);
    d.crash_loop_restarts = 3;
    d.crash_loop_window = Duration::from_secs(600);
    let mut s = sup(vec![d]);
    assert!(wait_for(&mut s, LONG, |s| matches!(
        state(s, "loop"),
        ServiceState::CrashLoop { .. }
    )));
    let st = s.status("loop").unwrap();
    assert_eq!(st.restarts, 4, "crash loop after more than 3 restarts");
    assert!(st.next_restart_in.unwrap() <= Duration::from_millis(300));
    // It never gives up: more attempts follow, each after the max delay.
    let before = start_times(&s, "loop").len();
    assert!(wait_for(&mut s, LONG, |s| start_times(s, "loop").len() >= before + 2));
    let starts = start_times(&s, "loop");
    for w in starts[before - 1..].windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(300),
            "{:?}",
            w[1] - w[0]
        );
    }
    // Restarts are counted when scheduled, starts when they happen.
    assert!(s.status("loop").unwrap().restarts as usize > before);
    let crash_loops = transitions(&s, "loop")
        .iter()
        .filter(|e| matches!(e.to, Some(ServiceState::CrashLoop { .. })))
        .count();
    assert!(crash_loops >= 2);
    shutdown(&mut s);
}

#[test]
fn restart_policies() {
    let def = |name: &str, script: &str, policy| {
        let mut d = sh(name, script);
        d.restart = policy;
        d.restart_delay = Duration::from_millis(20);
        d.restart_delay_max = Duration::from_millis(40);
        d.crash_loop_restarts = 1000;
        d
    };
    let mut s = sup(vec![
        def("onfail-ok", "exit 0", RestartPolicy::OnFailure),
        def("onfail-bad", "exit 3", RestartPolicy::OnFailure),
        def("never-bad", "exit 3", RestartPolicy::Never),
        def("always-ok", "exit 0", RestartPolicy::Always),
        def("signalled", "kill -KILL $$", RestartPolicy::OnFailure),
    ]);
    assert!(wait_for(&mut s, LONG, |s| {
        ["onfail-bad", "always-ok", "signalled"]
            .iter()
            .all(|n| s.status(n).unwrap().restarts >= 3)
            && is(s, "onfail-ok", ServiceState::Exited(ExitStatus::Code(0)))
            && is(s, "never-bad", ServiceState::Exited(ExitStatus::Code(3)))
    }));
    // Give the non-restarting ones ample time to (wrongly) restart.
    run_for(&mut s, Duration::from_millis(300));
    assert_eq!(s.status("onfail-ok").unwrap().restarts, 0);
    assert_eq!(start_times(&s, "onfail-ok").len(), 1);
    assert_eq!(s.status("never-bad").unwrap().restarts, 0);
    assert_eq!(start_times(&s, "never-bad").len(), 1);
    assert_eq!(
        s.status("signalled").unwrap().last_exit,
        Some(ExitStatus::Signal(9))
    );
    shutdown(&mut s);
}

#[test]
fn spawn_failure_is_reported_and_retried() {
    let mut retry = ServiceDef::new("missing", ["/nonexistent/bramble-test"]);
    retry.restart_delay = Duration::from_millis(20);
    let mut never = ServiceDef::new("missing-never", ["/nonexistent/bramble-test"]);
    never.restart = RestartPolicy::Never;
    let mut s = sup(vec![retry, never]);
    assert!(wait_for(&mut s, LONG, |s| s
        .status("missing")
        .unwrap()
        .restarts
        >= 2
        && is(s, "missing-never", ServiceState::Failed)));
    let st = s.status("missing").unwrap();
    assert!(
        st.last_error
            .unwrap()
            .contains("cannot spawn /nonexistent/bramble-test")
    );
    assert!(s.status("missing-never").unwrap().next_restart_in.is_none());
    shutdown(&mut s);
}

#[test]
fn dependencies_start_after_ready() {
    let a = notifying("a", "0.3");
    let mut b = notifying("b", "0.1");
    b.after = vec!["a".into()];
    let mut c = sh("c", "exec sleep 100");
    c.after = vec!["b".into()];
    // Definition order deliberately reversed.
    let mut s = sup(vec![c, b, a]);
    s.step(Duration::ZERO);
    assert!(is(&s, "a", ServiceState::Running));
    assert!(is(&s, "b", ServiceState::Waiting) && is(&s, "c", ServiceState::Waiting));
    assert!(pid(&s, "b").is_none());
    assert!(wait_for(&mut s, LONG, all_ready));
    let a_ready = first_seq(&s, "a", "ready").unwrap();
    let b_start = first_seq(&s, "b", "starting").unwrap();
    let b_ready = first_seq(&s, "b", "ready").unwrap();
    let c_start = first_seq(&s, "c", "starting").unwrap();
    assert!(a_ready < b_start && b_ready < c_start);
    // B waited for at least A's 0.3 s.
    let t = |n: &str, to: ServiceState| {
        transitions(&s, n)
            .into_iter()
            .find(|e| e.to == Some(to))
            .unwrap()
            .at
    };
    assert!(
        t("b", ServiceState::Starting) - t("a", ServiceState::Starting)
            >= Duration::from_millis(300)
    );
    let reasons: Vec<String> = s
        .events_since(0)
        .into_iter()
        .filter(|e| e.service.as_deref() == Some("c") && e.to.is_none())
        .map(|e| e.message)
        .collect();
    assert_eq!(reasons, ["waiting for b"]);
    shutdown(&mut s);
}

#[test]
fn condition_path_appearing_later() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("online");
    let mut d = sh("cond", "exec sleep 100");
    d.conditions = vec![flag.clone()];
    let mut s = sup(vec![d]);
    run_for(&mut s, Duration::from_millis(500));
    assert!(is(&s, "cond", ServiceState::Waiting));
    assert!(pid(&s, "cond").is_none());
    let msg = s.events_since(0)[0].message.clone();
    assert!(
        msg.contains("waiting for condition") && msg.contains("online"),
        "{msg}"
    );
    let t0 = Instant::now();
    std::fs::write(&flag, "").unwrap();
    assert!(wait_for(&mut s, LONG, |s| is(
        s,
        "cond",
        ServiceState::Ready
    )));
    // Re-checked every 200 ms (the default `condition_poll_interval`): the
    // start follows the path's appearance by about one interval, never
    // precedes it, and is not left to some later, slower re-check.
    let started = start_times(&s, "cond");
    assert_eq!(started.len(), 1, "{started:?}");
    let picked_up = started[0].checked_duration_since(t0);
    assert!(
        picked_up.is_some_and(|d| d < Duration::from_millis(1000)),
        "started {picked_up:?} after the path appeared (None: before it); \
         re-checked every 200 ms, it must start within 5 intervals"
    );
    shutdown(&mut s);
}

#[test]
fn shutdown_stops_in_reverse_dependency_order() {
    let a = sh("a", "exec sleep 100");
    let mut b = sh("b", "exec sleep 100");
    b.after = vec!["a".into()];
    let mut c = sh("c", "exec sleep 100");
    c.after = vec!["b".into()];
    let mut s = sup(vec![a, b, c]);
    assert!(wait_for(&mut s, LONG, all_ready));
    shutdown(&mut s);
    let seq = |n, to| first_seq(&s, n, to).unwrap();
    assert!(seq("c", "stopping") < seq("c", "stopped"));
    assert!(seq("c", "stopped") < seq("b", "stopping"));
    assert!(seq("b", "stopped") < seq("a", "stopping"));
    for n in ["a", "b", "c"] {
        let st = s.status(n).unwrap();
        assert_eq!(st.state, ServiceState::Stopped);
        assert_eq!(st.last_exit, Some(ExitStatus::Signal(15)));
    }
    // The final event says so, and run() keeps returning the same result.
    assert_eq!(
        s.events_since(0).last().unwrap().message,
        "all services stopped"
    );
    assert_eq!(s.step(Duration::from_secs(5)), Some(Shutdown::PowerOff));
}

#[test]
fn stop_timeout_escalates_to_sigkill() {
    let mut d = sh(
        "stubborn",
        "trap '' TERM; echo READY=1 >&$BRAMBLE_READY_FD; exec sleep 100",
    );
    d.notify_ready = true;
    d.stop_timeout = Duration::from_millis(400);
    let mut s = sup(vec![d]);
    assert!(wait_for(&mut s, LONG, |s| is(
        s,
        "stubborn",
        ServiceState::Ready
    )));
    s.stop("stubborn").unwrap();
    assert!(wait_for(&mut s, LONG, |s| is(
        s,
        "stubborn",
        ServiceState::Stopped
    )));
    let ev = transitions(&s, "stubborn");
    let stopping = ev
        .iter()
        .find(|e| e.to == Some(ServiceState::Stopping))
        .unwrap()
        .at;
    let stopped = ev
        .iter()
        .find(|e| e.to == Some(ServiceState::Stopped))
        .unwrap()
        .at;
    assert!(stopped - stopping >= Duration::from_millis(400));
    assert_eq!(
        s.status("stubborn").unwrap().last_exit,
        Some(ExitStatus::Signal(9))
    );
    assert!(
        s.events_since(0)
            .iter()
            .any(|e| e.message.contains("sent SIGKILL"))
    );
    shutdown(&mut s);
}

#[test]
fn stop_request_stops_dependents_first_and_start_brings_back() {
    let a = sh("a", "exec sleep 100");
    let mut b = sh("b", "exec sleep 100");
    b.after = vec!["a".into()];
    let other = sh("other", "exec sleep 100");
    let mut s = sup(vec![a, b, other]);
    assert!(wait_for(&mut s, LONG, all_ready));
    let other_pid = pid(&s, "other");
    s.stop("a").unwrap();
    assert!(wait_for(&mut s, LONG, |s| is(
        s,
        "a",
        ServiceState::Stopped
    ) && is(
        s,
        "b",
        ServiceState::Stopped
    )));
    assert!(first_seq(&s, "b", "stopped").unwrap() < first_seq(&s, "a", "stopping").unwrap());
    assert_eq!(pid(&s, "other"), other_pid);
    // Stopped services stay stopped.
    run_for(&mut s, Duration::from_millis(300));
    assert!(is(&s, "a", ServiceState::Stopped));
    // Starting b starts its stopped dependency a first.
    s.start("b").unwrap();
    assert!(wait_for(&mut s, LONG, all_ready));
    assert!(s.start("nope").is_err());
    shutdown(&mut s);
    assert!(s.start("a").is_err(), "no starts while shutting down");
}

#[test]
fn restart_request_restarts_only_that_service() {
    let a = notifying("a", "0");
    let mut b = sh("b", "exec sleep 100");
    b.after = vec!["a".into()];
    let mut s = sup(vec![a, b]);
    assert!(wait_for(&mut s, LONG, all_ready));
    let (pa, pb) = (pid(&s, "a"), pid(&s, "b"));
    s.restart("a").unwrap();
    assert!(wait_for(&mut s, LONG, |s| pid(s, "a")
        .is_some_and(|p| Some(p) != pa)
        && is(s, "a", ServiceState::Ready)));
    assert_eq!(pid(&s, "b"), pb);
    assert_eq!(
        s.status("a").unwrap().restarts,
        0,
        "manual restarts are not counted"
    );
    shutdown(&mut s);
}

#[test]
fn reload_sends_sighup_to_the_running_process_only() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("reloaded");
    let child_pid = dir.path().join("child.pid");
    // The shell counts SIGHUPs in a file; `sleep` in the background keeps
    // it waiting so the trap runs as soon as the signal arrives. A child in
    // its process group (as a container runtime's shims are) must not get
    // the signal: SIGHUP would end it.
    let script = format!(
        "sleep 1000 & echo $! > {c}; trap 'echo hup >> {m}' HUP; while :; do sleep 0.05 & wait $!; done",
        c = child_pid.display(),
        m = marker.display()
    );
    let mut s = sup(vec![sh("net", &script)]);
    assert!(wait_for(&mut s, LONG, all_ready));
    assert!(wait_for(&mut s, LONG, |_| std::fs::read_to_string(
        &child_pid
    )
    .is_ok_and(|t| t.ends_with('\n'))));
    let child: i32 = std::fs::read_to_string(&child_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let before = pid(&s, "net");
    s.reload("net").unwrap();
    assert!(wait_for(&mut s, LONG, |_| std::fs::read_to_string(&marker)
        .is_ok_and(|t| t == "hup\n")));
    assert_eq!(
        pid(&s, "net"),
        before,
        "a reload must not restart the process"
    );
    assert!(
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z ")),
        "the service's child outlives its reload"
    );
    assert!(
        s.events_since(0)
            .iter()
            .any(|e| e.message.starts_with("reload requested: sent SIGHUP")),
        "the reload is recorded as an event"
    );
    assert!(s.reload("nope").is_err());
    shutdown(&mut s);
}

#[test]
fn backoff_resets_after_staying_up() {
    let mut d = sh("flaky", "sleep 0.4; exit 1");
    d.restart_delay = Duration::from_millis(50);
    d.restart_delay_max = Duration::from_secs(10);
    let opts = Options {
        backoff_reset_after: Duration::from_millis(300),
        ..Options::default()
    };
    let mut s = Supervisor::new(vec![d], opts).unwrap();
    assert!(wait_for(&mut s, LONG, |s| s
        .status("flaky")
        .unwrap()
        .restarts
        >= 4));
    // Each run lasted longer than the reset threshold: always the first delay.
    for e in transitions(&s, "flaky")
        .iter()
        .filter(|e| e.to == Some(ServiceState::Failed))
    {
        assert!(e.message.ends_with("in 50 ms"), "{}", e.message);
    }
    shutdown(&mut s);
}

fn signal_pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
}

#[test]
fn signal_fd_drives_shutdown() {
    for (signo, want) in [(15, Shutdown::PowerOff), (2, Shutdown::Reboot)] {
        let (r, w) = signal_pipe();
        let opts = Options {
            signal_fd: Some(r),
            ..Options::default()
        };
        let mut s = Supervisor::new(vec![sh("svc", "exec sleep 100")], opts).unwrap();
        assert!(wait_for(&mut s, LONG, all_ready));
        // SIGHUP and SIGCHLD (without reap_orphans) change nothing.
        rustix::io::write(&w, &signals::encode_record(1)).unwrap();
        rustix::io::write(&w, &signals::encode_record(17)).unwrap();
        run_for(&mut s, Duration::from_millis(200));
        assert!(is(&s, "svc", ServiceState::Ready));
        rustix::io::write(&w, &signals::encode_record(signo)).unwrap();
        assert_eq!(s.run_until(Instant::now() + LONG), Some(want));
        assert!(is(&s, "svc", ServiceState::Stopped));
    }
}

#[test]
fn drop_kills_children() {
    let mut s = sup(vec![sh("svc", "exec sleep 100")]);
    assert!(wait_for(&mut s, LONG, all_ready));
    let p = rustix::process::Pid::from_raw(pid(&s, "svc").unwrap()).unwrap();
    drop(s);
    assert_eq!(
        rustix::process::test_kill_process(p),
        Err(rustix::io::Errno::SRCH)
    );
}

#[test]
fn leftover_process_group_members_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let script = format!("sleep 100 & echo $! > {}; exit 1", pidfile.display());
    let mut d = sh("forker", &script);
    d.restart = RestartPolicy::Never;
    let mut s = sup(vec![d]);
    assert!(wait_for(&mut s, LONG, |s| matches!(
        state(s, "forker"),
        ServiceState::Exited(_)
    )));
    let bg: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let bg = rustix::process::Pid::from_raw(bg).unwrap();
    // The background child got SIGKILL; it is a zombie of the (exited) shell
    // or gone, never still sleeping.
    let deadline = Instant::now() + LONG;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", bg.as_raw_nonzero()));
        match stat {
            Err(_) => break,
            Ok(st)
                if st
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                break;
            }
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "background process survived");
        std::thread::sleep(Duration::from_millis(20));
    }
    shutdown(&mut s);
}

#[test]
fn child_environment_and_fds() {
    let mut env = sh(
        "env",
        "env | sort; ls /proc/self/fd | sort -n | tr '\\n' ' '; echo",
    );
    env.restart = RestartPolicy::Never;
    env.notify_ready = true;
    env.env.insert("FOO".into(), "bar baz".into());
    let mut plain = sh(
        "plain",
        "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; env",
    );
    plain.restart = RestartPolicy::Never;
    let mut s = sup(vec![env, plain]);
    assert!(wait_for(&mut s, LONG, |s| {
        matches!(state(s, "env"), ServiceState::Exited(_))
            && matches!(state(s, "plain"), ServiceState::Exited(_))
    }));
    let text = |n: &str| -> Vec<String> {
        s.logs(n, 100)
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect()
    };
    let env = text("env");
    assert!(env.contains(&"BRAMBLE_READY_FD=3".to_string()), "{env:?}");
    assert!(env.contains(&"FOO=bar baz".to_string()), "{env:?}");
    assert!(env.contains(&"PATH=/usr/bin:/sbin".to_string()), "{env:?}");
    // Nothing of the test process's environment leaks in.
    assert!(
        !env.iter()
            .any(|l| l.starts_with("HOME=") || l.starts_with("CARGO")),
        "{env:?}"
    );
    // Only stdin/stdout/stderr (+ the readiness fd 3) are inherited, not even
    // fds the test process itself inherited without close-on-exec; the last
    // number is the fd `ls` opened for the directory itself.
    assert_eq!(env.last().unwrap(), "0 1 2 3 4 ");
    let plain = text("plain");
    assert_eq!(plain[0], "0 1 2 3 ");
    assert!(!plain.iter().any(|l| l.starts_with("BRAMBLE_READY_FD")));
    shutdown(&mut s);
}

#[test]
fn niceness_is_set_at_spawn() {
    // Positive, so the test needs no privilege; PID 1 gives negative ones.
    let mut nice = sh("nice", "exec sleep 100");
    nice.nice = Some(7);
    let mut s = sup(vec![nice, sh("plain", "exec sleep 100")]);
    assert!(wait_for(&mut s, LONG, all_ready));
    let of = |name: &str| {
        let p = rustix::process::Pid::from_raw(pid(&s, name).unwrap()).unwrap();
        rustix::process::getpriority_process(Some(p)).unwrap()
    };
    assert_eq!(of("nice"), 7);
    assert_eq!(
        of("plain"),
        rustix::process::getpriority_process(None).unwrap()
    );
}

#[test]
fn oom_score_adj_is_set_at_spawn() {
    // Raising needs no privilege; PID 1 also lowers it (root).
    let mut kill_first = sh("victim", "exec sleep 100");
    kill_first.oom_score_adj = Some(500);
    let mut s = sup(vec![kill_first, sh("plain", "exec sleep 100")]);
    assert!(wait_for(&mut s, LONG, all_ready));
    let of = |name: &str| {
        let pid = pid(&s, name).unwrap();
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(of("victim"), "500");
    let own = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    assert_eq!(of("plain"), own.trim());
}
