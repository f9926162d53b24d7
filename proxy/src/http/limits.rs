//! Per-request limits both traffic listeners apply before anything else sees a request:
//! request line length (414), header count (431) and body size (413).
//!
//! hyper already refuses an HTTP/1 head over `--max-header-bytes` or with more than
//! `--max-headers` fields; these checks cover HTTP/2, the request line, and bodies, which
//! hyper does not bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::http::body::{Body, BodyError};
use crate::http::error::ProxyError;

/// Limits on one request, applied on both traffic listeners. The command line is
/// derived from these fields (one source for each setting).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RequestLimits {
    /// Longest request line (method and target, bytes); longer requests get 414.
    #[arg(long, env = "VIGIL_MAX_REQUEST_LINE_BYTES", default_value_t = 16 * 1024)]
    pub max_request_line_bytes: usize,
    /// Most header fields in a request; more get 431.
    #[arg(long, env = "VIGIL_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// Largest request body (bytes); larger requests get 413. No limit unless given.
    #[arg(long = "max-request-body-bytes", env = "VIGIL_MAX_REQUEST_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,
}

/// Refuses a request whose line or headers are over the limits, or whose declared
/// `content-length` is over the body limit.
pub fn check_head<B>(req: &Request<B>, limits: &RequestLimits) -> Result<(), ProxyError> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0)
        + req.uri().authority().map(|a| a.as_str().len()).unwrap_or(0);
    let line = req.method().as_str().len() + target;
    if line > limits.max_request_line_bytes {
        return Err(ProxyError::RequestLineTooLong {
            length: line,
            limit: limits.max_request_line_bytes,
        });
    }
    let count = req.headers().len();
    if count > limits.max_headers {
        return Err(ProxyError::TooManyHeaders {
            count,
            limit: limits.max_headers,
        });
    }
    if let Some(limit) = limits.max_body_bytes {
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
    }
    Ok(())
}

/// Whether a body limited by [`limit_body`] went over its limit: the request failed
/// because of its size. Without a limit there is nothing to share, so nothing is
/// allocated on the request path.
#[derive(Debug, Clone, Default)]
pub struct Exceeded(Option<Arc<AtomicBool>>);

impl Exceeded {
    pub fn happened(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Acquire))
    }
}

/// Bounds a streaming body (one without a declared length, or longer than it said) to
/// `limit` bytes; past it the body fails, so the request is aborted upstream.
pub fn limit_body<B>(body: B, limit: Option<u64>) -> (Body, Exceeded)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BodyError>,
{
    let Some(limit) = limit else {
        return (crate::http::body::boxed(body), Exceeded::default());
    };
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let body = Limited::new(body, limit)
        .map_err(move |e| {
            if e.is::<LengthLimitError>() {
                set.store(true, Ordering::Release);
            }
            e
        })
        .boxed();
    (body, Exceeded(Some(flag)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_request_line_bytes: 32,
            max_headers: 2,
            max_body_bytes: Some(4),
        }
    }

    #[test]
    fn a_long_request_line_is_414() {
        let ok = Request::get("/short").body(()).unwrap();
        assert!(check_head(&ok, &limits()).is_ok());
        let long = Request::get(format!("/{}", "a".repeat(40)))
            .body(())
            .unwrap();
        let err = check_head(&long, &limits()).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::URI_TOO_LONG);
        assert_eq!(err.reason(), "request-line-too-long");
    }

    #[test]
    fn too_many_headers_is_431() {
        let req = Request::get("/")
            .header("a", "1")
            .header("b", "2")
            .header("b", "3")
            .body(())
            .unwrap();
        let err = check_head(&req, &limits()).unwrap_err();
        assert_eq!(
            err.status(),
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn a_declared_length_over_the_limit_is_413() {
        let req = Request::post("/")
            .header("content-length", "5")
            .body(())
            .unwrap();
        let err = check_head(&req, &limits()).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        let fits = Request::post("/")
            .header("content-length", "4")
            .body(())
            .unwrap();
        assert!(check_head(&fits, &limits()).is_ok());
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_fails_and_says_so() {
        let (body, exceeded) = limit_body(Full::new(bytes::Bytes::from_static(b"12345")), Some(4));
        assert!(body.collect().await.is_err());
        assert!(exceeded.happened());

        let (body, exceeded) = limit_body(Full::new(bytes::Bytes::from_static(b"1234")), Some(4));
        let got = body.collect().await.expect("fits").to_bytes();
        assert_eq!(&got[..], b"1234");
        assert!(!exceeded.happened());
    }
}
