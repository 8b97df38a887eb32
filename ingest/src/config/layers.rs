//! Where a [`Config`] comes from, in order, each layer over the one before (figment):
//! the defaults, the config file, the environment, the command-line flags.
//!
//! Every key can be set from the environment: `GREENPLATE_` + the key in capitals, `__`
//! between a section and its key (`GREENPLATE_DATA_DIR`, `GREENPLATE_MQTT__LISTEN`,
//! `GREENPLATE_INGEST__PASS_GAP_MS`), as EMQX does. Values are taken as text and converted to
//! the field's type, so `GREENPLATE_MQTT__PASSWORD=0123` stays `"0123"` and
//! `GREENPLATE_INGEST__PASS_GAP_MS=500` is a number. Only the top-level keys and sectioned
//! (`__`) names are read: the other `GREENPLATE_*` variables belong to flags (their own
//! `env`), which apply after this layer.
//!
//! A file that does not parse, or a key that does not exist in any layer, is one error line
//! naming it (`ConfigError`), never a panic.

use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};

use super::{Config, ConfigError};

/// The environment variables' prefix.
pub const ENV_PREFIX: &str = "GREENPLATE_";

/// The top-level keys that are not sections (the only unsectioned names the environment
/// layer reads).
const TOP_LEVEL: [&str; 4] = ["data_dir", "database_url", "admin_token", "secret_key"];

/// One override from a flag: a dotted key (`mqtt.listen`) and its value as text.
pub type Override = (&'static str, String);

impl Config {
    /// Defaults <- `file` (if given) <- environment <- `overrides` (flags).
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Self, ConfigError> {
        Self::load_with_env(file, overrides, std::env::vars())
    }

    /// [`Config::load`] with the environment given (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: &[Override],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let origin = file.map(Path::to_owned);
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            // Parsed once here for a precise one-line syntax error; figment layers it below.
            if let Err(e) = toml::from_str::<toml::Table>(&text) {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.message().to_owned()
                        + &e.span()
                            .map(|s| format!(" (at byte {})", s.start))
                            .unwrap_or_default(),
                });
            }
            figment = figment.merge(Toml::string(&text));
        }
        figment = figment.merge(EnvStrings::from_vars(env));
        for (key, value) in overrides {
            figment = figment.merge(Serialized::default(key, value));
        }
        // Lossy: text from the environment and flags becomes the field's number or bool.
        figment.extract_lossy::<Config>().map_err(|e| {
            let message = describe(&e);
            match origin {
                Some(path) => ConfigError::Parse { path, message },
                None => ConfigError::Invalid(message),
            }
        })
    }
}

/// One line: what is wrong, at which key, from which layer.
fn describe(e: &figment::Error) -> String {
    let mut out = e.kind.to_string();
    if !e.path.is_empty() {
        out += &format!(" for key `{}`", e.path.join("."));
    }
    if let Some(md) = &e.metadata {
        out += &format!(" in {}", md.name);
    }
    out.replace('\n', " ")
}

/// The `GREENPLATE_*` variables that name config keys, as text (figment's own `Env`
/// provider would turn `0123` into the number 123).
struct EnvStrings {
    vars: Vec<(String, String)>,
}

impl EnvStrings {
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = vars
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
                let key = name.replace("__", ".");
                (key.contains('.') || TOP_LEVEL.contains(&key.as_str())).then_some((key, v))
            })
            .collect();
        Self { vars }
    }
}

impl Provider for EnvStrings {
    fn metadata(&self) -> Metadata {
        Metadata::named("`GREENPLATE_` environment variable(s)").interpolater(|_, keys| {
            format!(
                "{ENV_PREFIX}{}",
                keys.iter()
                    .map(|k| k.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join("__")
            )
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut figment = Figment::new();
        for (key, value) in &self.vars {
            figment = figment.merge(Serialized::default(key, value));
        }
        figment.data()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_key_from_the_environment_as_text_converted_to_its_type() {
        let c = Config::load_with_env(
            None,
            &[],
            env(&[
                ("GREENPLATE_DATA_DIR", "/var/lib/gp"),
                ("GREENPLATE_MQTT__LISTEN", "127.0.0.1:18830"),
                ("GREENPLATE_MQTT__PASSWORD", "0123"),
                ("GREENPLATE_MQTT__SHARE_GROUP", "district"),
                ("GREENPLATE_INGEST__PASS_GAP_MS", "500"),
                ("GREENPLATE_ALERTING__NEAREST_RADIUS_KM", "2.5"),
                ("GREENPLATE_LOG__FORMAT", "json"),
                // Flags' own variables and others: not this layer's.
                ("GREENPLATE_MQTT_URL", "mqtt://elsewhere:1883"),
                ("GREENPLATE_TEST_PG", "postgres://x"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, Path::new("/var/lib/gp"));
        assert_eq!(
            c.mqtt.listen,
            "127.0.0.1:18830".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.mqtt.password.as_deref(), Some("0123"));
        assert_eq!(c.mqtt.share_group, "district");
        assert_eq!(c.mqtt.url, None);
        assert_eq!(c.ingest.pass_gap_ms, 500);
        assert_eq!(c.alerting.nearest_radius_km, 2.5);
        assert_eq!(c.log.format, crate::logging::LogFormat::Json);
        // Untouched keys keep their defaults.
        assert_eq!(c.http, Config::default().http);
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gp.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\n[mqtt]\nlisten = \"127.0.0.1:1\"\nmax_connections = 7\n\
             [ingest]\npass_gap_ms = 100\n",
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&path),
            &[("mqtt.listen", "127.0.0.1:3".into())],
            env(&[
                ("GREENPLATE_MQTT__LISTEN", "127.0.0.1:2"),
                ("GREENPLATE_INGEST__PASS_GAP_MS", "200"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, Path::new("/from/file"));
        assert_eq!(c.mqtt.max_connections, 7);
        assert_eq!(c.ingest.pass_gap_ms, 200, "the environment beats the file");
        assert_eq!(
            c.mqtt.listen,
            "127.0.0.1:3".parse::<SocketAddr>().unwrap(),
            "a flag beats both"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[mqtt]\nlisen = \"0.0.0.0:1883\"\n").unwrap();
        let e = Config::load_with_env(Some(&path), &[], []).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("lisen") && !text.contains('\n'), "{text}");

        std::fs::write(&path, "[mqtt\n").unwrap();
        let text = Config::load_with_env(Some(&path), &[], [])
            .unwrap_err()
            .to_string();
        assert!(text.contains("bad.toml") && !text.contains('\n'), "{text}");

        let text = Config::load_with_env(None, &[], env(&[("GREENPLATE_MQTT__LISEN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(text.contains("lisen") && !text.contains('\n'), "{text}");
        let text = Config::load_with_env(
            None,
            &[],
            env(&[("GREENPLATE_INGEST__PASS_GAP_MS", "soon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            text.contains("pass_gap_ms") || text.contains("PASS_GAP_MS"),
            "{text}"
        );

        let missing = dir.path().join("none.toml");
        assert!(matches!(
            Config::load_with_env(Some(&missing), &[], []),
            Err(ConfigError::Read { .. })
        ));
    }

    /// The node configs of deploy/ load as compose and Kubernetes give them (file, flags,
    /// environment) and say what deploy/README.md says they do.
    #[test]
    fn deploy_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let dir = tempfile::tempdir().unwrap();
        let configmap = std::fs::read_to_string(root.join("k8s/configmap.yaml")).unwrap();
        let (_, toml) = configmap.split_once("greenplate.toml: |\n").unwrap();
        let toml: String = toml
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let nats_conf = std::fs::read_to_string(root.join("nats/nats-server.conf")).unwrap();
        let mut files = vec![("k8s", toml)];
        for n in 1..=3 {
            let text = std::fs::read_to_string(root.join(format!("compose/node-{n}.toml")));
            files.push(("compose", text.unwrap()));
        }
        for (i, (kind, text)) in files.into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.toml"));
            std::fs::write(&path, text).unwrap();
            let flags: Vec<Override> = if kind == "compose" {
                vec![("nats.url", "nats://nats-1:4222,nats://nats-2:4222".into())]
            } else {
                Vec::new()
            };
            let c = Config::load_with_env(
                Some(&path),
                &flags,
                env(&[("GREENPLATE_NATS__PASSWORD", "secret")]),
            )
            .unwrap_or_else(|e| panic!("{kind} file {i}: {e}"));
            c.validate().unwrap();
            assert!(c.nats.url.is_some(), "{kind} file {i}");
            assert_eq!(c.nats.username.as_deref(), Some("greenplate"));
            assert_eq!(c.nats.password.as_deref(), Some("secret"));
            assert_eq!((c.nats.replicas, c.nats.partitions), (3, 8));
            let mapping = format!("{{{{partition({},1)}}}}", c.nats.partitions);
            assert!(
                nats_conf.contains(&mapping),
                "nats-server.conf maps {mapping}"
            );
            assert_eq!(c.mqtt.persistent_session, None);
            // Compose's node 1 alone keeps NATS's reader logins.
            assert_eq!(c.nats.logins_file.is_some(), i == 1, "{kind} file {i}");
        }
    }
}
