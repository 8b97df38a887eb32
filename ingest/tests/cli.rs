//! The `greenplate` binary's own commands: generate-config, registry import, bad config.

mod support;

use std::process::Command;

use greenplate_proto::v1::{GetBikeRequest, get_bike_request};
use greenplate_simulator::clients;
use support::{ADMIN_TOKEN, TestService};

fn greenplate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_greenplate"))
}

#[test]
fn generate_config_prints_a_config_that_serve_accepts() {
    let out = greenplate().arg("generate-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: greenplate_ingest::Config = toml::from_str(&text).unwrap();
    assert_eq!(parsed, greenplate_ingest::Config::default());
}

#[test]
fn a_typo_in_the_config_is_a_one_line_error_with_exit_code_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[mqtt]\nlisen = \"0.0.0.0:1883\"\n").unwrap();
    let out = greenplate()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("lisen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_import_reports_rejects_is_idempotent_and_feeds_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bikes.csv");
    std::fs::write(
        &csv,
        "\
tag_id,plate,owner_name,owner_id_number,owner_phone,make,model,color,frame_number
E28011600000000000000101,潮阳A00101,王芳,11010519491231002X,13800000001,Yadea,G5,green,FRAME00101
E28011600000000000000102,潮阳A00102,王芳,11010519491231002X,13800000001,Aima,A500,white,FRAME00102
E28011600000000000000103,潮阳A00103,张强,440513199001011231,13800000003,Aima,A500,white,FRAME00103
",
    )
    .unwrap();
    let data = dir.path().join("data");
    let import = || {
        let out = greenplate()
            .args(["registry", "import"])
            .arg(&csv)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let first = import();
    assert!(first.contains("line 4: owner.id_number"), "{first}");
    assert!(
        first.contains("2 imported, 0 already there, 1 rejected"),
        "{first}"
    );
    let second = import();
    assert!(
        second.contains("0 imported, 2 already there, 1 rejected"),
        "{second}"
    );

    // The service started on that data directory knows the imported bikes.
    let data_dir = tempfile::TempDir::with_prefix_in("svc", dir.path()).unwrap();
    std::fs::remove_dir(data_dir.path()).unwrap();
    std::fs::rename(&data, data_dir.path()).unwrap();
    let svc = TestService::start_in(data_dir).await;
    let channel = svc.channel().await;
    let bike = clients::registry(channel, ADMIN_TOKEN)
        .unwrap()
        .get_bike(GetBikeRequest {
            key: Some(get_bike_request::Key::Plate("潮阳A00102".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bike.tag_id, "E28011600000000000000102");
    assert_eq!(bike.owner.unwrap().phone, "138****0001");
    svc.stop().await;
}
