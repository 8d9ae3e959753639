//! The portal's policy and sync endpoints (the list is in `ssq::syncapi`): applying,
//! showing and testing policy on a master or standalone node, the master's long-poll
//! watch that pushes revisions to slaves, their ACKs, `policy wait`, forgetting a
//! slave, and on a slave its local (`sync.never`) sections and the reset of its pins.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ssq::nodeconf::Actor;
use ssq::policy::{self, Matcher, Request, Verdict};
use ssq::reportapi::{IngestBatch, ReportQuery};
use ssq::sign::Caller;
use ssq::startup::Role;
use ssq::syncapi::{
    Ack, AckAnswer, Forgotten, PolicyApplied, PolicyApply, PolicyRollback, PolicyTest,
    PolicyTestResult, TaskRequest, WaitResult, WatchAnswer,
};

use crate::active;
use crate::apierror::ApiError;
use crate::master::Master;
use crate::node::Node;

/// The longest a watch or a wait is held open.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// A JSON answer.
pub type Answer = Result<(u16, serde_json::Value), ApiError>;

fn ok<T: serde::Serialize>(v: &T) -> Answer {
    serde_json::to_value(v)
        .map(|j| (200, j))
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("bad_request", format!("request body: {e}")))
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn master(node: &Node) -> Result<&Master, ApiError> {
    node.master.as_deref().ok_or_else(|| {
        ApiError::new(
            409,
            "not_a_master",
            format!(
                "{} is a slave: policy lives on its master ({}); apply it there, or use --node {} for this slave's sync.never sections",
                node.files.startup.node,
                node.files
                    .startup
                    .master
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
                node.files.startup.node
            ),
        )
    })
}

/// Whether this module serves `path`.
pub fn serves(path: &str) -> bool {
    path.starts_with("/api/v1/policy")
        || (path.starts_with("/api/v1/sync/") && path != "/api/v1/sync/ping")
        || path.starts_with("/api/v1/slaves/")
        || path.starts_with("/api/v1/tasks")
        || path.starts_with("/api/v1/reports/")
}

/// Serve one policy or sync request.
pub async fn route(
    node: &Arc<Node>,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    actor: &Actor,
    caller: Option<&Caller>,
) -> Answer {
    match (method, path) {
        ("POST", "/api/v1/policy") => apply(node, parse(body)?, actor),
        ("GET", "/api/v1/policy") => show(node, query),
        ("GET", "/api/v1/policy/history") => {
            let m = master(node)?;
            let store = m
                .store
                .lock()
                .map_err(|_| ApiError::new(500, "internal", "store lock poisoned"))?;
            ok(&store.history())
        }
        ("POST", "/api/v1/policy/rollback") => {
            let r: PolicyRollback = parse(body)?;
            let m = master(node)?;
            let doc = m
                .store
                .lock()
                .map_err(|_| ApiError::new(500, "internal", "store lock poisoned"))?
                .get(r.revision)
                .map_err(|e| ApiError::new(404, "no_such_revision", e.to_string()))?;
            let req = PolicyApply {
                text: doc.text,
                dry_run: false,
                if_revision: None,
                local: false,
            };
            let out = m.apply(
                &req,
                &node.files.startup.node,
                &node.node_key,
                actor,
                Some(r.revision),
            )?;
            after_commit(node, &out, actor, Some(r.revision));
            ok(&out)
        }
        ("POST", "/api/v1/policy/test") => test(node, parse(body)?),
        ("GET", "/api/v1/policy/wait") => wait(node, query).await,
        ("DELETE", p) if p.starts_with("/api/v1/slaves/") => {
            let name = p.trim_start_matches("/api/v1/slaves/");
            let existed = master(node)?.forget(name)?;
            node.files.log.info(
                "config",
                &format!(
                    "slave {name} forgotten {}{}",
                    actor.who,
                    if existed { "" } else { " (was not known)" }
                ),
            );
            ok(&Forgotten {
                name: name.to_string(),
                existed,
            })
        }
        ("POST", "/api/v1/sync/reset") => {
            let existed = crate::slave::reset_pins(node)?;
            node.files
                .log
                .info("config", &format!("master pins cleared {}", actor.who));
            ok(&Forgotten {
                name: "master pins".into(),
                existed,
            })
        }
        ("GET", "/api/v1/sync/watch") => watch(node, query, actor, caller).await,
        ("POST", "/api/v1/reports/ingest") => {
            let (name, _) = sync_caller(node, actor, caller)?;
            let batch: IngestBatch = parse(body)?;
            if batch.node != name {
                return Err(ApiError::new(
                    403,
                    "node_mismatch",
                    format!("{name} may only ship its own records, not {}'s", batch.node),
                ));
            }
            let reports = node.reports.as_ref().ok_or_else(|| {
                ApiError::new(409, "not_a_master", "only a master stores reports")
            })?;
            let answer = reports.ingest(name, batch.epoch, batch.records).await?;
            ok(&answer)
        }
        ("POST", "/api/v1/reports/session") => {
            if node.reports.is_none() {
                return Err(ApiError::new(
                    409,
                    "not_a_master",
                    "the report page lives on the master",
                ));
            }
            let token = node
                .sessions
                .new_token()
                .ok_or_else(|| ApiError::new(500, "internal", "cannot make a token"))?;
            node.files.log.info(
                "config",
                &format!("report page login token issued to {}", actor.who),
            );
            ok(
                &serde_json::json!({ "token": token, "path": format!("/reports/login?token={token}") }),
            )
        }
        ("GET", p) if p.starts_with("/api/v1/reports/") => {
            let reports = node.reports.as_ref().ok_or_else(|| {
                ApiError::new(
                    409,
                    "not_a_master",
                    "reports live on the master: ssq report ... --master MASTER",
                )
            })?;
            let kind = p.trim_start_matches("/api/v1/reports/").to_string();
            let num = |k: &str| query_param(query, k).and_then(|v| v.parse::<u64>().ok());
            let q = ReportQuery {
                kind,
                from_ms: num("from").unwrap_or(0),
                to_ms: num("to").unwrap_or(u64::MAX / 2),
                slave: query_param(query, "slave").map(str::to_string),
                limit: num("limit").map(|l| l.min(10_000) as u32).unwrap_or(20),
                bucket: query_param(query, "bucket").unwrap_or("minute").to_string(),
                host: query_param(query, "host")
                    .filter(|h| !h.is_empty())
                    .map(str::to_ascii_lowercase),
            };
            ok(&reports.report(q).await?)
        }
        ("POST", "/api/v1/tasks") => {
            let r: TaskRequest = parse(body)?;
            let view = master(node)?.queue_task(&r.node, &r.kind, &node.node_key)?;
            node.files.log.info(
                "config",
                &format!(
                    "task {} ({}) queued for {} by {}",
                    view.task.id, view.task.kind, view.task.node, actor.who
                ),
            );
            ok(&view)
        }
        ("GET", p) if p.starts_with("/api/v1/tasks/") => {
            let id = p.trim_start_matches("/api/v1/tasks/");
            let view = master(node)?.task(id).ok_or_else(|| {
                ApiError::new(404, "no_such_task", format!("no task {id} on this master"))
            })?;
            ok(&view)
        }
        ("POST", "/api/v1/sync/ack") => {
            let (name, from) = sync_caller(node, actor, caller)?;
            let ack: Ack = parse(body)?;
            let m = master(node)?;
            if let Some(id) = &ack.task {
                m.task_result(&name, id, ack.result == "applied", ack.error.clone());
                node.files
                    .log
                    .info("sync", &format!("{name} reports task {id}: {}", ack.result));
                return ok(&AckAnswer { ok: true });
            }
            m.ack(&name, from, &ack);
            if ack.result == "applied" {
                node.files.log.info(
                    "sync",
                    &format!(
                        "{name} applied revision {} (sha256 {})",
                        ack.revision,
                        short(&ack.sha256)
                    ),
                );
            } else {
                node.files.log.warn(
                    "sync",
                    &format!(
                        "{name} rejected revision {}: {}",
                        ack.revision,
                        ack.error.clone().unwrap_or_default()
                    ),
                );
            }
            ok(&AckAnswer { ok: true })
        }
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!("no endpoint {method} {path} on this node"),
        )),
    }
}

/// The first 12 characters of a hash, char-safe.
pub fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

fn sync_caller(
    node: &Node,
    actor: &Actor,
    caller: Option<&Caller>,
) -> Result<(String, IpAddr), ApiError> {
    let (Some(Caller::Node { node: name, key }), Some(from)) = (caller, actor.from) else {
        return Err(ApiError::new(
            403,
            "node_credential_required",
            "sync endpoints take a node credential",
        ));
    };
    let m = master(node)?;
    if let Err(e) = m.pin(name, *key, from) {
        node.files.log.warn(
            "sync",
            &format!("refused {name} from {from}: {}", e.message),
        );
        return Err(e);
    }
    Ok((name.clone(), from))
}

fn apply(node: &Arc<Node>, req: PolicyApply, actor: &Actor) -> Answer {
    if req.local {
        return crate::slave::apply_local(node, &req, actor).and_then(|a| ok(&a));
    }
    let m = master(node)?;
    let out = m.apply(&req, &node.files.startup.node, &node.node_key, actor, None)?;
    if !req.dry_run {
        after_commit(node, &out, actor, None);
    }
    ok(&out)
}

/// Log a commit; a standalone node enforces it at once.
fn after_commit(node: &Arc<Node>, out: &PolicyApplied, actor: &Actor, rollback_of: Option<u64>) {
    let from = actor.from.map(|a| format!(" from {a}")).unwrap_or_default();
    if !out.changed {
        node.files.log.info(
            "config",
            &format!(
                "policy unchanged (revision {} already has this content) {}{from}",
                out.revision, actor.who
            ),
        );
        return;
    }
    node.files.log.info(
        "config",
        &format!(
            "policy revision {} (sha256 {}){} stored by {}{from}; changed: {}",
            out.revision,
            short(&out.sha256),
            rollback_of
                .map(|r| format!(" rolling back to revision {r}"))
                .unwrap_or_default(),
            actor.who,
            out.changed_sections.join(", ")
        ),
    );
    if node.files.startup.role == Role::Standalone {
        if let Some(doc) = node.master.as_ref().and_then(|m| m.latest_doc()) {
            match active::build(&doc, None, &[], &node.files.startup.node) {
                Ok(a) => node.active.set(a),
                Err(e) => node.files.log.warn(
                    "config",
                    &format!("policy revision {} not enforced: {e}", doc.info.revision),
                ),
            }
        }
    }
}

fn show(node: &Node, query: Option<&str>) -> Answer {
    match &node.master {
        Some(m) => {
            let store = m
                .store
                .lock()
                .map_err(|_| ApiError::new(500, "internal", "store lock poisoned"))?;
            let rev = match query_param(query, "revision") {
                Some(r) => r
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad("bad_request", "revision must be a number"))?,
                None => store.latest().map(|i| i.revision).ok_or_else(|| {
                    ApiError::new(
                        404,
                        "no_policy",
                        "no policy has been applied yet: ssq policy apply FILE",
                    )
                })?,
            };
            let doc = store
                .get(rev)
                .map_err(|e| ApiError::new(404, "no_such_revision", e.to_string()))?;
            ok(&doc)
        }
        None => match node.active.get() {
            Some(a) => ok(&a.doc),
            None => Err(ApiError::new(
                404,
                "no_policy",
                "this slave has not synced a policy yet",
            )),
        },
    }
}

fn test(node: &Node, t: PolicyTest) -> Answer {
    let (matcher, revision): (Arc<Matcher>, u64) = match &node.master {
        Some(m) => {
            let doc = m
                .latest_doc()
                .ok_or_else(|| ApiError::new(404, "no_policy", "no policy has been applied yet"))?;
            let parsed = policy::parse(&doc.text)
                .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
            let v = policy::validate(&parsed, &[])
                .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
            let for_node = t
                .slave
                .clone()
                .unwrap_or_else(|| node.files.startup.node.clone());
            let m = Matcher::compile(&v, &for_node)
                .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
            (Arc::new(m), doc.info.revision)
        }
        None => {
            let a = node.active.get().ok_or_else(|| {
                ApiError::new(404, "no_policy", "this slave has not synced a policy yet")
            })?;
            (a.matcher.clone(), a.doc.info.revision)
        }
    };
    let client: IpAddr = t
        .client
        .as_deref()
        .unwrap_or("10.0.0.1")
        .parse()
        .map_err(|_| ApiError::bad("bad_request", "client must be an IP address, e.g. 10.0.0.5"))?;
    let method = t
        .method
        .clone()
        .unwrap_or_else(|| "GET".into())
        .to_uppercase();
    let target = parse_target(&t.url, &method).ok_or_else(|| {
        ApiError::bad(
            "bad_request",
            format!(
                "{} is not a URL (e.g. http://example.com/) or, for CONNECT, HOST:PORT",
                t.url
            ),
        )
    })?;
    let d = matcher.decide(&Request {
        client,
        method: &method,
        host: &target.0,
        port: target.1,
        url: &t.url,
        connect: target.2,
    });
    ok(&PolicyTestResult {
        action: match d.action {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::ClientDenied => "client_denied",
            Verdict::PortDenied => "port_denied",
        }
        .into(),
        rule: d.rule,
        message: d.message,
        revision,
        node: matcher.node().to_string(),
    })
}

/// (host, port, connect) of a URL or a CONNECT target.
fn parse_target(url: &str, method: &str) -> Option<(String, u16, bool)> {
    let (rest, default_port, connect) = if let Some(r) = url.strip_prefix("http://") {
        (r, 80, false)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, 443, method == "CONNECT")
    } else {
        (url, 443, true)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) => (authority, default_port),
        },
        _ => (authority, default_port),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_lowercase();
    if host.is_empty() {
        return None;
    }
    Some((host, port, connect))
}

async fn wait(node: &Node, query: Option<&str>) -> Answer {
    let m = master(node)?;
    let revision = query_param(query, "revision")
        .and_then(|r| r.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad("bad_request", "revision=N is required"))?;
    let timeout = query_param(query, "timeout")
        .and_then(|r| r.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30))
        .min(MAX_WAIT);
    let mut acks = m.acks.subscribe();
    let mut stopping = node.stopping.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let slaves = m.slave_infos();
        let done = slaves
            .iter()
            .all(|s| s.revision >= revision && s.state != "REJECTED");
        let rejected = slaves.iter().any(|s| s.state == "REJECTED");
        if done || rejected {
            return ok(&WaitResult {
                revision,
                done,
                slaves,
            });
        }
        tokio::select! {
            r = acks.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = stopping.changed() => break,
        }
    }
    ok(&WaitResult {
        revision,
        done: false,
        slaves: m.slave_infos(),
    })
}

/// A watch in flight, counted so the slave shows as online while it waits.
struct Watching<'a> {
    m: &'a Master,
    name: String,
    from: IpAddr,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.m.seen(&self.name, self.from, -1);
    }
}

async fn watch(node: &Node, query: Option<&str>, actor: &Actor, caller: Option<&Caller>) -> Answer {
    let (name, from) = sync_caller(node, actor, caller)?;
    let m = master(node)?;
    if query_param(query, "node").is_some_and(|n| n != name) {
        return Err(ApiError::bad(
            "node_mismatch",
            "the node= parameter differs from the signed node name",
        ));
    }
    let their_sha = query_param(query, "sha256").unwrap_or("").to_string();
    let wait = query_param(query, "wait")
        .and_then(|w| w.trim_end_matches('s').parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30))
        .min(MAX_WAIT);
    // Jitter of up to a fifth, so slaves do not all come back at once.
    let jitter = ssq::keys::random_bytes::<2>()
        .map(|b| u64::from(u16::from_le_bytes(b)))
        .unwrap_or(0);
    let wait = wait + Duration::from_millis(jitter % (wait.as_millis() as u64 / 5 + 1));
    m.seen(&name, from, 1);
    let their_rev = query_param(query, "revision")
        .and_then(|r| r.parse::<u64>().ok())
        .unwrap_or(0);
    m.reported(&name, their_rev, &their_sha);
    let _guard = Watching {
        m,
        name: name.clone(),
        from,
    };
    let mut revisions = m.revision.subscribe();
    let mut task_added = m.task_added.subscribe();
    let mut stopping = node.stopping.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let store_id = m
        .store
        .lock()
        .map(|s| s.store_id().to_string())
        .unwrap_or_default();
    let mut answer = WatchAnswer {
        store_id,
        master_key: node.node_key.public().to_base64(),
        policy: None,
        tasks: Vec::new(),
    };
    loop {
        revisions.borrow_and_update();
        task_added.borrow_and_update();
        answer.tasks = m.take_tasks(&name);
        if let Some(doc) = m.latest_doc() {
            let (rejected, _) = m.slave_view(&name);
            if doc.info.sha256 != their_sha && rejected.as_deref() != Some(doc.info.sha256.as_str())
            {
                answer.policy = Some(doc);
                return ok(&answer);
            }
        }
        if !answer.tasks.is_empty() {
            return ok(&answer);
        }
        if *stopping.borrow() {
            return ok(&answer);
        }
        tokio::select! {
            r = revisions.changed() => if r.is_err() { return ok(&answer) },
            r = task_added.changed() => if r.is_err() { return ok(&answer) },
            _ = tokio::time::sleep_until(deadline) => return ok(&answer),
            _ = stopping.changed() => return ok(&answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("http://Example.com/x", "GET"),
            Some(("example.com".into(), 80, false))
        );
        assert_eq!(
            parse_target("http://a.b:8080/", "GET"),
            Some(("a.b".into(), 8080, false))
        );
        assert_eq!(
            parse_target("mail.example.com:25", "CONNECT"),
            Some(("mail.example.com".into(), 25, true))
        );
        assert_eq!(parse_target("http:///x", "GET"), None);
    }
}
