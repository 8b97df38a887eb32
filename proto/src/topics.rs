//! MQTT topic names of the contract.

/// Prefix of every reader topic.
pub const READERS_PREFIX: &str = "greenplate/readers/";

/// The filter that matches every reader's sightings topic.
pub const SIGHTINGS_FILTER: &str = "greenplate/readers/+/sightings";

/// The filter that matches every reader's status topic.
pub const STATUS_FILTER: &str = "greenplate/readers/+/status";

/// The topic a reader publishes its sealed status (and last will) to.
pub fn status(reader_id: &str) -> String {
    format!("{READERS_PREFIX}{reader_id}/status")
}

/// Which reader a status topic belongs to, or `None` if the topic is not one.
pub fn reader_of_status_topic(topic: &str) -> Option<&str> {
    let id = topic
        .strip_prefix(READERS_PREFIX)?
        .strip_suffix("/status")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The topic a reader publishes its sealed sighting batches to.
pub fn sightings(reader_id: &str) -> String {
    format!("{READERS_PREFIX}{reader_id}/sightings")
}

/// Which reader a sightings topic belongs to, or `None` if the topic is not one.
pub fn reader_of_sightings_topic(topic: &str) -> Option<&str> {
    let id = topic
        .strip_prefix(READERS_PREFIX)?
        .strip_suffix("/sightings")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_round_trip() {
        assert_eq!(reader_of_sightings_topic(&sightings("r-17")), Some("r-17"));
        assert_eq!(
            reader_of_sightings_topic("greenplate/readers//sightings"),
            None
        );
        assert_eq!(
            reader_of_sightings_topic("greenplate/readers/a/b/sightings"),
            None
        );
        assert_eq!(
            reader_of_sightings_topic("greenplate/readers/a/status"),
            None
        );
        assert_eq!(reader_of_status_topic(&status("r-17")), Some("r-17"));
        assert_eq!(reader_of_status_topic(&sightings("r-17")), None);
        assert_eq!(
            reader_of_status_topic("greenplate/readers/a/b/status"),
            None
        );
    }
}
