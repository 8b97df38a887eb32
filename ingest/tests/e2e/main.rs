//! greenplate's end-to-end tests: the real service on ephemeral ports, spoken to through MQTT,
//! gRPC and HTTP. One test binary with a module per area, so the workspace links it once
//! (22 binaries each linking the whole service filled a CI machine's disk).

mod support;

mod alerting_rules;
mod canaries;
mod claims;
mod cli;
mod clone_oracle;
mod cluster;
mod end_to_end;
mod external_broker;
mod formats;
mod forward;
mod fuzz_seeds;
mod history;
mod hostile;
mod json_api;
mod lifecycle;
mod limits;
mod nats;
mod nats_failover;
mod operability;
mod owner_proof;
mod owner_sms;
mod police;
mod readers;
mod registry_api;
mod tls;
mod tokens;
mod web;
mod web_http;
