//! Real `kiln-janitor` processes: migrations, `once`, leadership between two
//! janitors, and rescuing a build from a worker killed in the middle of it.

use std::process::Command;

use kiln_domain::{AttemptOutcome, BuildSpec, BuildState};
use kiln_queue::{JanitorRun, Queue, QueueSettings};
use kiln_testkit::farm::{Farm, Proc, bin};

use crate::support::{PATIENCE, spec, wait_for};

/// A new, empty database beside `db`'s; returns its URL.
fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    p.wait_timeout(PATIENCE).unwrap_or_else(|| panic!("{} did not exit:\n{}", p.label(), p.output()))
}

/// Versions recorded by refinery, in order.
async fn schema_history(url: &str) -> Vec<i32> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let v = sqlx::query_scalar("SELECT version FROM refinery_schema_history ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    v
}

#[tokio::test]
async fn migrate_twice_in_a_row_and_from_two_processes_at_once() {
    let farm = Farm::new().await;
    let all: Vec<i32> = (1..=kiln_queue::SCHEMA_VERSION as i32).collect();

    let url = farm.db.empty_sibling("seq").await;
    let mut first = farm.spawn_with("kiln-janitor", "migrate-1", &["migrate"], &[("DATABASE_URL", &url)]);
    assert!(wait_exit(&mut first).success(), "{}", first.output());
    assert!(first.output().contains("migrations applied: V1__initial, V2__janitor_runs"), "{}", first.output());
    let mut second = farm.spawn_with("kiln-janitor", "migrate-2", &["migrate"], &[("DATABASE_URL", &url)]);
    assert!(wait_exit(&mut second).success(), "{}", second.output());
    assert!(second.output().contains("migrations applied: none (up to date)"), "{}", second.output());
    assert_eq!(schema_history(&url).await, all);

    let url = farm.db.empty_sibling("par").await;
    let mut a = farm.spawn_with("kiln-janitor", "migrate-a", &["migrate"], &[("DATABASE_URL", &url)]);
    let mut b = farm.spawn_with("kiln-janitor", "migrate-b", &["migrate"], &[("DATABASE_URL", &url)]);
    assert!(wait_exit(&mut a).success(), "{}", a.output());
    assert!(wait_exit(&mut b).success(), "{}", b.output());
    let applied = [a.output(), b.output()].iter().filter(|o| o.contains("V1__initial, V2__janitor_runs")).count();
    assert_eq!(applied, 1, "one process applied the migrations, the other found them applied");
    assert_eq!(schema_history(&url).await, all, "one schema");
    Queue::connect(&url, 2, QueueSettings::default(), "kiln-test").await.expect("the schema is current");
}

#[tokio::test]
async fn once_runs_every_task_and_prints_json() {
    let farm = Farm::new().await;
    let queue = farm.db.queue(QueueSettings::default());
    queue.enqueue(&spec("once", 1), 0).await.unwrap();
    let claim = queue.claim("w", &[]).await.unwrap().unwrap();
    farm.db.lapse_all_leases().await;

    let out = Command::new(bin("kiln-janitor"))
        .args(["once", "--json"])
        .env_clear()
        .envs(farm.env())
        .env("KILN_JANITOR_ID", "once-janitor")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks: Vec<_> = reports.as_array().unwrap().iter().map(|r| r["task"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["rescue", "workers", "retry", "expiry", "prune", "sweep"]);
    assert_eq!(reports[0]["counts"]["requeued"], 1);
    assert!(reports.as_array().unwrap().iter().all(|r| r["ok"] == true));
    assert!(stderr.contains("task=rescue requeued=1 failed=0 cancelled=0"), "{stderr}");
    // Runs with nothing to report stay out of the INFO log.
    assert!(!stderr.contains("task=prune") && !stderr.contains("task=sweep"), "{stderr}");
    assert_eq!(queue.get(&claim.lease.key).await.unwrap().unwrap().state, BuildState::Queued);
    let runs = queue.janitor_runs().await.unwrap();
    assert_eq!(runs.len(), 6);
    assert!(runs.iter().all(|r| r.janitor_id == "once-janitor"));

    // The human summary.
    let out = Command::new(bin("kiln-janitor")).arg("once").env_clear().envs(farm.env()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("rescue   0 builds back in the queue"), "{stdout}");
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
}

/// The `janitor_runs` row of `task` once it has run at least `runs` times.
async fn run_row(queue: &Queue, task: &str, runs: i64, who: Option<&str>) -> Option<JanitorRun> {
    queue
        .janitor_runs()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.task == task && r.runs >= runs && who.is_none_or(|w| r.janitor_id == w))
}

#[tokio::test]
async fn of_two_janitors_one_acts_and_the_other_takes_over_when_it_dies() {
    let farm = Farm::new().await;
    let queue = farm.db.queue(QueueSettings::default());
    // Quiet runs are logged at DEBUG: show them, to see who ran what.
    let env = |id| [("KILN_JANITOR_ID", id), ("RUST_LOG", "info,kiln_janitor=debug")];
    let mut janitors = vec![
        farm.spawn_with("kiln-janitor", "janitor-a", &["run"], &env("janitor-a")),
        farm.spawn_with("kiln-janitor", "janitor-b", &["run"], &env("janitor-b")),
    ];
    let logs = |js: &[Proc]| js.iter().map(|j| format!("--- {}\n{}", j.label(), j.output())).collect::<String>();

    // Let the leader run the 2-second rescue task a few times.
    let row = wait_for("three rescue runs", || logs(&janitors), || run_row(&queue, "rescue", 3, None)).await;
    let leader = janitors.iter().position(|j| j.label() == row.janitor_id).expect("a known janitor leads");
    let standby = 1 - leader;
    let leader_log = janitors[leader].output();
    let standby_log = janitors[standby].output();
    assert!(leader_log.contains("leader: this janitor runs the tasks"), "{}", logs(&janitors));
    assert!(leader_log.matches("task=rescue").count() >= 3, "{}", logs(&janitors));
    assert!(standby_log.contains("standby: another janitor is the leader"), "{}", logs(&janitors));
    let ran = |log: &str| kiln_janitor::Task::ALL.iter().any(|t| log.contains(&format!("task={t} ")));
    assert!(!ran(&standby_log), "the standby ran nothing:\n{}", logs(&janitors));
    let rows = queue.janitor_runs().await.unwrap();
    assert!(rows.iter().all(|r| r.janitor_id == row.janitor_id), "every task ran on the leader: {rows:?}");

    // SIGKILL the leader: its session ends, the lock with it.
    janitors[leader].kill();
    let standby_id = janitors[standby].label().to_owned();
    let taken =
        wait_for("the standby to take over", || logs(&janitors), || run_row(&queue, "rescue", 1, Some(&standby_id)))
            .await;
    assert_eq!(taken.janitor_id, standby_id);
    assert!(janitors[standby].output().contains("leader: this janitor runs the tasks"), "{}", logs(&janitors));

    // SIGTERM: the new leader stops cleanly and says it released the lock.
    janitors[standby].signal("TERM");
    let status = wait_exit(&mut janitors[standby]);
    assert!(status.success(), "{}", logs(&janitors));
    assert!(janitors[standby].output().contains("the leader lock is released"), "{}", logs(&janitors));
}

#[tokio::test]
async fn a_build_whose_worker_is_killed_is_rescued_and_finished_by_another_worker() {
    const TEST: &str = "a_build_whose_worker_is_killed_is_rescued_and_finished_by_another_worker";
    if !kiln_testkit::docker_available(TEST) {
        return;
    }
    let farm = Farm::new().await;
    let config_path = kiln_testkit::repo_root().join("config.test.yml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let env = farm.env().clone();
    let config =
        kiln_config::Config::parse(&text, &config_path.display().to_string(), &|k| env.get(k).cloned()).unwrap();
    let queue = farm.db.queue(QueueSettings::from(&config.queue));
    let spec = BuildSpec {
        recipe: "sleep".into(),
        recipe_revision: config.recipes["sleep"].revision(),
        // A version of its own: build keys are shared by content, and other
        // tests must never see (or clean up) this test's containers.
        version: "v30.0.9".parse().unwrap(),
        platform: "linux/amd64".parse().unwrap(),
        plugins: vec![],
        replacements: vec![],
    };

    let janitor = farm.spawn_with("kiln-janitor", "janitor", &["run"], &[("KILN_JANITOR_ID", "janitor")]);
    let mut first = farm.start_worker("worker-1");
    let key = queue.enqueue(&spec, 0).await.unwrap().build.key;
    let context = || format!("--- janitor\n{}\n--- worker-1\n{}", janitor.output(), first.output());

    // Well into the build on worker-1…
    wait_for("worker-1 to be sleeping", context, || async {
        let b = queue.get(&key).await.unwrap().unwrap();
        let log = queue.log_text(&key).await.unwrap();
        (b.state == BuildState::Running
            && b.lease_holder.as_deref() == Some("worker-1")
            && log.contains("slept 2 of 30"))
        .then_some(())
    })
    .await;
    // …it dies without a word.
    first.kill();
    let second = farm.start_worker("worker-2");
    let context = || {
        format!(
            "--- janitor\n{}\n--- worker-1\n{}\n--- worker-2\n{}",
            janitor.output(),
            first.output(),
            second.output()
        )
    };
    let build = wait_for("the build to end", context, || async {
        let b = queue.get(&key).await.unwrap().unwrap();
        matches!(b.state, BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled).then_some(b)
    })
    .await;
    assert_eq!(build.state, BuildState::Succeeded, "{:?}\n{}", build.error, context());

    let attempts = queue.attempts(&key).await.unwrap();
    let summary: Vec<_> = attempts.iter().map(|a| (a.worker_id.as_str(), a.outcome)).collect();
    assert_eq!(
        summary,
        vec![("worker-1", Some(AttemptOutcome::LeaseLapsed)), ("worker-2", Some(AttemptOutcome::Succeeded))],
        "{}",
        context()
    );
    // The rescue task, or the workers task (which rescues too), requeued it once.
    let log = janitor.output();
    let requeued: i64 = ["rescue", "workers"]
        .iter()
        .flat_map(|t| log.lines().filter(move |l| l.contains(&format!("task={t} "))))
        .filter_map(|l| l.split(" requeued=").nth(1)?.split(' ').next()?.parse::<i64>().ok())
        .sum();
    assert_eq!(requeued, 1, "{}", context());
    let recorded: i64 = queue
        .janitor_runs()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.janitor_id == "janitor")
        .filter_map(|r| r.totals.get("requeued").and_then(|v| v.as_i64()))
        .sum();
    assert_eq!(recorded, 1, "janitor_runs totals count the rescue");

    // worker-1's step container was left running; don't leave it behind.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker ps -aq --filter label=kiln.build={key} --filter label=kiln.worker=worker-1 | xargs -r docker rm -f"
        ))
        .output();
    drop(second);
}

#[tokio::test]
async fn token_create_prints_the_secret_once_list_never_and_revoke_ends_it() {
    let farm = Farm::new().await;
    let run = |label: &str, args: &[&str]| {
        let mut p = farm.spawn("kiln-janitor", label, args);
        let status = wait_exit(&mut p);
        (status, p.output())
    };
    let (status, out) = run("create", &["token", "create", "--name", "ci", "--scopes", "submit,download"]);
    assert!(status.success(), "{out}");
    let secret = out.lines().find(|l| l.starts_with("kiln_")).expect("the secret is printed").to_owned();
    assert!(kiln_domain::TokenSecret::parse(&secret).is_some(), "{out}");
    assert_eq!(out.matches(&secret).count(), 1, "printed once, logged nowhere: {out}");
    let queue = farm.db.queue(QueueSettings::default());
    let hash = kiln_domain::TokenSecret::parse(&secret).unwrap().hash();
    let token = queue.active_token(&hash).await.unwrap().expect("stored by its hash");
    assert_eq!(token.scopes.to_string(), "download,submit");

    let (status, list) = run("list", &["token", "list"]);
    assert!(status.success() && list.contains("ci") && list.contains("active"), "{list}");
    assert!(!list.contains(&secret[5..15]), "{list}");
    let (status, json) = run("list-json", &["token", "list", "--json"]);
    assert!(status.success(), "{json}");

    let (status, out) = run("bad", &["token", "create", "--name", "x", "--scopes", "root"]);
    assert_eq!(status.code(), Some(2), "a bad scope is a command line to fix: {out}");
    let (status, out) = run("missing", &["token", "revoke", "999"]);
    assert_eq!(status.code(), Some(1), "{out}");

    let (status, out) = run("revoke", &["token", "revoke", &token.id.to_string()]);
    assert!(status.success(), "{out}");
    assert!(queue.active_token(&hash).await.unwrap().is_none());
    let (_, list) = run("list-2", &["token", "list"]);
    assert!(list.contains("revoked"), "{list}");
}
