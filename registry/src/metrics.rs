//! The registry's metrics: `registry_tags` (the hot index) and `registry_readers` (the
//! reader directory), read at each scrape from what it holds in memory; and its counters of
//! refusals: `registry_owner_lookups_refused`, `registry_pin_failures` (by action and reason).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use crate::{HotIndex, Readers};

/// Reports the sizes of the hot index and the reader directory when scraped.
#[derive(Debug)]
pub struct RegistryCollector {
    index: Arc<HotIndex>,
    readers: Arc<Readers>,
}

impl Collector for RegistryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            ("registry_tags", "Tags in the hot index", self.index.len()),
            (
                "registry_readers",
                "Readers provisioned",
                self.readers.len(),
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

impl crate::Registry {
    /// Registers the registry's metrics under the service's registry (prefixed `greenplate`).
    pub fn register_metrics(&self, metrics: &mut prometheus_client::registry::Registry) {
        metrics.register_collector(Box::new(RegistryCollector {
            index: self.index.clone(),
            readers: self.readers.clone(),
        }));
        metrics.register(
            "registry_owner_lookups_refused",
            "ListOwnerBikes calls refused: the kiosk was over its rate of owner lookups",
            self.owner_lookups.refused.clone(),
        );
        metrics.register(
            "registry_pin_failures",
            "Owner proofs refused, by action and reason: a wrong PIN, a wrong ID number \
             (SetPin), or refused unchecked while the bike's PIN was locked",
            self.pin_failures.family.clone(),
        );
    }
}
