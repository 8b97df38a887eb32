//! Taking over a dead node's session on an external broker.
//!
//! With persistent sessions, Mosquitto keeps a member of a shared subscription in the
//! group after its connection dies: the messages it had in flight, and its share of new
//! ones, wait in its session for the same client id to come back. Nothing is lost, but a
//! node that never comes back (scaled down, or its pod renamed) strands its share, and one
//! that is slow to come back delays it.
//!
//! So the nodes watch each other. Each announces itself, retained, on
//! `greenplate/nodes/{client_id}/state`: `online` when it connects, its last will `offline`
//! when the broker loses it, and an empty message when it leaves cleanly. When a node is
//! `offline`, exactly one live node (the highest rendezvous hash of the dead id and the
//! live ids, so every node picks the same one without talking) connects with the dead
//! node's client id, resuming its session: the broker delivers what was in flight and
//! queued there. The taker unsubscribes the session from the shares at once (so the live
//! members get all new messages), runs what arrives through its own pipeline with the same
//! manual acknowledgements, and once the session is quiet and every message acknowledged,
//! clears the dead node's presence and disconnects. If the dead node comes back in the
//! middle, its connection takes the session back (the broker closes the taker's) and it
//! subscribes again; the taker stops.
//!
//! A message the dead node had processed but not acknowledged is processed again by the
//! taker: delivery is at least once, and the alert log keeps one incident per bike.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use greenplate_proto::topics;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Inbound;
use super::client::{AckQueue, BrokerUrl, CONNECT_TIMEOUT, connection, options, wait_connack};
use crate::config::MqttConfig;
use crate::metrics::Metrics;

/// The presence payload of a connected node.
pub const ONLINE: &[u8] = b"online";
/// The presence payload of a node the broker lost (its last will).
pub const OFFLINE: &[u8] = b"offline";

/// How long a taken-over session must stay quiet, every message acknowledged, before the
/// taker lets it go.
const QUIET: Duration = Duration::from_secs(1);

/// How long a taker waits before trying again after its connection failed.
const RETRY: Duration = Duration::from_secs(2);

/// What a node knows of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Online,
    Offline,
}

/// The membership table: who is online, who died, which dead sessions this node drains.
#[derive(Debug)]
struct Table {
    me: String,
    states: HashMap<String, State>,
    taking: HashSet<String>,
}

impl Table {
    fn new(me: String) -> Self {
        Self {
            me,
            states: HashMap::new(),
            taking: HashSet::new(),
        }
    }

    /// Takes a presence message; returns the dead sessions this node should now take over.
    fn observe(&mut self, node: &str, payload: &[u8]) -> Vec<String> {
        if node == self.me {
            return Vec::new();
        }
        match payload {
            ONLINE => {
                self.states.insert(node.to_owned(), State::Online);
            }
            OFFLINE => {
                self.states.insert(node.to_owned(), State::Offline);
            }
            _ => {
                // Empty (left cleanly, or drained) or unknown: not a member.
                self.states.remove(node);
            }
        }
        self.claim_dead()
    }

    /// Every dead node whose owner is this node and that no task here drains yet.
    fn claim_dead(&mut self) -> Vec<String> {
        let dead: Vec<String> = self
            .states
            .iter()
            .filter(|(id, s)| **s == State::Offline && !self.taking.contains(*id))
            .map(|(id, _)| id.clone())
            .filter(|id| self.owner_of(id) == self.me)
            .collect();
        self.taking.extend(dead.iter().cloned());
        dead
    }

    /// The live node that drains `dead`: the highest rendezvous hash among this node and
    /// the nodes known online. Every node with the same view picks the same one.
    fn owner_of(&self, dead: &str) -> &str {
        self.states
            .iter()
            .filter(|(_, s)| **s == State::Online)
            .map(|(id, _)| id.as_str())
            .chain(std::iter::once(self.me.as_str()))
            .max_by_key(|live| (rendezvous(dead, live), *live))
            .unwrap_or(self.me.as_str())
    }

    /// Should this node still drain `dead` (it is still dead and still ours)?
    fn still_ours(&self, dead: &str) -> bool {
        self.states.get(dead) == Some(&State::Offline) && self.owner_of(dead) == self.me
    }
}

fn rendezvous(dead: &str, live: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(dead.as_bytes())
        .chain_update([0])
        .chain_update(live.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// What a takeover needs: where the broker is, how to log in, where messages go.
pub struct Context {
    pub config: MqttConfig,
    pub broker: BrokerUrl,
    pub filters: [String; 2],
    pub out: crate::Input,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// This node's view of its peers, fed by the presence messages its main connection gets.
pub struct Peers {
    table: Mutex<Table>,
    cx: Context,
}

impl Peers {
    pub fn new(me: String, cx: Context) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table::new(me)),
            cx,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A presence message arrived on `topic`; starts the takeovers it calls for.
    pub fn observe(self: &Arc<Self>, topic: &str, payload: &[u8]) {
        let Some(node) = topics::node_of_state_topic(topic) else {
            return;
        };
        let take = self.table().observe(node, payload);
        for dead in take {
            let peers = self.clone();
            self.cx
                .tracker
                .spawn(async move { peers.take_over(dead).await });
        }
    }

    /// Drains `dead`'s session, again after a failure while it is still dead and ours.
    async fn take_over(self: Arc<Self>, dead: String) {
        tracing::warn!(node = %dead, "A peer node died; taking over its broker session.");
        loop {
            match drain(&self.cx, &dead).await {
                Ok(Drained::Done(n)) => {
                    self.cx.metrics.mqtt_takeovers.inc();
                    tracing::warn!(node = %dead, messages = n, "Drained the dead node's session; its share now goes to the live nodes.");
                    // The cleared presence comes back as an empty message and removes it.
                    break;
                }
                Ok(Drained::Stopped) => break,
                Ok(Drained::Lost(n)) => {
                    tracing::info!(node = %dead, messages = n, "Lost the taken-over session (the node came back, or the broker went away).");
                }
                Err(e) => {
                    tracing::error!(node = %dead, error = %e, "Could not take over the dead node's session.");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = self.cx.shutdown.cancelled() => break,
            }
            if !self.table().still_ours(&dead) {
                break;
            }
        }
        self.table().taking.remove(&dead);
    }
}

/// How a takeover ended.
#[derive(Debug)]
enum Drained {
    /// The session was emptied and let go; this many messages came out of it.
    Done(u64),
    /// The connection closed under it (the dead node came back and took its session).
    Lost(u64),
    /// This node is shutting down.
    Stopped,
}

/// Resumes `dead`'s session, unsubscribes it from the shares, forwards what the broker
/// delivers, and lets it go once it is quiet and all of it acknowledged.
async fn drain(cx: &Context, dead: &str) -> Result<Drained, String> {
    let mut opts = options(&cx.config, &cx.broker, dead)?;
    opts.set_clean_session(false);
    let (client, mut events) = connection(opts);
    let present = tokio::time::timeout(CONNECT_TIMEOUT, wait_connack(&mut events))
        .await
        .map_err(|_| "no CONNACK in time".to_owned())??;
    // The event loop runs in its own task (its poll is not safe to cancel), handing events
    // over until the connection fails; this task waits on them with a clock beside.
    let (tx, mut rx) = mpsc::channel(64);
    let poller = tokio::spawn(async move {
        loop {
            let event = events.poll().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() || failed {
                break;
            }
        }
    });
    let result = drain_session(cx, dead, &client, &mut rx, present).await;
    poller.abort();
    result
}

async fn drain_session(
    cx: &Context,
    dead: &str,
    client: &AsyncClient,
    events: &mut mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    present: bool,
) -> Result<Drained, String> {
    let mut unsubscribing = 0;
    if present {
        // The shares, and the dead node's watch on the others' presence.
        for f in cx
            .filters
            .iter()
            .map(String::as_str)
            .chain([topics::NODE_STATE_FILTER])
        {
            client
                .unsubscribe(f)
                .await
                .map_err(|e| format!("cannot unsubscribe {f}: {e}"))?;
            unsubscribing += 1;
        }
    }
    let acks = AckQueue::start(client.clone(), cx.metrics.clone(), &cx.tracker);
    let mut messages = 0u64;
    let mut last = Instant::now();
    loop {
        if unsubscribing == 0 && acks.pending() == 0 && last.elapsed() >= QUIET {
            break;
        }
        let event = tokio::select! {
            e = events.recv() => e,
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            _ = cx.shutdown.cancelled() => return Ok(Drained::Stopped),
        };
        match event {
            Some(Ok(Event::Incoming(Packet::Publish(publish))))
                if topics::node_of_state_topic(&publish.topic).is_some() =>
            {
                // The dead node's copy of a presence message: this node has its own.
                drop(acks.track(publish));
            }
            Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                messages += 1;
                last = Instant::now();
                cx.metrics.mqtt_takeover_messages.inc();
                let msg = Inbound {
                    topic: publish.topic.clone().into(),
                    payload: publish.payload.clone(),
                    received_at: Instant::now(),
                    ack: Some(acks.track(publish) as super::Hold),
                    delivery: None,
                };
                if cx.out.send(msg).await.is_err() {
                    return Ok(Drained::Stopped);
                }
            }
            Some(Ok(Event::Incoming(Packet::UnsubAck(_)))) => {
                unsubscribing -= 1;
                last = Instant::now();
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Ok(Drained::Lost(messages)),
        }
    }
    // Quiet and acknowledged: clear the dead node's presence (so no node takes it again)
    // and leave. The acknowledgements went out before these, in order.
    client
        .publish(
            topics::node_state(dead),
            QoS::AtLeastOnce,
            true,
            Bytes::new(),
        )
        .await
        .map_err(|e| format!("cannot clear the presence: {e}"))?;
    let cleared = async {
        loop {
            match events.recv().await {
                Some(Ok(Event::Incoming(Packet::PubAck(_)))) => return true,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return false,
            }
        }
    };
    if !matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, cleared).await,
        Ok(true)
    ) {
        return Ok(Drained::Lost(messages));
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(e)) = events.recv().await {
            if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(Drained::Done(messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(me: &str, online: &[&str]) -> Table {
        let mut t = Table::new(me.into());
        for n in online {
            assert!(t.observe(n, ONLINE).is_empty());
        }
        t
    }

    #[test]
    fn exactly_one_live_node_takes_a_dead_one() {
        let nodes = ["node-1", "node-2", "node-3", "node-4"];
        for dead in ["node-1", "gone-7", "pod-abc"] {
            let takers: Vec<&str> = nodes
                .iter()
                .filter(|me| **me != dead)
                .filter(|me| {
                    let others: Vec<&str> = nodes
                        .iter()
                        .copied()
                        .filter(|n| n != *me && *n != dead)
                        .collect();
                    let mut t = table(me, &others);
                    t.observe(dead, ONLINE);
                    t.observe(dead, OFFLINE) == vec![dead.to_owned()]
                })
                .copied()
                .collect();
            assert_eq!(takers.len(), 1, "{dead}: {takers:?}");
        }
    }

    #[test]
    fn a_dead_owner_passes_the_session_on() {
        // Whoever owns the dead node, when that owner dies too, the dead node is taken by
        // one of the rest; nobody takes itself, and a node taken once is not taken twice.
        let mut t = table("a", &["b", "c"]);
        let first = t.observe("x", OFFLINE);
        let owner = t.owner_of("x").to_owned();
        assert_eq!(first.is_empty(), owner != "a");
        assert!(
            t.observe("x", OFFLINE).is_empty(),
            "already taking or not ours"
        );
        if owner != "a" {
            let next = t.observe(&owner, OFFLINE);
            assert_ne!(t.owner_of("x"), owner);
            let ours: Vec<&String> = next.iter().filter(|d| d.as_str() == "x").collect();
            assert_eq!(ours.is_empty(), t.owner_of("x") != "a");
        }
        assert!(
            t.observe("a", OFFLINE).is_empty(),
            "a node never takes itself"
        );
    }

    #[test]
    fn back_online_or_cleared_is_not_taken() {
        let mut t = table("a", &[]);
        assert_eq!(t.observe("b", OFFLINE), vec!["b".to_owned()]);
        assert!(t.still_ours("b"));
        t.observe("b", ONLINE);
        assert!(!t.still_ours("b"));
        t.observe("b", b"");
        assert!(!t.still_ours("b"));
        t.taking.clear();
        assert!(t.observe("c", b"garbage").is_empty());
    }
}
