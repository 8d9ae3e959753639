//! The proxy listener. Until this node holds a policy it fails closed: every request is
//! answered 503 with a page that says why (DESIGN.md: a slave that never synced refuses
//! traffic). The enforcing forward proxy replaces this handler.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::node::Node;

/// Answer one client request: 503, no policy.
pub async fn handle(
    node: Arc<Node>,
    _req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let name = &node.files.startup.node;
    let page = format!(
        "<!doctype html><html><head><title>503 No policy</title></head><body>\
         <h1>This gateway has no policy yet</h1>\
         <p>ssqd on <b>{name}</b> has not received a policy, so it refuses all traffic \
         (fail closed). Ask your administrator to check the node with \
         <code>ssq status --node {name}</code>.</p></body></html>\n"
    );
    let mut r = Response::new(Full::new(Bytes::from(page)));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    if let Ok(v) = "text/html; charset=utf-8".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(r)
}
