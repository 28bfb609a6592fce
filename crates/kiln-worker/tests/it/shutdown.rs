//! SIGTERM and SIGINT, and start-up refusals, of the real binary.

use std::process::Stdio;

use kiln_domain::{AttemptOutcome, BuildState, WorkerState};
use kiln_worker::Exit;
use kiln_worker::JobEnd;

use crate::farm::{Farm, PATIENCE, containers_of, sigterm, wait_exit};

#[tokio::test]
async fn sigterm_hands_back_a_build_that_outlasts_the_grace() {
    let Some(farm) = Farm::new("sigterm-handback").await else { return };
    let key = farm.enqueue(&farm.spec("sleep", "v5.0.3", &[])).await;
    let id = format!("sigterm-handback-{}", std::process::id());
    let mut child = farm.spawn_worker(&id, &[("KILN_SHUTDOWN_GRACE", "1")]);

    farm.wait_log(&key, "slept 1 of 5").await;
    sigterm(&child);
    let status = wait_exit(&mut child).await.unwrap();
    assert!(status.success(), "{status}");

    let b = farm.build(&key).await;
    assert_eq!(b.state, BuildState::Queued, "the job is not lost: {:?}", b.error);
    assert_eq!(b.attempts, 0);
    let attempts = farm.queue.attempts(&key).await.unwrap();
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::HandedBack));
    assert_eq!(farm.queue.worker(&id).await.unwrap().unwrap().state, WorkerState::Stopped);
    assert!(containers_of(&key, &id).is_empty());

    let exit = farm.run_once(&format!("sigterm-second-{}", std::process::id())).await;
    assert_eq!(exit, Exit::Once(JobEnd::Succeeded));
}

#[tokio::test]
async fn sigterm_lets_a_build_finish_within_the_grace() {
    let Some(farm) = Farm::new("sigterm-finish").await else { return };
    let key = farm.enqueue(&farm.spec("sleep", "v5.0.4", &[])).await;
    let id = format!("sigterm-finish-{}", std::process::id());
    let mut child = farm.spawn_worker(&id, &[("KILN_SHUTDOWN_GRACE", "120")]);

    farm.wait_log(&key, "slept 1 of 5").await;
    sigterm(&child);
    let status = wait_exit(&mut child).await.unwrap();
    assert!(status.success(), "{status}");
    let b = farm.build(&key).await;
    assert_eq!(b.state, BuildState::Succeeded, "{:?}", b.error);
    assert_eq!(farm.queue.worker(&id).await.unwrap().unwrap().state, WorkerState::Stopped);
}

#[tokio::test]
async fn a_second_signal_hands_the_build_back_without_waiting_out_the_grace() {
    let Some(farm) = Farm::new("sigterm-twice").await else { return };
    let key = farm.enqueue(&farm.spec("sleep", "v30.0.5", &[])).await;
    let id = format!("sigterm-twice-{}", std::process::id());
    let mut child = farm.spawn_worker(&id, &[("KILN_SHUTDOWN_GRACE", "600")]);

    farm.wait_log(&key, "slept 1 of 30").await;
    sigterm(&child);
    // The first signal: the worker drains, the build goes on.
    let start = std::time::Instant::now();
    while farm.queue.worker(&id).await.unwrap().unwrap().state != WorkerState::Draining {
        assert!(start.elapsed() < PATIENCE, "the worker never started draining");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The second (Ctrl-C twice, say): hand it back now, not in ten minutes.
    let ok = std::process::Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    assert!(ok.success());
    let status = wait_exit(&mut child).await.unwrap();
    assert!(status.success(), "{status}");

    let b = farm.build(&key).await;
    assert_eq!(b.state, BuildState::Queued, "handed back before it could finish: {:?}", b.error);
    let attempts = farm.queue.attempts(&key).await.unwrap();
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::HandedBack));
    assert!(containers_of(&key, &id).is_empty());
}

#[tokio::test]
async fn an_unmigrated_database_is_refused() {
    let Some(farm) = Farm::new("unmigrated").await else { return };
    let admin = std::env::var("KILN_TEST_DATABASE_URL").unwrap();
    let name = format!("kiln_unmigrated_{}", std::process::id());
    sqlx_exec(&admin, &format!("CREATE DATABASE {name}")).await;
    let url = format!("{}/{name}", &admin[..admin.rfind('/').unwrap()]);

    let out = farm
        .worker_command("unmigrated", &[("DATABASE_URL", &url)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kiln-janitor migrate"), "{stderr}");
}

async fn sqlx_exec(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}
