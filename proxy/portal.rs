//! The Configuration Portal's request handling, shared by the HTTPS listener and the
//! admin socket: access restriction and signature checks (portal only), then routing to
//! the node's configuration. Every answer carries the node's boot id; every error is
//! JSON `{error, message}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use ssq::access::Access;
use ssq::api::{
    AccessPut, AllowAdd, AllowRemove, AuthSet, ErrorBody, LogLines, OperatorAdd, RestartResult,
    StartupDoc, StartupPut, SyncPong, BOOT_ID_HEADER,
};
use ssq::keys::sha256_hex;
use ssq::nodeconf::{Actor, ConfError};
use ssq::sign::{self, AuthHeader, Caller, Canonical, SignError};

use crate::node::{Command, Node};

/// How a refusal names a request signed without any boot id.
const NO_BOOT: &str = "(none)";

/// How long a request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest request body the portal reads.
const MAX_BODY: usize = 1 << 20;
/// Largest report batch a slave may send (its batches are at most 512 KiB of records).
const MAX_INGEST_BODY: usize = 8 << 20;

/// How a request reached the node.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// The HTTPS portal: restricted and signed.
    Portal {
        /// The client's address.
        peer: SocketAddr,
        /// Where the request arrived.
        local: SocketAddr,
    },
    /// The admin socket: a local root (or same-user) caller.
    Admin {
        /// The caller's uid.
        uid: u32,
    },
}

type Resp = Response<Full<Bytes>>;

fn respond(node: &Node, status: u16, body: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = node.boot_id.parse() {
        r.headers_mut().insert(BOOT_ID_HEADER, v);
    }
    if let Ok(v) = "application/json".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json<T: Serialize>(node: &Node, status: u16, value: &T) -> Resp {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(node, status, body),
        Err(e) => error(node, 500, "internal", &e.to_string()),
    }
}

fn error(node: &Node, status: u16, code: &str, message: &str) -> Resp {
    json(
        node,
        status,
        &ErrorBody {
            error: code.into(),
            message: message.into(),
        },
    )
}

fn conf_error(node: &Node, e: &ConfError) -> Resp {
    let (status, code) = e.status_code();
    error(node, status, code, &e.to_string())
}

/// Which credential an endpoint needs.
fn needs(path: &str) -> Access {
    if matches!(
        path,
        "/api/v1/sync/watch" | "/api/v1/sync/ack" | "/api/v1/sync/ping" | "/api/v1/reports/ingest"
    ) {
        Access::Sync
    } else {
        Access::Config
    }
}

/// The access restriction: None when `ip` may call an endpoint that needs `need`, else
/// the refusal (logged). An unreadable access list refuses everyone on the portal (the
/// admin socket stays open) without telling an unauthenticated caller why.
fn restrict(
    node: &Node,
    ip: std::net::IpAddr,
    need: Access,
    method: &str,
    path: &str,
) -> Option<Resp> {
    let access = match node.files.access() {
        Ok(a) => a,
        Err(e) => {
            node.files.log.warn(
                "access",
                &format!("refused {method} {path} from {ip}: access list unreadable: {e}"),
            );
            return Some(error(
                node,
                503,
                "access_list_unreadable",
                "this node's access list cannot be read; an operator on the node can fix it through the admin socket (ssq --local)",
            ));
        }
    };
    if access.admits(ip, need) {
        return None;
    }
    let name = &node.files.startup.node;
    let msg = format!(
        "address {ip} is not in the allow list of {name} (or its entry does not grant {need}); add it with: ssq master allow add {ip} --access {need} --node {name}"
    );
    node.files.log.warn(
        "access",
        &format!("denied {method} {path} from {ip}: {msg}"),
    );
    Some(error(node, 403, "address_not_allowed", &msg))
}

/// Serve one request.
pub async fn handle(node: Arc<Node>, via: Via, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let need = needs(&path);
    // The allow list is decided on the address alone, before the body is read.
    if let Via::Portal { peer, .. } = via {
        if let Some(refusal) = restrict(&node, peer.ip(), need, parts.method.as_str(), &path) {
            return Ok(refusal);
        }
    }
    // The report page: a browser with a session cookie, not a signed client.
    if path == "/reports" || path.starts_with("/reports/") {
        return Ok(report_page(&node, &parts, &path).await);
    }
    // Report batches and whole policies (100,000 domains is a few MiB) may be large.
    let limit = if path == "/api/v1/reports/ingest" || path == "/api/v1/policy" {
        MAX_INGEST_BODY
    } else {
        MAX_BODY
    };
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return Ok(error(
                &node,
                413,
                "body_too_large",
                "request body too large or cut off (limit 1 MiB)",
            ))
        }
        Err(_) => {
            return Ok(error(
                &node,
                408,
                "body_timeout",
                "the request body did not arrive in time",
            ))
        }
    };
    let mut caller = None;
    let actor = match via {
        Via::Admin { uid } => Actor::local(&format!("admin socket (uid {uid})")),
        Via::Portal { peer, local } => {
            let ip = peer.ip();
            let authority = parts
                .headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string();
            match authenticate(
                &node,
                parts.method.as_str(),
                &authority,
                &pq,
                &parts.headers,
                &body,
            ) {
                Ok(Caller::Operator { fingerprint }) => {
                    if need == Access::Sync {
                        return Ok(error(
                            &node,
                            403,
                            "operator_credential_on_sync_endpoint",
                            "sync endpoints take a node credential (activation key and node key), not an operator key",
                        ));
                    }
                    Actor {
                        who: format!("operator {fingerprint}"),
                        from: Some(ip),
                        arrived: Some(local),
                    }
                }
                Ok(Caller::Node { node: name, key }) => {
                    caller = Some(Caller::Node {
                        node: name.clone(),
                        key,
                    });
                    if need == Access::Config {
                        let e = SignError::SyncOnConfig;
                        node.files.log.warn(
                            "portal",
                            &format!(
                                "refused {} {path} from {ip} (node {name}): {e}",
                                parts.method
                            ),
                        );
                        return Ok(error(&node, e.status(), e.code(), &e.to_string()));
                    }
                    Actor {
                        who: format!("node {name} ({})", key.fingerprint()),
                        from: Some(ip),
                        arrived: Some(local),
                    }
                }
                Err(e) => {
                    // A client that has not learnt the boot id yet is told it (409) and
                    // retries: that is the protocol, not an incident worth a log line.
                    let first_contact =
                        matches!(&e, SignError::StaleBootId { theirs, .. } if theirs == NO_BOOT);
                    if !first_contact {
                        node.files.log.warn(
                            "portal",
                            &format!("refused {} {path} from {ip}: {e}", parts.method),
                        );
                        // A refused sync attempt is listed by source address on a
                        // master, never written into a known slave's state.
                        if let (Some(m), Access::Sync) = (&node.master, need) {
                            let claimed = parts
                                .headers
                                .get(hyper::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| AuthHeader::parse(v).ok())
                                .map(|h| h.node)
                                .unwrap_or_default();
                            m.refuse(ip, &claimed, &e.to_string());
                        }
                    }
                    return Ok(error(&node, e.status(), e.code(), &e.to_string()));
                }
            }
        }
    };
    if crate::diagnose::serves(&path) {
        let answer = crate::diagnose::route(&node, parts.method.as_str(), &path).await;
        return Ok(match answer {
            Ok((status, value)) => json(&node, status, &value),
            Err(e) => error(&node, e.status, e.code, &e.message),
        });
    }
    if crate::sync_api::serves(&path) {
        let answer = crate::sync_api::route(
            &node,
            parts.method.as_str(),
            &path,
            parts.uri.query(),
            &body,
            &actor,
            caller.as_ref(),
        )
        .await;
        return Ok(match answer {
            Ok((status, value)) => json(&node, status, &value),
            Err(e) => error(&node, e.status, e.code, &e.message),
        });
    }
    Ok(route(
        &node,
        &parts.method,
        &path,
        parts.uri.query(),
        &body,
        &actor,
        via,
    ))
}

/// Check the signature, the time, the nonce and the boot id of a portal request.
fn authenticate(
    node: &Node,
    method: &str,
    authority: &str,
    pq: &str,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Result<Caller, SignError> {
    let value = headers
        .get(hyper::header::AUTHORIZATION)
        .ok_or(SignError::Missing)?
        .to_str()
        .map_err(|_| SignError::Malformed("not ASCII".into()))?;
    let h = AuthHeader::parse(value)?;
    if method != "GET" && h.boot != node.boot_id {
        return Err(SignError::StaleBootId {
            theirs: if h.boot.is_empty() {
                NO_BOOT.into()
            } else {
                h.boot.clone()
            },
            current: node.boot_id.clone(),
        });
    }
    let body_sha = sha256_hex(body);
    let canonical = Canonical {
        method,
        authority,
        path_and_query: pq,
        ts: h.ts,
        nonce: &h.nonce,
        node: &h.node,
        boot_id: &h.boot,
        body_sha256: &body_sha,
        cert_sha256: &node.cert_sha256,
    }
    .string();
    let operators: Vec<_> = node
        .files
        .operators()
        .map_err(|e| SignError::Malformed(format!("the node's operators file is unreadable: {e}")))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let caller = sign::verify(&h, &canonical, &operators, Some(&node.activation))?;
    node.nonces
        .lock()
        .map_err(|_| SignError::Malformed("nonce cache poisoned".into()))?
        .check_fresh(h.ts, &h.nonce, sign::unix_now())?;
    Ok(caller)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ConfError> {
    serde_json::from_slice(body).map_err(|e| ConfError::BadInput(format!("request body: {e}")))
}

fn route(
    node: &Node,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    actor: &Actor,
    via: Via,
) -> Resp {
    let result = match (method.as_str(), path) {
        ("GET", "/api/v1/status") => Ok(json(node, 200, &node.status())),
        ("GET", "/api/v1/startup") => node.files.startup_text().map(|text| {
            json(
                node,
                200,
                &StartupDoc {
                    path: node.files.startup.path.display().to_string(),
                    text,
                },
            )
        }),
        ("PUT", "/api/v1/startup") => parse::<StartupPut>(body).and_then(|p| {
            node
                .files
                .put_startup(&p.text, actor, p.force)
                .map(|r| json(node, 200, &r))
        }),
        ("GET", "/api/v1/access") => node.files.access().map(|a| json(node, 200, &a)),
        ("PUT", "/api/v1/access") => parse::<AccessPut>(body).and_then(|p| {
            node
                .files
                .write_access(p.access, "replaced", actor, p.force)
                .map(|r| json(node, 200, &r))
        }),
        ("POST", "/api/v1/access/entries") => parse::<AllowAdd>(body).and_then(|p| {
            node
                .files
                .allow_add(p.entry, actor, p.force)
                .map(|r| json(node, 200, &r))
        }),
        ("DELETE", "/api/v1/access/entries") => parse::<AllowRemove>(body).and_then(|p| {
            node
                .files
                .allow_remove(&p.address, actor, p.force)
                .map(|r| json(node, 200, &r))
        }),
        ("PUT", "/api/v1/access/authentication") => parse::<AuthSet>(body).and_then(|p| {
            node
                .files
                .set_authentication(p.enabled, actor, p.force)
                .map(|r| json(node, 200, &r))
        }),
        ("POST", "/api/v1/restart") => match node.files.backup(true) {
            Ok(dir) => {
                node.files.log.info(
                    "restart",
                    &format!(
                        "restart requested {}; configuration backed up to {}",
                        describe(actor),
                        dir.display()
                    ),
                );
                let _ = node.command.send(Command::Restart);
                Ok(json(
                    node,
                    202,
                    &RestartResult {
                        backup: dir.display().to_string(),
                        old_boot_id: node.boot_id.clone(),
                        pid: std::process::id(),
                    },
                ))
            }
            Err(e) => Err(e),
        },
        ("GET", "/api/v1/logs") => {
            // n=N (capped), grep=TEXT, category=CAT, after=CURSOR; values percent-encoded.
            let filter = ssq::extlog::LogFilter::from_query(query);
            match ssq::extlog::read(node.files.log.path(), &filter) {
                Ok((lines, cursor)) => Ok(json(node, 200, &LogLines { lines, cursor })),
                Err(e) => Ok(error(node, 500, "io_error", &e.to_string())),
            }
        }
        (_, "/api/v1/operators") if matches!(via, Via::Portal { .. }) => Ok(error(
            node,
            403,
            "local_only",
            "operator keys are changed only on the node itself: ssq --local --config FILE operator add|remove",
        )),
        ("GET", "/api/v1/operators") => node.files.operator_entries().map(|o| json(node, 200, &o)),
        ("POST", "/api/v1/operators") => parse::<OperatorAdd>(body).and_then(|p| {
            node
                .files
                .operator_add(&p.line, actor)
                .map(|r| json(node, 200, &r))
        }),
        ("DELETE", "/api/v1/operators") => parse::<OperatorAdd>(body).and_then(|p| {
            node
                .files
                .operator_remove(&p.line, actor)
                .map(|r| json(node, 200, &r))
        }),
        ("GET", "/api/v1/sync/ping") => Ok(json(
            node,
            200,
            &SyncPong {
                node: node.files.startup.node.clone(),
                caller: actor.who.clone(),
            },
        )),
        _ => Ok(error(
            node,
            404,
            "not_found",
            &format!("no endpoint {method} {path} on this node (ssqd {})", env!("CARGO_PKG_VERSION")),
        )),
    };
    result.unwrap_or_else(|e| conf_error(node, &e))
}

fn describe(actor: &Actor) -> String {
    match actor.from {
        Some(ip) => format!("by {} from {ip}", actor.who),
        None => format!("by {}", actor.who),
    }
}

/// `/reports` and `/reports/login` on a master's portal.
async fn report_page(node: &Node, parts: &http::request::Parts, path: &str) -> Resp {
    use crate::reports_page as page;
    let html = |status: u16, body: String| {
        let mut r = respond(node, status, body.into_bytes());
        let h = r.headers_mut();
        for (k, v) in [
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", page::CSP),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
            ("x-frame-options", "DENY"),
        ] {
            if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
                h.insert(k, v);
            }
        }
        r
    };
    let Some(reports) = &node.reports else {
        return html(
            404,
            crate::pages::page(
                404,
                "No reports here",
                "<p>Reports live on the master.</p>",
                &node.files.startup.node,
            ),
        );
    };
    if parts.method != Method::GET {
        return html(
            405,
            crate::pages::page(
                405,
                "Method not allowed",
                "<p>The report page is read-only.</p>",
                &node.files.startup.node,
            ),
        );
    }
    let denied = || {
        html(
            401,
            crate::pages::page(
                401,
                "Sign in with ssq",
                "<p>Open this page with <code>ssq report open --master MASTER</code>: it prints a link that signs you in for a while.</p>",
                &node.files.startup.node,
            ),
        )
    };
    if path == "/reports/login" {
        let token = parts
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
            .unwrap_or("");
        return match node.sessions.login(token) {
            Some(id) => {
                let mut r = html(303, String::new());
                if let Ok(v) = hyper::header::HeaderValue::from_str(&page::set_cookie(&id)) {
                    r.headers_mut().insert(hyper::header::SET_COOKIE, v);
                }
                r.headers_mut().insert(
                    hyper::header::LOCATION,
                    hyper::header::HeaderValue::from_static("/reports"),
                );
                r
            }
            None => denied(),
        };
    }
    let cookie = parts
        .headers
        .get(hyper::header::COOKIE)
        .and_then(|v| v.to_str().ok());
    if path != "/reports" || !node.sessions.valid(cookie) {
        return denied();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let hours = 24;
    let q = |kind: &str, limit: u32, bucket: &str| ssq::reportapi::ReportQuery {
        kind: kind.into(),
        from_ms: now.saturating_sub(hours * 3_600_000),
        to_ms: now + 1,
        slave: None,
        limit,
        bucket: bucket.into(),
        host: None,
    };
    let all = (
        reports.report(q("summary", 100, "")).await,
        reports.report(q("domains", 20, "")).await,
        reports.report(q("clients", 20, "")).await,
        reports.report(q("blocked", 20, "")).await,
        reports.report(q("nodes", 100, "")).await,
        reports.report(q("timeline", 48, "hour")).await,
    );
    match all {
        (Ok(s), Ok(d), Ok(c), Ok(b), Ok(n), Ok(t)) => html(
            200,
            page::render(
                &node.files.startup.node,
                hours,
                &page::PageData {
                    summary: &s,
                    domains: &d,
                    clients: &c,
                    blocked: &b,
                    nodes: &n,
                    timeline: &t,
                },
            ),
        ),
        _ => html(
            500,
            crate::pages::page(
                500,
                "Reports unavailable",
                "<p>The report store did not answer; see extended.log.</p>",
                &node.files.startup.node,
            ),
        ),
    }
}
