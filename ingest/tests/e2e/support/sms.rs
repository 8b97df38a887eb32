//! A stand-in SMS gateway for the owner page's tests: it accepts every text and keeps it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct SmsGateway {
    /// Where to point `sms.url`.
    pub url: String,
    texts: Arc<Mutex<Vec<Value>>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SmsGateway {
    pub async fn start() -> Self {
        let texts: Arc<Mutex<Vec<Value>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/send", listener.local_addr().unwrap());
        let kept = texts.clone();
        let gateway = axum::Router::new().route(
            "/send",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        kept.lock().unwrap().push(v);
                    }
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, gateway).await });
        Self { url, texts, server }
    }

    /// The 6-digit sign-in code texted to `phone`, waiting for it for up to 10 s.
    pub async fn code_for(&self, phone: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sent = self.texts.lock().unwrap().iter().find_map(|t| {
                (t["kind"] == "sign_in_code" && t["to"] == phone)
                    .then(|| t["text"].as_str().unwrap_or_default().to_owned())
            });
            if let Some(text) = sent {
                let code: String = text.chars().filter(char::is_ascii_digit).take(6).collect();
                assert_eq!(code.len(), 6, "{text}");
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "no code texted to {phone}: {:?}",
                self.texts.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmsGateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}
