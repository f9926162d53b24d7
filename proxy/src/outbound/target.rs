//! Service targets: everything a request to a service needs that does not depend on the
//! request, built once per discovery snapshot (linkerd2-proxy builds each target's stack
//! once and rebuilds it when discovery changes). A request looks its service's target up,
//! picks the route (path, method, headers, query) and clones a ready stack, of the
//! service itself or of one of the route's weighted backends; no endpoint list, SPIFFE
//! ID, name or layer is copied or built per request, and no global lock is taken.
//!
//! The set is rebuilt on the first request after a new snapshot is applied, once, behind
//! a lock only the rebuild takes; requests on the old snapshot keep its targets. The state
//! that must outlive snapshots (breakers, load estimates, retry budgets, in-flight
//! limits) lives in [`super::endpoint::EndpointStates`] and
//! [`super::service_state::ServiceStates`], which the new stacks share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use rand::Rng;

use crate::control::state::{MeshView, ServiceView};
use crate::http::error::ProxyError;
use crate::traffic::{RequestHead, Route};
use crate::Proxy;

use super::stack::{self, Stack};

/// One route of a service: its policy, metric label and ready stacks.
pub struct RouteTarget {
    pub route: Arc<Route>,
    /// The route's metric label (its name or path prefix, or `default`).
    pub label: Arc<str>,
    send_to: SendTo,
}

/// Where a route's requests go, decided once per snapshot.
enum SendTo {
    /// The service's own endpoints.
    Service(Stack),
    /// Weighted backends, by cumulative weight: a request draws a number below the
    /// total (never 0) and takes the first backend whose bound exceeds it.
    Backends {
        total: u64,
        choices: Vec<(u64, Backend)>,
    },
    /// The proxy answers every request of the route itself.
    Refused(Refusal),
}

/// Why a route's requests are answered by the proxy.
enum Refusal {
    /// The fallback of a service whose routes answer unmatched requests with 404.
    NoRoute(Arc<str>),
    /// The route asks for something Vigil cannot do.
    Unsupported(String),
    /// Every backend weighs 0.
    NoBackend(String),
}

impl Refusal {
    fn error(&self) -> ProxyError {
        match self {
            Refusal::NoRoute(service) => ProxyError::NoRoute(service.to_string()),
            Refusal::Unsupported(reason) => ProxyError::UnsupportedRoute(reason.clone()),
            Refusal::NoBackend(reason) => ProxyError::NoBackend(reason.clone()),
        }
    }
}

/// One backend of a route, as built under a snapshot.
pub enum Backend {
    /// A service of the view: its label (`name.namespace`) and ready stack.
    Ready { label: Arc<str>, stack: Stack },
    /// A backend the view does not hold, by the name the route gives it.
    Missing(Arc<str>),
}

/// Where one request of a route goes.
pub enum Pick<'t> {
    /// The service's own endpoints.
    Service(Stack),
    /// A backend of the route, and its label.
    Backend { label: &'t Arc<str>, stack: Stack },
    /// A backend the view does not hold, by name.
    Missing(&'t Arc<str>),
    /// The proxy answers with this.
    Refused(ProxyError),
}

impl RouteTarget {
    /// Where one request goes: the service's stack, one of the route's backends chosen
    /// by weight, or the proxy's own answer.
    pub fn pick(&self) -> Pick<'_> {
        match &self.send_to {
            SendTo::Service(stack) => Pick::Service(stack.clone()),
            SendTo::Refused(refusal) => Pick::Refused(refusal.error()),
            SendTo::Backends { total, choices } => {
                let draw = rand::rng().random_range(0..*total);
                match choices.iter().find(|(bound, _)| draw < *bound) {
                    Some((_, Backend::Ready { label, stack })) => Pick::Backend {
                        label,
                        stack: stack.clone(),
                    },
                    Some((_, Backend::Missing(name))) => Pick::Missing(name),
                    None => Pick::Refused(ProxyError::NoBackend(format!(
                        "route {} has no backend",
                        self.label
                    ))),
                }
            }
        }
    }
}

/// Everything the outbound path needs for one service under one snapshot.
pub struct ServiceTarget {
    /// `name.namespace`, the service's label in metrics and logs.
    pub name: Arc<str>,
    routes: Vec<RouteTarget>,
    fallback: RouteTarget,
    tunnel: Stack,
}

impl ServiceTarget {
    fn build(proxy: &Proxy, mesh: &MeshView, service: &ServiceView) -> ServiceTarget {
        let route_target = |route: &Arc<Route>| RouteTarget {
            label: route.shared_label(),
            send_to: send_to(proxy, mesh, service, route),
            route: route.clone(),
        };
        ServiceTarget {
            name: service.label.clone(),
            routes: service
                .traffic
                .resolved_routes()
                .iter()
                .map(route_target)
                .collect(),
            fallback: route_target(service.traffic.fallback_route()),
            tunnel: stack::tunnel(proxy, mesh, service),
        }
    }

    /// The route a request takes.
    pub fn route(&self, service: &ServiceView, req: &RequestHead<'_>) -> &RouteTarget {
        service
            .traffic
            .route_index(req)
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.fallback)
    }

    /// A ready stack for one opaque TCP tunnel.
    pub fn tunnel(&self) -> Stack {
        self.tunnel.clone()
    }
}

/// The stacks a route sends to. A backend is resolved in the same view as the service,
/// by any name it answers to, and keeps its own endpoints, breakers and limits; the
/// route's timeout and retries apply to it.
fn send_to(proxy: &Proxy, mesh: &MeshView, service: &ServiceView, route: &Route) -> SendTo {
    if let Some(reason) = &route.unsupported {
        return SendTo::Refused(Refusal::Unsupported(reason.clone()));
    }
    if route.not_found {
        return SendTo::Refused(Refusal::NoRoute(service.label.clone()));
    }
    if route.backends.is_empty() {
        return SendTo::Service(stack::http(proxy, mesh, service, route));
    }
    let mut total = 0u64;
    let mut choices = Vec::with_capacity(route.backends.len());
    for b in route.backends.iter().filter(|b| b.weight > 0) {
        total += u64::from(b.weight);
        let backend = match mesh.service_for_host(&b.service) {
            Some(s) => Backend::Ready {
                label: s.label.clone(),
                stack: stack::http(proxy, mesh, s, route),
            },
            None => Backend::Missing(Arc::from(b.service.as_str())),
        };
        choices.push((total, backend));
    }
    if total == 0 {
        return SendTo::Refused(Refusal::NoBackend(format!(
            "every backend of route {} weighs 0",
            route.label()
        )));
    }
    SendTo::Backends { total, choices }
}

/// The targets of one snapshot, by service (the address of its `Arc<ServiceView>` in
/// that snapshot, which the snapshot keeps alive).
struct Built {
    mesh: Arc<MeshView>,
    by_service: HashMap<usize, Arc<ServiceTarget>>,
}

fn key(service: &Arc<ServiceView>) -> usize {
    Arc::as_ptr(service) as usize
}

/// Every service's target under the latest snapshot a request has seen.
#[derive(Default)]
pub struct Targets {
    built: ArcSwapOption<Built>,
    rebuild: Mutex<()>,
}

impl Targets {
    /// The target of `service`, a service of `mesh`.
    pub fn get(
        &self,
        proxy: &Proxy,
        mesh: &Arc<MeshView>,
        service: &Arc<ServiceView>,
    ) -> Arc<ServiceTarget> {
        if let Some(target) = self.lookup(mesh, service) {
            return target;
        }
        let _one = self.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        // Another request may have built this snapshot while we waited.
        if let Some(target) = self.lookup(mesh, service) {
            return target;
        }
        let by_service = mesh
            .services
            .iter()
            .map(|s| (key(s), Arc::new(ServiceTarget::build(proxy, mesh, s))))
            .collect::<HashMap<_, _>>();
        let target = by_service.get(&key(service)).cloned();
        self.built.store(Some(Arc::new(Built {
            mesh: mesh.clone(),
            by_service,
        })));
        // A service not in `mesh` (never the case for callers) gets a target of its own.
        target.unwrap_or_else(|| Arc::new(ServiceTarget::build(proxy, mesh, service)))
    }

    fn lookup(
        &self,
        mesh: &Arc<MeshView>,
        service: &Arc<ServiceView>,
    ) -> Option<Arc<ServiceTarget>> {
        let built = self.built.load();
        let built = built.as_ref()?;
        if !Arc::ptr_eq(&built.mesh, mesh) {
            return None;
        }
        built.by_service.get(&key(service)).cloned()
    }
}
