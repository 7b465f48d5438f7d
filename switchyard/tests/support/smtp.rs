//! Real SMTP components for the SMTP tests: aiosmtpd servers (Debian python3-aiosmtpd) that
//! record every message they take (envelope and SHA-256 of the bytes) in a file, optionally
//! offering Postfix's XCLIENT (with Postfix's meaning for LOGIN) and recording what it said,
//! or PIPELINING; Postfix's smtp-sink; and the swaks and Python smtplib clients. Every
//! recorder refuses the sender `refused@example.net` at MAIL (`550 5.7.1`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::os_user::OsUser;
use super::tls::CertFiles;
use super::{free_port, wait_until};

/// The Python with Debian's modules (aiosmtpd); the `python3` on PATH may be another.
pub const PYTHON: &str = "/usr/bin/python3";

/// The recording server: aiosmtpd with a handler that appends one JSON line per message.
const RECORDER: &str = r#"
import asyncio, hashlib, json, ssl, sys
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

port, out, name, features = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(",")
xclient = "xclient" in features

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"alice" \
        and auth_data.password == b"secret"
    # handled=False: aiosmtpd answers a failure (535) itself.
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
tls_mode = sys.argv[5]
context = None
if tls_mode != "plain":
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[6], sys.argv[7])

def unxtext(value):
    out, i = bytearray(), 0
    while i < len(value):
        if value[i] == "+":
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out.extend(value[i].encode())
            i += 1
    return out.decode()

class Server(SMTP):
    @syntax("XCLIENT attribute=value ...")
    async def smtp_XCLIENT(self, arg):
        if not xclient:
            await self.push("500 5.5.1 Error: command not recognized")
            return
        self.session.xclient = arg
        attributes = dict(a.split("=", 1) for a in arg.split() if "=" in a)
        login = attributes.get("LOGIN")
        # As Postfix: LOGIN logs the session in as that name; XCLIENT without it logs out.
        if login is not None and login.upper() != "[UNAVAILABLE]":
            self.session.authenticated = True
            self.session.xclient_login = unxtext(login)
        else:
            self.session.authenticated = False
            self.session.xclient_login = None
        await self.push("220 %s ESMTP" % name)

class Recorder:
    async def handle_PROXY(self, server, session, envelope, proxy_data):
        return True  # aiosmtpd closes the connection unless the hook accepts the header

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if xclient:
            responses.insert(len(responses) - 1, "250-XCLIENT ADDR PORT NAME HELO PROTO LOGIN")
        if "pipelining" in features:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address == "refused@example.net":
            return "550 5.7.1 <%s>: Sender address rejected" % address
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or b""
        digest = hashlib.sha256(content).hexdigest()
        record = {
            "server": name,
            "from": envelope.mail_from,
            "rcpt": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
            "sha256": digest,
            "size": len(content),
            "helo": session.host_name,
            "xclient": getattr(session, "xclient", None),
            "authenticated": bool(session.authenticated),
            "login": getattr(session, "xclient_login", None)
                     or (session.auth_data.login.decode() if session.auth_data else None),
            "proxy_source": str(session.proxy_data.src_addr) if session.proxy_data else None,
            "tls": server._tls_protocol is not None
                   or server.transport.get_extra_info("ssl_object") is not None,
        }
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        return "250 2.0.0 Ok: queued as Q%s" % digest[:10].upper()

async def main():
    loop = asyncio.get_running_loop()
    starttls = tls_mode == "starttls"
    server = await loop.create_server(
        lambda: Server(Recorder(), enable_SMTPUTF8=True, data_size_limit=64 * 1024 * 1024,
                       hostname=name, tls_context=context if starttls else None,
                       require_starttls=starttls,
                       authenticator=authenticator if "auth" in features else None,
                       proxy_protocol_timeout=5 if "proxy" in features else None,
                       auth_require_tls=False),
        "127.0.0.1", port, ssl=context if tls_mode == "implicit" else None)
    await server.serve_forever()

asyncio.run(main())
"#;

/// A process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An aiosmtpd server recording what it receives.
pub struct Aiosmtpd {
    /// Where it listens.
    pub addr: SocketAddr,
    received: PathBuf,
    _dir: tempfile::TempDir,
    _process: Running,
}

impl Aiosmtpd {
    /// Starts one named `name` (its greeting and the `server` field of its records), as
    /// the unprivileged `nobody`; with `xclient` it offers XCLIENT and records it.
    pub async fn start(name: &str, xclient: bool) -> Self {
        Self::start_with(name, if xclient { "xclient" } else { "" }, None).await
    }

    /// `start` with `features` (comma-separated: `xclient`; `auth`, which takes AUTH PLAIN
    /// and LOGIN for `alice`/`secret`; `proxy`, which requires a PROXY header;
    /// `pipelining`, which offers PIPELINING) and TLS: `("starttls", cert)` offers (and
    /// requires) STARTTLS, `("implicit", cert)` speaks TLS from the first byte. Each
    /// record says who the session was logged in as (`login`: by AUTH, or XCLIENT LOGIN).
    pub async fn start_with(name: &str, features: &str, tls: Option<(&str, &CertFiles)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut tls_args = vec![tls.map_or("plain", |(mode, _)| mode).to_string()];
        if let Some((_, files)) = tls {
            // Readable by the server's user.
            for (from, to) in [(&files.cert, "cert.pem"), (&files.key, "key.pem")] {
                let copy = dir.path().join(to);
                std::fs::copy(from, &copy).expect("copy certificate");
                std::fs::set_permissions(
                    &copy,
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                )
                .expect("chmod");
                tls_args.push(copy.display().to_string());
            }
        }
        let script = dir.path().join("recorder.py");
        std::fs::write(&script, RECORDER).expect("write recorder");
        let received = dir.path().join("received.jsonl");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let port = free_port();
        let process = OsUser::named("nobody", "base-passwd")
            .command(PYTHON)
            .arg(&script)
            .arg(port.to_string())
            .arg(&received)
            .arg(name)
            .arg(features)
            .args(&tls_args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start aiosmtpd (Debian python3-aiosmtpd)");
        let addr = listening(port, "aiosmtpd").await;
        Self {
            addr,
            received,
            _dir: dir,
            _process: Running(process),
        }
    }

    /// Every message recorded so far.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.received)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits until `count` messages have been recorded, and returns them.
    pub async fn wait_received(&self, count: usize) -> Vec<Value> {
        wait_until(&format!("{count} messages at aiosmtpd"), || async {
            self.received().len() >= count
        })
        .await;
        self.received()
    }
}

/// Postfix's smtp-sink (Debian postfix), its conversations (`-v`, on stderr) captured.
pub struct SmtpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _process: Running,
}

impl SmtpSink {
    /// Starts one; it drops privileges to `nobody` after binding.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sink.log");
        let port = free_port();
        let process = Command::new("/usr/sbin/smtp-sink")
            .args(["-v", "-u", "nobody"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sink log"))
            .spawn()
            .expect("start smtp-sink (Debian postfix)");
        let addr = listening(port, "smtp-sink").await;
        Self {
            addr,
            log,
            _dir: dir,
            _process: Running(process),
        }
    }

    /// What it has logged of its conversations.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits until `what` accepts connections on loopback `port`; its address.
async fn listening(port: u16, what: &str) -> SocketAddr {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until(&format!("{what} to listen"), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    addr
}

/// Runs swaks with `args` against `server`; returns whether it succeeded and its output.
pub async fn swaks(server: SocketAddr, args: &[&str]) -> (bool, String) {
    let mut command = tokio::process::Command::new("swaks");
    command
        .arg("--server")
        .arg(server.to_string())
        .args(["--helo", "client.example", "--timeout", "20"])
        .args(args);
    let output = command.output().await.expect("run swaks (Debian swaks)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The smtplib client: sends the file `message` from `sender` to `recipients` (with MAIL
/// options) from `source` (an address on loopback), prints the refused recipients as JSON.
const SENDER: &str = r#"
import json, smtplib, ssl, sys
server, port, source, sender, recipients, options, path, tls, ca, login = sys.argv[1:11]
message = open(path, "rb").read()
context = ssl.create_default_context(cafile=ca) if ca else None
if tls == "implicit":
    smtp = smtplib.SMTP_SSL(server, int(port), local_hostname="client.example",
                            source_address=(source, 0), timeout=60, context=context)
else:
    smtp = smtplib.SMTP(server, int(port), local_hostname="client.example",
                        source_address=(source, 0), timeout=60)
with smtp:
    if tls == "starttls":
        smtp.starttls(context=context)
    try:
        if login:
            smtp.login(*login.split(":", 1))
        refused = smtp.sendmail(sender, recipients.split(","), message,
                                mail_options=[o for o in options.split(",") if o])
        print(json.dumps({"refused": {k: [v[0], v[1].decode()] for k, v in refused.items()}}))
    except smtplib.SMTPResponseException as e:
        print(json.dumps({"error": [e.smtp_code, e.smtp_error.decode(errors="replace")]}))
    except smtplib.SMTPRecipientsRefused as e:
        print(json.dumps({"refused": {k: [v[0], v[1].decode()] for k, v in e.recipients.items()}, "all": True}))
"#;

/// Sends `message` with Python's smtplib through `server` from the loopback address
/// `source`; returns its JSON report (`refused`, or `error`).
pub async fn smtplib_send(
    server: SocketAddr,
    source: &str,
    sender: &str,
    recipients: &[&str],
    options: &[&str],
    message: &[u8],
) -> Value {
    smtplib_send_over(server, None, source, sender, recipients, options, message).await
}

/// How smtplib secures its connection: `"starttls"` or `"implicit"` (SMTP_SSL), trusting
/// the CA in the file; and `user:password` to log in with after it, or empty.
pub type SmtplibTls<'a> = (&'a str, &'a std::path::Path, &'a str);

/// `smtplib_send`, over TLS when `tls` says so.
pub async fn smtplib_send_over(
    server: SocketAddr,
    tls: Option<SmtplibTls<'_>>,
    source: &str,
    sender: &str,
    recipients: &[&str],
    options: &[&str],
    message: &[u8],
) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("send.py");
    std::fs::write(&script, SENDER).expect("write sender");
    let path = dir.path().join("message.eml");
    std::fs::write(&path, message).expect("write message");
    let output = tokio::process::Command::new(PYTHON)
        .arg(&script)
        .arg(server.ip().to_string())
        .arg(server.port().to_string())
        .arg(source)
        .arg(sender)
        .arg(recipients.join(","))
        .arg(options.join(","))
        .arg(&path)
        .arg(tls.map_or("plain", |(mode, _, _)| mode))
        .arg(tls.map_or(std::path::Path::new(""), |(_, ca, _)| ca))
        .arg(tls.map_or("", |(_, _, login)| login))
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "smtplib said: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The hex SHA-256 of `bytes`, as the recorder computes it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
