//! What a reader may do on the embedded broker (issue #15, point 2).
//!
//! rumqttd 0.20 has no topic ACLs (bytebeamio/rumqtt#495, #1005): any client that logs in
//! may publish anywhere, subscribe to anything (`#` included) and store retained messages
//! without limit, since its router keeps a retained publish before it looks for a filter
//! and gives every new SUBSCRIBE filter a log of its own. Its listener decodes every packet
//! through a [`Protocol`] that it clones per connection, though, and a decode error closes
//! the connection before the packet reaches the router. [`ReaderAcl`] wraps rumqttd's
//! MQTT 3.1.1 codec and holds each connection to the contract:
//!
//! - it publishes only on its own two topics (`greenplate/readers/{id}/sightings` and
//!   `.../status`, `{id}` being the client id its login was checked against);
//! - never with the retain flag; the one retained message a reader may leave is its last
//!   will, on its own status topic (one per reader, overwritten, so the broker's retained
//!   store is bounded by the number of readers);
//! - it subscribes (and unsubscribes) to nothing: the contract names no topic for readers.
//!
//! Anything else closes the connection (MQTT 3.1.1 lets a server that does not authorise a
//! PUBLISH close the connection, 3.3.5), is counted by reason in
//! `greenplate_mqtt_refused_total{reason}` and logged at most once a minute per reason.
//! The in-process ingest link does not go through a listener, so it is not held to this.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use greenplate_proto::topics;
use rumqttd::protocol::{self, Packet, Protocol};

use crate::RateLimitedLog;
use crate::metrics::{
    Metrics, REFUSED_RECONNECT, REFUSED_RETAIN, REFUSED_SUBSCRIBE, REFUSED_TOPIC, REFUSED_WILL,
};

/// rumqttd's codec, holding one connection to what a reader may do (see the module docs).
/// rumqttd clones the value it was given for each connection, so the client id learned
/// from that connection's CONNECT stays with it.
#[derive(Clone)]
pub struct ReaderAcl<P> {
    inner: P,
    /// This connection's own two topics, once its CONNECT was decoded.
    client: Option<Own>,
    metrics: Arc<Metrics>,
    log: Arc<Mutex<RateLimitedLog>>,
}

impl<P> ReaderAcl<P> {
    pub fn new(inner: P, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            client: None,
            metrics,
            log: Arc::new(Mutex::new(RateLimitedLog::new(Duration::from_secs(60)))),
        }
    }
}

impl<P: Protocol> Protocol for ReaderAcl<P> {
    fn read_mut(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, protocol::Error> {
        let packet = self.inner.read_mut(stream, max_size)?;
        match check(&mut self.client, &packet) {
            Ok(()) => Ok(packet),
            Err(reason) => {
                self.metrics.refused(reason);
                let first = self.log.lock().map(|mut l| l.allow(reason)).unwrap_or(true);
                if first {
                    tracing::warn!(
                        client_id = self.client.as_ref().map_or("", |c| c.id.as_str()),
                        reason,
                        "Closed an MQTT connection that did what a reader may not (counted in greenplate_mqtt_refused_total, logged once a minute per reason)."
                    );
                }
                // rumqttd's error enum has no "not authorised"; this one closes the
                // connection like any undecodable packet.
                Err(protocol::Error::IncorrectPacketFormat)
            }
        }
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, protocol::Error> {
        self.inner.write(packet, write)
    }
}

/// A connection's client id and the two topics it may publish on (built once, at its
/// CONNECT, not per publish).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Own {
    id: String,
    sightings: String,
    status: String,
}

impl Own {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            sightings: topics::sightings(id),
            status: topics::status(id),
        }
    }
}

/// Whether one decoded packet is allowed on a connection whose CONNECT named `client`
/// (recorded here when the CONNECT passes), or the reason it is not.
fn check(client: &mut Option<Own>, packet: &Packet) -> Result<(), &'static str> {
    match packet {
        Packet::Connect(connect, _, will, _, _) => {
            if client.is_some() {
                return Err(REFUSED_RECONNECT);
            }
            let own = Own::new(&connect.client_id);
            if let Some(will) = will
                && will.topic != own.status.as_bytes()
            {
                return Err(REFUSED_WILL);
            }
            *client = Some(own);
            Ok(())
        }
        Packet::Publish(publish, _) => {
            // rumqttd refuses any packet before a CONNECT; an empty id owns no topic.
            let topic = publish.topic.as_ref();
            let own = client.as_ref().is_some_and(|c| {
                !c.id.is_empty()
                    && (topic == c.sightings.as_bytes() || topic == c.status.as_bytes())
            });
            if !own {
                Err(REFUSED_TOPIC)
            } else if publish.retain {
                Err(REFUSED_RETAIN)
            } else {
                Ok(())
            }
        }
        Packet::Subscribe(..) | Packet::Unsubscribe(..) => Err(REFUSED_SUBSCRIBE),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttd::protocol::{
        Connect, Filter, LastWill, Publish, QoS, RetainForwardRule, Subscribe,
    };

    fn connect(id: &str, will: Option<(&str, bool)>) -> Packet {
        Packet::Connect(
            Connect {
                keep_alive: 30,
                client_id: id.into(),
                clean_session: true,
            },
            None,
            will.map(|(topic, retain)| LastWill {
                topic: Bytes::from(topic.to_owned()),
                message: Bytes::from_static(b"sealed"),
                qos: QoS::AtLeastOnce,
                retain,
            }),
            None,
            None,
        )
    }

    fn publish(topic: &str, retain: bool) -> Packet {
        let topic = Bytes::from(topic.to_owned());
        Packet::Publish(Publish::new(topic, Bytes::from_static(b"x"), retain), None)
    }

    fn connected(id: &str) -> Option<Own> {
        let mut client = None;
        check(&mut client, &connect(id, None)).unwrap();
        client
    }

    #[test]
    fn a_reader_publishes_on_its_own_two_topics_only() {
        let mut c = connected("rd-1");
        assert_eq!(
            check(&mut c, &publish("greenplate/readers/rd-1/sightings", false)),
            Ok(())
        );
        assert_eq!(
            check(&mut c, &publish("greenplate/readers/rd-1/status", false)),
            Ok(())
        );
        for topic in [
            "greenplate/readers/rd-2/sightings",
            "greenplate/readers/rd-1/other",
            "greenplate/readers/rd-1/sightings/x",
            "greenplate/readers/rd-10/sightings",
            "greenplate/nodes/n1/state",
            "anything",
            "",
        ] {
            assert_eq!(
                check(&mut c, &publish(topic, false)),
                Err(REFUSED_TOPIC),
                "{topic}"
            );
        }
    }

    #[test]
    fn retained_publishes_are_refused_even_on_its_own_topics() {
        let mut c = connected("rd-1");
        assert_eq!(
            check(&mut c, &publish("greenplate/readers/rd-1/status", true)),
            Err(REFUSED_RETAIN)
        );
        assert_eq!(
            check(
                &mut c,
                &publish("greenplate/readers/nobody/sightings", true)
            ),
            Err(REFUSED_TOPIC)
        );
    }

    #[test]
    fn subscribing_to_anything_is_refused() {
        let mut c = connected("rd-1");
        let sub = Packet::Subscribe(
            Subscribe {
                pkid: 1,
                filters: vec![Filter {
                    path: "#".into(),
                    qos: QoS::AtMostOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                }],
            },
            None,
        );
        assert_eq!(check(&mut c, &sub), Err(REFUSED_SUBSCRIBE));
    }

    #[test]
    fn a_will_goes_on_its_own_status_topic_only() {
        let mut c = None;
        let ok = connect("rd-1", Some(("greenplate/readers/rd-1/status", true)));
        assert_eq!(check(&mut c, &ok), Ok(()));
        let mut c = None;
        let bad = connect("rd-1", Some(("greenplate/readers/rd-2/status", true)));
        assert_eq!(check(&mut c, &bad), Err(REFUSED_WILL));
        assert_eq!(c, None);
        // ...and one connection connects once.
        let mut c = connected("rd-1");
        assert_eq!(
            check(&mut c, &connect("rd-2", None)),
            Err(REFUSED_RECONNECT)
        );
    }

    #[test]
    fn nothing_is_published_before_a_connect() {
        let mut c = None;
        assert_eq!(
            check(&mut c, &publish("greenplate/readers//sightings", false)),
            Err(REFUSED_TOPIC)
        );
    }
}
