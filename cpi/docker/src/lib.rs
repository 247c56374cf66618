//! The Docker CPI: a VM is a container from the stemcell's image on a Docker network that matches
//! the cloud-config network (created when missing, with its subnet and gateway), with the address
//! the director assigned; a persistent disk is a Docker volume; a stemcell is an image imported
//! from the stemcell's root filesystem. Containers run unprivileged under Docker's `--init`.
//!
//! A VM's agent root (`/var/vcap`) is a volume of its own, so attaching or detaching a disk —
//! which Docker can only do by recreating the container — keeps the agent's ledger, its jobs and
//! its settings; the container keeps its name and address. Tags are labels set at creation;
//! later metadata (`set_vm_metadata`, `set_disk_metadata`) is kept in the CPI's state folder,
//! where `list_vms`/`list_disks` (and so `bosun cck`) read it.

use bollard::container::{
    Config, CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions, UploadToContainerOptions,
};
use bollard::image::CreateImageOptions;
use bollard::models::{
    ContainerInspectResponse, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig, Mount, MountTypeEnum,
};
use bollard::network::{ConnectNetworkOptions, CreateNetworkOptions, InspectNetworkOptions};
use bollard::volume::{CreateVolumeOptions, ListVolumesOptions, RemoveVolumeOptions};
use bollard::Docker;
use bosun_cpi::{
    agent_settings, creation_tags, Cpi, CpiError, CpiInfo, CpiResult, CreateVmRequest, DiskListing, VmListing,
};
use bosun_types::protocol::NetworkSettings;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

const MANAGED: &str = "bosun.managed";
const AGENT: &str = "bosun.agent_id";
const TAG: &str = "bosun.tag.";
const SIZE: &str = "bosun.size_mb";
/// Where a persistent disk appears in the container; the agent links its store there.
const DISKS_AT: &str = "/var/vcap/disks";

/// `bosun director --cpi docker --cpi-config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerCpiConfig {
    /// The Docker Engine's socket; the local default when unset.
    #[serde(default)]
    pub socket: Option<String>,
    /// How agents in containers reach the director: `gateway` (the host side of each container's
    /// network, with the director's agent port) or a `host:port`.
    #[serde(default = "gateway")]
    pub agent_director_address: String,
}

fn gateway() -> String {
    "gateway".into()
}

impl Default for DockerCpiConfig {
    fn default() -> Self {
        DockerCpiConfig { socket: None, agent_director_address: gateway() }
    }
}

pub struct DockerCpi {
    docker: Docker,
    config: DockerCpiConfig,
    /// Metadata set after creation, per VM and disk cid.
    state: PathBuf,
    /// Making and pruning networks, and recreating containers, are one step each.
    lock: tokio::sync::Mutex<()>,
}

fn cloud(what: &'static str) -> impl Fn(bollard::errors::Error) -> CpiError {
    move |e| CpiError::Cloud(format!("{what}: {e}"))
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

fn labels_of(tags: &BTreeMap<String, String>, agent_id: Option<&str>) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = tags.iter().map(|(k, v)| (format!("{TAG}{k}"), v.clone())).collect();
    l.insert(MANAGED.into(), "true".into());
    if let Some(a) = agent_id {
        l.insert(AGENT.into(), a.into());
    }
    l
}

fn tags_of(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().filter_map(|(k, v)| k.strip_prefix(TAG).map(|t| (t.to_string(), v.clone()))).collect()
}

fn disk_mount(disk: &str) -> Mount {
    Mount {
        target: Some(format!("{DISKS_AT}/{disk}")),
        source: Some(disk.to_string()),
        typ: Some(MountTypeEnum::VOLUME),
        ..Default::default()
    }
}

/// The Docker network a cloud-config network maps to: `cloud_properties.name`, else `bosun-<name>`.
fn network_name(name: &str, n: &NetworkSettings) -> String {
    n.cloud_properties.get("name").and_then(|v| v.as_str()).map(str::to_string).unwrap_or(format!("bosun-{name}"))
}

/// A one-file tar archive (with its folder), for `upload_to_container`.
fn tar_of(path_in_archive: &str, bytes: &[u8], mode: u32) -> CpiResult<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(mode);
    h.set_cksum();
    b.append_data(&mut h, path_in_archive, bytes).map_err(|e| CpiError::Cloud(format!("packing settings: {e}")))?;
    b.into_inner().map_err(|e| CpiError::Cloud(format!("packing settings: {e}")))
}

impl DockerCpi {
    /// A CPI for the engine the config names; nothing is asked of the engine yet.
    pub fn new(config: DockerCpiConfig, state: impl Into<PathBuf>) -> CpiResult<Self> {
        let docker = match &config.socket {
            Some(s) => Docker::connect_with_socket(s, 120, bollard::API_DEFAULT_VERSION),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(cloud("connecting to the Docker Engine"))?;
        let state = state.into();
        std::fs::create_dir_all(state.join("metadata"))
            .map_err(|e| CpiError::Cloud(format!("creating {}: {e}", state.display())))?;
        Ok(Self { docker, config, state, lock: tokio::sync::Mutex::new(()) })
    }

    /// Connects to the engine and checks it answers.
    pub async fn connect(config: DockerCpiConfig, state: impl Into<PathBuf>) -> CpiResult<Self> {
        let cpi = Self::new(config, state)?;
        cpi.docker.ping().await.map_err(cloud("the Docker Engine does not answer"))?;
        Ok(cpi)
    }

    fn metadata_path(&self, cid: &str) -> PathBuf {
        self.state.join("metadata").join(format!("{cid}.json"))
    }

    async fn read_metadata(&self, cid: &str) -> BTreeMap<String, String> {
        let bytes = tokio::fs::read(self.metadata_path(cid)).await;
        bytes.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    async fn merge_metadata(&self, cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        let mut m = self.read_metadata(cid).await;
        m.extend(metadata.clone());
        let path = self.metadata_path(cid);
        let tmp = path.with_extension("tmp");
        let written = match tokio::fs::write(&tmp, serde_json::to_vec_pretty(&m).expect("serializable")).await {
            Ok(()) => tokio::fs::rename(&tmp, &path).await,
            Err(e) => Err(e),
        };
        written.map_err(|e| CpiError::Cloud(format!("writing {}: {e}", path.display())))
    }

    async fn inspect(&self, cid: &str) -> CpiResult<ContainerInspectResponse> {
        match self.docker.inspect_container(cid, None::<InspectContainerOptions>).await {
            Ok(c) => Ok(c),
            Err(e) if not_found(&e) => Err(CpiError::VmNotFound(cid.to_string())),
            Err(e) => Err(CpiError::Cloud(format!("inspecting {cid}: {e}"))),
        }
    }

    /// Makes the Docker network for a manual network if it does not exist; checks it matches.
    async fn ensure_network(&self, name: &str, n: &NetworkSettings) -> CpiResult<()> {
        let ip: Ipv4Addr = n.ip.parse().map_err(|_| bad_network(name, "no IPv4 address"))?;
        let mask: Ipv4Addr = n.netmask.parse().map_err(|_| bad_network(name, "no netmask"))?;
        let prefix = u32::from(mask).leading_ones() as u8;
        let subnet = ipnet::Ipv4Net::new(ip, prefix).map_err(|_| bad_network(name, "bad netmask"))?.trunc();
        match self.docker.inspect_network(name, None::<InspectNetworkOptions<String>>).await {
            Ok(existing) => {
                let subnets: Vec<String> = existing
                    .ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.subnet)
                    .collect();
                if !subnets.contains(&subnet.to_string()) {
                    return Err(bad_network(
                        name,
                        &format!("Docker network `{name}` exists with subnets [{}], not {subnet}", subnets.join(", ")),
                    ));
                }
                Ok(())
            }
            Err(e) if not_found(&e) => {
                let mut labels = HashMap::new();
                labels.insert(MANAGED.to_string(), "true".to_string());
                let options = CreateNetworkOptions {
                    name: name.to_string(),
                    driver: "bridge".to_string(),
                    ipam: Ipam {
                        config: Some(vec![IpamConfig {
                            subnet: Some(subnet.to_string()),
                            gateway: n.gateway.clone(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                    labels,
                    ..Default::default()
                };
                self.docker.create_network(options).await.map_err(cloud("creating the Docker network"))?;
                Ok(())
            }
            Err(e) => Err(CpiError::Cloud(format!("inspecting network {name}: {e}"))),
        }
    }

    /// Removes bosun's Docker networks no container uses any more.
    async fn prune_networks(&self) {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{MANAGED}=true")]);
        let Ok(nets) = self.docker.list_networks(Some(bollard::network::ListNetworksOptions { filters })).await else {
            return;
        };
        for n in nets {
            let Some(name) = n.name else { continue };
            let Ok(full) = self.docker.inspect_network(&name, None::<InspectNetworkOptions<String>>).await else {
                continue;
            };
            if full.containers.unwrap_or_default().is_empty() {
                let _ = self.docker.remove_network(&name).await;
            }
        }
    }

    /// Creates and starts a container; returns the networks with the addresses it got. With
    /// `make_networks` the Docker networks are made first where missing, and until the container
    /// is on them no network is pruned (the caller that passes `false` holds the lock already).
    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        &self,
        cid: &str,
        image: &str,
        labels: HashMap<String, String>,
        host_config: HostConfig,
        networks: &BTreeMap<String, NetworkSettings>,
        settings_json: &[u8],
        make_networks: bool,
    ) -> CpiResult<BTreeMap<String, NetworkSettings>> {
        let guard = if make_networks { Some(self.lock.lock().await) } else { None };
        if make_networks {
            for (name, n) in networks.iter().filter(|(_, n)| n.kind != bosun_types::cloud_config::NetworkType::Dynamic)
            {
                self.ensure_network(&network_name(name, n), n).await?;
            }
        }
        let mut nets = networks.iter();
        // The director's address, or (dynamic networks) Docker's choice.
        let endpoint = |n: &NetworkSettings| EndpointSettings {
            ipam_config: (!n.ip.is_empty())
                .then(|| EndpointIpamConfig { ipv4_address: Some(n.ip.clone()), ..Default::default() }),
            ..Default::default()
        };
        let first = nets.next().ok_or_else(|| CpiError::InvalidArguments("create_vm: no network".into()))?;
        let first_name = network_name(first.0, first.1);
        let mut endpoints = HashMap::new();
        endpoints.insert(first_name.clone(), endpoint(first.1));
        let config = Config {
            image: Some(image.to_string()),
            hostname: Some(cid.trim_start_matches("bosun-").chars().take(63).collect()),
            cmd: Some(vec!["/opt/bosun/bin/bosun-init".to_string()]),
            labels: Some(labels),
            host_config: Some(HostConfig { network_mode: Some(first_name), ..host_config }),
            networking_config: Some(bollard::container::NetworkingConfig { endpoints_config: endpoints }),
            ..Default::default()
        };
        self.docker
            .create_container(Some(CreateContainerOptions { name: cid.to_string(), platform: None }), config)
            .await
            .map_err(|e| CpiError::VmCreationFailed {
                message: format!("creating the container: {e}"),
                ok_to_retry: false,
            })?;
        for (key, n) in nets {
            let name = network_name(key, n);
            self.docker
                .connect_network(
                    &name,
                    ConnectNetworkOptions { container: cid.to_string(), endpoint_config: endpoint(n) },
                )
                .await
                .map_err(cloud("connecting the container to a network"))?;
        }
        // On its networks now: containers start side by side.
        drop(guard);
        let archive = tar_of("bosh/settings.json", settings_json, 0o600)?;
        self.docker
            .upload_to_container(
                cid,
                Some(UploadToContainerOptions { path: "/var/vcap".to_string(), ..Default::default() }),
                archive.into(),
            )
            .await
            .map_err(cloud("writing the agent's settings"))?;
        self.docker.start_container::<String>(cid, None).await.map_err(|e| CpiError::VmCreationFailed {
            message: format!("starting the container: {e}"),
            ok_to_retry: true,
        })?;
        let started = self.inspect(cid).await?;
        let attached = started.network_settings.and_then(|s| s.networks).unwrap_or_default();
        let mut out = networks.clone();
        for (key, n) in out.iter_mut() {
            if let Some(ep) = attached.get(&network_name(key, n)) {
                if n.ip.is_empty() {
                    n.ip = ep.ip_address.clone().unwrap_or_default();
                    if let Some(p) = ep.ip_prefix_len {
                        n.netmask = Ipv4Addr::from(u32::MAX.checked_shl(32 - p as u32).unwrap_or(0)).to_string();
                    }
                    n.gateway = ep.gateway.clone().filter(|g| !g.is_empty());
                }
            }
        }
        Ok(out)
    }

    /// Recreates a VM's container with other persistent disks mounted: same name, image,
    /// labels, limits, networks and addresses; the agent root volume carries its state over.
    async fn recreate_with_disks(&self, cid: &str, disks: &[String]) -> CpiResult<()> {
        let c = self.inspect(cid).await?;
        let config = c.config.clone().unwrap_or_default();
        let mut host = c.host_config.clone().unwrap_or_default();
        let mut mounts: Vec<Mount> = host
            .mounts
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| !m.target.as_deref().unwrap_or("").starts_with(DISKS_AT))
            .collect();
        mounts.extend(disks.iter().map(|d| disk_mount(d)));
        host.mounts = Some(mounts);
        let networks: BTreeMap<String, NetworkSettings> = c
            .network_settings
            .and_then(|s| s.networks)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, ep)| {
                (
                    name.clone(),
                    NetworkSettings {
                        kind: bosun_types::cloud_config::NetworkType::Manual,
                        ip: ep.ipam_config.and_then(|i| i.ipv4_address).or(ep.ip_address).unwrap_or_default(),
                        netmask: String::new(),
                        gateway: ep.gateway,
                        default: vec![],
                        dns: vec![],
                        cloud_properties: serde_json::json!({ "name": name }),
                    },
                )
            })
            .collect();
        // The settings in the root volume stay; they are rewritten with the disks the VM has now.
        let settings = self.read_settings(cid).await?;
        let mut settings = settings;
        settings.disks.persistent =
            disks.iter().map(|d| (d.clone(), serde_json::json!({ "path": format!("{DISKS_AT}/{d}") }))).collect();
        let _ = self.docker.stop_container(cid, Some(StopContainerOptions { t: 10 })).await;
        self.docker
            .remove_container(cid, Some(RemoveContainerOptions { force: true, ..Default::default() }))
            .await
            .map_err(cloud("removing the container to recreate it"))?;
        let image = config.image.clone().unwrap_or_default();
        let labels = config.labels.clone().unwrap_or_default();
        let bytes = serde_json::to_vec_pretty(&settings).expect("serializable");
        self.run_container(cid, &image, labels, host, &networks, &bytes, false).await.map(|_| ())
    }

    async fn read_settings(&self, cid: &str) -> CpiResult<bosun_types::protocol::AgentSettings> {
        let mut stream = self.docker.download_from_container(
            cid,
            Some(bollard::container::DownloadFromContainerOptions { path: "/var/vcap/bosh/settings.json" }),
        );
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(cloud("reading the agent's settings"))?);
        }
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut entries = archive.entries().map_err(|e| CpiError::Cloud(format!("reading settings: {e}")))?;
        let mut entry = entries
            .next()
            .ok_or_else(|| CpiError::Cloud("the VM has no settings".into()))?
            .map_err(|e| CpiError::Cloud(format!("reading settings: {e}")))?;
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut text)
            .map_err(|e| CpiError::Cloud(format!("reading settings: {e}")))?;
        serde_json::from_slice(&text).map_err(|e| CpiError::Cloud(format!("the VM's settings are malformed: {e}")))
    }

    fn disks_of(c: &ContainerInspectResponse) -> Vec<String> {
        c.host_config
            .as_ref()
            .and_then(|h| h.mounts.as_ref())
            .map(|ms| {
                ms.iter()
                    .filter(|m| m.target.as_deref().unwrap_or("").starts_with(DISKS_AT))
                    .filter_map(|m| m.source.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn bad_network(name: &str, what: &str) -> CpiError {
    CpiError::VmCreationFailed { message: format!("network `{name}`: {what}"), ok_to_retry: false }
}

#[async_trait::async_trait]
impl Cpi for DockerCpi {
    fn name(&self) -> &str {
        "docker"
    }

    async fn info(&self) -> CpiResult<CpiInfo> {
        Ok(CpiInfo { api_version: 2, stemcell_formats: vec!["docker".into()] })
    }

    async fn create_stemcell(&self, image_path: &Path, _cloud_properties: &serde_json::Value) -> CpiResult<String> {
        let bytes = tokio::fs::read(image_path)
            .await
            .map_err(|e| CpiError::Cloud(format!("reading {}: {e}", image_path.display())))?;
        // A tag of its own per upload: deleting one stemcell never touches another's image.
        let tag = format!("s{}", uuid::Uuid::new_v4().simple());
        let options = CreateImageOptions {
            from_src: "-".to_string(),
            repo: "bosun-stemcell".to_string(),
            tag: tag.clone(),
            ..Default::default()
        };
        let mut progress = self.docker.create_image(Some(options), Some(bytes.into()), None);
        while let Some(p) = progress.next().await {
            p.map_err(cloud("importing the stemcell image"))?;
        }
        Ok(format!("bosun-stemcell:{tag}"))
    }

    async fn delete_stemcell(&self, stemcell_cid: &str) -> CpiResult<()> {
        match self.docker.remove_image(stemcell_cid, None, None).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Err(CpiError::StemcellNotFound(stemcell_cid.to_string())),
            Err(e) => Err(CpiError::Cloud(format!("removing image {stemcell_cid}: {e}"))),
        }
    }

    async fn create_vm(&self, request: &CreateVmRequest) -> CpiResult<(String, BTreeMap<String, NetworkSettings>)> {
        match self.docker.inspect_image(&request.stemcell_cid).await {
            Ok(_) => {}
            Err(e) if not_found(&e) => return Err(CpiError::StemcellNotFound(request.stemcell_cid.clone())),
            Err(e) => return Err(CpiError::Cloud(format!("inspecting the stemcell image: {e}"))),
        }
        let cid = format!("bosun-vm-{}", uuid::Uuid::new_v4().simple());
        let mut settings = agent_settings(request, &cid)?;
        if self.config.agent_director_address == "gateway" {
            let gw = request.networks.values().find_map(|n| n.gateway.clone()).ok_or_else(|| {
                CpiError::InvalidArguments(
                    "create_vm: agents reach the director through a network gateway; none is given".into(),
                )
            })?;
            let port = settings.director.address.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
            settings.director.address = format!("{gw}:{port}");
        } else {
            settings.director.address = self.config.agent_director_address.clone();
        }
        settings.disks.persistent = request
            .disk_cids
            .iter()
            .map(|d| (d.clone(), serde_json::json!({ "path": format!("{DISKS_AT}/{d}") })))
            .collect();
        let tags = creation_tags(request);
        let mut labels = labels_of(&tags, Some(&request.agent_id));
        labels.insert("bosun.vm".into(), "true".into());
        // The agent's root is a volume of the VM's own: it outlives container recreation.
        let root_volume = format!("{cid}-root");
        self.docker
            .create_volume(CreateVolumeOptions {
                name: root_volume.clone(),
                labels: labels_of(&BTreeMap::new(), None),
                ..Default::default()
            })
            .await
            .map_err(cloud("creating the VM's root volume"))?;
        let mut mounts = vec![Mount {
            target: Some("/var/vcap".into()),
            source: Some(root_volume.clone()),
            typ: Some(MountTypeEnum::VOLUME),
            ..Default::default()
        }];
        mounts.extend(request.disk_cids.iter().map(|d| disk_mount(d)));
        let cp = &request.cloud_properties;
        let host = HostConfig {
            init: Some(true),
            privileged: Some(false),
            mounts: Some(mounts),
            nano_cpus: cp.get("cpus").and_then(|v| v.as_f64()).map(|c| (c * 1e9) as i64),
            memory: cp.get("memory").and_then(|v| v.as_i64()).map(|mb| mb * 1024 * 1024),
            ..Default::default()
        };
        let bytes = serde_json::to_vec_pretty(&settings).expect("serializable");
        match self.run_container(&cid, &request.stemcell_cid, labels, host, &request.networks, &bytes, true).await {
            Ok(networks) => Ok((cid, networks)),
            Err(e) => {
                // A CPI cleans up after a failed create_vm.
                let _ = self
                    .docker
                    .remove_container(&cid, Some(RemoveContainerOptions { force: true, ..Default::default() }))
                    .await;
                let _ = self.docker.remove_volume(&root_volume, None::<RemoveVolumeOptions>).await;
                Err(e)
            }
        }
    }

    async fn delete_vm(&self, vm_cid: &str) -> CpiResult<()> {
        self.inspect(vm_cid).await?;
        let _one = self.lock.lock().await;
        self.docker
            .remove_container(vm_cid, Some(RemoveContainerOptions { force: true, ..Default::default() }))
            .await
            .map_err(cloud("removing the container"))?;
        let _ = self.docker.remove_volume(&format!("{vm_cid}-root"), None::<RemoveVolumeOptions>).await;
        let _ = tokio::fs::remove_file(self.metadata_path(vm_cid)).await;
        self.prune_networks().await;
        Ok(())
    }

    async fn has_vm(&self, vm_cid: &str) -> CpiResult<bool> {
        match self.inspect(vm_cid).await {
            // A container that stopped (killed, crashed) is a VM that is gone.
            Ok(c) => Ok(c.state.and_then(|s| s.running).unwrap_or(false)),
            Err(CpiError::VmNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn reboot_vm(&self, vm_cid: &str) -> CpiResult<()> {
        self.inspect(vm_cid).await?;
        self.docker.restart_container(vm_cid, None).await.map_err(cloud("restarting the container"))
    }

    async fn set_vm_metadata(&self, vm_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        self.inspect(vm_cid).await?;
        self.merge_metadata(vm_cid, metadata).await
    }

    async fn create_disk(
        &self,
        size_mb: u64,
        _cloud_properties: &serde_json::Value,
        _vm_locality: Option<&str>,
    ) -> CpiResult<String> {
        if size_mb == 0 {
            return Err(CpiError::InvalidArguments("create_disk: size must be greater than 0".into()));
        }
        let cid = format!("bosun-disk-{}", uuid::Uuid::new_v4().simple());
        let mut labels = labels_of(&BTreeMap::new(), None);
        labels.insert(SIZE.into(), size_mb.to_string());
        labels.insert("bosun.disk".into(), "true".into());
        self.docker
            .create_volume(CreateVolumeOptions { name: cid.clone(), labels, ..Default::default() })
            .await
            .map_err(cloud("creating the volume"))?;
        Ok(cid)
    }

    async fn delete_disk(&self, disk_cid: &str) -> CpiResult<()> {
        if !self.has_disk(disk_cid).await? {
            return Err(CpiError::DiskNotFound(disk_cid.to_string()));
        }
        self.docker
            .remove_volume(disk_cid, None::<RemoveVolumeOptions>)
            .await
            .map_err(|e| CpiError::Cloud(format!("removing volume {disk_cid} (is it attached?): {e}")))?;
        let _ = tokio::fs::remove_file(self.metadata_path(disk_cid)).await;
        Ok(())
    }

    async fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<serde_json::Value> {
        if !self.has_disk(disk_cid).await? {
            return Err(CpiError::DiskNotFound(disk_cid.to_string()));
        }
        let _one = self.lock.lock().await;
        let c = self.inspect(vm_cid).await?;
        let mut disks = Self::disks_of(&c);
        if !disks.iter().any(|d| d == disk_cid) {
            disks.push(disk_cid.to_string());
            self.recreate_with_disks(vm_cid, &disks).await?;
        }
        Ok(serde_json::json!({ "path": format!("{DISKS_AT}/{disk_cid}") }))
    }

    async fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<()> {
        let _one = self.lock.lock().await;
        let c = self.inspect(vm_cid).await?;
        let mut disks = Self::disks_of(&c);
        if !disks.iter().any(|d| d == disk_cid) {
            return Err(CpiError::DiskNotAttached { vm_cid: vm_cid.to_string(), disk_cid: disk_cid.to_string() });
        }
        disks.retain(|d| d != disk_cid);
        self.recreate_with_disks(vm_cid, &disks).await
    }

    async fn set_disk_metadata(&self, disk_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        if !self.has_disk(disk_cid).await? {
            return Err(CpiError::DiskNotFound(disk_cid.to_string()));
        }
        self.merge_metadata(disk_cid, metadata).await
    }

    async fn has_disk(&self, disk_cid: &str) -> CpiResult<bool> {
        match self.docker.inspect_volume(disk_cid).await {
            Ok(v) => Ok(v.labels.get("bosun.disk").map(String::as_str) == Some("true")),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(CpiError::Cloud(format!("inspecting volume {disk_cid}: {e}"))),
        }
    }

    async fn get_disks(&self, vm_cid: &str) -> CpiResult<Vec<String>> {
        Ok(Self::disks_of(&self.inspect(vm_cid).await?))
    }

    async fn list_vms(&self) -> CpiResult<Vec<VmListing>> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec!["bosun.vm=true".to_string()]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions { all: true, filters, ..Default::default() }))
            .await
            .map_err(cloud("listing containers"))?;
        let mut out = Vec::new();
        for c in list {
            let Some(cid) = c.names.as_ref().and_then(|n| n.first()).map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            let mut metadata = tags_of(&c.labels.unwrap_or_default());
            metadata.extend(self.read_metadata(&cid).await);
            out.push(VmListing { vm_cid: cid, metadata });
        }
        Ok(out)
    }

    async fn list_disks(&self) -> CpiResult<Vec<DiskListing>> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec!["bosun.disk=true".to_string()]);
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions { filters }))
            .await
            .map_err(cloud("listing volumes"))?
            .volumes
            .unwrap_or_default();
        let containers = self.list_vms().await?;
        let mut attached: HashMap<String, String> = HashMap::new();
        for vm in &containers {
            if let Ok(c) = self.inspect(&vm.vm_cid).await {
                for d in Self::disks_of(&c) {
                    attached.insert(d, vm.vm_cid.clone());
                }
            }
        }
        let mut out = Vec::new();
        for v in volumes {
            out.push(DiskListing {
                size_mb: v.labels.get(SIZE).and_then(|s| s.parse().ok()).unwrap_or(0),
                attached_to: attached.get(&v.name).cloned(),
                metadata: self.read_metadata(&v.name).await,
                disk_cid: v.name,
            });
        }
        Ok(out)
    }
}
