//! The HTTP/JSON API (issue #18): the Registry and Patrol read calls over plain HTTP, every
//! answer validated against the OpenAPI document the server publishes at `/openapi.json`
//! (JSON Schema 2020-12, with undeclared fields refused), the same answer as gRPC, the same
//! roles and audit, and every refusal a Connect error that is counted.

use crate::support;

use greenplate_proto::v1::{
    GetBikeRequest, GetIncidentRequest, GetTrackRequest, get_bike_request, get_incident_request,
    get_track_request,
};
use greenplate_simulator::reader::{ReaderClient, sighting};
use serde_json::{Value, json};
use support::{TestService, new_kiosk_token, new_unit_token, register_stolen};

const TAG: &str = "E28011606000000000000E01";
const PLATE: &str = "粤D7E001";
const OWNER_ID: &str = "11010519491231002X";

/// The document, and validators for its schemas.
struct Contract {
    doc: Value,
}

impl Contract {
    async fn fetch(base: &str) -> Self {
        let r = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        let doc: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        Self { doc }
    }

    /// The schema `$ref` of an operation's request body or 200/default answer.
    fn schema_ref(&self, path: &str, which: &str) -> String {
        let op = &self.doc["paths"][path]["post"];
        assert!(op.is_object(), "{path} is not in the document");
        let schema = match which {
            "request" => &op["requestBody"]["content"]["application/json"]["schema"],
            code => &op["responses"][code]["content"]["application/json"]["schema"],
        };
        schema["$ref"].as_str().unwrap().to_owned()
    }

    /// A validator for the schema at `reference`, strict: an object may hold only the
    /// properties its schema declares, so a field the document omits fails.
    fn validator(&self, reference: &str) -> jsonschema::Validator {
        let mut schemas = self.doc["components"]["schemas"].clone();
        for schema in schemas.as_object_mut().unwrap().values_mut() {
            if schema.get("properties").is_some() {
                schema["additionalProperties"] = json!(false);
            }
        }
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": reference,
            "components": { "schemas": schemas },
        });
        jsonschema::draft202012::new(&root).unwrap()
    }

    fn check(&self, reference: &str, instance: &Value) {
        let v = self.validator(reference);
        let errors: Vec<String> = v
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{instance} does not match {reference}: {errors:?}"
        );
    }
}

struct Api {
    base: String,
    client: reqwest::Client,
    contract: Contract,
}

impl Api {
    fn path(method: &str) -> String {
        format!("/api/greenplate.v1.{method}")
    }

    /// Calls `method` (e.g. `Registry/GetBike`) with `body`: the status and the JSON body,
    /// checked against the document (the 200 schema or the error schema).
    async fn call(&self, method: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let path = Self::path(method);
        self.contract
            .check(&self.contract.schema_ref(&path, "request"), body);
        let (status, answer) = self
            .raw(&path, token, "application/json", body.to_string())
            .await;
        let which = if status == 200 { "200" } else { "default" };
        self.contract
            .check(&self.contract.schema_ref(&path, which), &answer);
        (status, answer)
    }

    async fn raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: String,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{path}: {status} with a body that is not JSON ({e}): {bytes:?}")
        });
        (status, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_calls_answer_json_that_matches_the_published_document() {
    let svc = TestService::start_configured(|c| {
        c.alerting.clone_speed_kmh = 1e9;
        c.ingest.pass_gap_ms = 300;
    })
    .await;
    let base = format!("http://{}", svc.service.http_addr);
    let api = Api {
        contract: Contract::fetch(&base).await,
        base,
        client: reqwest::Client::new(),
    };
    for method in [
        "Registry/GetBike",
        "Registry/ListOwnerBikes",
        "Patrol/GetTrack",
        "Patrol/GetIncident",
    ] {
        assert!(
            api.contract.doc["paths"][Api::path(method)]["post"].is_object(),
            "{method} is not documented"
        );
    }

    // A stolen bike seen once: a pass, an incident, an alert.
    register_stolen(&svc, TAG, PLATE).await;
    let secret = svc.add_reader("rd-api", 23.35, 116.68).await;
    let mut hq_grpc = svc.add_unit("hq-grpc", &[], true).await;
    let mut alerts = support::stream(&hq_grpc, 0).await;
    let mut reader = ReaderClient::connect("127.0.0.1", svc.mqtt_port(), "rd-api", &secret)
        .await
        .unwrap();
    reader.publish(vec![sighting(TAG, 3, -48)]).await.unwrap();
    let alert = support::next_alert(&mut alerts).await;
    svc.wait_metric("greenplate_history_passes_stored_total", 1.0)
        .await;

    let kiosk = new_kiosk_token(svc.channel().await, "k-api").await;
    let hq = new_unit_token(svc.channel().await, "hq-api", &[], true).await;

    // GetBike: masked as over gRPC, and the very same answer.
    let (status, bike) = api
        .call(
            "Registry/GetBike",
            Some(&kiosk),
            &json!({ "plate": PLATE, "reason": "case 2026-118" }),
        )
        .await;
    assert_eq!(status, 200, "{bike}");
    assert_eq!(bike["plate"], PLATE);
    assert_eq!(bike["tagId"], TAG);
    assert_eq!(bike["stolen"], true);
    assert!(bike["bikeId"].is_string(), "int64 is a string: {bike}");
    let over_grpc = svc
        .add_kiosk("k-api-grpc")
        .await
        .get_bike(GetBikeRequest {
            key: Some(get_bike_request::Key::Plate(PLATE.into())),
            reason: "case 2026-118".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bike, serde_json::to_value(&over_grpc).unwrap());
    assert_ne!(
        bike["owner"]["idNumber"], OWNER_ID,
        "personal data is masked"
    );
    // The validation bites: an undeclared field, an int64 as a number, a required field
    // left out.
    let bike_schema = api
        .contract
        .schema_ref(&Api::path("Registry/GetBike"), "200");
    let validator = api.contract.validator(&bike_schema);
    assert!(validator.is_valid(&bike));
    let mut off = bike.clone();
    off["undeclared"] = json!(1);
    assert!(!validator.is_valid(&off));
    let mut off = bike.clone();
    off["bikeId"] = json!(5);
    assert!(!validator.is_valid(&off));
    let mut off = bike.clone();
    off.as_object_mut().unwrap().remove("plate");
    assert!(!validator.is_valid(&off));

    // ListOwnerBikes, the request in snake_case (accepted as protobuf's JSON allows).
    let (status, owned) = api
        .call(
            "Registry/ListOwnerBikes",
            Some(&kiosk),
            &json!({ "idNumber": OWNER_ID, "reason": "owner at the counter" }),
        )
        .await;
    assert_eq!(status, 200, "{owned}");
    assert_eq!(owned["bikes"].as_array().unwrap().len(), 1);
    let (status, _) = api
        .raw(
            &Api::path("Registry/ListOwnerBikes"),
            Some(&kiosk),
            "application/json; charset=utf-8",
            json!({ "id_number": OWNER_ID }).to_string(),
        )
        .await;
    assert_eq!(status, 200);

    // GetTrack as a command center; 64-bit integers sent as numbers are taken too.
    let (status, track) = api
        .call(
            "Patrol/GetTrack",
            Some(&hq),
            &json!({ "plate": PLATE, "fromMs": 0, "limit": 100, "reason": "case 2026-118" }),
        )
        .await;
    assert_eq!(status, 200, "{track}");
    let points = track["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{track}");
    assert_eq!(points[0]["readerId"], "rd-api");
    let grpc_track = hq_grpc
        .get_track(GetTrackRequest {
            subject: Some(get_track_request::Subject::Plate(PLATE.into())),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(track, serde_json::to_value(&grpc_track).unwrap());

    // GetIncident by plate: the alert the stream carried, with its kind by name.
    let (status, incident) = api
        .call(
            "Patrol/GetIncident",
            Some(&hq),
            &json!({ "plate": PLATE, "reason": "case 2026-118" }),
        )
        .await;
    assert_eq!(status, 200, "{incident}");
    assert_eq!(incident["incident"]["incidentId"], alert.incident_id);
    assert_eq!(incident["alerts"][0]["alertId"], alert.alert_id);
    assert_eq!(incident["alerts"][0]["kind"], "ALERT_KIND_STOLEN_SIGHTED");
    let grpc_incident = hq_grpc
        .get_incident(GetIncidentRequest {
            key: Some(get_incident_request::Key::IncidentId(
                alert.incident_id.clone(),
            )),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        incident["events"],
        serde_json::to_value(&grpc_incident).unwrap()["events"]
    );

    // The same roles as gRPC: no token, a kiosk on Patrol, a unit on Registry.
    let (status, e) = api
        .call("Registry/GetBike", None, &json!({ "plate": PLATE }))
        .await;
    assert_eq!((status, e["code"].as_str()), (401, Some("unauthenticated")));
    let (status, e) = api
        .call(
            "Registry/GetBike",
            Some("gpk_forged"),
            &json!({ "plate": PLATE }),
        )
        .await;
    assert_eq!((status, e["code"].as_str()), (401, Some("unauthenticated")));
    let (status, e) = api
        .call("Patrol/GetTrack", Some(&kiosk), &json!({ "plate": PLATE }))
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (403, Some("permission_denied"))
    );
    let (status, e) = api
        .call("Registry/GetBike", Some(&hq), &json!({ "plate": PLATE }))
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (403, Some("permission_denied"))
    );

    // The service's own refusals come through with their codes.
    let (status, e) = api
        .call(
            "Registry/GetBike",
            Some(&kiosk),
            &json!({ "plate": "粤D0NONE" }),
        )
        .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    let (status, e) = api.call("Registry/GetBike", Some(&kiosk), &json!({})).await;
    assert_eq!(
        (status, e["code"].as_str()),
        (400, Some("invalid_argument")),
        "{e}"
    );

    // The lookups are in the audit log under the callers, as gRPC's are.
    let audit = svc.audit_log().await;
    let by = |actor: &str, action: &str| {
        audit
            .iter()
            .filter(|e| e.actor.ends_with(&format!(":{actor}")) && e.action == action)
            .count()
    };
    assert!(by("k-api", "get_bike") >= 1, "{audit:?}");
    assert!(by("hq-api", "get_track") >= 1, "{audit:?}");

    // Counted by method and outcome.
    let m = |s: &str| format!("greenplate_api_requests_total{{{s}}}");
    assert_eq!(
        svc.metric(&m(r#"method="Registry/GetBike",code="ok""#))
            .await,
        1.0
    );
    assert_eq!(
        svc.metric(&m(r#"method="Registry/GetBike",code="unauthenticated""#))
            .await,
        2.0
    );
    assert_eq!(
        svc.metric(&m(r#"method="Patrol/GetTrack",code="permission_denied""#))
            .await,
        1.0
    );
}

/// What schemathesis's negative tests do, for every documented call: bodies that are not
/// JSON, not an object, or whose every field has the wrong type, plus the wrong method,
/// media type and size, and an unknown call. Each gets a 4xx with a Connect error that
/// matches the document (never a 5xx or a body off the schema), and each is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calls_get_documented_errors_and_are_counted() {
    let svc = TestService::start().await;
    let base = format!("http://{}", svc.service.http_addr);
    let api = Api {
        contract: Contract::fetch(&base).await,
        base,
        client: reqwest::Client::new(),
    };
    let kiosk = new_kiosk_token(svc.channel().await, "k-neg").await;
    let hq = new_unit_token(svc.channel().await, "hq-neg", &[], true).await;
    let error = "#/components/schemas/connect.Error";

    let paths: Vec<String> = api.contract.doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    let mut sent = 0;
    for path in &paths {
        let token = if path.contains("Registry") {
            &kiosk
        } else {
            &hq
        };
        let request = api.contract.schema_ref(path, "request");
        let name = request.rsplit('/').next().unwrap();
        let properties = api.contract.doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap()
            .clone();
        let mut bodies = vec![
            "{".to_owned(),
            "[]".to_owned(),
            "\"plate\"".to_owned(),
            "null".to_owned(),
            String::new(),
        ];
        for (field, schema) in &properties {
            // A value of a type the field does not take.
            let wrong = if schema["type"] == "string" || schema.get("$ref").is_some() {
                json!([1, 2])
            } else {
                json!({ "nested": true })
            };
            bodies.push(json!({ field.as_str(): wrong }).to_string());
            bodies.push(json!({ field.as_str(): "x".repeat(300) }).to_string());
        }
        for body in bodies {
            let (status, e) = api
                .raw(path, Some(token), "application/json", body.clone())
                .await;
            sent += 1;
            assert!((400..500).contains(&status), "{path} {body}: {status} {e}");
            api.contract.check(error, &e);
        }

        let (status, e) = api.raw(path, Some(token), "text/plain", "{}".into()).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (415, Some("invalid_argument"))
        );
        api.contract.check(error, &e);
        let big = json!({ "reason": "x".repeat(70 * 1024) }).to_string();
        let (status, e) = api.raw(path, Some(token), "application/json", big).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (413, Some("resource_exhausted"))
        );
        api.contract.check(error, &e);
        let r = api
            .client
            .get(format!("{}{path}", api.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405);
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        api.contract.check(error, &body);
        sent += 3;
    }
    let (status, e) = api
        .raw(
            "/api/greenplate.v1.Admin/AddReader",
            Some(&kiosk),
            "application/json",
            "{}".into(),
        )
        .await;
    assert_eq!((status, e["code"].as_str()), (404, Some("unimplemented")));
    api.contract.check(error, &e);

    // Every one counted: by its call, and the unknown one apart.
    let body = svc.http_get("/metrics").await;
    let counted: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("greenplate_api_requests_total{") && !l.contains("method=\"unknown\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, sent as f64);
    assert_eq!(
        svc.metric(r#"greenplate_api_requests_total{method="unknown",code="unimplemented"}"#)
            .await,
        1.0
    );
}
