//! Per-service state that outlives discovery snapshots: the retry budget and the
//! in-flight limit, owned by the [`Proxy`](crate::Proxy). Each is rebuilt only when its
//! part of the traffic policy changes; services a snapshot no longer lists are forgotten.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::control::state::{MeshView, ServiceView};

use super::budget::RetryBudget;
use super::limit::ConcurrencyLimit;

/// The lasting state of one service.
pub struct ServiceState {
    pub budget: Arc<RetryBudget>,
    pub budget_policy: crate::traffic::RetryBudgetPolicy,
    pub limit: Arc<ConcurrencyLimit>,
    /// Serialises the breakers' ejection decisions for the service's endpoints.
    pub ejections: Arc<Mutex<()>>,
}

impl ServiceState {
    fn new(service: &ServiceView) -> Self {
        let t = &service.traffic;
        ServiceState {
            budget: Arc::new(RetryBudget::new(&t.retries.budget)),
            budget_policy: t.retries.budget.clone(),
            limit: Arc::new(ConcurrencyLimit::new(&t.limits)),
            ejections: Arc::default(),
        }
    }

    /// This state, carried over to a new policy: what changed starts afresh.
    fn updated(self: &Arc<Self>, service: &ServiceView) -> Arc<Self> {
        let t = &service.traffic;
        if self.budget_policy == t.retries.budget && *self.limit.policy() == t.limits {
            return self.clone();
        }
        let fresh = ServiceState::new(service);
        Arc::new(ServiceState {
            budget: if self.budget_policy == t.retries.budget {
                self.budget.clone()
            } else {
                fresh.budget
            },
            budget_policy: t.retries.budget.clone(),
            limit: if *self.limit.policy() == t.limits {
                self.limit.clone()
            } else {
                fresh.limit
            },
            ejections: self.ejections.clone(),
        })
    }
}

/// Every service's lasting state, by `name.namespace`.
#[derive(Default)]
pub struct ServiceStates {
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    version: String,
    states: HashMap<String, Arc<ServiceState>>,
}

impl ServiceStates {
    /// The state of `service` under the snapshot `mesh`.
    pub fn get(&self, mesh: &MeshView, service: &ServiceView) -> Arc<ServiceState> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.version != mesh.version {
            let listed: HashSet<String> =
                mesh.services.iter().map(|s| s.qualified_name()).collect();
            known.states.retain(|name, _| listed.contains(name));
            known.version = mesh.version.clone();
        }
        let name = service.qualified_name();
        let state = match known.states.get(&name) {
            Some(s) => s.updated(service),
            None => Arc::new(ServiceState::new(service)),
        };
        known.states.insert(name, state.clone());
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::endpoint::tests::mesh;

    #[tokio::test(start_paused = true)]
    async fn budgets_and_limits_last_across_snapshots_until_their_policy_changes() {
        let states = ServiceStates::default();
        let v1 = mesh("v1", &["a"]);
        let first = states.get(&v1, &v1.services[0]);
        let v2 = mesh("v2", &["a", "b"]);
        let second = states.get(&v2, &v2.services[0]);
        assert!(Arc::ptr_eq(&first.budget, &second.budget));
        assert!(Arc::ptr_eq(&first.limit, &second.limit));

        let mut changed = v2.services[0].traffic.as_ref().clone();
        changed.limits.max_in_flight = 5;
        let service = ServiceView {
            traffic: Arc::new(changed),
            ..clone_view(&v2.services[0])
        };
        let third = states.get(&v2, &service);
        assert!(
            Arc::ptr_eq(&first.budget, &third.budget),
            "budget unchanged"
        );
        assert!(!Arc::ptr_eq(&first.limit, &third.limit), "new limit");
        assert_eq!(third.limit.policy().max_in_flight, 5);
    }

    fn clone_view(s: &ServiceView) -> ServiceView {
        ServiceView {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            port: s.port,
            protocol: s.protocol,
            hosts: s.hosts.clone(),
            virtual_addresses: s.virtual_addresses.clone(),
            endpoints: s.endpoints.clone(),
            traffic: s.traffic.clone(),
            label: s.label.clone(),
        }
    }
}
