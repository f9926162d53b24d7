//! A service's traffic policy: timeouts, retries, circuit breaking, limits and fault
//! injection, per service and per route. The mesh file's `services[].traffic` arrives in
//! the snapshot as JSON ([`crate::Service::traffic_json`]) and is parsed here, strictly:
//! an unknown field or an impossible value is refused (see `docs/traffic.md`). The control
//! plane checks every service's policy with the same parser before it sends it, so a
//! proxy never receives one it would refuse.
//!
//! ```
//! let policy = vigil_api::traffic::TrafficPolicy::parse(
//!     r#"{"timeout": "2s", "routes": [{"path_prefix": "/slow", "timeout": "10s"}]}"#,
//! ).expect("valid");
//! assert_eq!(policy.route("/slow/report").timeout.as_secs(), 10);
//! assert_eq!(policy.route("/fast").retries.attempts, 3);
//! ```
//!
//! Retries default to connect failures only (the request never reached the app), so a
//! request that did reach an app is never sent to it twice unless the mesh file says so:
//! with a default of retrying 5xx at every hop, one failing service multiplies the load
//! on every healthy service in front of it (three hops of three tries is up to 27×).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

mod routing;

pub use routing::{
    Backend, HeaderChanges, HeaderEntry, HeaderModifier, PathMatch, RequestHead, RouteMatch,
    ValueMatch,
};
use routing::{Matcher, MAX_BACKENDS, MAX_MATCHES, MAX_WEIGHT};

/// Everything a service's `traffic` section can say, with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficPolicy {
    /// The caller's deadline for a response (headers), retries and queueing included.
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub retries: RetryPolicy,
    pub circuit_breaker: CircuitBreakerPolicy,
    pub limits: LimitsPolicy,
    /// Routes, in the order they are tried; the first that matches a request wins.
    pub routes: Vec<RouteConfig>,
    /// What a request no route matches gets: the service's own endpoints and policy
    /// (`service`, the default) or 404 `no-route` (`not-found`, as the Gateway API has it
    /// for a Service with HTTPRoutes attached).
    pub unmatched: Unmatched,
    /// The effective policy of each route and of everything else, merged once here.
    #[serde(skip)]
    resolved: Vec<Arc<Route>>,
    #[serde(skip)]
    fallback: Arc<Route>,
}

/// The request timeout when a service sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

impl Default for TrafficPolicy {
    fn default() -> Self {
        TrafficPolicy {
            timeout: DEFAULT_TIMEOUT,
            retries: RetryPolicy::default(),
            circuit_breaker: CircuitBreakerPolicy::default(),
            limits: LimitsPolicy::default(),
            routes: Vec::new(),
            unmatched: Unmatched::Service,
            resolved: Vec::new(),
            fallback: Arc::new(Route::default()),
        }
    }
}

/// See [`TrafficPolicy::unmatched`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unmatched {
    #[default]
    Service,
    NotFound,
}

/// When and how often a failed request is tried again.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Tries in all, the first included: 1 turns retries off.
    pub attempts: u32,
    /// Deadline of each try; none by default (only the request timeout applies).
    #[serde(with = "optional_duration", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Which failures are retried: connect failures by default; statuses and gRPC codes
    /// only when listed.
    pub on: Vec<RetryOn>,
    /// Methods whose requests are retried on a status or gRPC code; connect failures are
    /// retried whatever the method, since the request never left.
    pub methods: Vec<MethodName>,
    /// Shared by every route of the service.
    pub budget: RetryBudgetPolicy,
    pub backoff: BackoffPolicy,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            per_try_timeout: None,
            on: vec![RetryOn::ConnectFailure],
            methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
                .into_iter()
                .map(|m| MethodName(Method::from_bytes(m.as_bytes()).unwrap_or(Method::GET)))
                .collect(),
            budget: RetryBudgetPolicy::default(),
            backoff: BackoffPolicy::default(),
        }
    }
}

impl RetryPolicy {
    /// Whether a response with this status, to this method, may be retried.
    pub fn retries_status(&self, method: &Method, status: StatusCode) -> bool {
        self.allows_method(method)
            && self
                .on
                .iter()
                .any(|o| matches!(o, RetryOn::Status(s) if *s == status.as_u16()))
    }

    /// Whether a gRPC status may be retried. gRPC calls are POSTs, and UNAVAILABLE means
    /// the server did not process the call, so codes apply whatever the method.
    pub fn retries_grpc(&self, code: u8) -> bool {
        self.on
            .iter()
            .any(|o| matches!(o, RetryOn::Grpc(c) if *c as u8 == code))
    }

    /// Whether a response (a status or a gRPC code) may be retried at all: a request that
    /// reached the app is sent again only when the mesh file opts in.
    pub fn retries_responses(&self) -> bool {
        self.attempts > 1
            && self
                .on
                .iter()
                .any(|o| matches!(o, RetryOn::Status(_) | RetryOn::Grpc(_)))
    }

    /// Whether failures to connect are retried.
    pub fn retries_connect_failures(&self) -> bool {
        self.on.contains(&RetryOn::ConnectFailure)
    }

    /// Whether this method's requests may be sent twice.
    pub fn allows_method(&self, method: &Method) -> bool {
        self.methods.iter().any(|m| m.0 == *method)
    }
}

/// A failure that may be retried: a status, `connect-failure`, or a gRPC code by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RetryOnSpec", into = "RetryOnSpec")]
pub enum RetryOn {
    Status(u16),
    ConnectFailure,
    Grpc(GrpcCode),
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum RetryOnSpec {
    Status(u16),
    Name(String),
}

impl TryFrom<RetryOnSpec> for RetryOn {
    type Error = String;
    fn try_from(spec: RetryOnSpec) -> Result<Self, String> {
        match spec {
            RetryOnSpec::Status(s) if (100..=599).contains(&s) => Ok(RetryOn::Status(s)),
            RetryOnSpec::Status(s) => Err(format!("{s} is not an HTTP status")),
            RetryOnSpec::Name(n) if n == "connect-failure" => Ok(RetryOn::ConnectFailure),
            RetryOnSpec::Name(n) => GrpcCode::from_name(&n).map(RetryOn::Grpc).ok_or_else(|| {
                format!(
                    "{n:?} is not a retryable failure; use an HTTP status (503), \
                     connect-failure, or a gRPC code name (unavailable, resource-exhausted, ...)"
                )
            }),
        }
    }
}

impl From<RetryOn> for RetryOnSpec {
    fn from(on: RetryOn) -> Self {
        match on {
            RetryOn::Status(s) => RetryOnSpec::Status(s),
            RetryOn::ConnectFailure => RetryOnSpec::Name("connect-failure".into()),
            RetryOn::Grpc(c) => RetryOnSpec::Name(c.name().into()),
        }
    }
}

/// gRPC status codes, by their kebab-case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    Cancelled = 1,
    Unknown = 2,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Aborted = 10,
    Internal = 13,
    Unavailable = 14,
}

impl GrpcCode {
    const ALL: [GrpcCode; 7] = [
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::DeadlineExceeded,
        GrpcCode::ResourceExhausted,
        GrpcCode::Aborted,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
    ];

    fn name(self) -> &'static str {
        match self {
            GrpcCode::Cancelled => "cancelled",
            GrpcCode::Unknown => "unknown",
            GrpcCode::DeadlineExceeded => "deadline-exceeded",
            GrpcCode::ResourceExhausted => "resource-exhausted",
            GrpcCode::Aborted => "aborted",
            GrpcCode::Internal => "internal",
            GrpcCode::Unavailable => "unavailable",
        }
    }

    fn from_name(name: &str) -> Option<GrpcCode> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// An HTTP method, upper case.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct MethodName(pub Method);

impl TryFrom<String> for MethodName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Method::from_bytes(s.to_ascii_uppercase().as_bytes())
            .map(MethodName)
            .map_err(|_| format!("{s:?} is not an HTTP method"))
    }
}

impl From<MethodName> for String {
    fn from(m: MethodName) -> String {
        m.0.to_string()
    }
}

/// How many retries a service may send: `ratio` of its requests over `window`, plus
/// `min_per_second` so a quiet service can still retry. The floor is small (1/s) so that
/// it cannot dwarf the ratio at the low rates most services see: at 4 requests/s a floor
/// of 10/s would allow every request to be tried three times.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetPolicy {
    pub ratio: f64,
    pub min_per_second: u32,
    #[serde(with = "duration")]
    pub window: Duration,
}

impl Default for RetryBudgetPolicy {
    fn default() -> Self {
        RetryBudgetPolicy {
            ratio: 0.2,
            min_per_second: 1,
            window: Duration::from_secs(10),
        }
    }
}

/// Pause between tries: exponential from `base`, capped at `max`, with jitter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffPolicy {
    #[serde(with = "duration")]
    pub base: Duration,
    #[serde(with = "duration")]
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// When an endpoint is taken out of rotation, and for how long.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerPolicy {
    /// Failures in a row (5xx, connect and transport errors, try timeouts) that eject it.
    pub consecutive_failures: u32,
    /// First ejection; each failed probe doubles it, up to `max_ejection`.
    #[serde(with = "duration")]
    pub base_ejection: Duration,
    #[serde(with = "duration")]
    pub max_ejection: Duration,
    /// Never more than this share of a service's endpoints is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for CircuitBreakerPolicy {
    fn default() -> Self {
        CircuitBreakerPolicy {
            consecutive_failures: 7,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 50,
        }
    }
}

/// How much of a service may be in flight or waiting at once, from this proxy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsPolicy {
    pub max_in_flight: u32,
    /// Requests waiting for an in-flight slot; beyond this they are refused at once.
    pub max_queued: u32,
}

impl Default for LimitsPolicy {
    fn default() -> Self {
        LimitsPolicy {
            max_in_flight: 1000,
            max_queued: 100,
        }
    }
}

/// A route as written: which requests take it, where they go, and what it overrides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's label in metrics and logs; its `path_prefix`, or `routes[i]`, when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Requests whose path starts with this string (a plain string prefix: `/api`
    /// matches `/apis` too). Shorthand for one match; not with `match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Requests any of these matches; a route with neither this nor `path_prefix` takes
    /// every request.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Services to send the route's requests to, by weight, instead of this service's
    /// own endpoints (a canary, a migration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
    /// Set when the route asks for something Vigil cannot do (a Gateway API filter it
    /// does not implement): its requests get 500 `unsupported-route` with this reason
    /// rather than being served without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RouteRetries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultPolicy>,
}

/// A route's retry overrides; what it leaves out comes from the service. The budget is
/// the service's alone.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRetries {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<RetryOn>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<MethodName>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffPolicy>,
}

/// Chaos for tests: delay or abort a share of a route's requests.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DelayFault {
    pub percent: f64,
    #[serde(with = "duration")]
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AbortFault {
    pub percent: f64,
    pub status: u16,
}

/// What applies to one request: the service's policy with its route's overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The `path_prefix` the route was written with, if it was.
    pub path_prefix: Option<String>,
    pub timeout: Duration,
    pub retries: Arc<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
    /// Weighted services to send to instead of the service's own endpoints; empty for
    /// the service itself.
    pub backends: Vec<Backend>,
    pub request_headers: Option<HeaderChanges>,
    pub response_headers: Option<HeaderChanges>,
    /// Why the route cannot be served (see [`RouteConfig::unsupported`]).
    pub unsupported: Option<String>,
    /// The fallback of a policy whose unmatched requests get 404.
    pub not_found: bool,
    matchers: Vec<Matcher>,
    /// The metric label, made once with the route (see [`Route::label`]).
    label: Arc<str>,
}

impl Route {
    fn new(
        path_prefix: Option<String>,
        timeout: Duration,
        retries: Arc<RetryPolicy>,
        fault: Option<FaultPolicy>,
    ) -> Route {
        let label = Arc::from(path_prefix.as_deref().unwrap_or("default"));
        Route {
            path_prefix,
            timeout,
            retries,
            fault,
            backends: Vec::new(),
            request_headers: None,
            response_headers: None,
            unsupported: None,
            not_found: false,
            matchers: Vec::new(),
            label,
        }
    }

    /// Whether a request takes this route.
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        match &self.path_prefix {
            Some(prefix) => req.path.starts_with(prefix.as_str()),
            None => self.matchers.is_empty() || self.matchers.iter().any(|m| m.matches(req)),
        }
    }

    /// The metric label for requests on this route: its name, its path prefix, or
    /// `default` for requests no route matches. Bounded by the routes an operator writes.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The same label, shared rather than copied into each request's record.
    pub fn shared_label(&self) -> Arc<str> {
        self.label.clone()
    }
}

impl Default for Route {
    fn default() -> Self {
        Route::new(
            None,
            DEFAULT_TIMEOUT,
            Arc::new(RetryPolicy::default()),
            None,
        )
    }
}

/// A traffic section that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrafficError(String);

impl TrafficPolicy {
    /// Parses and checks a service's `traffic` JSON; empty text means all defaults.
    pub fn parse(json: &str) -> Result<TrafficPolicy, TrafficError> {
        let mut policy: TrafficPolicy = if json.trim().is_empty() {
            TrafficPolicy::default()
        } else {
            let mut de = serde_json::Deserializer::from_str(json);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                // serde_json's line/column point into the JSON the control plane made,
                // not the operator's YAML: the field path says more.
                let message = inner.to_string();
                let message = message
                    .rsplit_once(" at line ")
                    .map_or(message.as_str(), |(m, _)| m);
                if path == "." {
                    TrafficError(message.to_string())
                } else {
                    TrafficError(format!("{path}: {message}"))
                }
            })?
        };
        policy.validate().map_err(TrafficError)?;
        policy.resolve().map_err(TrafficError)?;
        Ok(policy)
    }

    /// The policy for a GET of `path` with no headers (see [`TrafficPolicy::select`]).
    pub fn route(&self, path: &str) -> Arc<Route> {
        let headers = http::HeaderMap::new();
        self.select(&RequestHead {
            method: &Method::GET,
            path,
            query: None,
            headers: &headers,
        })
    }

    /// The policy of the route a request takes.
    pub fn select(&self, req: &RequestHead<'_>) -> Arc<Route> {
        match self.route_index(req) {
            Some(i) => self.resolved[i].clone(),
            None => self.fallback.clone(),
        }
    }

    /// Which of [`routes`](Self::resolved_routes) a request takes (the first that
    /// matches it); `None` for the fallback.
    pub fn route_index(&self, req: &RequestHead<'_>) -> Option<usize> {
        self.resolved.iter().position(|r| r.matches(req))
    }

    /// Every route with its effective policy, in match order.
    pub fn resolved_routes(&self) -> &[Arc<Route>] {
        &self.resolved
    }

    /// The policy of requests no route matches.
    pub fn fallback_route(&self) -> &Arc<Route> {
        &self.fallback
    }

    fn resolve(&mut self) -> Result<(), String> {
        let base = Arc::new(self.retries.clone());
        let mut fallback = Route::new(None, self.timeout, base.clone(), None);
        fallback.not_found = self.unmatched == Unmatched::NotFound;
        self.fallback = Arc::new(fallback);
        let mut resolved = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let retries = match &r.retries {
                None => base.clone(),
                Some(o) => Arc::new(RetryPolicy {
                    attempts: o.attempts.unwrap_or(base.attempts),
                    per_try_timeout: o.per_try_timeout.or(base.per_try_timeout),
                    on: o.on.clone().unwrap_or_else(|| base.on.clone()),
                    methods: o.methods.clone().unwrap_or_else(|| base.methods.clone()),
                    budget: base.budget.clone(),
                    backoff: o.backoff.clone().unwrap_or_else(|| base.backoff.clone()),
                }),
            };
            let mut route = Route::new(
                r.path_prefix.clone(),
                r.timeout.unwrap_or(self.timeout),
                retries,
                r.fault.clone(),
            );
            route.label = match (&r.name, &r.path_prefix) {
                (Some(name), _) => Arc::from(name.as_str()),
                (None, Some(prefix)) => Arc::from(prefix.as_str()),
                (None, None) => Arc::from(at.as_str()),
            };
            route.matchers = (r.matches.iter().enumerate())
                .map(|(j, m)| Matcher::compile(&format!("{at}.match[{j}]"), m))
                .collect::<Result<_, _>>()?;
            route.backends = r.backends.clone();
            route.request_headers = r
                .request_headers
                .as_ref()
                .map(|m| HeaderChanges::compile(&format!("{at}.request_headers"), m))
                .transpose()?;
            route.response_headers = r
                .response_headers
                .as_ref()
                .map(|m| HeaderChanges::compile(&format!("{at}.response_headers"), m))
                .transpose()?;
            route.unsupported = r.unsupported.clone();
            resolved.push(Arc::new(route));
        }
        self.resolved = resolved;
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        positive("timeout", self.timeout)?;
        check_retries(
            "retries",
            self.retries.attempts,
            self.retries.per_try_timeout,
            &self.retries.backoff,
        )?;
        let b = &self.retries.budget;
        if !(0.0..=10.0).contains(&b.ratio) {
            return Err(format!(
                "retries.budget.ratio must be between 0 and 10, got {}",
                b.ratio
            ));
        }
        if b.min_per_second > 100_000 {
            return Err(format!(
                "retries.budget.min_per_second must be at most 100000, got {}",
                b.min_per_second
            ));
        }
        if b.window < Duration::from_secs(1) || b.window > Duration::from_secs(60) {
            return Err(format!(
                "retries.budget.window must be between 1s and 60s, got {}",
                humantime::format_duration(b.window)
            ));
        }
        let cb = &self.circuit_breaker;
        if cb.consecutive_failures == 0 {
            return Err("circuit_breaker.consecutive_failures must be at least 1".into());
        }
        positive("circuit_breaker.base_ejection", cb.base_ejection)?;
        if cb.max_ejection < cb.base_ejection {
            return Err(
                "circuit_breaker.max_ejection must not be shorter than base_ejection".into(),
            );
        }
        if cb.max_ejected_percent > 100 {
            return Err(format!(
                "circuit_breaker.max_ejected_percent must be between 0 and 100, got {}",
                cb.max_ejected_percent
            ));
        }
        if self.limits.max_in_flight == 0 || self.limits.max_in_flight > 1_000_000 {
            return Err(format!(
                "limits.max_in_flight must be between 1 and 1000000, got {}",
                self.limits.max_in_flight
            ));
        }
        if self.limits.max_queued > 1_000_000 {
            return Err(format!(
                "limits.max_queued must be at most 1000000, got {}",
                self.limits.max_queued
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if let Some(prefix) = &r.path_prefix {
                if !prefix.starts_with('/') {
                    return Err(format!(
                        "{at}.path_prefix must start with '/', got {prefix:?}"
                    ));
                }
                if !r.matches.is_empty() {
                    return Err(format!(
                        "{at} has both path_prefix and match; write the prefix as a match"
                    ));
                }
            }
            if r.matches.len() > MAX_MATCHES {
                return Err(format!("{at}.match has more than {MAX_MATCHES} entries"));
            }
            if r.backends.len() > MAX_BACKENDS {
                return Err(format!(
                    "{at}.backends has more than {MAX_BACKENDS} entries"
                ));
            }
            for (j, b) in r.backends.iter().enumerate() {
                if b.service.trim().is_empty() {
                    return Err(format!("{at}.backends[{j}].service must name a service"));
                }
                if b.weight > MAX_WEIGHT {
                    return Err(format!(
                        "{at}.backends[{j}].weight must be at most {MAX_WEIGHT}, got {}",
                        b.weight
                    ));
                }
            }
            if let Some(t) = r.timeout {
                positive(&format!("{at}.timeout"), t)?;
            }
            if let Some(o) = &r.retries {
                check_retries(
                    &format!("{at}.retries"),
                    o.attempts.unwrap_or(self.retries.attempts),
                    o.per_try_timeout,
                    o.backoff.as_ref().unwrap_or(&self.retries.backoff),
                )?;
            }
            if let Some(fault) = &r.fault {
                if let Some(d) = &fault.delay {
                    percent(&format!("{at}.fault.delay.percent"), d.percent)?;
                }
                if let Some(a) = &fault.abort {
                    percent(&format!("{at}.fault.abort.percent"), a.percent)?;
                    if !(200..=599).contains(&a.status) {
                        return Err(format!(
                            "{at}.fault.abort.status must be an HTTP status from 200 to 599, got {}",
                            a.status
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_retries(
    at: &str,
    attempts: u32,
    per_try: Option<Duration>,
    backoff: &BackoffPolicy,
) -> Result<(), String> {
    if !(1..=10).contains(&attempts) {
        return Err(format!(
            "{at}.attempts must be between 1 and 10 (1 turns retries off), got {attempts}"
        ));
    }
    if let Some(t) = per_try {
        positive(&format!("{at}.per_try_timeout"), t)?;
    }
    positive(&format!("{at}.backoff.base"), backoff.base)?;
    if backoff.max < backoff.base {
        return Err(format!(
            "{at}.backoff.max must not be shorter than backoff.base"
        ));
    }
    Ok(())
}

fn positive(field: &str, d: Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err(format!("{field} must be longer than zero"));
    }
    Ok(())
}

fn percent(field: &str, p: f64) -> Result<(), String> {
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{field} must be between 0 and 100, got {p}"));
    }
    Ok(())
}

/// Durations as humantime strings: `250ms`, `2s`, `1m 30s`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration ({e}); write it like 250ms, 2s or 1m"))
    }
}

mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::duration::parse(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_written_means_the_documented_defaults() {
        let p = TrafficPolicy::parse("").expect("defaults");
        assert_eq!(p.timeout, Duration::from_secs(15));
        let r = p.route("/anything");
        assert_eq!(r.path_prefix, None);
        assert_eq!(r.retries.attempts, 3);
        // Only a request that never reached the app is tried again by default.
        assert!(r.retries.retries_connect_failures());
        assert!(!r.retries.retries_responses());
        for status in [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE] {
            assert!(!r.retries.retries_status(&Method::GET, status));
        }
        assert!(!r.retries.retries_grpc(14));
        assert_eq!(p.retries.budget.ratio, 0.2);
        assert_eq!(p.retries.budget.min_per_second, 1);
        assert_eq!(p.circuit_breaker.consecutive_failures, 7);
        assert_eq!(p.circuit_breaker.max_ejection, Duration::from_secs(60));
        assert_eq!(p.limits.max_in_flight, 1000);
        assert_eq!(p.limits.max_queued, 100);
        assert_eq!(p, TrafficPolicy::parse("{}").expect("empty object"));
    }

    #[test]
    fn the_documented_example_parses_and_routes_merge_over_the_service() {
        let p = TrafficPolicy::parse(
            r#"{
              "timeout": "5s",
              "retries": {"attempts": 4, "per_try_timeout": "2s",
                          "on": [503, "connect-failure", "unavailable"],
                          "methods": ["get", "POST"], "budget": {"ratio": 0.1, "min_per_second": 5}},
              "circuit_breaker": {"consecutive_failures": 3, "base_ejection": "500ms",
                                  "max_ejection": "10s", "max_ejected_percent": 34},
              "limits": {"max_in_flight": 10, "max_queued": 0},
              "routes": [
                {"path_prefix": "/slow", "timeout": "1s", "retries": {"attempts": 1},
                 "fault": {"delay": {"percent": 10, "duration": "200ms"},
                           "abort": {"percent": 5, "status": 503}}},
                {"path_prefix": "/"}
              ]
            }"#,
        )
        .expect("valid");
        let slow = p.route("/slow/x");
        assert_eq!(slow.path_prefix.as_deref(), Some("/slow"));
        assert_eq!(slow.timeout, Duration::from_secs(1));
        assert_eq!(slow.retries.attempts, 1);
        assert_eq!(
            slow.retries.per_try_timeout,
            Some(Duration::from_secs(2)),
            "inherited"
        );
        assert!(slow
            .retries
            .retries_status(&Method::POST, StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(
            slow.fault
                .as_ref()
                .and_then(|f| f.abort.as_ref())
                .map(|a| a.status),
            Some(503)
        );
        let other = p.route("/other");
        assert_eq!(other.path_prefix.as_deref(), Some("/"));
        assert_eq!(other.timeout, Duration::from_secs(5));
        assert_eq!(other.retries.attempts, 4);
        // What /config shows reads back as the same policy.
        let shown = serde_json::to_string(&p).expect("serializes");
        assert_eq!(TrafficPolicy::parse(&shown).expect("round trip"), p);
    }

    #[test]
    fn status_retries_are_opted_into_per_route() {
        let p = TrafficPolicy::parse(
            r#"{"routes": [{"path_prefix": "/stock", "retries": {"on": [503, "connect-failure"]}}]}"#,
        )
        .expect("valid");
        let stock = p.route("/stock/42");
        assert!(stock.retries.retries_responses());
        assert!(stock
            .retries
            .retries_status(&Method::GET, StatusCode::SERVICE_UNAVAILABLE));
        assert!(!stock
            .retries
            .retries_status(&Method::POST, StatusCode::SERVICE_UNAVAILABLE));
        assert!(stock.retries.retries_connect_failures());
        let other = p.route("/checkout");
        assert!(!other.retries.retries_responses());
        assert!(!other
            .retries
            .retries_status(&Method::GET, StatusCode::SERVICE_UNAVAILABLE));
        // One try in all is no retry, whatever is listed.
        let off =
            TrafficPolicy::parse(r#"{"retries": {"attempts": 1, "on": [503]}}"#).expect("valid");
        assert!(!off.route("/").retries.retries_responses());
    }

    #[test]
    fn the_first_matching_route_wins_and_unmatched_requests_can_get_404() {
        let p = TrafficPolicy::parse(
            r#"{"unmatched": "not-found", "routes": [
                {"name": "canary", "match": [{"headers": [{"name": "x-canary", "exact": "1"}]}],
                 "backends": [{"service": "web-v2.shop", "weight": 10}, {"service": "web-v1.shop", "weight": 90}],
                 "request_headers": {"set": [{"name": "x-route", "value": "canary"}]}},
                {"match": [{"path": {"prefix": "/api"}, "method": "POST"}], "timeout": "2s"},
                {"path_prefix": "/static"}
            ]}"#,
        )
        .expect("valid");
        let mut headers = http::HeaderMap::new();
        let pick = |method: &Method, path: &str, headers: &http::HeaderMap| {
            p.select(&RequestHead {
                method,
                path,
                query: None,
                headers,
            })
        };
        assert_eq!(pick(&Method::POST, "/api/x", &headers).label(), "routes[1]");
        assert_eq!(
            pick(&Method::POST, "/api/x", &headers).timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            pick(&Method::GET, "/static/a.css", &headers).label(),
            "/static"
        );
        let unmatched = pick(&Method::GET, "/api/x", &headers);
        assert!(unmatched.not_found);
        assert_eq!(unmatched.label(), "default");
        headers.insert("x-canary", http::HeaderValue::from_static("1"));
        let canary = pick(&Method::POST, "/api/x", &headers);
        assert_eq!(canary.label(), "canary");
        assert_eq!(canary.backends.len(), 2);
        assert!(canary.request_headers.is_some());
        // What /config shows reads back as the same policy.
        let shown = serde_json::to_string(&p).expect("serializes");
        assert_eq!(TrafficPolicy::parse(&shown).expect("round trip"), p);
    }

    #[test]
    fn mistakes_are_refused_with_the_field_and_a_reason() {
        for (json, expect) in [
            (r#"{"timout": "1s"}"#, "unknown field `timout`"),
            (r#"{"timeout": "soon"}"#, "is not a duration"),
            (r#"{"timeout": 5}"#, "invalid type"),
            (
                r#"{"retries": {"attempts": 0}}"#,
                "retries.attempts must be between 1 and 10",
            ),
            (r#"{"retries": {"on": [600]}}"#, "600 is not an HTTP status"),
            (
                r#"{"retries": {"on": ["sometimes"]}}"#,
                "is not a retryable failure",
            ),
            (
                r#"{"retries": {"methods": ["G T"]}}"#,
                "is not an HTTP method",
            ),
            (
                r#"{"retries": {"budget": {"window": "2m"}}}"#,
                "window must be between 1s and 60s",
            ),
            (
                r#"{"retries": {"budget": {"ratio": -1}}}"#,
                "ratio must be between 0 and 10",
            ),
            (
                r#"{"circuit_breaker": {"max_ejected_percent": 101}}"#,
                "max_ejected_percent",
            ),
            (
                r#"{"circuit_breaker": {"base_ejection": "2m"}}"#,
                "max_ejection must not be shorter",
            ),
            (
                r#"{"limits": {"max_in_flight": 0}}"#,
                "limits.max_in_flight",
            ),
            (
                r#"{"routes": [{"path_prefix": "slow"}]}"#,
                "routes[0].path_prefix must start with '/'",
            ),
            (
                r#"{"routes": [{"path_prefix": "/a", "match": [{"method": "GET"}]}]}"#,
                "both path_prefix and match",
            ),
            (
                r#"{"routes": [{"backends": [{"service": "b", "weight": 1000001}]}]}"#,
                "routes[0].backends[0].weight must be at most 1000000",
            ),
            (
                r#"{"routes": [{"match": [{"path": {"regex": "(["}}]}]}"#,
                "routes[0].match[0].path",
            ),
            (r#"{"unmatched": "drop"}"#, "unknown variant `drop`"),
            (
                r#"{"routes": [{"path_prefix": "/", "retries": {"budget": {}}}]}"#,
                "unknown field `budget`",
            ),
            (
                r#"{"routes": [{"path_prefix": "/", "fault": {"abort": {"percent": 5, "status": 99}}}]}"#,
                "abort.status",
            ),
            (
                r#"{"routes": [{"path_prefix": "/", "fault": {"delay": {"percent": 150, "duration": "1s"}}}]}"#,
                "delay.percent",
            ),
        ] {
            let err = TrafficPolicy::parse(json).expect_err(json).to_string();
            assert!(err.contains(expect), "{json}: {err}");
        }
    }
}
