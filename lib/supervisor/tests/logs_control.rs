//! Log capture (ring, rotated files, console) and the control socket.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bramble_supervisor::control::Client;
use bramble_supervisor::protocol::{Request, Response};
use bramble_supervisor::{
    Error, ExitStatus, LogOptions, Options, RestartPolicy, ServiceState, Shutdown, Supervisor,
};
use common::*;

#[test]
fn output_goes_to_ring_files_and_console() {
    let dir = tempfile::tempdir().unwrap();
    let console = SharedBuf::default();
    let mut d = sh(
        "chatty",
        "i=0; while [ $i -lt 2000 ]; do echo \"line $i with some padding to make it longer\"; i=$((i+1)); done; \
         echo to-stderr >&2; printf '%5000s\\n' wide; printf 'no newline at end'",
    );
    d.restart = RestartPolicy::Never;
    d.log_console = true;
    let quiet = sh("quiet", "echo not on console; exec sleep 100");
    let opts = Options {
        log: LogOptions {
            ring_bytes: 16 * 1024,
            dir: Some(dir.path().to_path_buf()),
            file_max_bytes: 16 * 1024,
            file_keep: 2,
            ..LogOptions::default()
        },
        console: Some(Box::new(console.clone())),
        ..Options::default()
    };
    let mut s = Supervisor::new(vec![d, quiet], opts).unwrap();
    assert!(wait_for(&mut s, LONG, |s| matches!(
        state(s, "chatty"),
        ServiceState::Exited(ExitStatus::Code(0))
    ) && !s
        .logs("quiet", 1)
        .unwrap()
        .is_empty()));

    // Ring: newest lines, bounded.
    let all = s.logs("chatty", 100_000).unwrap();
    assert!(all.len() < 2000, "ring is bounded: {}", all.len());
    assert!(all.iter().map(|l| l.text.len()).sum::<usize>() <= 16 * 1024);
    let tail: Vec<String> = s
        .logs("chatty", 4)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(tail[0], "line 1999 with some padding to make it longer");
    assert_eq!(tail[1], "to-stderr");
    assert!(
        tail[2].ends_with("...[truncated]") && tail[2].len() <= 4096 + 14,
        "{}",
        tail[2].len()
    );
    assert_eq!(tail[3], "no newline at end");

    // Files: rotated at the size, two old generations kept.
    let p = |n: &str| dir.path().join(n);
    for n in ["chatty.log", "chatty.log.1", "chatty.log.2"] {
        let len = std::fs::metadata(p(n)).unwrap().len();
        assert!(len > 0 && len <= 16 * 1024, "{n}: {len}");
    }
    assert!(!p("chatty.log.3").exists());
    let cur = std::fs::read_to_string(p("chatty.log")).unwrap();
    assert!(cur.lines().last().unwrap().ends_with(" no newline at end"));
    assert!(cur.lines().next().unwrap().starts_with("20"), "timestamped");

    // Console: prefixed echo for log_console services only.
    let text = console.text();
    assert!(text.contains("[chatty] line 0 with some padding"));
    assert!(text.contains("[chatty] to-stderr\n"));
    assert!(!text.contains("not on console"));
    assert!(
        std::fs::read_to_string(p("quiet.log"))
            .unwrap()
            .contains("not on console")
    );
    shutdown(&mut s);
}

#[test]
fn log_dir_appearing_late() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("var-log");
    let go = dir.path().join("go");
    let script = format!(
        "echo one; while [ ! -e {} ]; do sleep 0.05; done; echo two; exec sleep 100",
        go.display()
    );
    let opts = Options {
        log: LogOptions {
            dir: Some(logdir.clone()),
            dir_retry: Duration::from_millis(100),
            ..LogOptions::default()
        },
        ..Options::default()
    };
    let mut s = Supervisor::new(vec![sh("late", &script)], opts).unwrap();
    assert!(wait_for(&mut s, LONG, |s| !s
        .logs("late", 10)
        .unwrap()
        .is_empty()));
    // Reported once, as an event.
    let reports = |s: &Supervisor| {
        s.events_since(0)
            .iter()
            .filter(|e| e.message.contains("keeping logs in memory only"))
            .count()
    };
    assert_eq!(reports(&s), 1);
    std::fs::create_dir(&logdir).unwrap();
    run_for(&mut s, Duration::from_millis(150));
    std::fs::write(&go, "").unwrap();
    assert!(wait_for(&mut s, LONG, |s| s
        .logs("late", 10)
        .unwrap()
        .len()
        >= 2));
    let file = std::fs::read_to_string(logdir.join("late.log")).unwrap();
    assert!(
        file.ends_with(" two\n") && !file.contains("one"),
        "{file:?}"
    );
    assert_eq!(reports(&s), 1);
    assert!(
        s.events_since(0)
            .iter()
            .any(|e| e.message.starts_with("writing"))
    );
    shutdown(&mut s);
}

/// Runs the supervisor loop on this thread while `client` runs on another;
/// returns what the loop returned once the client is done (or the loop ended).
fn with_client<T: Send + 'static>(
    sup: &mut Supervisor,
    client: impl FnOnce() -> T + Send + 'static,
) -> (Option<Shutdown>, T) {
    let handle = std::thread::spawn(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut result = None;
    while !handle.is_finished() && Instant::now() < deadline {
        if let Some(k) = sup.step(Duration::from_millis(20)) {
            result = Some(k);
            break;
        }
    }
    let out = handle
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    if result.is_none() && sup.shutdown_requested().is_some() {
        result = sup.run_until(Instant::now() + LONG);
    }
    (result, out)
}

fn wait_client(c: &mut Client, mut pred: impl FnMut(&mut Client) -> bool) {
    let deadline = Instant::now() + LONG;
    while !pred(c) {
        assert!(Instant::now() < deadline, "condition not reached");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn find<'a>(
    list: &'a [bramble_supervisor::protocol::ServiceInfo],
    n: &str,
) -> &'a bramble_supervisor::protocol::ServiceInfo {
    list.iter().find(|s| s.name == n).expect("service listed")
}

#[test]
fn control_socket_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/init.sock");
    let a = sh("a", "echo hello from a; exec sleep 100");
    let mut b = sh("b", "exec sleep 100");
    b.after = vec!["a".into()];
    let opts = Options {
        control_socket: Some(sock.clone()),
        ..Options::default()
    };
    let mut s = Supervisor::new(vec![a, b], opts).unwrap();
    assert_eq!(s.control_socket(), Some(sock.as_path()));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let path = sock.clone();
    let (result, ()) = with_client(&mut s, move || {
        let mut c = Client::connect(&path, Duration::from_secs(10)).unwrap();
        wait_client(&mut c, |c| c.list().unwrap().iter().all(|s| s.ready));
        let list = c.list().unwrap();
        assert_eq!(
            list.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let (pa, pb) = (find(&list, "a").pid.unwrap(), find(&list, "b").pid.unwrap());
        assert_eq!(find(&list, "a").state, "ready");
        assert!(find(&list, "a").since > 0);

        // logs
        wait_client(&mut c, |c| !c.logs("a", 10).unwrap().is_empty());
        assert_eq!(c.logs("a", 10).unwrap()[0].text, "hello from a");

        // errors, and the connection keeps working
        match c.restart("x") {
            Err(Error::Remote(m)) => assert_eq!(m, "unknown service \"x\""),
            other => panic!("{other:?}"),
        }
        let r = c
            .request(&Request::Logs {
                service: "nope".into(),
                tail: None,
                after: None,
            })
            .unwrap();
        assert_eq!(r, Response::error("unknown service \"nope\""));

        // malformed requests on a raw connection
        let raw = UnixStream::connect(&path).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(raw.try_clone().unwrap());
        let mut w = raw;
        let mut ask = |line: &str| {
            w.write_all(line.as_bytes()).unwrap();
            let mut resp = String::new();
            reader.read_line(&mut resp).unwrap();
            serde_json::from_str::<Response>(&resp).unwrap()
        };
        let r = ask("this is not json\n");
        assert!(!r.ok && r.error.unwrap().starts_with("invalid request"));
        let r = ask("{\"op\":\"launch\",\"service\":\"a\"}\n");
        assert!(!r.ok);
        let r = ask("{\"op\":\"list\"}\n");
        assert!(r.ok && r.services.unwrap().len() == 2);

        // an over-long request gets an error and the connection is closed
        let mut big = UnixStream::connect(&path).unwrap();
        big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let junk = vec![b'x'; 70 * 1024];
        let _ = big.write_all(&junk);
        let mut resp = String::new();
        let mut br = BufReader::new(big);
        br.read_line(&mut resp).unwrap();
        assert!(resp.contains("request too large"), "{resp}");
        resp.clear();
        assert_eq!(
            br.read_line(&mut resp).unwrap(),
            0,
            "closed after the error"
        );

        // events, incrementally
        let (events, last) = c.events(0).unwrap();
        assert!(!events.is_empty() && events.last().unwrap().seq == last);
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(
            events
                .iter()
                .any(|e| e.service.as_deref() == Some("a") && e.to.as_deref() == Some("ready"))
        );

        // restart a: new pid, b untouched
        c.restart("a").unwrap();
        wait_client(&mut c, |c| {
            let l = c.list().unwrap();
            let a = find(&l, "a");
            a.ready && a.pid.is_some_and(|p| p != pa)
        });
        assert_eq!(find(&c.list().unwrap(), "b").pid, Some(pb));
        let (new, _) = c.events(last).unwrap();
        assert!(new.iter().all(|e| e.seq > last));
        assert!(new.iter().any(|e| e.to.as_deref() == Some("stopping")));

        // stop a: b goes first
        c.stop("a").unwrap();
        wait_client(&mut c, |c| {
            c.list().unwrap().iter().all(|s| s.state == "stopped")
        });
        let (ev, _) = c.events(0).unwrap();
        let pos = |svc: &str, to: &str| {
            ev.iter()
                .rposition(|e| e.service.as_deref() == Some(svc) && e.to.as_deref() == Some(to))
                .unwrap()
        };
        assert!(pos("b", "stopped") < pos("a", "stopping"));
        let l = c.list().unwrap();
        assert_eq!(find(&l, "a").last_exit, Some(ExitStatus::Signal(15)));

        // start b: brings a back too
        c.start("b").unwrap();
        wait_client(&mut c, |c| c.list().unwrap().iter().all(|s| s.ready));

        // a second client at the same time
        let mut c2 = Client::connect(&path, Duration::from_secs(10)).unwrap();
        assert_eq!(c2.list().unwrap().len(), 2);

        c.shutdown(Shutdown::Reboot).unwrap();
    });
    assert_eq!(result, Some(Shutdown::Reboot));
    assert!(
        s.services()
            .iter()
            .all(|x| x.state == ServiceState::Stopped)
    );
    drop(s);
    assert!(!Path::new(&sock).exists(), "socket removed on drop");
}

#[test]
fn client_errors_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listening.
    let e = Client::connect(dir.path().join("none.sock"), Duration::from_millis(200)).unwrap_err();
    assert!(e.to_string().contains("none.sock"), "{e}");
    // A listener that never answers: the read times out.
    let sock = dir.path().join("mute.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut c = Client::connect(&sock, Duration::from_millis(200)).unwrap();
    let t0 = Instant::now();
    assert!(c.list().is_err());
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn stale_socket_is_replaced_and_bad_path_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("init.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let opts = Options {
        control_socket: Some(sock.clone()),
        ..Options::default()
    };
    let s = Supervisor::new(vec![], opts).unwrap();
    assert!(s.control_socket().is_some());
    drop(s);

    let file = dir.path().join("regular-file");
    std::fs::write(&file, "x").unwrap();
    let opts = Options {
        control_socket: Some(file.clone()),
        ..Options::default()
    };
    let s = Supervisor::new(vec![], opts).unwrap();
    assert!(s.control_socket().is_none());
    assert!(s.events_since(0)[0].message.contains("running without it"));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "x",
        "not clobbered"
    );
}

#[test]
fn notes_become_node_wide_events() {
    let mut sup = Supervisor::new(vec![sh("a", "exec sleep 30")], Options::default()).unwrap();
    let long = "é".repeat(2000);
    for message in ["configuration applied", long.as_str()] {
        let r = sup.handle_request(Request::Note {
            message: message.into(),
        });
        assert!(r.ok, "{r:?}");
    }
    let r = sup.handle_request(Request::Events { since: 0 });
    let events = r.events.unwrap();
    let notes: Vec<_> = events.iter().filter(|e| e.service.is_none()).collect();
    assert_eq!(notes.len(), 2, "{events:?}");
    assert_eq!(notes[0].message, "configuration applied");
    assert!(notes[1].message.len() <= 1024 && notes[1].message.starts_with('é'));
    shutdown(&mut sup);
}

/// Numbers seen in a log file's lines (`<time> <number> <text>`).
fn file_seqs(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .expect("log file")
        .lines()
        .map(|l| {
            l.split(' ')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("a line number")
        })
        .collect()
}

#[test]
fn identical_lines_are_numbered_and_followed_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("init.sock");
    // Bursts of identical lines, many read at the same millisecond.
    let d = sh(
        "repeat",
        "i=0; while [ $i -lt 300 ]; do echo same; i=$((i+1)); done; echo done; exec sleep 100",
    );
    let opts = Options {
        control_socket: Some(sock.clone()),
        log: LogOptions {
            dir: Some(dir.path().to_path_buf()),
            file_max_bytes: 4096,
            file_keep: 2,
            ..LogOptions::default()
        },
        ..Options::default()
    };
    let mut s = Supervisor::new(vec![d], opts).unwrap();
    let (_, seen) = with_client(&mut s, move || {
        let mut c = Client::connect(&sock, Duration::from_secs(10)).unwrap();
        let mut seen = Vec::new();
        let mut cursor = 0;
        // Follow in small pages until both runs (before and after a
        // restart) have said "done".
        let deadline = Instant::now() + LONG;
        let mut restarted = false;
        loop {
            let (lines, last) = c.logs_after("repeat", cursor, 7).unwrap();
            assert!(last >= cursor, "numbering went back: {last} < {cursor}");
            if let Some(l) = lines.last() {
                cursor = l.seq;
            }
            seen.extend(lines);
            let done = seen.iter().filter(|l| l.text == "done").count();
            if done == 1 && !restarted {
                c.restart("repeat").unwrap();
                restarted = true;
            }
            if done == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "{} lines followed", seen.len());
            std::thread::sleep(Duration::from_millis(5));
        }
        // Nothing more after the last line.
        let (more, last) = c.logs_after("repeat", cursor, 100).unwrap();
        assert!(more.is_empty() && last == cursor, "{more:?} {last}");
        seen
    });
    // Every line once, numbered without a gap, the restarted process's
    // lines continuing the numbering.
    assert_eq!(seen.len(), 602);
    assert!(
        seen.iter().map(|l| l.seq).eq(1..=602),
        "numbers are not 1..=602"
    );
    assert_eq!(seen.iter().filter(|l| l.text == "same").count(), 600);
    assert_eq!((seen[300].seq, seen[300].text.as_str()), (301, "done"));
    // The tail carries the numbers too.
    let tail = s.logs("repeat", 2).unwrap();
    assert_eq!((tail[0].seq, tail[1].seq), (601, 602));

    // In the files, rotation keeps the numbering: each file goes on where
    // the one it rotated out left off.
    let p = |n: &str| dir.path().join(n);
    let mut all = Vec::new();
    for n in ["repeat.log.2", "repeat.log.1", "repeat.log"] {
        let seqs = file_seqs(&p(n));
        assert!(!seqs.is_empty(), "{n}");
        all.extend(seqs);
    }
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
    assert_eq!(all.last(), Some(&602));
    assert!(
        std::fs::read_to_string(p("repeat.log"))
            .unwrap()
            .ends_with(" 602 done\n")
    );
    shutdown(&mut s);
}
