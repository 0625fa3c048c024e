//! The JSON body of every 4xx and 5xx answer of our servers.

use serde::{Deserialize, Serialize};

/// `{"status", "error", "message", "path", "request_id"}`: what every failed request gets.
///
/// `error` is the reason phrase of `status`; `message` says what was wrong in words a
/// caller can act on, and never carries internals such as file paths or stack traces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The HTTP status code.
    pub status: u16,
    /// The status code's reason phrase, such as `Not Found`.
    pub error: String,
    /// What went wrong, naming the offending field or resource.
    pub message: String,
    /// The request path that failed.
    pub path: String,
    /// The request id (`x-request-id`) of the failed request.
    pub request_id: String,
}
