//! The forward proxy: each client request is checked against the active policy (client
//! access, rules, CONNECT ports) before any DNS lookup, then forwarded through a pooled
//! upstream client (absolute-form → origin-form, hop-by-hop headers stripped, `Via`
//! added) or tunnelled (CONNECT; zero-copy, see `splice`). A node that has no policy
//! refuses everything with 503 (fail closed). Every request, refused or served, ends in
//! one access record. Names are resolved through a cache (`dnscache`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use crate::iptext::{ip_text, push_ip};
use crate::reqbody::ClientBody;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use ssq::accessrecord::AccessRecord;
use ssq::policy::{EffectiveLimits, Request as PolicyRequest, Verdict};

use crate::accesslog::AccessLog;
use crate::active::ActivePolicy;
use crate::connlimit::Permit;
use crate::dnscache::DnsCache;
use crate::node::Node;
use crate::pages;
use crate::rawhead::RawHead;
use crate::textpool;
use crate::throttle::Throttle;
use crate::tracked::{CountIo, Counted, ProxyBody, RecordGuard, Tracked};
use crate::upbody::UpBody;
use crate::upstream::{connect_first, Outgoing, Prepared, UpError, Upstream, MAX_ADDRS};
use tokio::net::TcpStream;

/// The proxy of one node.
pub struct Proxy {
    /// The node (policy, names, listeners).
    node: Arc<Node>,
    /// Pooled upstream HTTP/1.1 connections.
    upstream: Arc<Upstream>,
    /// Upstream names already resolved.
    dns: DnsCache,
    /// The access log.
    pub log: Arc<AccessLog>,
    /// `Via` value: `1.1 NODE`.
    via: HeaderValue,
    /// This node's own listeners: never a forwarding target.
    own: Vec<SocketAddr>,
    /// extended.log lines for uploads stopped after their answer began.
    upload_stops: Arc<Throttle>,
}

/// Hop-by-hop headers never forwarded (RFC 9110 7.6.1, plus the proxy ones).
const HOPS: usize = 9;
const HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Where the field `name` (lowercase) is in `HOP`, if it is a hop-by-hop header.
pub fn hop_index(name: &[u8]) -> Option<usize> {
    // By length and text: no hashing, no comparison with each of the nine.
    Some(match name {
        b"connection" => 0,
        b"proxy-connection" => 1,
        b"keep-alive" => 2,
        b"te" => 3,
        b"trailer" => 4,
        b"transfer-encoding" => 5,
        b"upgrade" => 6,
        b"proxy-authorization" => 7,
        b"proxy-authenticate" => 8,
        _ => return None,
    })
}

/// Remove hop-by-hop headers, including those named in Connection (every Connection
/// header counts: a second one may name what the first does not).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One look at the names first: most heads carry none of them or only Connection,
    // and each removal is a hashed lookup.
    let mut present = [false; HOPS];
    let mut any = false;
    for name in h.keys() {
        if let Some(i) = hop_index(name.as_str().as_bytes()) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    let mut connection = h.get_all(header::CONNECTION).iter();
    match (connection.next(), connection.next()) {
        (None, _) => {}
        // The usual case, without an allocation: the value is a shared slice.
        (Some(only), None) => {
            let only = only.clone();
            remove_named(h, &only);
        }
        (Some(_), Some(_)) => {
            let all: Vec<HeaderValue> = h.get_all(header::CONNECTION).iter().cloned().collect();
            for v in &all {
                remove_named(h, v);
            }
        }
    }
    for (n, _) in HOP.iter().zip(present).filter(|&(_, p)| p) {
        h.remove(n);
    }
}

/// Remove the headers a Connection value names.
fn remove_named(h: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(text) = connection.to_str() else {
        return;
    };
    for t in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        // By `&str`: looked up without building a `HeaderName` (no allocation for a
        // name outside the standard set); an invalid name matches nothing.
        h.remove(t);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether forwarding to `addr` is refused: link-local, or one of this node's own
/// listeners (a loop).
fn forbidden_target(addr: SocketAddr, own: &[SocketAddr]) -> Option<&'static str> {
    // `::ffff:169.254.169.254` is 169.254.169.254.
    let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
    if addr.ip().is_unspecified() {
        return Some("the unspecified address is never forwarded to");
    }
    let link_local = match addr.ip() {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("link-local addresses are never forwarded to");
    }
    let is_own = own.iter().any(|o| {
        o.port() == addr.port()
            && (o.ip() == addr.ip()
                || (o.ip().is_unspecified()
                    && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
    });
    if is_own {
        return Some("that is this proxy itself (a forwarding loop)");
    }
    None
}

impl Proxy {
    /// A proxy for `node` writing to `log`, served by `workers` worker threads
    /// (inside the runtime: the upstream pool has a task that closes idle connections).
    pub fn new(node: Arc<Node>, log: Arc<AccessLog>, workers: usize) -> Arc<Proxy> {
        let via = HeaderValue::from_str(&format!("1.1 {}", node.files.startup.node))
            .unwrap_or(HeaderValue::from_static("1.1 ssq"));
        let mut own = vec![node.portal_addr];
        own.extend(node.proxy_addr);
        Arc::new(Proxy {
            node,
            upstream: Upstream::new(workers),
            dns: DnsCache::default(),
            log,
            via,
            own,
            upload_stops: Arc::default(),
        })
    }

    /// A warning in the node's log, about the proxy.
    pub fn warn(&self, msg: &str) {
        self.node.files.log.warn("proxy", msg);
    }

    /// The limits of the active policy (defaults before the first policy).
    pub fn limits(&self) -> EffectiveLimits {
        self.node
            .active
            .get()
            .map(|a| *a.matcher.limits())
            .unwrap_or_default()
    }

    /// A page of our own, with its record.
    fn page(&self, status: u16, html: String, guard: RecordGuard) -> Response<ProxyBody> {
        let mut guard = guard;
        guard.rec.status = status;
        guard.rec.content_type = Some("text/html".into());
        guard
            .down
            .store(html.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let body = Tracked::new(
            Either::Left(Full::new(Bytes::from(html))),
            counter,
            Some(guard),
        );
        let mut r = Response::new(body);
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r.headers_mut().insert(header::VIA, self.via.clone());
        r
    }

    /// A refusal page with a title and a sentence.
    fn refuse(
        &self,
        status: u16,
        title: &str,
        why: &str,
        guard: RecordGuard,
    ) -> Response<ProxyBody> {
        let html = pages::page(
            status,
            title,
            &format!("<p>{}</p>", pages::esc(why)),
            &self.node.files.startup.node,
        );
        self.page(status, html, guard)
    }

    /// Answer a request on a connection past a limit (429 per client, 503 in total).
    pub fn over_limit(
        &self,
        client: SocketAddr,
        which: crate::connlimit::Refused,
        req: Request<ClientBody>,
    ) -> Response<ProxyBody> {
        let rec = AccessRecord {
            time_ms: now_ms(),
            node: self.node.files.startup.node.clone(),
            client: ip_text(client.ip()),
            method: req.method().as_str().to_string(),
            url: req.uri().to_string(),
            action: "blocked".into(),
            rule: Some("limits".into()),
            ..AccessRecord::default()
        };
        let guard = RecordGuard::new(rec, Instant::now(), self.log.clone());
        match which {
            crate::connlimit::Refused::PerClient => self.refuse(
                429,
                "Too many connections",
                &format!("{} has too many connections open through this proxy (limits.max_connections_per_client)", client.ip()),
                guard,
            ),
            crate::connlimit::Refused::Total => self.refuse(
                503,
                "Proxy busy",
                "this proxy has reached its connection limit (limits.max_connections); try again shortly",
                guard,
            ),
        }
    }

    /// Record a request whose head was refused (`clientconn`: 400 malformed, 431 too
    /// large, 408 too slow): it never reached `handle`, but it is a request all the same.
    pub fn head_refused(&self, client: SocketAddr, status: u16, rule: String) {
        let rec = AccessRecord {
            time_ms: now_ms(),
            node: self.node.files.startup.node.clone(),
            client: ip_text(client.ip()),
            method: "-".into(),
            url: "-".into(),
            status,
            action: "blocked".into(),
            rule: Some(rule),
            ..AccessRecord::default()
        };
        self.log.record(rec);
    }

    /// Serve one client request; `ambiguous`: its head had both Content-Length and
    /// Transfer-Encoding, or two Content-Lengths (see `reqhead`).
    ///
    /// Everything decided without waiting (the checks, the policy, the refusals, the
    /// upstream request's head) is done here, before the future exists: what the
    /// future keeps across its waits is only what the waits need. The client's
    /// connection (`clientconn`) holds the future of its request in flight; a smaller
    /// one is less to copy and less memory per open connection.
    pub fn handle(
        self: Arc<Self>,
        client: SocketAddr,
        ambiguous: bool,
        hold: Arc<Permit>,
        req: Request<ClientBody>,
    ) -> Handling<impl Future<Output = Response<ProxyBody>> + Send> {
        match self.step(client, ambiguous, hold, req) {
            Step::Answer(resp) => Handling::Answer { resp: Some(resp) },
            Step::Go(job) => Handling::Go { fut: self.go(job) },
        }
    }

    /// The record of `req`, and what comes of it short of any wait.
    fn step(
        &self,
        client: SocketAddr,
        ambiguous: bool,
        hold: Arc<Permit>,
        req: Request<ClientBody>,
    ) -> Step {
        let start = Instant::now();
        let is_connect = req.method() == Method::CONNECT;
        // The record's text in spare strings (see `textpool`).
        let mut url = textpool::blank();
        match req.uri().authority() {
            Some(a) if is_connect => url.push_str(a.as_str()),
            None if is_connect => url.push_str(&req.uri().to_string()),
            _ => push_url(&mut url, req.uri()),
        }
        let mut client_text = textpool::blank();
        push_ip(&mut client_text, client.ip());
        let mut rec = AccessRecord {
            time_ms: now_ms(),
            node: textpool::text(&self.node.files.startup.node),
            client: client_text,
            method: textpool::text(req.method().as_str()),
            url,
            action: textpool::text("allowed"),
            ..AccessRecord::default()
        };
        let Some(active) = self.node.active.get() else {
            rec.action = "blocked".into();
            let guard = RecordGuard::new(rec, start, self.log.clone());
            let name = &self.node.files.startup.node;
            return Step::Answer(self.refuse(
                503,
                "This gateway has no policy yet",
                &format!("{name} has not received a policy from its master, so it refuses all traffic (fail closed). Ask your administrator to check it with: ssq status --node {name}"),
                guard,
            ));
        };
        rec.revision = active.doc.info.revision;
        let guard = RecordGuard::new(rec, start, self.log.clone());
        self.decide(active, client, ambiguous, hold, req, guard)
    }

    /// The checks and the policy's verdict: a page of our own, or a job to do.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        active: Arc<ActivePolicy>,
        client: SocketAddr,
        ambiguous: bool,
        hold: Arc<Permit>,
        req: Request<ClientBody>,
        mut guard: RecordGuard,
    ) -> Step {
        // Framing that two parsers could read differently is refused outright.
        if ambiguous {
            guard.rec.action = "blocked".into();
            return Step::Answer(self.refuse(400, "Bad request", "ambiguous message framing (Content-Length with Transfer-Encoding, or two Content-Lengths)", guard));
        }
        // Our own Via on an incoming request: it went round (e.g. through a name or an
        // interface address of this node) — a loop.
        if via_names(req.headers(), &self.via) {
            guard.rec.action = "blocked".into();
            return Step::Answer(self.refuse(
                508,
                "Loop detected",
                "this request has passed through this proxy already (its Via header names it)",
                guard,
            ));
        }
        let is_connect = req.method() == Method::CONNECT;
        let Some((host, port)) = target(req.uri(), is_connect) else {
            guard.rec.action = "blocked".into();
            return Step::Answer(self.refuse(
                400,
                "Bad request",
                "this is a forward proxy: send absolute-form requests (http://host/path) or CONNECT host:port",
                guard,
            ));
        };
        if !is_connect && !host_agrees(req.headers(), req.uri(), &host, port) {
            guard.rec.action = "blocked".into();
            return Step::Answer(self.refuse(
                400,
                "Bad request",
                "the Host header and the request target name different hosts",
                guard,
            ));
        }
        let d = active.matcher.decide(&PolicyRequest {
            client: client.ip(),
            method: req.method().as_str(),
            host: &host,
            port,
            url: &guard.rec.url,
            connect: is_connect,
        });
        guard.rec.rule.clone_from(&d.rule);
        // `ssq verify --probe-traffic`: answered here, recorded like any request.
        if !is_connect && host == pages::PROBE_HOST && d.action != Verdict::ClientDenied {
            guard.rec.rule = Some(pages::PROBE_HOST.into());
            let html = pages::probe(
                &self.node.files.startup.node,
                active.doc.info.revision,
                &guard.rec.url,
                client.ip(),
            );
            return Step::Answer(self.page(200, html, guard));
        }
        match d.action {
            Verdict::Allow => {}
            Verdict::ClientDenied => {
                guard.rec.action = "blocked".into();
                return Step::Answer(self.refuse(
                    403,
                    "Access denied",
                    &format!("the address {} may not use this proxy", client.ip()),
                    guard,
                ));
            }
            Verdict::PortDenied => {
                guard.rec.action = "blocked".into();
                return Step::Answer(self.refuse(
                    403,
                    "Port not allowed",
                    &format!("CONNECT to port {port} is not allowed by the policy"),
                    guard,
                ));
            }
            Verdict::Deny => {
                guard.rec.action = "blocked".into();
                let status = if is_connect { 403 } else { 451 };
                let html = pages::blocked(
                    d.rule.as_deref(),
                    d.message.as_deref(),
                    &guard.rec.url,
                    &self.node.files.startup.node,
                );
                return Step::Answer(self.page(status, html, guard));
            }
        }
        let limits = *active.matcher.limits();
        drop(active);
        let kind = if is_connect {
            JobKind::Tunnel { hold }
        } else {
            drop(hold);
            let (out, body) = self.prepare(req, &host, guard.up.clone());
            JobKind::Forward { out, body }
        };
        Step::Go(Job {
            guard,
            host,
            port,
            limits,
            kind,
        })
    }

    /// The upstream request's head, serialized (absolute-form → origin-form, hop-by-hop
    /// headers stripped, `Via` added), and the client's body counted into `up`.
    fn prepare(
        &self,
        req: Request<ClientBody>,
        host: &str,
        up: Arc<std::sync::atomic::AtomicU64>,
    ) -> (Prepared, Counted<ClientBody>) {
        let (mut parts, body) = req.into_parts();
        // The Host the client named (or the target's), never the resolved address.
        let host_value = parts.headers.get(header::HOST).cloned().or_else(|| {
            let authority = parts
                .uri
                .authority()
                .map(|a| a.as_str().rsplit('@').next().unwrap_or(""))
                .unwrap_or(host);
            HeaderValue::from_str(authority).ok()
        });
        strip_hop_by_hop(&mut parts.headers);
        if let Some(hv) = host_value {
            parts.headers.insert(header::HOST, hv);
        }
        parts.headers.append(header::VIA, self.via.clone());
        // Origin-form: `http://h` and `http://h?q` become `/` and `/?q`.
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        let target: std::borrow::Cow<'_, str> = if pq.starts_with('/') {
            pq.into()
        } else {
            format!("/{pq}").into()
        };
        let body = Counted::new(body, up);
        let out = Prepared::new(
            &Outgoing {
                method: &parts.method,
                target: &target,
                headers: &parts.headers,
            },
            &body,
        );
        crate::headerpool::give(parts.headers);
        (out, body)
    }

    /// The waits of a job: resolving, connecting, sending, the answer's head.
    fn go(self: Arc<Self>, job: Job) -> impl Future<Output = Response<ProxyBody>> + Send {
        let Job {
            mut guard,
            host,
            port,
            limits,
            kind,
        } = job;
        async move {
            let targets = match self.resolve(&host, port, &limits).await {
                Ok(t) => t,
                Err((status, why)) => {
                    let title = if status == 504 {
                        "Gateway timeout"
                    } else {
                        "Bad gateway"
                    };
                    return self.refuse(status, title, &why, guard);
                }
            };
            let mut peer = textpool::blank();
            push_ip(&mut peer, targets.first.ip());
            guard.rec.peer = Some(peer);
            match kind {
                JobKind::Tunnel { hold } => {
                    let connecting =
                        connect_first(targets.tried(), limits.upstream_connect_timeout);
                    match Box::pin(connecting).await {
                        Ok((tcp, used)) => {
                            self.connected(&host, &targets, used, &mut guard);
                            self.tunnel(tcp, limits.idle_timeout, guard, hold)
                        }
                        Err(e) => self.unreachable(e, &targets, guard),
                    }
                }
                JobKind::Forward { out, body } => {
                    // Each wait is bounded (connecting, each part of the upload, the
                    // answer's head), not the whole: a long upload that keeps moving
                    // is not cut off.
                    let mut used = None;
                    let sent = self
                        .upstream
                        .send(
                            targets.tried(),
                            out,
                            body,
                            limits.upstream_connect_timeout,
                            limits.idle_timeout,
                            &mut used,
                        )
                        .await;
                    self.answer(sent, used, &targets, &host, &limits, guard)
                }
            }
        }
    }

    /// Resolve (IP literals as they are, names through the cache) and check the target.
    async fn resolve(
        &self,
        host: &str,
        port: u16,
        limits: &EffectiveLimits,
    ) -> Result<Targets, (u16, String)> {
        let own = &self.own;
        if let Ok(ip) = host.parse::<IpAddr>() {
            let a = SocketAddr::new(ip, port);
            return match forbidden_target(a, own) {
                None => Ok(Targets {
                    first: a,
                    all: None,
                }),
                Some(why) => Err((502, format!("{host}:{port} ({a}): {why}"))),
            };
        }
        let timeout = limits.upstream_connect_timeout;
        let answer = self
            .dns
            .get_or_resolve(host, port, || async move {
                match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
                    Err(_) => None,
                    Ok(r) => Some(r.map(Iterator::collect).map_err(|e| e.to_string())),
                }
            })
            .await;
        let lookup = match answer {
            None => return Err((504, format!("resolving {host} timed out"))),
            Some(Err(e)) => return Err((502, format!("cannot resolve {host}: {e}"))),
            Some(Ok(addrs)) => addrs,
        };
        // Every address the name has that may be forwarded to, in the cache's order
        // (addresses that failed to connect last).
        let mut refused = None;
        let mut allowed = lookup;
        allowed.retain(|&a| match forbidden_target(a, own) {
            None => true,
            Some(why) => {
                refused = Some(format!("{host}:{port} ({a}): {why}"));
                false
            }
        });
        match allowed.first() {
            Some(&first) => Ok(Targets {
                first,
                all: Some(allowed),
            }),
            None => Err((
                502,
                refused.unwrap_or_else(|| format!("{host} has no address")),
            )),
        }
    }

    /// The client's response to a forwarded request: the upstream's answer, or the
    /// page that says why there is none.
    fn answer(
        &self,
        sent: Result<(RawHead, UpBody), UpError>,
        used: Option<SocketAddr>,
        targets: &Targets,
        host: &str,
        limits: &EffectiveLimits,
        mut guard: RecordGuard,
    ) -> Response<ProxyBody> {
        // Whatever came of it, a connection made to a later address means the ones
        // before it failed.
        if let Some(used) = used {
            self.connected(host, targets, used, &mut guard);
        }
        let (head, body) = match sent {
            Err(UpError::AnswerTimeout(idle)) => {
                return self.refuse(
                    504,
                    "Gateway timeout",
                    &format!(
                        "{host} ({}) did not answer within {} s of the request",
                        targets.shown(),
                        idle.as_secs_f64()
                    ),
                    guard,
                )
            }
            Err(e @ UpError::ClientStalled(_)) => {
                return self.refuse(408, "Request timeout", &e.to_string(), guard)
            }
            // A malformed body (a bad chunk), or one the client broke off.
            Err(e @ UpError::ClientBody(_)) => {
                return self.refuse(400, "Bad request", &e.to_string(), guard)
            }
            Err(e @ UpError::UploadStalled(_)) => {
                return self.refuse(
                    504,
                    "Gateway timeout",
                    &format!("sending to {host} ({}): {e}", targets.shown()),
                    guard,
                )
            }
            Err(UpError::ConnectTimeout) => {
                return self.refuse(
                    504,
                    "Gateway timeout",
                    &format!(
                        "connecting to {host} ({}) took longer than {} s",
                        targets.shown(),
                        limits.upstream_connect_timeout.as_secs_f64()
                    ),
                    guard,
                )
            }
            Err(e) => {
                let shown = targets.shown();
                let why = match &e {
                    UpError::Connect(_) => format!("cannot connect to {host} ({shown}): {e}"),
                    _ => format!("the upstream {host} ({shown}) failed: {e}"),
                };
                return self.refuse(502, "Bad gateway", &why, guard);
            }
            Ok(r) => r,
        };
        // An origin that stops sending mid-body is given up after the idle timeout.
        let mut body = body.with_stall_limit(limits.idle_timeout);
        // An upload that fails once its answer has begun leaves the answer as it is (the
        // client gets what the origin sends): extended.log says what happened to it.
        // Only a stop of the client's or a stall of the origin's: an origin that closes
        // has ended its answer or will fail it (the answer says so). The URL goes without
        // its query (extended.log holds nothing secret), at most one line a second (any
        // client can cause it).
        if body.uploading() {
            let (node, throttle) = (self.node.clone(), self.upload_stops.clone());
            let url = guard.rec.url.split('?').next().unwrap_or("").to_string();
            let (client, up) = (guard.rec.client.clone(), guard.up.clone());
            body.on_upload_stopped(Box::new(move |e| {
                if !matches!(
                    e,
                    UpError::ClientBody(_) | UpError::ClientStalled(_) | UpError::UploadStalled(_)
                ) {
                    return;
                }
                let Some(skipped) = throttle.admit(now_ms()) else {
                    return;
                };
                let sent = up.load(std::sync::atomic::Ordering::Relaxed);
                let more = match skipped {
                    0 => String::new(),
                    n => format!(" ({n} more since the last such line)"),
                };
                node.files.log.warn(
                    "proxy",
                    &format!("the upload to {url} from {client} stopped after its answer had begun ({sent} bytes of it had come from the client): {e}{more}"),
                );
            }));
        }
        // The head goes to the client as it came, less its hop-by-hop fields, with our
        // Via (see `rawhead`): the response's own header map stays empty.
        let mut head = head;
        head.via = Some(self.via.clone());
        let status = head.status;
        guard.rec.status = status.as_u16();
        guard.rec.content_type = head.content_type().map(textpool::text);
        let down = guard.down.clone();
        let body = Tracked::new(Either::Right(body.with_head(head)), down, Some(guard));
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        resp
    }

    /// The page for a CONNECT whose target could not be reached.
    fn unreachable(
        &self,
        e: UpError,
        targets: &Targets,
        guard: RecordGuard,
    ) -> Response<ProxyBody> {
        match e {
            UpError::ConnectTimeout => self.refuse(
                504,
                "Gateway timeout",
                &format!("connecting to {} timed out", targets.shown()),
                guard,
            ),
            e => self.refuse(
                502,
                "Bad gateway",
                &format!("cannot connect to {}: {e}", targets.shown()),
                guard,
            ),
        }
    }

    /// The client's response to a CONNECT whose target took the connection `tcp`: 200,
    /// carrying the tunnel that `clientconn` runs on the client's socket once the 200
    /// is written.
    fn tunnel(
        &self,
        tcp: TcpStream,
        idle: std::time::Duration,
        mut guard: RecordGuard,
        hold: Arc<Permit>,
    ) -> Response<ProxyBody> {
        guard.rec.status = 200;
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut r = Response::new(Tracked::new(
            Either::Left(Full::new(Bytes::new())),
            counter,
            None,
        ));
        r.headers_mut().insert(header::VIA, self.via.clone());
        let job = TunnelJob {
            tcp,
            idle,
            guard,
            hold,
        };
        r.extensions_mut()
            .insert(TunnelTo(Arc::new(std::sync::Mutex::new(Some(job)))));
        r
    }
}

/// A CONNECT's tunnel, to run once its 200 is written: the target's connection, the
/// record (written when the tunnel closes) and the connection's place in the limits.
pub struct TunnelJob {
    tcp: TcpStream,
    idle: std::time::Duration,
    guard: RecordGuard,
    hold: Arc<Permit>,
}

/// The tunnel of a CONNECT's answer (a response extension, taken once).
#[derive(Clone)]
pub struct TunnelTo(Arc<std::sync::Mutex<Option<TunnelJob>>>);

impl TunnelTo {
    /// The tunnel, if not taken yet.
    pub fn take(&self) -> Option<TunnelJob> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl TunnelJob {
    /// Carry bytes both ways between `client` and the target (`early`: what the client
    /// sent past the CONNECT head, for the target first) until both sides have closed
    /// or nothing moved for the idle limit. Zero-copy (splice) when pipes are to be
    /// had; copied otherwise.
    pub async fn run(self, client: TcpStream, early: &[u8]) {
        let TunnelJob {
            mut tcp,
            idle,
            guard,
            hold,
        } = self;
        match crate::splice::Tunnel::new(guard.up.clone(), guard.down.clone()) {
            Ok(pipes) => {
                let _ = pipes.run(client, tcp, early, idle).await;
            }
            Err(_) => {
                use tokio::io::AsyncWriteExt;
                let (up, down) = (guard.up.clone(), guard.down.clone());
                let copy = async {
                    if !matches!(
                        tokio::time::timeout(idle, tcp.write_all(early)).await,
                        Ok(Ok(()))
                    ) {
                        return;
                    }
                    up.fetch_add(early.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let mut client = CountIo::new(client, up.clone());
                    let mut server = CountIo::new(&mut tcp, down.clone());
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                };
                // Nothing moved either way for the idle limit (checked every limit, so
                // within twice it): the tunnel ends, as a spliced one does.
                let quiet = async {
                    let moved = || {
                        up.load(std::sync::atomic::Ordering::Relaxed)
                            + down.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    let mut last = moved();
                    loop {
                        tokio::time::sleep(idle).await;
                        let now = moved();
                        if now == last {
                            return;
                        }
                        last = now;
                    }
                };
                tokio::select! {
                    () = copy => {}
                    () = quiet => {}
                }
            }
        }
        drop(guard);
        // The connection's place in the limits is held until the tunnel closes.
        drop(hold);
    }
}

/// What a request comes to before any wait. (Returned once, never stored: the size
/// of its variants does not matter.)
#[allow(clippy::large_enum_variant)]
enum Step {
    /// A page of our own (refused, blocked, the probe), ready now.
    Answer(Response<ProxyBody>),
    /// A request to forward or a tunnel to open.
    Go(Job),
}

/// What the waits of an allowed request need.
struct Job {
    /// The record.
    guard: RecordGuard,
    /// The target host (a name or an IP literal) and port.
    host: String,
    port: u16,
    /// The limits of the policy that allowed it.
    limits: EffectiveLimits,
    /// Forward or tunnel.
    kind: JobKind,
}

/// The two kinds of job.
enum JobKind {
    /// A request, its head serialized, and its body.
    Forward {
        out: Prepared,
        body: Counted<ClientBody>,
    },
    /// A CONNECT, and the connection's place in the limits (held by the tunnel).
    Tunnel { hold: Arc<Permit> },
}

pin_project_lite::pin_project! {
    /// The future of one request: a page ready at once, or the waits of a job.
    #[project = HandlingProj]
    pub enum Handling<F> {
        /// Ready (taken when polled).
        Answer { resp: Option<Response<ProxyBody>> },
        /// Resolving, connecting, sending.
        Go { #[pin] fut: F },
    }
}

impl<F> Handling<F> {
    /// The request is to be forwarded or tunnelled (not answered by a page of ours).
    pub fn is_go(&self) -> bool {
        matches!(self, Handling::Go { .. })
    }
}

impl<F: Future<Output = Response<ProxyBody>>> Future for Handling<F> {
    type Output = Response<ProxyBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HandlingProj::Answer { resp } => match resp.take() {
                Some(r) => Poll::Ready(r),
                // Polled again after its answer: never (a future is not polled after
                // it is ready).
                None => Poll::Pending,
            },
            HandlingProj::Go { fut } => fut.poll(cx),
        }
    }
}

/// Where a request may go: its host's addresses that may be forwarded to, in order.
struct Targets {
    /// The first (the one normally used).
    first: SocketAddr,
    /// All of them, first included, when the host is a name (an IP literal: None).
    all: Option<Vec<SocketAddr>>,
}

impl Targets {
    fn all(&self) -> &[SocketAddr] {
        self.all
            .as_deref()
            .unwrap_or(std::slice::from_ref(&self.first))
    }

    /// The addresses a connection is tried to, in order.
    fn tried(&self) -> &[SocketAddr] {
        let all = self.all();
        &all[..all.len().min(MAX_ADDRS)]
    }

    /// The addresses tried, for a message: `127.0.0.1:80` or `10.0.0.1:80, 10.0.0.2:80`.
    fn shown(&self) -> String {
        self.tried()
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Proxy {
    /// A connection to `host` was made to `used`: the record names it, and the
    /// addresses before it (which failed) go to the end of the name's cached list, so
    /// the next requests do not wait for them first.
    fn connected(&self, host: &str, targets: &Targets, used: SocketAddr, guard: &mut RecordGuard) {
        if used != targets.first {
            guard.rec.peer = Some(ip_text(used.ip()));
            let failed: Vec<SocketAddr> = targets
                .all()
                .iter()
                .copied()
                .take_while(|&a| a != used)
                .collect();
            self.dns.demote(host, used.port(), &failed);
        }
    }
}

/// Append the URL for the record to `url`, without any `user:password@` it carried.
fn push_url(url: &mut String, uri: &Uri) {
    match uri.authority() {
        Some(a) if a.as_str().contains('@') => {
            let host_port = a.as_str().rsplit('@').next().unwrap_or("");
            url.push_str(uri.scheme_str().unwrap_or("http"));
            url.push_str("://");
            url.push_str(host_port);
            url.push_str(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        }
        _ => {
            // What `Uri`'s Display writes, put together without the formatting
            // machinery, in a string sized first.
            let (scheme, authority) = (uri.scheme_str(), uri.authority());
            let (path, query) = (uri.path(), uri.query());
            url.reserve(
                scheme.map_or(0, |s| s.len() + 3)
                    + authority.map_or(0, |a| a.as_str().len())
                    + path.len()
                    + query.map_or(0, |q| q.len() + 1),
            );
            if let Some(s) = scheme {
                url.push_str(s);
                url.push_str("://");
            }
            if let Some(a) = authority {
                url.push_str(a.as_str());
            }
            url.push_str(path);
            if let Some(q) = query {
                url.push('?');
                url.push_str(q);
            }
        }
    }
}

/// Whether a Via header of the request names this proxy (`ours` is `1.1 NODE`).
fn via_names(h: &HeaderMap, ours: &HeaderValue) -> bool {
    let Ok(ours) = ours.to_str() else {
        return false;
    };
    h.get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|hop| hop.trim().eq_ignore_ascii_case(ours))
}

/// The host as the policy sees it: lower case, no trailing dot, an IP literal in its one
/// canonical spelling (IPv4-mapped IPv6 as IPv4). None for a numeric host that is not a
/// plain IPv4 address (`2130706433`, `0x7f.1`): the resolver would take it for some
/// address the policy never saw.
fn canonical_host(raw: &str) -> Option<String> {
    let h = raw.trim_matches(['[', ']']).trim_end_matches('.');
    if h.is_empty() {
        return None;
    }
    // (IPv6 hex digits parse in either case.)
    match h.parse::<IpAddr>() {
        // An IPv4 address parses only in its one spelling (no leading zeros).
        Ok(IpAddr::V4(_)) => return Some(h.to_string()),
        Ok(ip) => return Some(ip_text(ip.to_canonical())),
        Err(_) => {}
    }
    let h = h.to_ascii_lowercase();
    let last = h.rsplit('.').next().unwrap_or("");
    if last.chars().all(|c| c.is_ascii_digit()) || last.starts_with("0x") {
        return None;
    }
    Some(h)
}

/// (host, port) of an absolute-form `http://` target or a CONNECT authority.
fn target(uri: &Uri, connect: bool) -> Option<(String, u16)> {
    if connect {
        let a = uri.authority()?;
        return Some((canonical_host(a.host())?, a.port_u16()?));
    }
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let a = uri.authority()?;
    Some((canonical_host(a.host())?, a.port_u16().unwrap_or(80)))
}

/// Whether the Host header (if any) names the same host and port as the target
/// (`uri`'s, whose canonical host and port are `host` and `port`).
fn host_agrees(h: &HeaderMap, uri: &Uri, host: &str, port: u16) -> bool {
    let Some(v) = h.get(header::HOST) else {
        return true;
    };
    // The usual case: the Host header is the target's authority, byte for byte.
    if uri
        .authority()
        .is_some_and(|a| a.as_str().as_bytes() == v.as_bytes())
    {
        return true;
    }
    let Ok(v) = v.to_str() else {
        return false;
    };
    let Ok(a) = v.parse::<http::uri::Authority>() else {
        return false;
    };
    canonical_host(a.host()).as_deref() == Some(host) && a.port_u16().unwrap_or(80) == port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // A second Connection header counts too; names match whatever their case, and
        // a token that is no header name matches nothing.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("X-One"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" , x-two,bad name"),
        );
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("x-kept", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn every_hop_by_hop_name_is_known_by_its_text() {
        for (i, n) in HOP.iter().enumerate() {
            assert_eq!(hop_index(n.as_str().as_bytes()), Some(i), "{n}");
        }
        for other in ["host", "via", "x-connection", "connectio", "tes"] {
            assert_eq!(hop_index(other.as_bytes()), None, "{other}");
        }
        // Only hop-by-hop headers go, each of them, whatever else is there.
        let mut h = HeaderMap::new();
        for n in HOP.iter() {
            h.append(n.clone(), HeaderValue::from_static("x"));
        }
        h.append(header::HOST, HeaderValue::from_static("a"));
        h.append("x-kept", HeaderValue::from_static("b"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
        // None at all: untouched.
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("a"));
        h.append(header::VIA, HeaderValue::from_static("1.1 b"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn targets_and_host_agreement() {
        let u: Uri = "http://Example.COM:8080/x".parse().unwrap();
        assert_eq!(target(&u, false), Some(("example.com".into(), 8080)));
        let u: Uri = "/x".parse().unwrap();
        assert_eq!(target(&u, false), None);
        let u: Uri = "https://a/".parse().unwrap();
        assert_eq!(target(&u, false), None);
        let u: Uri = "a.b:443".parse().unwrap();
        assert_eq!(target(&u, true), Some(("a.b".into(), 443)));
        for odd in ["http://2130706433/", "http://0x7f.1/", "http://10.1/"] {
            let u: Uri = odd.parse().unwrap();
            assert_eq!(target(&u, false), None, "{odd}");
        }
        let u: Uri = "http://[::ffff:192.168.1.10]/".parse().unwrap();
        assert_eq!(target(&u, false), Some(("192.168.1.10".into(), 80)));
        let u: Uri = "http://Example.COM:8080/x".parse().unwrap();
        let mut h = HeaderMap::new();
        assert!(host_agrees(&h, &u, "example.com", 8080), "no Host header");
        // The same authority byte for byte, and the same host spelt otherwise.
        for same in ["Example.COM:8080", "example.com:8080", "EXAMPLE.com.:8080"] {
            h.insert(header::HOST, HeaderValue::from_static(same));
            assert!(host_agrees(&h, &u, "example.com", 8080), "{same}");
        }
        for other in [
            "evil.com",
            "example.com",
            "example.com:80",
            "example.com:8080x",
            "a@b",
        ] {
            h.insert(header::HOST, HeaderValue::from_static(other));
            assert!(!host_agrees(&h, &u, "example.com", 8080), "{other}");
        }
        let u: Uri = "http://[::1]/".parse().unwrap();
        for same in ["[::1]", "[::1]:80", "[0:0::1]"] {
            h.insert(header::HOST, HeaderValue::from_static(same));
            assert!(host_agrees(&h, &u, "::1", 80), "{same}");
        }
        assert_eq!(canonical_host("[::FFFF:10.0.0.1]"), Some("10.0.0.1".into()));
        assert_eq!(canonical_host("Host.Example."), Some("host.example".into()));
        // An IPv4 address is kept as it came: it parses only in its one spelling.
        assert_eq!(canonical_host("10.0.0.1."), Some("10.0.0.1".into()));
        assert_eq!(canonical_host("010.0.0.1"), None);
    }

    #[test]
    fn the_recorded_url_is_the_targets_text_without_userinfo() {
        for (target, url) in [
            ("http://h:8/a?b=1", "http://h:8/a?b=1"),
            ("http://h", "http://h/"),
            ("http://h?q", "http://h/?q"),
            ("http://u:p@h:8/a?b", "http://h:8/a?b"),
            ("http://[::1]:81/x", "http://[::1]:81/x"),
        ] {
            let u: Uri = target.parse().unwrap();
            let mut text = String::new();
            push_url(&mut text, &u);
            assert_eq!(text, url, "{target}");
            if !target.contains('@') {
                assert_eq!(text, u.to_string(), "as Uri writes it");
            }
        }
    }

    #[test]
    fn own_via_is_a_loop() {
        let ours = HeaderValue::from_static("1.1 gw-1");
        let mut h = HeaderMap::new();
        h.insert(header::VIA, HeaderValue::from_static("1.0 other, 1.1 GW-1"));
        assert!(via_names(&h, &ours));
        h.insert(header::VIA, HeaderValue::from_static("1.1 gw-10"));
        assert!(!via_names(&h, &ours));
    }

    #[test]
    fn loops_and_link_local_are_refused() {
        let own = [
            "127.0.0.5:8080".parse().unwrap(),
            "0.0.0.0:8888".parse().unwrap(),
        ];
        assert!(forbidden_target("169.254.169.254:80".parse().unwrap(), &own).is_some());
        assert!(forbidden_target("[fe80::1]:80".parse().unwrap(), &own).is_some());
        assert!(forbidden_target("127.0.0.5:8080".parse().unwrap(), &own).is_some());
        assert!(forbidden_target("127.0.0.1:8888".parse().unwrap(), &own).is_some());
        assert!(forbidden_target("127.0.0.1:8080".parse().unwrap(), &own).is_none());
        assert!(forbidden_target("10.0.0.1:80".parse().unwrap(), &own).is_none());
    }
}
