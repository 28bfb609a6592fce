//! Preemption: every detector makes the worker hand its jobs back and exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use kiln_config::PreemptionDetector;
use kiln_domain::{AttemptOutcome, BuildKey, BuildState, WorkerState};
use kiln_worker::Exit;
use kiln_worker::JobEnd;

use crate::farm::{Farm, PATIENCE, containers_of, wait_exit};

/// The build was handed back by `worker` without using up an attempt.
async fn assert_handed_back(farm: &Farm, key: &BuildKey, worker: &str) {
    let b = farm.build(key).await;
    assert_eq!(b.state, BuildState::Queued, "{:?}", b.error);
    assert_eq!(b.attempts, 0, "a preemption must not consume a build attempt");
    assert_eq!(b.preemptions, 1);
    let attempts = farm.queue.attempts(key).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Preempted));
    assert_eq!(attempts[0].worker_id, worker);
    let row = farm.queue.worker(worker).await.unwrap().expect("the worker registered");
    assert_eq!(row.state, WorkerState::Preempted);
    assert!(containers_of(key, worker).is_empty(), "the step's container was not removed");
}

/// Another worker picks the job up and finishes it.
async fn assert_completed_elsewhere(farm: &Farm, key: &BuildKey, name: &str) {
    let exit = farm.run_once(&format!("{name}-second-{}", std::process::id())).await;
    assert_eq!(exit, Exit::Once(JobEnd::Succeeded));
    let b = farm.build(key).await;
    assert_eq!(b.state, BuildState::Succeeded);
    assert_eq!(b.attempts, 1);
    assert_eq!(farm.artifact_file(key, "slept").await, b"done\n");
}

#[tokio::test]
async fn the_file_detector_stops_the_real_binary() {
    let Some(farm) = Farm::new("preempt-file").await else { return };
    let flag = farm.dir.path().join("preempted");
    let key = farm.enqueue(&farm.spec("sleep", "v30.0.3", &[])).await;
    let id = format!("preempt-file-{}", std::process::id());
    let mut child =
        farm.spawn_worker(&id, &[("KILN_PREEMPTION", "file"), ("KILN_PREEMPTION_FILE", flag.to_str().unwrap())]);

    farm.wait_log(&key, "slept 1 of 30").await;
    assert_eq!(farm.build(&key).await.attempts, 1);
    std::fs::write(&flag, "").unwrap();
    let status = wait_exit(&mut child).await.unwrap();
    assert!(status.success(), "the worker exits 0 on preemption: {status}");

    assert_handed_back(&farm, &key, &id).await;
    assert_completed_elsewhere(&farm, &key, "preempt-file").await;
}

/// A stand-in metadata server: answers as the cloud does, preempted or not.
#[derive(Clone, Default)]
struct Metadata {
    preempted: Arc<AtomicBool>,
    /// Requests that carried the right headers.
    answered: Arc<AtomicUsize>,
}

impl Metadata {
    fn is_preempted(&self) -> bool {
        self.answered.fetch_add(1, Ordering::SeqCst);
        self.preempted.load(Ordering::SeqCst)
    }
}

fn header_is(h: &HeaderMap, name: &str, value: &str) -> bool {
    h.get(name).and_then(|v| v.to_str().ok()) == Some(value)
}

async fn gce(State(m): State<Metadata>, h: HeaderMap) -> Response {
    if !header_is(&h, "Metadata-Flavor", "Google") {
        return StatusCode::FORBIDDEN.into_response();
    }
    if m.is_preempted() { "TRUE" } else { "FALSE" }.into_response()
}

const AWS_TOKEN: &str = "stand-in-imds-token";

async fn aws_token(h: HeaderMap) -> Response {
    if h.get("X-aws-ec2-metadata-token-ttl-seconds").is_none() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    AWS_TOKEN.into_response()
}

async fn aws_action(State(m): State<Metadata>, h: HeaderMap) -> Response {
    if !header_is(&h, "X-aws-ec2-metadata-token", AWS_TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if m.is_preempted() {
        r#"{"action": "terminate", "time": "2026-11-23T17:00:00Z"}"#.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn azure(State(m): State<Metadata>, h: HeaderMap, uri: axum::http::Uri) -> Response {
    if !header_is(&h, "Metadata", "true") || uri.query() != Some("api-version=2020-07-01") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let events = if m.is_preempted() {
        r#"[{"EventId": "602d9444-d2cd-49c7-8624-8643e7171297", "EventType": "Preempt", "ResourceType": "VirtualMachine",
            "Resources": ["kiln-worker-1"], "EventStatus": "Scheduled", "NotBefore": "Mon, 23 Nov 2026 17:00:30 GMT",
            "Description": "", "EventSource": "Platform", "DurationInSeconds": -1}]"#
    } else {
        // A scheduled event that is not a preemption must not stop the worker.
        r#"[{"EventId": "1", "EventType": "Freeze", "ResourceType": "VirtualMachine", "Resources": ["kiln-worker-1"],
            "EventStatus": "Scheduled", "NotBefore": "", "Description": "", "EventSource": "Platform", "DurationInSeconds": 5}]"#
    };
    format!(r#"{{"DocumentIncarnation": 2, "Events": {events}}}"#).into_response()
}

async fn serve(metadata: Metadata) -> SocketAddr {
    let app = Router::new()
        .route("/computeMetadata/v1/instance/preempted", get(gce))
        .route("/latest/api/token", put(aws_token))
        .route("/latest/meta-data/spot/instance-action", get(aws_action))
        .route("/metadata/scheduledevents", get(azure))
        .with_state(metadata);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A worker in this process with `detector` pointed at the stand-in runs a
/// long build; once the stand-in says so, it hands the build back and exits.
async fn cloud_preemption(name: &str, detector: PreemptionDetector, patch: u32) {
    let Some(farm) = Farm::new(name).await else { return };
    let metadata = Metadata::default();
    let addr = serve(metadata.clone()).await;
    let mut config = farm.config.clone();
    config.worker.preemption.detector = detector;
    config.worker.preemption.url = Some(format!("http://{addr}"));
    let key = farm.enqueue(&farm.spec("sleep", &format!("v30.0.{patch}"), &[])).await;
    let id = format!("{name}-{}", std::process::id());
    let worker = farm.start_worker(&id, Some(config), false).await;

    farm.wait_log(&key, "slept 1 of 30").await;
    // The detector has been asking, and "not preempted" kept the build running.
    assert!(metadata.answered.load(Ordering::SeqCst) > 0, "the detector never asked the stand-in");
    assert_eq!(farm.build(&key).await.state, BuildState::Running);
    metadata.preempted.store(true, Ordering::SeqCst);

    let exit = tokio::time::timeout(PATIENCE, worker).await.unwrap().unwrap().unwrap();
    assert!(matches!(exit, Exit::Preempted(_)), "{exit:?}");
    assert_handed_back(&farm, &key, &id).await;
    assert_completed_elsewhere(&farm, &key, name).await;
}

#[tokio::test]
async fn gce_preemption() {
    cloud_preemption("preempt-gce", PreemptionDetector::Gce, 4).await;
}

#[tokio::test]
async fn aws_spot_interruption() {
    cloud_preemption("preempt-aws", PreemptionDetector::Aws, 5).await;
}

#[tokio::test]
async fn azure_preempt_event() {
    cloud_preemption("preempt-azure", PreemptionDetector::Azure, 6).await;
}
