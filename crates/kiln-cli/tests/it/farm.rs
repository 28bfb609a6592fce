//! A farm of real `kiln-api` (and `kiln-worker`) processes for the client
//! commands to talk to, and `kiln` run against it.

use std::path::Path;
use std::process::{Command, Output};

use kiln_testkit::farm::{Farm, Proc};

use crate::text;

pub struct CliFarm {
    pub farm: Farm,
    procs: Vec<Proc>,
}

impl CliFarm {
    /// A fresh farm with the API running, and a worker when `worker`.
    pub async fn start(worker: bool) -> CliFarm {
        let farm = Farm::new().await;
        let mut procs = vec![farm.start_api().await];
        if worker {
            // Unique on this machine: a worker removes containers left by one of the same id.
            procs.push(farm.start_worker(&format!("cli-test-{}", farm.port)));
        }
        CliFarm { farm, procs }
    }

    /// Run `kiln --server <farm> ARGS` in `dir`.
    pub fn kiln_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("KILN_SERVER", self.farm.url())
            .current_dir(dir)
            .output()
            .expect("kiln runs")
    }

    /// Every process's output, for failure messages.
    pub fn logs(&self) -> String {
        self.procs.iter().map(|p| format!("----- {} -----\n{}\n", p.label(), p.output())).collect()
    }

    /// `kiln`'s output and the farm's, for failure messages.
    pub fn explain(&self, out: &Output) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr),
            self.logs()
        )
    }
}
