//! An error answer of the portal: HTTP status, stable code, message for the operator.

use ssq::nodeconf::ConfError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What happened and what to check next.
    pub message: String,
}

impl ApiError {
    /// A new error answer.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 bad input.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
}

impl From<ConfError> for ApiError {
    fn from(e: ConfError) -> Self {
        let (status, code) = e.status_code();
        ApiError::new(status, code, e.to_string())
    }
}
