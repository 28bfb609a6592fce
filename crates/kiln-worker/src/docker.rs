//! Running one build step in a fresh, locked-down Docker container.
//!
//! Every container gets: the attempt's temporary directory at `/work` as its
//! only bind mount (plus the recipe's named cache volume, if any); network
//! `none` unless the step asks for it, and then the build network (below);
//! all capabilities dropped;
//! `no-new-privileges`; a read-only root filesystem with a tmpfs `/tmp`; a
//! non-root user; memory (without swap), CPU and pid limits; and labels
//! (`kiln.farm`, `kiln.worker`, `kiln.build`, `kiln.attempt`) by which
//! orphans are found. The step's
//! output is forwarded as it arrives; a wall-clock timeout or a cancellation
//! kills the container. The container is removed afterwards in every case,
//! even when the future running it is dropped.
//!
//! The build network (`worker.build_network`) is an internal Docker bridge
//! whose bridge has no IPv4 address (`com.docker.network.bridge.inhibit_ipv4`):
//! nothing leaves it (Docker's isolation rules drop what would be forwarded
//! off the bridge), and the worker host has no address on it, so a step
//! cannot reach the host's listeners through a gateway. Docker still gives
//! every container on it a default route to the (unowned) gateway address,
//! so a networked step does not join it directly: a *network sandbox*
//! container from `worker.network_helper_image` joins it and sleeps; a
//! one-off container with `CAP_NET_ADMIN` only, sharing the sandbox's
//! network namespace, deletes every default route; then the step runs in
//! that namespace (`container:<sandbox>`), with one interface on the build
//! network, a route to its subnet and nothing else, IPv6 off. What a step
//! may reach is what the operator puts on that network, such as a Go module
//! proxy or an allow-listing egress proxy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountTypeEnum, NetworkCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, InspectContainerOptions, InspectNetworkOptions,
    KillContainerOptions, ListContainersOptions, ListNetworksOptions, RemoveContainerOptions, StartContainerOptions,
    WaitContainerOptions,
};
use bytes::Bytes;
use futures::StreamExt;
use kiln_config::{ContainerLimits, WorkerConfig};
use kiln_domain::recipe::CacheVolume;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Label carrying the build key on every step container.
pub(crate) const LABEL_BUILD: &str = "kiln.build";
/// Label carrying the worker id on every step container.
pub(crate) const LABEL_WORKER: &str = "kiln.worker";
/// Label carrying the farm's identity on every step container.
pub(crate) const LABEL_FARM: &str = "kiln.farm";
/// Label carrying the attempt (the lease's token) on every step container.
pub(crate) const LABEL_ATTEMPT: &str = "kiln.attempt";
/// Label carrying the step name.
pub(crate) const LABEL_STEP: &str = "kiln.step";
/// Label on a build network the worker created.
pub const LABEL_NETWORK: &str = "kiln.network";

/// The driver options that make a build network: no IPv4 address for the
/// host on the bridge, no masquerading. Together with `internal: true`.
pub const BUILD_NETWORK_OPTIONS: [(&str, &str); 2] =
    [("com.docker.network.bridge.inhibit_ipv4", "true"), ("com.docker.network.bridge.enable_ip_masquerade", "false")];

/// The Docker daemon failed us: an infrastructure problem, worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error("image {image} is not present and the recipe does not allow pulling it")]
    ImageMissing { image: String },
    #[error("docker: {0}")]
    Other(String),
}

/// The image a build ran on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ImageInfo {
    /// The image as the recipe names it.
    pub name: String,
    /// The local image id (`sha256:…`).
    pub id: String,
    /// The registry digests (`repo@sha256:…`), empty for locally built images.
    pub repo_digests: Vec<String>,
}

/// Where a step with `network: true` is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildNetwork {
    /// The Docker network (`worker.build_network`).
    pub name: String,
    /// The image of the network sandbox (`worker.network_helper_image`).
    pub helper_image: String,
}

impl BuildNetwork {
    pub fn from_config(worker: &WorkerConfig) -> Self {
        BuildNetwork { name: worker.build_network.clone(), helper_image: worker.network_helper_image.clone() }
    }
}

/// Everything one container needs.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub image: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The build network for a networked step; `None` is network `none`.
    pub network: Option<BuildNetwork>,
    pub timeout: Duration,
    /// Host directory mounted at `/work`.
    pub work_dir: PathBuf,
    pub cache: Option<CacheVolume>,
    pub limits: ContainerLimits,
    pub labels: HashMap<String, String>,
}

/// How a step's container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The process exited with this code.
    Code(i64),
    /// The kernel killed it for exceeding the memory limit.
    OutOfMemory,
    /// The wall-clock timeout passed and it was killed.
    TimedOut,
    /// Stopped from outside (cancellation, preemption, shutdown).
    Killed,
}

/// The result of one container run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRun {
    pub exit: Exit,
    pub elapsed: Duration,
}

/// A connection to the Docker daemon.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connect with the local defaults (`DOCKER_HOST` or the Unix socket) and
    /// agree on an API version with the daemon.
    pub async fn connect() -> Result<Engine, DockerError> {
        let docker = Docker::connect_with_local_defaults()?.negotiate_version().await?;
        docker.ping().await?;
        Ok(Engine { docker })
    }

    /// Make sure `image` is present: pull it when missing and `pull` is set.
    pub(crate) async fn ensure_image(&self, image: &str, pull: bool) -> Result<ImageInfo, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => return Ok(image_info(image, i)),
            Err(e) if !is_not_found(&e) => return Err(e.into()),
            Err(_) if !pull => return Err(DockerError::ImageMissing { image: image.to_owned() }),
            Err(_) => {}
        }
        let opts = CreateImageOptions { from_image: Some(image.to_owned()), ..Default::default() };
        let mut progress = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = progress.next().await {
            item?;
        }
        Ok(image_info(image, self.docker.inspect_image(image).await?))
    }

    /// `docker save` of one image (by name or id), as a stream.
    pub(crate) fn export_image(
        &self,
        image: &str,
    ) -> impl futures::Stream<Item = Result<bytes::Bytes, bollard::errors::Error>> + use<> {
        self.docker.export_image(image)
    }

    /// Make the root of a recipe's cache volume belong to the step user.
    ///
    /// Docker creates a named volume owned by root unless the image has the
    /// mount point already; the steps, never root, could not write to it. A
    /// one-off container from the recipe image, with `CAP_CHOWN` as its only
    /// capability and no network, runs `chown` on the volume's root (not
    /// recursively: what the steps wrote is theirs already).
    pub(crate) async fn prepare_cache(&self, image: &str, cache: &CacheVolume, user: &str) -> Result<(), DockerError> {
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec!["chown".into(), user.to_owned(), cache.path.clone()]),
            entrypoint: Some(Vec::new()),
            user: Some("0:0".into()),
            network_disabled: Some(true),
            labels: Some(HashMap::from([(LABEL_STEP.to_owned(), "prepare-cache".to_owned())])),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    target: Some(cache.path.clone()),
                    source: Some(cache.name.clone()),
                    typ: Some(MountTypeEnum::VOLUME),
                    ..Default::default()
                }]),
                network_mode: Some("none".into()),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(vec!["CHOWN".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self.docker.create_container(None::<CreateContainerOptions>, body).await?;
        let guard = ContainerGuard { docker: self.docker.clone(), id: Some(created.id.clone()) };
        let result = async {
            self.docker.start_container(&created.id, None::<StartContainerOptions>).await?;
            match self.wait(&created.id).await? {
                0 => Ok(()),
                code => Err(DockerError::Other(format!(
                    "chown {user} on cache volume {} exited with code {code}",
                    cache.name
                ))),
            }
        }
        .await;
        guard.remove().await;
        result
    }

    /// Run one container to its end, sending its output (stdout and stderr
    /// interleaved as they come) to `output`. Returns when the process has
    /// exited, the timeout passed, or `cancel` fired; the container is gone
    /// by then.
    pub async fn run(
        &self,
        spec: &ContainerSpec,
        output: &mpsc::Sender<Bytes>,
        cancel: &CancellationToken,
    ) -> Result<StepRun, DockerError> {
        // The sandbox outlives the step's container: declared first, dropped last.
        let sandbox = match &spec.network {
            Some(net) => {
                self.ensure_build_network(net, true).await?;
                Some(self.network_sandbox(net, &spec.labels).await?)
            }
            None => None,
        };
        let mode = match &sandbox {
            Some(s) => format!("container:{}", s.id.as_deref().unwrap_or_default()),
            None => "none".to_owned(),
        };
        let created = self.docker.create_container(None::<CreateContainerOptions>, container_body(spec, &mode)).await?;
        let guard = ContainerGuard { docker: self.docker.clone(), id: Some(created.id.clone()) };
        let result = self.run_created(&created.id, spec, output, cancel).await;
        guard.remove().await;
        if let Some(sandbox) = sandbox {
            sandbox.remove().await;
        }
        result
    }

    /// Check that the build network is isolated, and (with `create`) create
    /// it when missing and make sure the helper image is present (pulling
    /// it when missing). An existing network that is not internal, gives
    /// the host an address on it, or has IPv6 is refused.
    pub async fn ensure_build_network(&self, net: &BuildNetwork, create: bool) -> Result<(), DockerError> {
        if create {
            self.ensure_image(&net.helper_image, true).await?;
        }
        match self.docker.inspect_network(&net.name, None::<InspectNetworkOptions>).await {
            Ok(found) => return check_isolated(&net.name, &found),
            Err(e) if !is_not_found(&e) => return Err(e.into()),
            Err(_) if !create => return Ok(()),
            Err(_) => {}
        }
        let request = NetworkCreateRequest {
            name: net.name.clone(),
            driver: Some("bridge".into()),
            internal: Some(true),
            enable_ipv6: Some(false),
            options: Some(BUILD_NETWORK_OPTIONS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            labels: Some(HashMap::from([(LABEL_NETWORK.to_owned(), "build".to_owned())])),
            ..Default::default()
        };
        let created = self.docker.create_network(request).await?;
        tracing::info!(network = %net.name, "created the build network");
        // Docker (API 1.41) may accept a second network of the same name from
        // a worker starting at the same time: every racer keeps the oldest.
        let filters = HashMap::from([("name".to_owned(), vec![net.name.clone()])]);
        let mut same: Vec<_> = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: Some(filters) }))
            .await?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(net.name.as_str()))
            .collect();
        same.sort_by_key(|n| (n.created.as_ref().map(ToString::to_string), n.id.clone()));
        if same.len() > 1 && same[0].id.as_deref() != Some(created.id.as_str()) {
            self.docker.remove_network(&created.id).await?;
        }
        let found = self.docker.inspect_network(&net.name, None::<InspectNetworkOptions>).await?;
        check_isolated(&net.name, &found)
    }

    /// Start a network sandbox on the build network with no default route.
    async fn network_sandbox(
        &self,
        net: &BuildNetwork,
        labels: &HashMap<String, String>,
    ) -> Result<ContainerGuard, DockerError> {
        let mut labels = labels.clone();
        labels.insert(LABEL_STEP.to_owned(), "network-sandbox".to_owned());
        let locked = |network_mode: String| HostConfig {
            network_mode: Some(network_mode),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(true),
            memory: Some(32 * 1024 * 1024),
            memory_swap: Some(32 * 1024 * 1024),
            pids_limit: Some(8),
            ..Default::default()
        };
        let holder = ContainerCreateBody {
            image: Some(net.helper_image.clone()),
            cmd: Some(vec!["sleep".into(), "2147483647".into()]),
            entrypoint: Some(Vec::new()),
            user: Some("65534:65534".into()),
            labels: Some(labels.clone()),
            host_config: Some(HostConfig {
                sysctls: Some(HashMap::from([
                    ("net.ipv6.conf.all.disable_ipv6".to_owned(), "1".to_owned()),
                    ("net.ipv6.conf.default.disable_ipv6".to_owned(), "1".to_owned()),
                ])),
                ..locked(net.name.clone())
            }),
            ..Default::default()
        };
        let created = self.docker.create_container(None::<CreateContainerOptions>, holder).await?;
        let sandbox = ContainerGuard { docker: self.docker.clone(), id: Some(created.id.clone()) };
        self.docker.start_container(&created.id, None::<StartContainerOptions>).await?;

        // Root with CAP_NET_ADMIN alone, in the sandbox's namespace, for one command.
        let script = "while ip route del default 2>/dev/null; do :; done; ! ip route show | grep -q default";
        labels.insert(LABEL_STEP.to_owned(), "network-routes".to_owned());
        let routes = ContainerCreateBody {
            image: Some(net.helper_image.clone()),
            cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
            entrypoint: Some(Vec::new()),
            user: Some("0:0".into()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                cap_add: Some(vec!["NET_ADMIN".into()]),
                ..locked(format!("container:{}", created.id))
            }),
            ..Default::default()
        };
        let helper = self.docker.create_container(None::<CreateContainerOptions>, routes).await?;
        let guard = ContainerGuard { docker: self.docker.clone(), id: Some(helper.id.clone()) };
        let result = async {
            self.docker.start_container(&helper.id, None::<StartContainerOptions>).await?;
            self.wait(&helper.id).await
        }
        .await;
        guard.remove().await;
        match result? {
            0 => Ok(sandbox),
            code => Err(DockerError::Other(format!(
                "could not remove the default route of a network sandbox on {} (exit code {code})",
                net.name
            ))),
        }
    }

    async fn run_created(
        &self,
        id: &str,
        spec: &ContainerSpec,
        output: &mpsc::Sender<Bytes>,
        cancel: &CancellationToken,
    ) -> Result<StepRun, DockerError> {
        let attach =
            AttachContainerOptions { stdout: true, stderr: true, stream: true, logs: true, ..Default::default() };
        let mut attached = self.docker.attach_container(id, Some(attach)).await?;
        let started = Instant::now();
        self.docker.start_container(id, None::<StartContainerOptions>).await?;
        let deadline = tokio::time::Instant::now() + spec.timeout;

        // Forward output until the stream ends (the process exited) or we stop it.
        let mut stopped: Option<Exit> = None;
        loop {
            tokio::select! {
                item = attached.output.next() => match item {
                    Some(Ok(chunk)) => {
                        let bytes = match chunk {
                            LogOutput::StdOut { message }
                            | LogOutput::StdErr { message }
                            | LogOutput::Console { message } => message,
                            LogOutput::StdIn { .. } => continue,
                        };
                        // A gone receiver only means nobody records the log any more.
                        let _ = output.send(bytes).await;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline), if stopped.is_none() => {
                    self.kill(id).await?;
                    stopped = Some(Exit::TimedOut);
                }
                _ = cancel.cancelled(), if stopped.is_none() => {
                    self.kill(id).await?;
                    stopped = Some(Exit::Killed);
                }
            }
        }
        let code = self.wait(id).await?;
        let elapsed = started.elapsed();
        if let Some(exit) = stopped {
            return Ok(StepRun { exit, elapsed });
        }
        let state = self.docker.inspect_container(id, None::<InspectContainerOptions>).await?.state;
        // Docker flags any OOM kill inside the container; it only explains the
        // exit when the step's own process did not exit cleanly.
        let oom = state.and_then(|s| s.oom_killed).unwrap_or(false);
        let exit = if oom && code != 0 { Exit::OutOfMemory } else { Exit::Code(code) };
        Ok(StepRun { exit, elapsed })
    }

    async fn kill(&self, id: &str) -> Result<(), DockerError> {
        match self.docker.kill_container(id, Some(KillContainerOptions { signal: "SIGKILL".into() })).await {
            // 409: it is not running any more, which is what we wanted.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            other => Ok(other?),
        }
    }

    async fn wait(&self, id: &str) -> Result<i64, DockerError> {
        let mut waiting = self.docker.wait_container(id, None::<WaitContainerOptions>);
        match waiting.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e.into()),
            None => Err(DockerError::Other(format!("container {id}: wait ended without a status"))),
        }
    }

    /// Containers (running or not) carrying `label`: their ids and labels.
    pub(crate) async fn labelled(&self, label: &str) -> Result<Vec<(String, HashMap<String, String>)>, DockerError> {
        Ok(self.list(label).await?.into_iter().filter_map(|c| Some((c.id?, c.labels.unwrap_or_default()))).collect())
    }

    /// Kill and remove these containers. Returns how many were removed.
    pub(crate) async fn remove_ids(&self, ids: &[String]) -> Result<usize, DockerError> {
        let mut removed = 0;
        for id in ids {
            let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            match self.docker.remove_container(id, Some(opts)).await {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    async fn list(&self, label_filter: &str) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let filters = HashMap::from([("label".to_owned(), vec![label_filter.to_owned()])]);
        let opts = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        Ok(self.docker.list_containers(Some(opts)).await?)
    }
}

/// Removes the container when dropped without [`ContainerGuard::remove`],
/// e.g. when the task running the step is aborted.
struct ContainerGuard {
    docker: Docker,
    id: Option<String>,
}

impl ContainerGuard {
    async fn remove(mut self) {
        if let Some(id) = self.id.take() {
            remove_quietly(&self.docker, &id).await;
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let docker = self.docker.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { remove_quietly(&docker, &id).await });
            }
        }
    }
}

async fn remove_quietly(docker: &Docker, id: &str) {
    let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    if let Err(e) = docker.remove_container(id, Some(opts)).await
        && !is_not_found(&e)
    {
        tracing::warn!(container = id, error = %e, "could not remove a step container");
    }
}

/// An existing build network must be as isolated as one the worker makes.
fn check_isolated(name: &str, n: &bollard::models::Network) -> Result<(), DockerError> {
    let option = |k: &str| n.options.as_ref().and_then(|o| o.get(k)).map(String::as_str);
    let mut wrong = Vec::new();
    if n.driver.as_deref() != Some("bridge") {
        wrong.push("its driver is not bridge");
    }
    if n.internal != Some(true) {
        wrong.push("it is not internal");
    }
    if option(BUILD_NETWORK_OPTIONS[0].0) != Some("true") {
        wrong.push("the host has an address on it (com.docker.network.bridge.inhibit_ipv4 is not true)");
    }
    if n.enable_ipv6 == Some(true) {
        wrong.push("it has IPv6");
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(DockerError::Other(format!(
        "build network {name} is not isolated: {}; remove it (the worker creates it) or name another in \
         worker.build_network",
        wrong.join(", ")
    )))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

fn image_info(name: &str, i: bollard::models::ImageInspect) -> ImageInfo {
    ImageInfo { name: name.to_owned(), id: i.id.unwrap_or_default(), repo_digests: i.repo_digests.unwrap_or_default() }
}

/// The container definition: where the isolation is written down.
/// `network_mode` is `none` or the step's network sandbox.
fn container_body(spec: &ContainerSpec, network_mode: &str) -> ContainerCreateBody {
    let limits = &spec.limits;
    let memory = i64::try_from(limits.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let mut mounts = vec![Mount {
        target: Some("/work".into()),
        source: Some(spec.work_dir.display().to_string()),
        typ: Some(MountTypeEnum::BIND),
        read_only: Some(false),
        ..Default::default()
    }];
    if let Some(cache) = &spec.cache {
        mounts.push(Mount {
            target: Some(cache.path.clone()),
            source: Some(cache.name.clone()),
            typ: Some(MountTypeEnum::VOLUME),
            read_only: Some(false),
            ..Default::default()
        });
    }
    let host = HostConfig {
        mounts: Some(mounts),
        network_mode: Some(network_mode.to_owned()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            format!("rw,nosuid,nodev,size={}m,mode=1777", limits.tmpfs_mb),
        )])),
        memory: Some(memory),
        // Equal to memory: no swap on top of the limit.
        memory_swap: Some(memory),
        nano_cpus: Some((limits.cpus * 1e9) as i64),
        pids_limit: Some(limits.pids),
        ipc_mode: Some("private".into()),
        privileged: Some(false),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.argv.clone()),
        // The argv is the whole command line: no image entrypoint (often a shell) in front.
        entrypoint: Some(Vec::new()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user: Some(limits.user.clone()),
        working_dir: Some("/work".into()),
        labels: Some(spec.labels.clone()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        open_stdin: Some(false),
        network_disabled: Some(spec.network.is_none()),
        host_config: Some(host),
        ..Default::default()
    }
}
