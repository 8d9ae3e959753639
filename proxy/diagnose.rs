//! `POST /api/v1/diagnose/master`: a slave checks, from where it stands, that its master
//! answers (DNS, TCP, TLS as pinned, its sync credential accepted), for `ssq doctor`.

use std::sync::Arc;

use crate::apierror::ApiError;
use crate::node::Node;

/// Whether this module serves `path`.
pub fn serves(path: &str) -> bool {
    path == "/api/v1/diagnose/master"
}

/// Serve one diagnose request.
pub async fn route(
    node: &Arc<Node>,
    method: &str,
    path: &str,
) -> Result<(u16, serde_json::Value), ApiError> {
    let _ = node;
    Err(ApiError::new(
        404,
        "not_found",
        format!("no endpoint {method} {path} yet"),
    ))
}
