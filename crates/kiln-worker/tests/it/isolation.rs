//! The `escape` recipe tries to break out of its container; nothing works.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use kiln_domain::BuildState;
use kiln_worker::Exit;
use kiln_worker::JobEnd;

use crate::farm::{Farm, containers_of, entries, host_listener};

fn parse_report(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[tokio::test]
async fn a_step_cannot_break_out() {
    let Some(farm) = Farm::new("escape").await else { return };
    let (port, connections) = host_listener().await;
    // A marker on the host beside the attempt directories: the likeliest leak.
    let token = format!("kiln-secret-{}-{port}", std::process::id());
    std::fs::create_dir_all(farm.work_dir()).unwrap();
    let marker = farm.work_dir().join("kiln-escape-marker");
    std::fs::write(&marker, &token).unwrap();

    let key = farm.enqueue(&farm.spec("escape", &format!("v1.0.{port}"), &[])).await;
    let id = format!("escape-{}", std::process::id());
    let exit = farm.run_once(&id).await;
    // The worker survived everything the step did and finished the job.
    assert_eq!(exit, Exit::Once(JobEnd::Succeeded));

    let text = String::from_utf8(farm.artifact_file(&key, "report").await).unwrap();
    let report = parse_report(&text);
    let get = |k: &str| report.get(k).map(String::as_str).unwrap_or_else(|| panic!("no {k} in the report:\n{text}"));
    assert_eq!(get("done"), "yes", "{text}");

    // Not root, no capabilities, no way to gain privileges, read-only root.
    assert_eq!(get("uid"), "1000");
    assert_eq!(get("CapEff"), "0000000000000000");
    assert_eq!(get("CapBnd"), "0000000000000000");
    assert_eq!(get("NoNewPrivs"), "1");
    assert_eq!(get("write_root"), "denied");
    assert_eq!(get("write_etc"), "denied");
    assert!(!report.contains_key("docker_socket"), "{text}");

    // Only the attempt's own directory is visible.
    assert_eq!(get("marker"), "absent");
    assert!(!text.contains(&token), "the host marker leaked:\n{text}");
    assert_eq!(get("work").split_whitespace().collect::<Vec<_>>(), ["out", "src"]);

    // The probe can connect (to a listener inside the container), but never
    // to the test's port on the host.
    assert_eq!(get("tcp_control"), "connected");
    for addr in ["127.0.0.1", "172.17.0.1"] {
        let line = get(&format!("tcp {addr}:{port}"));
        assert!(line.starts_with("failed"), "{addr}: {line}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the test's listener was reached");

    // The fork bomb hit the pid limit, not its own bound; forking works again after.
    let forks: i64 = get("forks").parse().unwrap();
    assert!(forks > 0 && forks < farm.config.worker.limits.pids, "forks={forks}");
    assert_eq!(get("fork_after"), "ok");
    // The memory hog was killed by the memory limit.
    assert_eq!(get("memory_hog"), "killed:137");

    // The worker and the machine are fine: no containers or directories left,
    // and the next build works.
    assert_eq!(farm.build(&key).await.state, BuildState::Succeeded);
    assert!(containers_of(&key, &id).is_empty());
    assert_eq!(entries(&farm.work_dir()), ["kiln-escape-marker"]);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), token);
    let next = farm.enqueue(&farm.spec("hello", "v1.0.0", &[])).await;
    assert_eq!(farm.run_once(&format!("after-escape-{}", std::process::id())).await, Exit::Once(JobEnd::Succeeded));
    assert_eq!(farm.build(&next).await.state, BuildState::Succeeded);
}
