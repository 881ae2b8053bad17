//! Running the real `nodectl` binary against a node.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// What one `nodectl` run printed.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `nodectl ARGS...`, bounded by `timeout` (nodectl's own `--timeout`
/// bounds each call; this bounds the process).
pub fn run(args: &[&str], timeout: Duration) -> Result<Output> {
    let bin = crate::paths::nodectl()?;
    let mut child = Command::new(&bin)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "nodectl {} did not finish within {timeout:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `nodectl version --insecure -o json` against `addr`, parsed. Retries a
/// few times: the console can say "ready" a moment before the forwarded port
/// passes connections.
pub fn version_json(addr: &str) -> Result<serde_json::Value> {
    let mut last = String::new();
    for _ in 0..10 {
        let out = run(
            &[
                "version",
                "--insecure",
                "-n",
                addr,
                "-o",
                "json",
                "--timeout",
                "10s",
            ],
            Duration::from_secs(30),
        )?;
        if out.success {
            let value: serde_json::Value = serde_json::from_str(&out.stdout)
                .with_context(|| format!("nodectl printed no JSON: {}", out.stdout))?;
            return Ok(value);
        }
        last = out.stderr;
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("nodectl version kept failing: {last}")
}
