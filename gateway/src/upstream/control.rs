//! What operators set on endpoints through the admin API (drain, disable, a weight
//! override): runtime state, never written to the policy, applied again to every snapshot
//! built so that it survives reloads while the endpoint exists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{EndpointState, UpstreamState, ADMIN_ENABLED};

/// What an operator set on one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    /// `ADMIN_*`.
    state: u8,
    /// The weight taking the place of the source's.
    weight: Option<u32>,
}

impl Control {
    const NONE: Control = Control {
        state: ADMIN_ENABLED,
        weight: None,
    };
}

/// The operator's settings, by upstream name and endpoint address.
#[derive(Debug, Default)]
pub struct EndpointControls {
    controls: Mutex<HashMap<(String, SocketAddr), Control>>,
}

impl EndpointControls {
    /// Sets the admin state (`ADMIN_*`) of `upstream`'s endpoint at `address` in `pools`
    /// (the running snapshot's). An error names what was not found.
    pub fn set_state(
        &self,
        pools: &[Arc<UpstreamState>],
        upstream: &str,
        address: SocketAddr,
        state: u8,
    ) -> Result<(), String> {
        let (_, endpoint) = find(pools, upstream, address)?;
        self.update(upstream, address, |control| control.state = state);
        endpoint.admin_state.store(state, Ordering::Relaxed);
        Ok(())
    }

    /// Sets (or with `None` clears) the weight override of `upstream`'s endpoint at
    /// `address`, and rebuilds the pool's schedules with it.
    pub fn set_weight(
        &self,
        pools: &[Arc<UpstreamState>],
        upstream: &str,
        address: SocketAddr,
        weight: Option<u32>,
    ) -> Result<(), String> {
        let (pool, _) = find(pools, upstream, address)?;
        self.update(upstream, address, |control| control.weight = weight);
        pool.set_weight_override(address, weight);
        Ok(())
    }

    /// Applies every setting to `pools` (a snapshot about to serve), and forgets those of
    /// endpoints that no longer exist.
    pub fn apply(&self, pools: &[Arc<UpstreamState>]) {
        let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        controls.retain(|(upstream, address), control| {
            let Ok((pool, endpoint)) = find(pools, upstream, *address) else {
                return false;
            };
            endpoint.admin_state.store(control.state, Ordering::Relaxed);
            // A pool kept from the previous snapshot has it already; a fresh one is rebuilt.
            pool.set_weight_override(*address, control.weight);
            true
        });
    }

    fn update(&self, upstream: &str, address: SocketAddr, change: impl FnOnce(&mut Control)) {
        let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        let key = (upstream.to_owned(), address);
        let mut control = controls.get(&key).copied().unwrap_or(Control::NONE);
        change(&mut control);
        if control == Control::NONE {
            controls.remove(&key);
        } else {
            controls.insert(key, control);
        }
    }
}

/// The pool named `upstream` and its endpoint at `address`, or what was not found.
fn find<'a>(
    pools: &'a [Arc<UpstreamState>],
    upstream: &str,
    address: SocketAddr,
) -> Result<(&'a Arc<UpstreamState>, Arc<EndpointState>), String> {
    let pool = pools
        .iter()
        .find(|u| u.spec.name == upstream)
        .ok_or_else(|| format!("no upstream named {upstream:?}"))?;
    let endpoint = pool
        .endpoints()
        .endpoints
        .iter()
        .find(|e| e.addr == address)
        .cloned()
        .ok_or_else(|| format!("upstream {upstream:?} has no endpoint {address}"))?;
    Ok((pool, endpoint))
}
