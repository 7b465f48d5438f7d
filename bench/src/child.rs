//! Helper processes: the bench runs itself again with a hidden subcommand, so that file
//! descriptors spread over several processes, each with its own `RLIMIT_NOFILE` (the echo
//! backend of `idle` and `hold`, the client groups of `hold`). A helper reports one line
//! on stdout when it is ready, may answer further requests (one line in, one line out) and
//! lives until its stdin closes, so it dies with the bench.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The runtime a helper (or the bench's own backends) runs on: `threads` workers named
/// `name`, with I/O and timers.
pub fn runtime(threads: usize, name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

/// A running helper process.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The line it reported when ready.
    ready: String,
}

impl Helper {
    /// Runs this executable with `args` and waits up to `ready_timeout` for its first line.
    pub async fn spawn(args: &[String], ready_timeout: Duration) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the bench executable")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning bench {}", args.join(" ")))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("helper stdout")?).lines();
        let mut helper = Helper {
            child,
            stdin,
            stdout,
            ready: String::new(),
        };
        helper.ready = helper
            .next_line(ready_timeout)
            .await
            .with_context(|| format!("bench {} did not report", args.join(" ")))?;
        Ok(helper)
    }

    /// The line the helper reported when it was ready.
    pub fn ready_line(&self) -> &str {
        &self.ready
    }

    /// Sends `request` as one line and waits up to `timeout` for the answer line.
    pub async fn ask(&mut self, request: &str, timeout: Duration) -> Result<String> {
        let stdin = self.stdin.as_mut().context("helper stdin closed")?;
        stdin.write_all(format!("{request}\n").as_bytes()).await?;
        stdin.flush().await?;
        self.next_line(timeout).await
    }

    async fn next_line(&mut self, timeout: Duration) -> Result<String> {
        match tokio::time::timeout(timeout, self.stdout.next_line()).await {
            Err(_) => bail!("no line within {timeout:?}"),
            Ok(line) => line
                .context("reading helper stdout")?
                .context("helper exited"),
        }
    }

    /// Kills the helper with SIGKILL, as a crash would: the kernel resets its connections,
    /// nothing is closed in order.
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await.context("killing the helper")
    }

    /// Stops the helper by closing its stdin; kills it if it lingers.
    pub async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(status) => {
                status.context("waiting for the helper")?;
            }
            Err(_) => {
                self.child.kill().await.context("killing the helper")?;
            }
        }
        Ok(())
    }
}

/// In a helper: prints `line` (its ready report) on stdout, then answers each line read
/// from stdin with `answer`'s line, until stdin ends.
pub async fn serve<F, Fut>(line: &str, mut answer: F) -> Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = String>,
{
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("{line}\n").as_bytes()).await?;
    stdout.flush().await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(request) = stdin.next_line().await? {
        let reply = answer(request).await;
        stdout.write_all(format!("{reply}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}
