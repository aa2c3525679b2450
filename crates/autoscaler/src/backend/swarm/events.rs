//! Wakes the reconciler when one of our task containers exits, so that a finished runner is
//! removed (and its slot reused) at once instead of at the next poll.
//!
//! The manager's event stream only reports containers of its own node; tasks on other nodes
//! are seen by the next poll, as before. The stream is filtered by our owner label, which the
//! task containers carry. Any end of the stream (manager restarted, connection lost) is followed
//! by a reconnection after a pause; the watcher ends with the autoscaler's runtime.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::{labels, manager::Manager};

const RECONNECT_AFTER: Duration = Duration::from_secs(5);

/// Starts watching `manager` for exits of containers labelled with `owner_id`.
pub fn watch(manager: Arc<Manager>, owner_id: String, wake: Weak<Notify>) {
    tokio::spawn(async move {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["die".to_string()]),
            (
                "label".to_string(),
                vec![format!("{}={owner_id}", labels::OWNER)],
            ),
        ]);
        loop {
            if wake.strong_count() == 0 {
                return;
            }
            if let Ok(client) = manager.client().await {
                let options = EventsOptions {
                    filters: Some(filters.clone()),
                    ..Default::default()
                };
                let mut events = client.events(Some(options));
                while let Some(Ok(_)) = events.next().await {
                    match wake.upgrade() {
                        Some(wake) => wake.notify_one(),
                        None => return,
                    }
                }
            }
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    });
}
