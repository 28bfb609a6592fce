//! The real `kiln-api`, `kiln-worker` and `kiln-janitor` binaries share one
//! plumbing: JSON logs on request, no colour codes in a log file, and one
//! exit status for each kind of failure (2: fix the configuration or the
//! environment; 1: something failed while running).

use std::time::{Duration, Instant};

use kiln_testkit::farm::{Farm, Proc};

/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);

/// The three servers, with the arguments that make each one serve.
const SERVERS: [(&str, &[&str]); 3] = [("kiln-api", &[]), ("kiln-worker", &[]), ("kiln-janitor", &["run"])];

/// Wait until `p` printed `needle` or exited; true when it printed it.
async fn printed(p: &mut Proc, needle: &str) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if p.output().contains(needle) {
            return true;
        }
        if p.wait_timeout(Duration::ZERO).is_some() {
            return p.output().contains(needle);
        }
        assert!(Instant::now() < deadline, "{} did not print {needle:?}:\n{}", p.label(), p.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a server prints once it is up (the worker's needs Docker; without
/// it, the worker stops with an error, which is a log line too).
fn up_line(name: &str) -> &'static str {
    match name {
        "kiln-api" => "kiln-api listening",
        "kiln-worker" => "worker registered",
        _ => "scheduled",
    }
}

/// Start each server with `extra` variables, wait until it is up, stop it
/// with SIGTERM; each one's output and exit status.
async fn run_each(farm: &Farm, extra: &[(&str, &str)]) -> Vec<(String, String, Option<i32>)> {
    farm.migrate();
    let mut out = Vec::new();
    for (name, args) in SERVERS {
        // Unique on this machine: a worker removes the containers of workers with its id.
        let label = format!("{name}-{}-{}", out.len(), farm.port);
        let mut p = farm.spawn_with(name, &label, args, &[extra, &[("KILN_WORKER_ID", label.as_str())]].concat());
        let up = printed(&mut p, up_line(name)).await;
        p.signal("TERM");
        let status = p.wait_timeout(PATIENCE).unwrap_or_else(|| panic!("{label} did not stop:\n{}", p.output()));
        if !up {
            assert!(name == "kiln-worker", "{label} never came up:\n{}", p.output());
            assert!(
                p.output().contains("Docker"),
                "only the worker may fail to start, for want of Docker:\n{}",
                p.output()
            );
        }
        out.push((name.to_owned(), p.output(), status.code()));
    }
    out
}

#[tokio::test]
async fn with_kiln_log_format_json_every_line_of_every_server_is_a_json_object() {
    let farm = Farm::new().await;
    for (name, output, code) in run_each(&farm, &[("KILN_LOG_FORMAT", "json")]).await {
        let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 2, "{name} logged:\n{output}");
        for line in &lines {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}\n{output}"));
            assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{name}: {line}");
        }
        if code == Some(0) {
            assert!(output.contains(up_line(&name)), "{name}:\n{output}");
        } else {
            // Only a worker without Docker gets here: its last word is a JSON error too.
            let last: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
            assert_eq!((last["level"].as_str(), last["fields"]["exit_code"].as_u64()), (Some("ERROR"), Some(1)));
        }
    }
}

#[tokio::test]
async fn a_log_written_to_a_file_has_no_colour_codes() {
    let farm = Farm::new().await;
    for (name, output, _) in run_each(&farm, &[]).await {
        assert!(output.contains(" INFO "), "{name} logged in text:\n{output}");
        assert!(!output.contains('\u{1b}'), "{name} wrote escape codes into its log file:\n{output:?}");
        assert!(!output.trim_start().starts_with('{'), "{name}: text is the default:\n{output}");
    }
}

/// Run `name args` to its end with `extra` variables; its exit status and output.
fn exit_of(farm: &Farm, name: &str, args: &[&str], extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let label = format!("{name}-{}", args.join("-")).replace(['/', '.'], "_");
    let mut p = farm.spawn_with(name, &label, args, extra);
    let status = p.wait_timeout(PATIENCE).unwrap_or_else(|| panic!("{name} {args:?} did not exit:\n{}", p.output()));
    (status.code(), p.output())
}

#[tokio::test]
async fn a_configuration_error_exits_2_and_a_failure_at_run_time_exits_1_in_every_server() {
    let farm = Farm::new().await;
    let test_config = std::fs::read_to_string(kiln_testkit::repo_root().join("config.test.yml")).unwrap();
    let unknown_key = farm.data.path().join("unknown-key.yml");
    std::fs::write(&unknown_key, format!("{test_config}\ncolour: blue\n")).unwrap();
    let bad_schedule = farm.data.path().join("bad-schedule.yml");
    std::fs::write(&bad_schedule, test_config.replace(r#"rescue: "*/2 * * * * *""#, r#"rescue: "every minute""#))
        .unwrap();
    let unmigrated = farm.db.empty_sibling("unmigrated").await;
    let path = |p: &std::path::Path| p.display().to_string();
    let janitor_commands: [&[&str]; 3] = [&["migrate"], &["run"], &["once"]];
    let mut runs: Vec<(&str, Vec<&str>)> =
        vec![("kiln-api", vec![]), ("kiln-worker", vec![]), ("kiln-worker", vec!["--once"])];
    runs.extend(janitor_commands.iter().map(|a| ("kiln-janitor", a.to_vec())));

    for (name, args) in &runs {
        // A key the configuration does not have: 2, naming the file and the key.
        let file = path(&unknown_key);
        let with_config = [&["--config", file.as_str()][..], args].concat();
        let (code, out) = exit_of(&farm, name, &with_config, &[]);
        assert_eq!(code, Some(2), "{name} {args:?}:\n{out}");
        assert!(out.contains(&file) && out.contains("colour"), "{name} names the file and the key:\n{out}");
        assert!(out.trim_end().lines().last().unwrap().starts_with(&format!("{name}: ")), "{out}");

        // An environment variable with a value it does not take: 2.
        let (code, out) = exit_of(&farm, name, args, &[("KILN_LOG_FORMAT", "yaml")]);
        assert_eq!(code, Some(2), "{name} {args:?}:\n{out}");
        assert!(out.contains("KILN_LOG_FORMAT"), "{out}");

        // A database without Kiln's schema: a failure at run time, 1, saying
        // what to do (which `migrate` does, and `run` does first).
        if !matches!(args.first(), Some(&"migrate" | &"run")) {
            let (code, out) = exit_of(&farm, name, args, &[("DATABASE_URL", &unmigrated)]);
            assert_eq!(code, Some(1), "{name} {args:?}:\n{out}");
            assert!(out.contains("kiln-janitor migrate"), "{name} {args:?}:\n{out}");
        }
    }

    // A schedule that is not a cron expression is a configuration error too.
    let file = path(&bad_schedule);
    let (code, out) = exit_of(&farm, "kiln-janitor", &["--config", &file, "run"], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(&format!("{file}: janitor.schedules.rescue: \"every minute\"")), "{out}");
}
