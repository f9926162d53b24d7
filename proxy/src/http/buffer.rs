//! Reads the start of a request body for the policy without holding back the rest: the
//! buffered prefix is replayed in front of the still-streaming remainder.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};

use crate::http::body::{Body, BodyError};

/// The prefix the policy sees, and the whole body to forward.
pub struct Buffered {
    pub prefix: Bytes,
    /// Whether the body continues past `prefix`.
    pub truncated: bool,
    pub body: Body,
}

/// Buffers up to `limit` bytes of `body`.
pub async fn buffer_prefix<B>(mut body: B, limit: usize) -> Result<Buffered, BodyError>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BodyError>,
{
    let mut collected = BytesMut::new();
    let mut trailers = None;
    let mut ended = false;
    while collected.len() < limit {
        match body.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => collected.extend_from_slice(&data),
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                    break;
                }
            },
        }
    }
    let ended = ended || body.is_end_stream();
    let all = collected.freeze();
    let prefix = all.slice(..all.len().min(limit));
    let truncated = !ended || all.len() > limit;
    let head = futures::stream::iter(
        std::iter::once(Ok::<_, BodyError>(Frame::data(all)))
            .chain(trailers.map(|t| Ok(Frame::trailers(t)))),
    );
    let body: Body = if ended {
        BodyExt::boxed(StreamBody::new(head))
    } else {
        let rest = BodyStream::new(body).map(|r| r.map_err(Into::into));
        BodyExt::boxed(StreamBody::new(head.chain(rest)))
    };
    Ok(Buffered {
        prefix,
        truncated,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn chunks(parts: &[&'static str]) -> Body {
        let frames = parts
            .iter()
            .map(|p| Ok::<_, BodyError>(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect::<Vec<_>>();
        BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)))
    }

    #[tokio::test]
    async fn a_short_body_is_seen_whole_and_forwarded_whole() {
        let b = buffer_prefix(Full::new(Bytes::from_static(b"{\"a\":1}")), 64)
            .await
            .expect("buffered");
        assert_eq!(&b.prefix[..], b"{\"a\":1}");
        assert!(!b.truncated);
        let forwarded = b.body.collect().await.expect("body").to_bytes();
        assert_eq!(&forwarded[..], b"{\"a\":1}");
    }

    #[tokio::test]
    async fn a_long_body_is_truncated_for_the_policy_but_forwarded_whole() {
        let b = buffer_prefix(chunks(&["hello ", "big ", "wide ", "world"]), 8)
            .await
            .expect("buffered");
        assert_eq!(&b.prefix[..], b"hello bi");
        assert!(b.truncated);
        let forwarded = b.body.collect().await.expect("body").to_bytes();
        assert_eq!(&forwarded[..], b"hello big wide world");
    }
}
