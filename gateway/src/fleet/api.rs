//! The fleet's admin calls: `GET /fleet` and `PUT /fleet/policy` on any node, answered with
//! a status and a JSON body.

use std::time::Duration;

use serde_json::json;

use super::push::{self, PushError};
use super::Keys;
use crate::reload::PolicyStore;

/// How long `PUT /fleet/policy` waits for the nodes' votes.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects as this node's `[fleet]` says, or says why not.
async fn client(
    store: &PolicyStore,
) -> Result<(etcd_client::Client, meshgate_policy::fleet::FleetSettings), (u16, serde_json::Value)>
{
    let Some(settings) = store.snapshot().policy.fleet.clone() else {
        return Err((
            409,
            json!({ "error": "this gateway is not part of a fleet: its policy has no [fleet]", "errors": [] }),
        ));
    };
    match super::connect(&settings).await {
        Ok(client) => Ok((client, settings)),
        Err(message) => Err((503, json!({ "error": message, "errors": [] }))),
    }
}

/// `GET /fleet`.
pub async fn status(store: &PolicyStore) -> (u16, serde_json::Value) {
    let (mut client, settings) = match client(store).await {
        Ok(connected) => connected,
        Err(answer) => return answer,
    };
    match push::status(&mut client, &Keys::new(&settings.prefix)).await {
        Ok(report) => (200, json!(report)),
        Err(error) => (503, json!({ "error": error.to_string(), "errors": [] })),
    }
}

/// `PUT /fleet/policy`.
pub async fn push(store: &PolicyStore, document: String) -> (u16, serde_json::Value) {
    let (mut client, settings) = match client(store).await {
        Ok(connected) => connected,
        Err(answer) => return answer,
    };
    let keys = Keys::new(&settings.prefix);
    match push::push(
        &mut client,
        &keys,
        &document,
        settings.history,
        PUSH_TIMEOUT,
    )
    .await
    {
        Ok(version) => (200, json!({ "committed": version })),
        Err(PushError::Invalid(errors)) => (
            400,
            json!({ "error": "invalid fleet document", "errors": errors }),
        ),
        Err(PushError::Refused(nodes, not_voted)) => (
            422,
            json!({
                "error": "nodes refused the document; nothing was committed",
                "errors": [],
                "nodes": nodes
                    .into_iter()
                    .map(|(node, errors)| json!({ "node": node, "errors": errors }))
                    .collect::<Vec<_>>(),
                "not_voted": not_voted,
            }),
        ),
        Err(PushError::NoAnswer(nodes)) => (
            504,
            json!({ "error": "nodes did not answer in time; nothing was committed", "nodes": nodes, "errors": [] }),
        ),
        Err(PushError::Conflict) => (
            409,
            json!({ "error": "another push committed first; nothing was committed", "errors": [] }),
        ),
        Err(PushError::Etcd(message)) => (503, json!({ "error": message, "errors": [] })),
    }
}
