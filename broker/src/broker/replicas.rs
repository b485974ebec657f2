//! What this node does for the cluster: claiming client ids, letting
//! them go, and the wills of another node's clients.

use std::sync::Arc;
use std::time::Duration;

use crate::client::Control;
use crate::codec::Will;
use crate::message::Message;

use super::{Broker, TAKEOVER_TIMEOUT};

impl Broker {
    /// Tells the cluster that this node holds `client_id` now, with its
    /// will; another node that held it connected closes that connection
    /// first (within a second). Nothing to do without a cluster.
    pub async fn claim_in_cluster(&self, client_id: &str, will: Option<&Will>, expiry: u32) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let will = will.map(|w| crate::cluster::clients::StoredWill {
            message: Message::from_will(w.clone()).to_stored(),
            delay_secs: w.delay_interval.unwrap_or(0).min(expiry),
        });
        cluster.claim(client_id, will).await;
    }

    /// Another node accepted a CONNECT for `client_id`: the connection
    /// here closes (5.0: DISCONNECT 0x8E), and the session here ends; it
    /// lives on the other node now.
    pub async fn taken_over_elsewhere(self: &Arc<Self>, client_id: &str) {
        let Some(session) = self.session(client_id) else {
            return;
        };
        let attached = session.state.lock().attachment.clone();
        if let Some(old) = attached {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if old.client.mailbox.send(Control::TakenOver(tx)) {
                let _ = tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await;
            }
        }
        self.logger.info(&format!(
            "Client {client_id} connected to another node; its session here ends."
        ));
        let mut records = Vec::new();
        self.remove_session(&session, &mut records);
        self.persist_nowait(records);
    }

    /// A node died with `client_id` connected: its will is published here,
    /// after its delay.
    pub fn publish_will_of_lost_client(
        self: &Arc<Self>,
        client_id: &str,
        msg: Message,
        delay: Duration,
    ) {
        let broker = self.clone();
        let client_id = client_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = broker.publish(Arc::new(msg), None).await {
                broker.logger.error(&format!(
                    "Error publishing the will of client {client_id} of a lost node: {e}."
                ));
            }
        });
    }
}
