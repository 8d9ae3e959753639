//! The end-to-end harness: real `ssqd` processes, each in its own folder of a temp dir,
//! driven by the real `ssq` binary. Every node binds port 0 on its own loopback address;
//! every daemon started here is stopped by a Drop guard (SIGTERM, then SIGKILL).
//!
//! Also a small raw HTTPS client (`RawConn`) for what the CLI never sends on purpose:
//! replayed, stale or sync-signed requests.

#![allow(dead_code)]

pub mod rawhttp;

use std::io::BufRead;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `ssq` binary.
pub const SSQ: &str = env!("CARGO_BIN_EXE_ssq");
/// The `ssqd` binary.
pub const SSQD: &str = env!("CARGO_BIN_EXE_ssqd");

/// How long a daemon gets to print its ready line (generous: 2 cores, debug build,
/// tests in parallel).
pub const READY: Duration = Duration::from_secs(20);

/// Environment variables of ssq/ssqd that must not leak in from the caller's shell.
const SCRUB: &[&str] = &[
    "SSQ_HOME",
    "SSQ_BIND",
    "SSQ_KEY_FILE",
    "SSQ_OPERATOR_KEY",
    "SSQ_INVENTORY",
    "SSQ_CONFIG",
];

/// Addresses used as `--bind` sources by the tests, never given to a node.
const CLIENT_IPS: &[u8] = &[1, 3, 4, 9];

static NEXT_IP: AtomicU8 = AtomicU8::new(10);

/// A fresh loopback address 127.0.0.x for one node (distinct within a test binary).
pub fn next_ip() -> String {
    loop {
        let x = NEXT_IP.fetch_add(1, Ordering::SeqCst);
        assert!(x < 250, "ran out of loopback addresses");
        if !CLIENT_IPS.contains(&x) {
            return format!("127.0.0.{x}");
        }
    }
}

/// A cluster's shared files: activation key, operator key, SSQ_HOME (pins).
pub struct Env {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// SSQ_HOME: operator.key, known_nodes.
    pub home: PathBuf,
    /// The activation key file.
    pub key: PathBuf,
    /// The operator's private key (its public line is `operator_pub`).
    pub operator: PathBuf,
    /// The operator's `.pub` file.
    pub operator_pub: PathBuf,
}

impl Env {
    /// Create the keys with the real `ssq key new`.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let key = dir.path().join("activation.key");
        let operator = home.join("operator.key");
        let env = Env {
            operator_pub: home.join("operator.key.pub"),
            dir,
            home,
            key,
            operator,
        };
        let out = env.ssq(&["key", "new", "--out", env.key.to_str().unwrap()]);
        assert_ok(&out, "ssq key new");
        let out = env.ssq(&[
            "key",
            "new",
            "--operator",
            "--out",
            env.operator.to_str().unwrap(),
        ]);
        assert_ok(&out, "ssq key new --operator");
        assert!(env.operator_pub.is_file(), "no operator.key.pub written");
        env
    }

    /// The temp dir's root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `ssq` with SSQ_HOME set and a 10 s limit (no stdin).
    pub fn ssq_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(SSQ);
        for v in SCRUB {
            c.env_remove(v);
        }
        c.env("SSQ_HOME", &self.home)
            .arg("--timeout")
            .arg("10s")
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null());
        c
    }

    /// Run `ssq ARGS` and return what it did.
    pub fn ssq(&self, args: &[&str]) -> Output {
        self.ssq_cmd(args).output().expect("run ssq")
    }

    /// Run `ssq -o json ARGS`, require success and parse stdout.
    pub fn ssq_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.ssq(&all);
        assert_ok(&out, &format!("ssq {}", all.join(" ")));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ssq {} printed no JSON ({e}):\n{}",
                all.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The SSQ_HOME/known_nodes file.
    pub fn known_nodes(&self) -> PathBuf {
        self.home.join("known_nodes")
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

/// stdout of an Output, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of an Output, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Panic with both streams unless the command succeeded.
pub fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// Panic with both streams unless the command exited with `code`.
pub fn assert_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// The text of a startup.yaml for a node on `ip` (port 0), plus `extra` lines.
pub fn startup_yaml(name: &str, ip: &str, extra: &str) -> String {
    let mut s = format!(
        "node: {name}\n\
         portal: {{ listen: \"{ip}:0\" }}\n\
         proxy: {{ listen: \"{ip}:0\" }}\n\
         activation_key_file: ../activation.key\n\
         data_dir: data\n\
         log_dir: log\n"
    );
    s.push_str(extra);
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// A node's folder: DIR/NAME/{startup.yaml, data/, log/}.
#[derive(Debug, Clone)]
pub struct NodeDir {
    /// The node's name.
    pub name: String,
    /// DIR/NAME.
    pub dir: PathBuf,
    /// DIR/NAME/startup.yaml.
    pub config: PathBuf,
    /// DIR/NAME/data.
    pub data: PathBuf,
    /// DIR/NAME/log.
    pub log: PathBuf,
}

impl NodeDir {
    /// Write DIR/NAME/startup.yaml with `text` (nothing else).
    pub fn with_text(env: &Env, name: &str, text: &str) -> NodeDir {
        let dir = env.path().join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let config = dir.join("startup.yaml");
        std::fs::write(&config, text).expect("write startup.yaml");
        NodeDir {
            name: name.to_string(),
            data: dir.join("data"),
            log: dir.join("log"),
            config,
            dir,
        }
    }

    /// Write the standard startup.yaml for `ip` and add the operator's key with
    /// `ssq --local --config FILE operator add` (ssqd not running yet).
    pub fn create(env: &Env, name: &str, ip: &str, extra: &str) -> NodeDir {
        let nd = Self::with_text(env, name, &startup_yaml(name, ip, extra));
        let out = env.ssq(&[
            "--local",
            "--config",
            nd.config_str(),
            "operator",
            "add",
            env.operator_pub.to_str().unwrap(),
        ]);
        assert_ok(&out, "ssq --local operator add");
        nd
    }

    /// The config path as &str.
    pub fn config_str(&self) -> &str {
        self.config.to_str().expect("utf-8 path")
    }

    /// data_dir/access.yaml.
    pub fn access_file(&self) -> PathBuf {
        self.data.join("access.yaml")
    }

    /// log_dir/extended.log, as text ("" when absent).
    pub fn extended_log(&self) -> String {
        std::fs::read_to_string(self.log.join("extended.log")).unwrap_or_default()
    }

    /// `ssq --local --config FILE ARGS`.
    pub fn local(&self, env: &Env, args: &[&str]) -> Output {
        let mut all = vec!["--local", "--config", self.config_str()];
        all.extend_from_slice(args);
        env.ssq(&all)
    }

    /// `ssq -o json --local --config FILE ARGS`, required to succeed.
    pub fn local_json(&self, env: &Env, args: &[&str]) -> Value {
        let mut all = vec!["--local", "--config", self.config_str()];
        all.extend_from_slice(args);
        env.ssq_json(&all)
    }
}

/// A running ssqd.
pub struct Node {
    /// Its files.
    pub files: NodeDir,
    /// The portal's bound address, from the ready line.
    pub portal: String,
    /// The proxy's bound address (None on a master).
    pub proxy: Option<String>,
    /// The daemon's pid.
    pub pid: u32,
    /// The first ready line as printed.
    pub ready: Value,
    /// The process (None once it was waited for).
    child: Option<Child>,
    /// Lines the daemon printed on stdout after the first ready line.
    lines: Receiver<String>,
}

/// Spawn `ssqd --config FILE` with stdout piped and stderr in DIR/NAME/ssqd.stderr.
pub fn spawn_ssqd(config: &Path) -> (Child, Receiver<String>) {
    spawn_ssqd_with(config, Jail::default())
}

/// How ssqd is started: with its own `/etc/hosts`, or a lower descriptor limit.
#[derive(Default, Clone, Copy)]
pub struct Jail<'a> {
    /// A file bind-mounted as `/etc/hosts` in a mount namespace of its own.
    pub hosts: Option<&'a Path>,
    /// RLIMIT_NOFILE, soft and hard.
    pub nofile: Option<u64>,
    /// SSQD_WORKER_THREADS.
    pub workers: Option<usize>,
}

/// Whether ssqd can be given its own `/etc/hosts` ([`Node::run_with_hosts`]): root,
/// allowed to make a mount namespace and bind-mount in it (a container without
/// CAP_SYS_ADMIN is not).
pub fn can_replace_hosts() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() == 0 };
    root && Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind /etc/hosts /etc/hosts",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// As [`spawn_ssqd`], in `jail`: with `hosts`, ssqd runs in a mount namespace of its
/// own where that file is `/etc/hosts` (see [`can_replace_hosts`]): names resolve as
/// the test says, through the system's real resolver (no nscd runs on the test
/// machines); with `nofile`, under that descriptor limit (soft and hard).
fn spawn_ssqd_with(config: &Path, jail: Jail<'_>) -> (Child, Receiver<String>) {
    let err_path = config.with_file_name("ssqd.stderr");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut c = match jail.hosts {
        None => Command::new(SSQD),
        Some(h) => {
            // `exec` keeps the pid: the ready line's pid is still the child's.
            let mut c = Command::new("unshare");
            c.args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"",
                "sh",
            ])
            .arg(h)
            .arg(SSQD);
            c
        }
    };
    for v in SCRUB {
        c.env_remove(v);
    }
    match jail.workers {
        Some(n) => c.env("SSQD_WORKER_THREADS", n.to_string()),
        None => c.env_remove("SSQD_WORKER_THREADS"),
    };
    if let Some(n) = jail.nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = c
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn ssqd");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keeps reading for the daemon's whole life: a restarted image prints its ready
    // line again, and a closed pipe would make that print fail.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // Nobody may listen any more: keep draining anyway.
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

impl Node {
    /// Create the node's folder (operator key added) and start it.
    pub fn start(env: &Env, name: &str, ip: &str, extra: &str) -> Node {
        let nd = NodeDir::create(env, name, ip, extra);
        Node::run(nd)
    }

    /// Start ssqd for existing files and wait for its ready line.
    pub fn run(files: NodeDir) -> Node {
        Node::run_in(files, Jail::default())
    }

    /// As [`Node::run`], with `hosts` as the daemon's `/etc/hosts` (see
    /// [`spawn_ssqd_with`]; root only).
    pub fn run_with_hosts(files: NodeDir, hosts: &Path) -> Node {
        Node::run_in(
            files,
            Jail {
                hosts: Some(hosts),
                ..Jail::default()
            },
        )
    }

    /// [`Node::run`] with RLIMIT_NOFILE at `n` (soft and hard).
    pub fn run_with_nofile(files: NodeDir, n: u64) -> Node {
        Node::run_in(
            files,
            Jail {
                nofile: Some(n),
                ..Jail::default()
            },
        )
    }

    /// [`Node::run`] with `n` proxy worker threads (SSQD_WORKER_THREADS).
    pub fn run_with_workers(files: NodeDir, n: usize) -> Node {
        Node::run_in(
            files,
            Jail {
                workers: Some(n),
                ..Jail::default()
            },
        )
    }

    fn run_in(files: NodeDir, jail: Jail<'_>) -> Node {
        let (mut child, lines) = spawn_ssqd_with(&files.config, jail);
        let deadline = Instant::now() + READY;
        let line = loop {
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => break l,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "ssqd for {} exited before it was ready ({status:?}); stderr:\n{}",
                        files.name,
                        std::fs::read_to_string(files.dir.join("ssqd.stderr")).unwrap_or_default()
                    );
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Give the reader a moment to pass on a line printed just before exit.
                if let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
                    break l;
                }
                panic!(
                    "ssqd for {} exited before it was ready ({status}); stderr:\n{}",
                    files.name,
                    std::fs::read_to_string(files.dir.join("ssqd.stderr")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ssqd for {} printed no ready line within {READY:?}",
                    files.name
                );
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("ready line is not JSON ({e}): {line}"));
        let pid = ready["pid"].as_u64().expect("ready.pid") as u32;
        assert_eq!(pid, child.id(), "ready line's pid is not ssqd's pid");
        assert_eq!(ready["node"], files.name.as_str(), "ready line's node");
        let portal = ready["portal"].as_str().expect("ready.portal").to_string();
        let proxy = ready["proxy"].as_str().map(str::to_string);
        // The same line, whole, in data_dir/ssqd.addr.
        let addr_file = std::fs::read_to_string(files.data.join("ssqd.addr"))
            .expect("data_dir/ssqd.addr after the ready line");
        let from_file: Value = serde_json::from_str(addr_file.trim())
            .unwrap_or_else(|e| panic!("ssqd.addr is not JSON ({e}): {addr_file}"));
        assert_eq!(from_file, ready, "ssqd.addr differs from the ready line");
        Node {
            files,
            portal,
            proxy,
            pid,
            ready,
            child: Some(child),
            lines,
        }
    }

    /// The portal's IP.
    pub fn ip(&self) -> IpAddr {
        self.portal
            .rsplit_once(':')
            .and_then(|(ip, _)| ip.parse().ok())
            .expect("portal ip")
    }

    /// The next line ssqd prints on stdout (a restarted image's ready line), if any
    /// within `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Send SIGTERM and wait (up to 15 s) for the exit; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("ssqd already stopped");
        signal(child.id(), libc::SIGTERM);
        match wait_deadline(&mut child, Duration::from_secs(15)) {
            Some(s) => s,
            None => {
                // What the kernel knows of its signals: a lost SIGTERM shows here.
                let st: String = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        l.starts_with("State") || l.starts_with("Sig") || l.starts_with("ShdPnd")
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                panic!("ssqd did not exit within 15 s of SIGTERM\n{st}");
            }
        }
    }

    /// `ssq ARGS --node PORTAL`.
    pub fn ssq(&self, env: &Env, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--node", &self.portal]);
        env.ssq(&all)
    }

    /// `ssq -o json ARGS --node PORTAL`, required to succeed.
    pub fn ssq_json(&self, env: &Env, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--node", &self.portal]);
        env.ssq_json(&all)
    }

    /// The node's status over the portal.
    pub fn status(&self, env: &Env) -> Value {
        self.ssq_json(env, &["status"])
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            signal(child.id(), libc::SIGTERM);
            if wait_deadline(&mut child, Duration::from_secs(5)).is_none() {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

/// Send a signal to a process the tests started.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid is a child of this process.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Wait for a child with a deadline, polling.
pub fn wait_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run ssqd on `config`, expecting it to exit by itself within `limit`: returns the
/// status, the stdout lines and stderr.
pub fn ssqd_until_exit(config: &Path, limit: Duration) -> (ExitStatus, Vec<String>, String) {
    let (mut child, lines) = spawn_ssqd(config);
    let status = match wait_deadline(&mut child, limit) {
        Some(s) => s,
        None => {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            panic!(
                "ssqd kept running with {} (expected it to refuse to start)",
                config.display()
            );
        }
    };
    let mut out = Vec::new();
    while let Ok(l) = lines.recv_timeout(Duration::from_millis(100)) {
        out.push(l);
    }
    let err = std::fs::read_to_string(config.with_file_name("ssqd.stderr")).unwrap_or_default();
    (status, out, err)
}

/// Poll `f` every 20 ms until it gives Some, or panic with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Answer of a raw request.
#[derive(Debug)]
pub struct RawAnswer {
    /// HTTP status.
    pub status: u16,
    /// The `ssq-boot-id` header.
    pub boot_id: Option<String>,
    /// The body as JSON (Null when it is not JSON).
    pub json: Value,
}

/// A raw HTTPS/1.1 connection to a portal, for hand-made signed requests.
pub struct RawConn {
    rt: tokio::runtime::Runtime,
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    /// sha256 hex of the server's certificate (what every signature covers).
    pub cert_sha256: String,
    /// `host:port` dialed (the signed authority).
    pub addr: String,
}

impl RawConn {
    /// Connect (TLS, any certificate: the tests check the pin elsewhere), from `bind`
    /// when given.
    pub fn connect(addr: &str, bind: Option<IpAddr>) -> RawConn {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (send, cert_sha256) = rt.block_on(async {
            let tcp = ssq::client::tcp_connect(addr, bind, Duration::from_secs(10))
                .await
                .expect("tcp connect");
            let (cfg, verifier) = ssq::tls::client_config(None).expect("client config");
            let host = addr.rsplit_once(':').expect("host:port").0.to_string();
            let name = rustls::pki_types::ServerName::try_from(host).expect("server name");
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .expect("tls handshake");
            let der = verifier.seen().expect("server certificate");
            let (send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .expect("http handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            (send, ssq::keys::sha256_hex(&der))
        });
        RawConn {
            rt,
            send,
            cert_sha256,
            addr: addr.to_string(),
        }
    }

    /// Send one request with the given Authorization header value.
    pub fn send(&mut self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> RawAnswer {
        use http_body_util::BodyExt;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr)
            .header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .expect("request");
        let send = &mut self.send;
        self.rt.block_on(async {
            let fut = async {
                send.ready().await.expect("connection ready");
                let resp = send.send_request(req).await.expect("send request");
                let status = resp.status().as_u16();
                let boot_id = resp
                    .headers()
                    .get(ssq::api::BOOT_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                RawAnswer {
                    status,
                    boot_id,
                    json: serde_json::from_slice(&body).unwrap_or(Value::Null),
                }
            };
            tokio::time::timeout(Duration::from_secs(10), fut)
                .await
                .expect("answer within 10 s")
        })
    }
}

/// What a hand-made request is signed for.
pub struct Sig<'a> {
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Unix seconds.
    pub ts: i64,
    /// Boot id (empty: none known).
    pub boot_id: &'a str,
    /// Body.
    pub body: &'a [u8],
}

impl<'a> Sig<'a> {
    /// A request signed now, for no boot id, with an empty body.
    pub fn now(method: &'a str, path: &'a str) -> Sig<'a> {
        Sig {
            method,
            path,
            ts: ssq::sign::unix_now(),
            boot_id: "",
            body: b"",
        }
    }
}

/// The Authorization header for `sig` on `conn`: an operator signature.
pub fn operator_auth(conn: &RawConn, key: &ssq::keys::SigningKey, sig: &Sig<'_>) -> String {
    let nonce = ssq::sign::new_nonce().expect("nonce");
    let body_sha = ssq::keys::sha256_hex(sig.body);
    let c = canonical(conn, sig, &nonce, &body_sha);
    ssq::sign::sign_operator(key, &c).to_value()
}

/// The Authorization header for `sig` on `conn`: a sync credential (activation-key MAC
/// plus the node key's signature).
pub fn sync_auth(
    conn: &RawConn,
    ak: &ssq::keys::ActivationKey,
    node_key: &ssq::keys::SigningKey,
    sig: &Sig<'_>,
) -> String {
    let nonce = ssq::sign::new_nonce().expect("nonce");
    let body_sha = ssq::keys::sha256_hex(sig.body);
    let c = canonical(conn, sig, &nonce, &body_sha);
    ssq::sign::sign_sync(ak, node_key, &c).to_value()
}

fn canonical<'a>(
    conn: &'a RawConn,
    sig: &'a Sig<'a>,
    nonce: &'a str,
    body_sha: &'a str,
) -> ssq::sign::Canonical<'a> {
    ssq::sign::Canonical {
        method: sig.method,
        authority: &conn.addr,
        path_and_query: sig.path,
        ts: sig.ts,
        nonce,
        node: "e2e-test",
        boot_id: sig.boot_id,
        body_sha256: body_sha,
        cert_sha256: &conn.cert_sha256,
    }
}

impl Node {
    /// Send SIGKILL and reap the process: no drain, no clean exit (a crash or a power
    /// cut, as far as the node's files can tell).
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("ssqd already stopped");
        signal(child.id(), libc::SIGKILL);
        child.wait().expect("wait for the killed ssqd")
    }
}

/// A master on a fresh 127.0.0.x.
pub fn start_master(env: &Env, name: &str) -> Node {
    Node::start(env, name, &next_ip(), "role: master\n")
}

/// A slave of `master` on a fresh 127.0.0.x.
pub fn start_slave(env: &Env, name: &str, master: &Node) -> Node {
    Node::start(
        env,
        name,
        &next_ip(),
        &format!("master: {}\n", master.portal),
    )
}

/// Wait until the master knows every named slave, then apply `policy` with `--wait`.
pub fn apply_policy_wait(env: &Env, master: &Node, slaves: &[&str], policy: &str) {
    eventually(
        Duration::from_secs(15),
        &format!("the master to know {slaves:?}"),
        || {
            let st = master.status(env);
            let rows = st["slaves"].as_array()?.clone();
            slaves
                .iter()
                .all(|n| rows.iter().any(|r| r["name"] == *n))
                .then_some(())
        },
    );
    let out = policy_apply(env, &master.portal, policy, &["--wait"]);
    assert_ok(&out, "ssq policy apply --wait");
}

static POLICY_FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `ssq policy apply FILE --master PORTAL EXTRA…` with `text` in a new file of the
/// env's dir; what ssq did.
pub fn policy_apply(env: &Env, portal: &str, text: &str, extra: &[&str]) -> Output {
    let n = POLICY_FILES.fetch_add(1, Ordering::SeqCst);
    let file = env
        .path()
        .join(format!("policy-{}-{n}.yaml", std::process::id()));
    std::fs::write(&file, text).expect("write the policy file");
    let path = file.to_str().expect("utf-8 path");
    let mut args = vec!["policy", "apply", path, "--master", portal];
    args.extend_from_slice(extra);
    env.ssq(&args)
}

/// Read one HTTP/1.1 request off `r` as an origin server does: the head (request line
/// and headers, without the blank line) and the body (Content-Length or chunked,
/// decoded). None when the connection ends first.
pub fn read_http_request<R: std::io::BufRead>(r: &mut R) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push_str(&line);
    }
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if lower
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).ok()? == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    }
    Some((head, body))
}

/// The lines of a node's log_dir/access.log.
pub fn access_lines(node: &Node) -> Vec<String> {
    std::fs::read_to_string(node.files.log.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// How many pipe descriptors process `pid` holds (`/proc/PID/fd`).
pub fn pipe_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("pipe:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// What curl did.
pub struct Curl {
    /// `%{http_code}`: the final response's status (0: none).
    pub code: u16,
    /// `%{http_connect}`: the proxy's answer to CONNECT (0: none).
    pub connect: u16,
    /// Every response head curl received (`-D`), CONNECT's included.
    pub headers: String,
    pub body: String,
    pub out: Output,
}

static CURL_N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `curl -sS --max-time 15 ARGS`, with heads and body captured in files under `dir`.
pub fn curl(dir: &std::path::Path, args: &[&str]) -> Curl {
    let n = CURL_N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let hfile: std::path::PathBuf = dir.join(format!("curl-{n}.head"));
    let bfile: std::path::PathBuf = dir.join(format!("curl-{n}.body"));
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "15", "--noproxy", "", "-D"])
        .arg(&hfile)
        .arg("-o")
        .arg(&bfile)
        .args(["-w", "%{http_code} %{http_connect}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("run curl (install it: scripts/test does on Debian)");
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = w.split_whitespace();
    let code = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let connect = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Curl {
        code,
        connect,
        headers: std::fs::read_to_string(&hfile).unwrap_or_default(),
        body: std::fs::read_to_string(&bfile).unwrap_or_default(),
        out,
    }
}

impl std::fmt::Debug for Curl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "curl exit {:?}, http_code {}, http_connect {}\nstderr: {}\nheads:\n{}\nbody:\n{}",
            self.out.status.code(),
            self.code,
            self.connect,
            stderr(&self.out),
            self.headers,
            self.body
        )
    }
}
