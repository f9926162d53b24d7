//! Service targets: everything a request to a service needs that does not depend on the
//! request, built once per discovery snapshot (linkerd2-proxy builds each target's stack
//! once and rebuilds it when discovery changes). A request looks its service's target up,
//! picks the route by path and clones a ready stack; no endpoint list, SPIFFE ID, name or
//! layer is copied or built per request, and no global lock is taken.
//!
//! The set is rebuilt on the first request after a new snapshot is applied, once, behind
//! a lock only the rebuild takes; requests on the old snapshot keep its targets. The state
//! that must outlive snapshots (breakers, load estimates, retry budgets, in-flight
//! limits) lives in [`super::endpoint::EndpointStates`] and
//! [`super::service_state::ServiceStates`], which the new stacks share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;

use crate::control::state::{MeshView, ServiceView};
use crate::traffic::Route;
use crate::Proxy;

use super::stack::{self, Stack};

/// One route of a service: its policy, metric label and ready stack.
pub struct RouteTarget {
    pub route: Arc<Route>,
    /// The route's metric label (its path prefix, or `default`).
    pub label: Arc<str>,
    stack: Stack,
}

impl RouteTarget {
    /// A ready stack for one request.
    pub fn stack(&self) -> Stack {
        self.stack.clone()
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
            stack: stack::http(proxy, mesh, service, route),
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

    /// The route a request path takes.
    pub fn route(&self, service: &ServiceView, path: &str) -> &RouteTarget {
        service
            .traffic
            .route_index(path)
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.fallback)
    }

    /// A ready stack for one opaque TCP tunnel.
    pub fn tunnel(&self) -> Stack {
        self.tunnel.clone()
    }
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
