//! The binary refuses to serve over a database whose schema is not applied.

use std::time::Duration;

use kiln_testkit::farm::Farm;

#[tokio::test]
async fn an_unmigrated_database_is_refused_with_what_to_run() {
    let farm = Farm::new().await;
    let url = farm.db.empty_sibling("unmigrated").await;
    let mut api = farm.spawn_with("kiln-api", "api-unmigrated", &[], &[("DATABASE_URL", &url)]);
    let status = api.wait_timeout(Duration::from_secs(60)).expect("kiln-api exits by itself");
    assert!(!status.success(), "{}", api.output());
    assert!(api.output().contains("kiln-janitor migrate"), "{}", api.output());
    // Nothing answers on its port.
    assert!(reqwest::get(format!("{}/healthz", farm.url())).await.is_err());
}
