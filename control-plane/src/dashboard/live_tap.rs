//! The live tap for the browser: the proxies' `/tap` streams merged into one
//! Server-Sent Events stream, each record tagged with the workload whose proxy saw it.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::observe_cli::{self, ProxyTarget};

/// The filters a proxy's `/tap` understands; anything else in the query is dropped.
const FILTER_KEYS: [&str; 7] = [
    "direction",
    "service",
    "method",
    "path",
    "status",
    "policy",
    "identity",
];

/// Splits a dashboard query into the workload to tap (if one is named) and the query
/// passed on to the proxies.
pub fn filters(query: &str) -> (Option<String>, String) {
    let mut workload = None;
    let mut pass = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if v.is_empty() {
            continue;
        }
        if k == "workload" {
            workload = Some(v.into_owned());
        } else if FILTER_KEYS.contains(&k.as_ref()) {
            pass.append_pair(&k, &v);
        }
    }
    (workload, pass.finish())
}

/// A streaming SSE body: a `ready` event naming the proxies tapped, then one `message`
/// event per record, a comment every 15 s to keep the connection open, and an `error`
/// event when a proxy's tap fails.
pub fn stream(
    targets: Vec<ProxyTarget>,
    query: String,
) -> http_body_util::StreamBody<
    impl futures::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>>,
> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let names: Vec<&str> = targets.iter().map(|t| t.workload.as_str()).collect();
    let ready = serde_json::json!({ "workloads": names, "filter": query });
    let _ = tx.try_send(Bytes::from(format!("event: ready\ndata: {ready}\n\n")));
    for target in targets {
        let tx = tx.clone();
        let query = query.clone();
        tokio::spawn(async move {
            let (lines_tx, mut lines) = mpsc::channel::<(String, String)>(64);
            let tap = observe_cli::tap_one(&target, &query, lines_tx);
            tokio::pin!(tap);
            loop {
                tokio::select! {
                    result = &mut tap => {
                        // Drain what was read before the tap ended.
                        while let Ok((workload, line)) = lines.try_recv() {
                            if tx.send(event(&workload, &line)).await.is_err() {
                                return;
                            }
                        }
                        if let Err(e) = result {
                            let msg = serde_json::json!({"workload": target.workload, "error": format!("{e:#}")});
                            let _ = tx.send(Bytes::from(format!("event: error\ndata: {msg}\n\n"))).await;
                        }
                        return;
                    }
                    Some((workload, line)) = lines.recv() => {
                        if tx.send(event(&workload, &line)).await.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(15)) => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    http_body_util::StreamBody::new(
        ReceiverStream::new(rx).map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
    )
}

/// One record as an SSE `message` event with the workload added.
fn event(workload: &str, line: &str) -> Bytes {
    let data = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("workload".into(), workload.into());
            serde_json::Value::Object(map).to_string()
        }
        _ => serde_json::json!({"workload": workload, "raw": line}).to_string(),
    };
    Bytes::from(format!("data: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_on_only_the_filters_a_proxy_knows() {
        let (workload, query) =
            filters("workload=web&status=5xx&colour=red&path=%2Forders&service=");
        assert_eq!(workload.as_deref(), Some("web"));
        assert_eq!(query, "status=5xx&path=%2Forders");
    }

    #[test]
    fn events_name_the_workload() {
        let e = event("web", r#"{"path":"/x","status":200}"#);
        let text = String::from_utf8_lossy(&e);
        assert!(text.starts_with("data: {"), "{text}");
        assert!(text.contains(r#""workload":"web""#), "{text}");
        assert!(text.ends_with("\n\n"), "{text}");
    }
}
