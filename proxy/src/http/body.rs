//! The one body type that flows through the proxy: boxed, so inbound, outbound and
//! locally produced responses compose without generic plumbing.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Errors a body can yield while streaming.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body.
pub type Body = BoxBody<Bytes, BodyError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Boxes any body whose errors convert into [`BodyError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BodyError>,
{
    body.map_err(Into::into).boxed()
}
