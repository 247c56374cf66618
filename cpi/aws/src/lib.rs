//! The AWS CPI: a VM is an EC2 instance started from an AMI, a persistent disk an EBS volume
//! (aws-sdk-ec2). What BOSH's AWS CPI does, in its words: stemcells are AMIs (a light stemcell
//! names an existing AMI per region; a heavy one is registered from the EBS snapshot holding its
//! image), a VM's address is its primary network interface's (made with the instance and deleted
//! with it, so a resurrected VM can take the same address again), the agent's settings travel in
//! user-data, tags are set when a thing is created (a director that dies right after still finds
//! it), and throttled calls are retried with jittered exponential backoff (the SDK's standard
//! retry mode, which counts `RequestLimitExceeded` as throttling).

mod errors;
mod instance_types;
mod wait;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, EbsBlockDevice, Filter, Instance, InstanceNetworkInterfaceSpecification,
    InstanceStateName, Placement, ResourceType, Tag, TagSpecification, Volume, VolumeState, VolumeType,
};
use aws_sdk_ec2::Client;
use bosun_cpi::{
    agent_settings, creation_tags, tags, Cpi, CpiError, CpiInfo, CpiResult, CreateVmRequest, DiskListing, VmListing,
};
use bosun_types::cloud_config::NetworkType;
use bosun_types::protocol::NetworkSettings;
use errors::{classify, Subject};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;
use wait::Backoff;

/// The SDK this CPI speaks EC2 with, for callers of [`AwsCpi::ec2`].
pub use aws_sdk_ec2;
pub use instance_types::smallest_instance_type;

/// `bosun director --cpi aws --cpi-config FILE`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsCpiConfig {
    pub region: String,
    /// Another EC2 endpoint (a VPC endpoint; moto in the tests). AWS's own by default.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Static credentials; without them the SDK's standard chain (environment, profile, web
    /// identity, ECS/EC2 instance roles).
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
    /// The key pair new instances get unless their cloud properties name one.
    #[serde(default)]
    pub default_key_name: Option<String>,
    /// Security group ids every instance gets unless its network or cloud properties name some.
    #[serde(default)]
    pub default_security_groups: Vec<String>,
    /// Where a disk goes when neither a VM nor its disk type says.
    #[serde(default)]
    pub default_availability_zone: Option<String>,
    /// Attempts per API call (throttling and transient errors retried in between).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How long an instance may take to be running, a volume available, an attachment made.
    #[serde(default = "default_wait_seconds")]
    pub wait_seconds: u64,
}

/// Without the secrets: a config printed into a log shows only whether they are set.
impl std::fmt::Debug for AwsCpiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "(set)" } else { "(unset)" };
        f.debug_struct("AwsCpiConfig")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &set(&self.secret_access_key))
            .field("session_token", &set(&self.session_token))
            .field("default_key_name", &self.default_key_name)
            .field("default_security_groups", &self.default_security_groups)
            .field("default_availability_zone", &self.default_availability_zone)
            .field("max_attempts", &self.max_attempts)
            .field("wait_seconds", &self.wait_seconds)
            .finish()
    }
}

fn default_max_attempts() -> u32 {
    8
}

fn default_wait_seconds() -> u64 {
    600
}

/// A stemcell's `cloud_properties` (from its `stemcell.MF`).
#[derive(Debug, Default, Deserialize)]
struct StemcellProperties {
    /// A light stemcell: the AMI of each region.
    #[serde(default)]
    ami: BTreeMap<String, String>,
    /// A heavy stemcell: the EBS snapshot its image was written to.
    #[serde(default)]
    snapshot_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default = "default_root_device")]
    root_device_name: String,
}

fn default_root_device() -> String {
    "/dev/xvda".into()
}

/// A VM's `cloud_properties` (from its VM type).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmProperties {
    instance_type: Option<String>,
    #[serde(default)]
    availability_zone: Option<String>,
    #[serde(default)]
    key_name: Option<String>,
    #[serde(default)]
    security_groups: Vec<String>,
    #[serde(default)]
    root_disk: Option<DiskProperties>,
    #[serde(default)]
    iam_instance_profile: Option<String>,
}

/// A disk's `cloud_properties` (from its disk type), and a root disk's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskProperties {
    /// MiB (root disks; persistent disks are sized by the director).
    #[serde(default)]
    size: Option<u64>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    iops: Option<i32>,
    #[serde(default)]
    throughput: Option<i32>,
    #[serde(default)]
    encrypted: Option<bool>,
    #[serde(default)]
    kms_key_arn: Option<String>,
    #[serde(default)]
    availability_zone: Option<String>,
}

/// A network's `cloud_properties` (from the cloud-config's subnet).
#[derive(Debug, Default, Deserialize)]
struct NetworkProperties {
    subnet: Option<String>,
    #[serde(default)]
    security_groups: Vec<String>,
}

/// Where the persistent disks go: the block devices EC2 lets an instance attach, past the root.
const DEVICE_NAMES: &[&str] = &[
    "/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi", "/dev/sdj", "/dev/sdk", "/dev/sdl", "/dev/sdm", "/dev/sdn",
    "/dev/sdo", "/dev/sdp",
];

pub struct AwsCpi {
    ec2: Client,
    config: AwsCpiConfig,
    director_uuid: OnceLock<String>,
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, v: &serde_json::Value) -> CpiResult<T> {
    let v = if v.is_null() { serde_json::json!({}) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| CpiError::InvalidArguments(format!("{what}: {e}")))
}

fn tag(key: &str, value: &str) -> Tag {
    // EC2's limits: keys up to 128 characters, values up to 256.
    let value: String = value.chars().take(256).collect();
    Tag::builder().key(key.chars().take(128).collect::<String>()).value(value).build()
}

fn tags_of(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string()))).collect()
}

fn tag_spec(kind: ResourceType, tags: &BTreeMap<String, String>) -> Option<TagSpecification> {
    if tags.is_empty() {
        return None;
    }
    Some(
        TagSpecification::builder()
            .resource_type(kind)
            .set_tags(Some(tags.iter().map(|(k, v)| tag(k, v)).collect()))
            .build(),
    )
}

/// GiB, rounded up, as EBS sizes volumes.
fn gib(mb: u64) -> i32 {
    mb.div_ceil(1024).max(1).min(i32::MAX as u64) as i32
}

/// An instance that is terminated or on its way there: no VM any more.
fn is_gone(i: &Instance) -> bool {
    matches!(i.state().and_then(|s| s.name()), Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown))
}

/// The AMI a stemcell cid names (`ami-… light` for a light stemcell).
fn image_id(stemcell_cid: &str) -> &str {
    stemcell_cid.split_whitespace().next().unwrap_or(stemcell_cid)
}

impl AwsCpi {
    /// Opens the CPI: the SDK's client for the region, with static credentials or the standard
    /// chain, rustls (ring) for TLS, standard retries.
    pub async fn connect(config: AwsCpiConfig) -> CpiResult<Self> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let retry = RetryConfig::standard().with_max_attempts(config.max_attempts.max(1));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .http_client(http)
            .retry_config(retry);
        match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret,
                    config.session_token.clone(),
                    None,
                    "bosun-cpi-config",
                ));
            }
            (None, None) => {}
            _ => {
                return Err(CpiError::InvalidArguments(
                    "the AWS CPI config names access_key_id or secret_access_key without the other".into(),
                ))
            }
        }
        if let Some(url) = &config.endpoint {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        Ok(AwsCpi { ec2: Client::new(&sdk), config, director_uuid: OnceLock::new() })
    }

    /// Security groups as ids: an id (`sg-…`) as it is, a name (as BOSH's AWS CPI accepts them)
    /// looked up in the VPC of `subnet`, where the instance's interface is. A name no group of
    /// that VPC has is an error naming it and the VPC.
    async fn security_group_ids(&self, subnet: &str, groups: Vec<String>) -> CpiResult<Vec<String>> {
        let (ids, names): (Vec<String>, Vec<String>) = groups.into_iter().partition(|g| g.starts_with("sg-"));
        if names.is_empty() {
            return Ok(ids);
        }
        let subnets = self
            .ec2
            .describe_subnets()
            .subnet_ids(subnet)
            .send()
            .await
            .map_err(|e| classify(&e, "finding the subnet's VPC for security group names", Subject::Other))?;
        let Some(vpc) = subnets.subnets().first().and_then(|s| s.vpc_id()).map(String::from) else {
            return Err(CpiError::InvalidArguments(format!("subnet `{subnet}` does not exist")));
        };
        let found = self
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("vpc-id").values(&vpc).build())
            .filters(Filter::builder().name("group-name").set_values(Some(names.clone())).build())
            .send()
            .await
            .map_err(|e| classify(&e, "looking up security groups by name", Subject::Other))?;
        let by_name: BTreeMap<&str, &str> =
            found.security_groups().iter().filter_map(|g| Some((g.group_name()?, g.group_id()?))).collect();
        let mut out = ids;
        for name in &names {
            let id = by_name.get(name.as_str()).ok_or_else(|| {
                CpiError::InvalidArguments(format!("no security group named `{name}` in VPC {vpc} (subnet {subnet})"))
            })?;
            out.push(id.to_string());
        }
        Ok(out)
    }

    /// The EC2 client the CPI calls through (its region, credentials, endpoint and retries):
    /// for tools looking at the same cloud.
    pub fn ec2(&self) -> &Client {
        &self.ec2
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_secs(self.config.wait_seconds))
    }

    /// The instance `vm_cid` names, unless it is gone (never was, or terminated).
    async fn instance(&self, vm_cid: &str) -> CpiResult<Option<Instance>> {
        Ok(self.described(vm_cid).await?.filter(|i| !is_gone(i)))
    }

    /// The instance as EC2 lists it, terminated ones included (EC2 lists them for a while).
    async fn described(&self, vm_cid: &str) -> CpiResult<Option<Instance>> {
        let out = match self.ec2.describe_instances().instance_ids(vm_cid).send().await {
            Ok(out) => out,
            Err(e) => {
                return match classify(&e, "describing the instance", Subject::Vm(vm_cid)) {
                    CpiError::VmNotFound(_) => Ok(None),
                    other => Err(other),
                }
            }
        };
        Ok(out.reservations().iter().flat_map(|r| r.instances()).find(|i| i.instance_id() == Some(vm_cid)).cloned())
    }

    async fn live_instance(&self, vm_cid: &str) -> CpiResult<Instance> {
        self.instance(vm_cid).await?.ok_or_else(|| CpiError::VmNotFound(vm_cid.to_string()))
    }

    async fn volume(&self, disk_cid: &str) -> CpiResult<Option<Volume>> {
        let out = match self.ec2.describe_volumes().volume_ids(disk_cid).send().await {
            Ok(out) => out,
            Err(e) => {
                return match classify(&e, "describing the volume", Subject::Disk(disk_cid)) {
                    CpiError::DiskNotFound(_) => Ok(None),
                    other => Err(other),
                }
            }
        };
        Ok(out
            .volumes()
            .iter()
            .find(|v| v.volume_id() == Some(disk_cid))
            .filter(|v| !matches!(v.state(), Some(VolumeState::Deleting | VolumeState::Deleted)))
            .cloned())
    }

    async fn live_volume(&self, disk_cid: &str) -> CpiResult<Volume> {
        self.volume(disk_cid).await?.ok_or_else(|| CpiError::DiskNotFound(disk_cid.to_string()))
    }

    /// Waits until the instance is running (pending at first; briefly unknown to a describe
    /// right after RunInstances, as EC2 is eventually consistent).
    /// An instance that ends instead (EC2 stops a launch that fails: capacity, a broken AMI)
    /// fails at once with EC2's reason.
    async fn wait_running(&self, vm_cid: &str) -> CpiResult<Instance> {
        let mut backoff = self.backoff();
        loop {
            let state = match self.described(vm_cid).await? {
                Some(i) if i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running) => return Ok(i),
                Some(i) if is_gone(&i) => {
                    let reason = i.state_reason().and_then(|r| r.message()).unwrap_or("no reason given");
                    return Err(CpiError::VmCreationFailed {
                        message: format!("instance {vm_cid} ended while starting: {reason}"),
                        ok_to_retry: true,
                    });
                }
                Some(i) => i.state().and_then(|s| s.name()).map(|s| s.as_str().to_string()).unwrap_or_default(),
                None => "not yet listed".into(),
            };
            backoff.wait(&format!("instance {vm_cid} to be running (it is {state})")).await?;
        }
    }

    /// Waits until the instance is terminated — not only shutting down — so its network
    /// interface is deleted and its address free for the next VM.
    async fn wait_terminated(&self, vm_cid: &str) -> CpiResult<()> {
        let mut backoff = self.backoff();
        while self
            .described(vm_cid)
            .await?
            .is_some_and(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
        {
            backoff.wait(&format!("instance {vm_cid} to be terminated")).await?;
        }
        Ok(())
    }

    async fn wait_volume(&self, disk_cid: &str, what: &str, done: impl Fn(&Volume) -> bool) -> CpiResult<Volume> {
        let mut backoff = self.backoff();
        loop {
            let v = self.live_volume(disk_cid).await?;
            if done(&v) {
                return Ok(v);
            }
            backoff.wait(&format!("volume {disk_cid} {what}")).await?;
        }
    }

    /// The tags a new volume gets: which director made it (so `cck` finds it even if the
    /// director died before tagging it with its deployment).
    fn volume_creation_tags(&self) -> BTreeMap<String, String> {
        let mut t = BTreeMap::new();
        if let Some(uuid) = self.director_uuid.get() {
            t.insert(tags::DIRECTOR_UUID.to_string(), uuid.clone());
        }
        t
    }

    /// Listing only this director's things once it is known (everything it makes carries its
    /// uuid from creation on); everything otherwise.
    fn director_filter(&self) -> Option<Vec<Filter>> {
        let uuid = self.director_uuid.get()?;
        Some(vec![Filter::builder().name(format!("tag:{}", tags::DIRECTOR_UUID)).values(uuid).build()])
    }

    async fn set_tags(
        &self,
        resource: &str,
        metadata: &BTreeMap<String, String>,
        subject: Subject<'_>,
    ) -> CpiResult<()> {
        if metadata.is_empty() {
            return Ok(());
        }
        self.ec2
            .create_tags()
            .resources(resource)
            .set_tags(Some(metadata.iter().map(|(k, v)| tag(k, v)).collect()))
            .send()
            .await
            .map_err(|e| classify(&e, "tagging", subject))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Cpi for AwsCpi {
    fn name(&self) -> &str {
        "aws"
    }

    fn set_director_uuid(&self, uuid: &str) {
        let _ = self.director_uuid.set(uuid.to_string());
    }

    async fn info(&self) -> CpiResult<CpiInfo> {
        Ok(CpiInfo { api_version: 2, stemcell_formats: vec!["aws-light".into(), "aws-raw".into()] })
    }

    async fn create_stemcell(&self, _image_path: &Path, cloud_properties: &serde_json::Value) -> CpiResult<String> {
        let props: StemcellProperties = parse("the stemcell's cloud_properties", cloud_properties)?;
        if let Some(ami) = props.ami.get(&self.config.region) {
            // A light stemcell: the AMI exists already; it must be visible to this account.
            let out = self
                .ec2
                .describe_images()
                .image_ids(ami)
                .send()
                .await
                .map_err(|e| classify(&e, "finding the light stemcell's AMI", Subject::Stemcell(ami)))?;
            if out.images().is_empty() {
                return Err(CpiError::StemcellNotFound(ami.clone()));
            }
            return Ok(format!("{ami} light"));
        }
        let Some(snapshot) = props.snapshot_id else {
            return Err(CpiError::InvalidArguments(format!(
                "the stemcell names no AMI for region {} (cloud_properties.ami) and no snapshot of its image \
                 (cloud_properties.snapshot_id)",
                self.config.region
            )));
        };
        let name = format!(
            "bosun-{}-{}-{}",
            props.name.as_deref().unwrap_or("stemcell"),
            props.version.as_deref().unwrap_or("0"),
            &snapshot
        );
        let device = BlockDeviceMapping::builder()
            .device_name(&props.root_device_name)
            .ebs(EbsBlockDevice::builder().snapshot_id(&snapshot).delete_on_termination(true).build())
            .build();
        let out = self
            .ec2
            .register_image()
            .name(name)
            .architecture(ArchitectureValues::X8664)
            .virtualization_type("hvm")
            .ena_support(true)
            .root_device_name(&props.root_device_name)
            .block_device_mappings(device)
            .send()
            .await
            .map_err(|e| classify(&e, "registering the stemcell's AMI", Subject::Other))?;
        out.image_id().map(String::from).ok_or_else(|| CpiError::Cloud("RegisterImage returned no image id".into()))
    }

    async fn delete_stemcell(&self, stemcell_cid: &str) -> CpiResult<()> {
        if stemcell_cid.ends_with(" light") {
            // Someone else's AMI: nothing of it is ours to delete.
            return Ok(());
        }
        match self.ec2.deregister_image().image_id(stemcell_cid).send().await {
            Ok(_) => Ok(()),
            Err(e) => match classify(&e, "deregistering the stemcell's AMI", Subject::Stemcell(stemcell_cid)) {
                CpiError::StemcellNotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn create_vm(&self, request: &CreateVmRequest) -> CpiResult<(String, BTreeMap<String, NetworkSettings>)> {
        let props: VmProperties = parse("the VM's cloud_properties", &request.cloud_properties)?;
        let Some(instance_type) = props.instance_type.clone() else {
            return Err(CpiError::InvalidArguments("the VM's cloud_properties name no instance_type".into()));
        };
        // One interface, on the one manual or dynamic network (a `vip` network needs an elastic
        // IP, which this CPI does not manage).
        if let Some((name, _)) = request.networks.iter().find(|(_, n)| n.kind == NetworkType::Vip) {
            return Err(CpiError::InvalidArguments(format!(
                "network `{name}`: vip networks are not supported by the AWS CPI"
            )));
        }
        if request.networks.len() > 1 {
            let names: Vec<&str> = request.networks.keys().map(String::as_str).collect();
            return Err(CpiError::InvalidArguments(format!(
                "the AWS CPI gives an instance one network interface; this one is on {} networks: {}",
                names.len(),
                names.join(", ")
            )));
        }
        let (net_name, network) =
            request.networks.iter().next().ok_or_else(|| CpiError::InvalidArguments("create_vm: no network".into()))?;
        let net_props: NetworkProperties =
            parse(&format!("network `{net_name}`'s cloud_properties"), &network.cloud_properties)?;
        let Some(subnet) = net_props.subnet else {
            return Err(CpiError::InvalidArguments(format!("network `{net_name}`'s cloud_properties name no subnet")));
        };
        let mut groups: Vec<String> = props.security_groups.iter().chain(&net_props.security_groups).cloned().collect();
        if groups.is_empty() {
            groups = self.config.default_security_groups.clone();
        }
        let mut groups = self.security_group_ids(&subnet, groups).await?;
        groups.sort();
        groups.dedup();
        let mut interface = InstanceNetworkInterfaceSpecification::builder()
            .device_index(0)
            .subnet_id(&subnet)
            .delete_on_termination(true)
            .set_groups((!groups.is_empty()).then_some(groups));
        if network.kind == NetworkType::Manual && !network.ip.is_empty() {
            interface = interface.private_ip_address(&network.ip);
        }
        // The agent's settings (director endpoint and credentials, networks) go in user-data;
        // the VM cid is not known until RunInstances answers (it is the instance id the
        // instance metadata gives).
        let settings = agent_settings(request, "")?;
        let user_data = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            serde_json::to_vec(&settings).map_err(|e| CpiError::Cloud(format!("agent settings: {e}")))?,
        );
        // The AMI first (EC2 would refuse an unknown one; its root device is where a root disk
        // of another size goes).
        let ami = image_id(&request.stemcell_cid);
        let images = self.ec2.describe_images().image_ids(ami).send().await.map_err(|e| {
            classify(&e, "finding the stemcell's AMI", Subject::NewVm { stemcell: &request.stemcell_cid })
        })?;
        let Some(image) = images.images().iter().find(|i| i.image_id() == Some(ami)) else {
            return Err(CpiError::StemcellNotFound(request.stemcell_cid.clone()));
        };
        let root_device = image.root_device_name().unwrap_or("/dev/xvda").to_string();
        let tags = creation_tags(request);
        // The root volume carries the VM's tags but not the director's uuid: it goes with its
        // instance, and the director lists only persistent disks as its own.
        let mut root_tags = tags.clone();
        root_tags.remove(tags::DIRECTOR_UUID);
        let mut run = self
            .ec2
            .run_instances()
            .image_id(ami)
            .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .network_interfaces(interface.build())
            .user_data(user_data)
            // The user-data holds the agent's key: instance metadata only with a session token
            // and one network hop, so pods (a hop further, in their own namespaces) cannot read
            // it, nor a request forged through a workload.
            .metadata_options(
                aws_sdk_ec2::types::InstanceMetadataOptionsRequest::builder()
                    .http_tokens(aws_sdk_ec2::types::HttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .set_key_name(props.key_name.clone().or_else(|| self.config.default_key_name.clone()))
            .set_tag_specifications(Some(
                [tag_spec(ResourceType::Instance, &tags), tag_spec(ResourceType::Volume, &root_tags)]
                    .into_iter()
                    .flatten()
                    .collect(),
            ));
        if let Some(az) = &props.availability_zone {
            run = run.placement(Placement::builder().availability_zone(az).build());
        }
        if let Some(profile) = &props.iam_instance_profile {
            run = run.iam_instance_profile(
                aws_sdk_ec2::types::IamInstanceProfileSpecification::builder().name(profile).build(),
            );
        }
        if let Some(root) = &props.root_disk {
            let mut ebs = EbsBlockDevice::builder().delete_on_termination(true);
            if let Some(size) = root.size {
                ebs = ebs.volume_size(gib(size));
            }
            if let Some(kind) = &root.kind {
                ebs = ebs.volume_type(VolumeType::from(kind.as_str()));
            }
            run = run.block_device_mappings(
                BlockDeviceMapping::builder().device_name(&root_device).ebs(ebs.build()).build(),
            );
        }
        let out = run
            .send()
            .await
            .map_err(|e| classify(&e, "starting the instance", Subject::NewVm { stemcell: &request.stemcell_cid }))?;
        let vm_cid = out.instances().first().and_then(|i| i.instance_id()).map(String::from).ok_or_else(|| {
            CpiError::VmCreationFailed { message: "RunInstances returned no instance".into(), ok_to_retry: true }
        })?;
        let running = match self.wait_running(&vm_cid).await {
            Ok(i) => i,
            Err(e) => {
                // Never leave a half-made VM behind: the director would not know its cid.
                let _ = self.ec2.terminate_instances().instance_ids(&vm_cid).send().await;
                return Err(CpiError::VmCreationFailed { message: e.to_string(), ok_to_retry: true });
            }
        };
        let mut networks = request.networks.clone();
        if let Some(n) = networks.get_mut(net_name) {
            if n.ip.is_empty() {
                n.ip = running.private_ip_address().unwrap_or_default().to_string();
            }
        }
        tracing::info!(vm_cid = %vm_cid, instance_type = %instance_type, "instance running");
        Ok((vm_cid, networks))
    }

    async fn delete_vm(&self, vm_cid: &str) -> CpiResult<()> {
        self.live_instance(vm_cid).await?;
        self.ec2
            .terminate_instances()
            .instance_ids(vm_cid)
            .send()
            .await
            .map_err(|e| classify(&e, "terminating the instance", Subject::Vm(vm_cid)))?;
        self.wait_terminated(vm_cid).await
    }

    async fn has_vm(&self, vm_cid: &str) -> CpiResult<bool> {
        Ok(self.instance(vm_cid).await?.is_some())
    }

    async fn reboot_vm(&self, vm_cid: &str) -> CpiResult<()> {
        self.live_instance(vm_cid).await?;
        self.ec2
            .reboot_instances()
            .instance_ids(vm_cid)
            .send()
            .await
            .map_err(|e| classify(&e, "rebooting the instance", Subject::Vm(vm_cid)))?;
        Ok(())
    }

    async fn set_vm_metadata(&self, vm_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        self.live_instance(vm_cid).await?;
        let mut metadata = metadata.clone();
        // The console shows `Name`: BOSH sets it to `group/id`.
        if let Some(name) = metadata.get(tags::NAME).cloned() {
            metadata.insert("Name".into(), name);
        }
        self.set_tags(vm_cid, &metadata, Subject::Vm(vm_cid)).await
    }

    async fn calculate_vm_cloud_properties(
        &self,
        cpu: u32,
        ram_mb: u64,
        ephemeral_disk_mb: u64,
    ) -> CpiResult<serde_json::Value> {
        let instance_type = smallest_instance_type(cpu, ram_mb).ok_or_else(|| {
            CpiError::InvalidArguments(format!("no instance type has {cpu} CPUs and {ram_mb} MiB of memory"))
        })?;
        Ok(serde_json::json!({
            "instance_type": instance_type,
            "root_disk": {"size": ephemeral_disk_mb.max(3 * 1024), "type": "gp3"},
        }))
    }

    async fn create_disk(
        &self,
        size_mb: u64,
        cloud_properties: &serde_json::Value,
        vm_locality: Option<&str>,
    ) -> CpiResult<String> {
        let props: DiskProperties = parse("the disk's cloud_properties", cloud_properties)?;
        // In the VM's zone (an EBS volume attaches only there), else where the disk type says.
        let az = match vm_locality {
            Some(vm) => self.live_instance(vm).await?.placement().and_then(|p| p.availability_zone()).map(String::from),
            None => None,
        }
        .or(props.availability_zone.clone())
        .or(self.config.default_availability_zone.clone())
        .ok_or_else(|| {
            CpiError::InvalidArguments(
                "create_disk: no VM to be near, no availability_zone in the disk's cloud_properties and no \
                 default_availability_zone in the CPI config"
                    .into(),
            )
        })?;
        let out = self
            .ec2
            .create_volume()
            .availability_zone(&az)
            .size(gib(size_mb))
            .volume_type(VolumeType::from(props.kind.as_deref().unwrap_or("gp3")))
            .set_iops(props.iops)
            .set_throughput(props.throughput)
            .set_encrypted(props.encrypted)
            .set_kms_key_id(props.kms_key_arn.clone())
            .set_tag_specifications(tag_spec(ResourceType::Volume, &self.volume_creation_tags()).map(|t| vec![t]))
            .send()
            .await
            .map_err(|e| classify(&e, "creating the volume", Subject::Other))?;
        let disk_cid = out
            .volume_id()
            .map(String::from)
            .ok_or_else(|| CpiError::Cloud("CreateVolume returned no volume id".into()))?;
        self.wait_volume(&disk_cid, "to be available", |v| v.state() == Some(&VolumeState::Available)).await?;
        Ok(disk_cid)
    }

    async fn delete_disk(&self, disk_cid: &str) -> CpiResult<()> {
        self.live_volume(disk_cid).await?;
        // A volume just detached can stay "in use" a little while: waited out.
        let mut backoff = self.backoff();
        loop {
            match self.ec2.delete_volume().volume_id(disk_cid).send().await {
                Ok(_) => return Ok(()),
                Err(e) if errors::code(&e) == Some("VolumeInUse") => {
                    backoff.wait(&format!("volume {disk_cid} to be free to delete")).await?
                }
                Err(e) => return Err(classify(&e, "deleting the volume", Subject::Disk(disk_cid))),
            }
        }
    }

    async fn has_disk(&self, disk_cid: &str) -> CpiResult<bool> {
        Ok(self.volume(disk_cid).await?.is_some())
    }

    async fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<serde_json::Value> {
        let volume = self.live_volume(disk_cid).await?;
        let instance = self.live_instance(vm_cid).await?;
        let mappings = instance.block_device_mappings();
        if let Some(m) = mappings.iter().find(|m| m.ebs().and_then(|e| e.volume_id()) == Some(disk_cid)) {
            // Attached already (a retried call): the same answer.
            return Ok(serde_json::json!({"path": m.device_name().unwrap_or_default(), "volume_id": disk_cid}));
        }
        if let Some(other) = volume.attachments().iter().find_map(|a| a.instance_id()) {
            return Err(CpiError::Cloud(format!("volume {disk_cid} is attached to instance {other}")));
        }
        let used: Vec<&str> = mappings.iter().filter_map(|m| m.device_name()).collect();
        let device = DEVICE_NAMES
            .iter()
            .find(|d| !used.contains(d))
            .ok_or_else(|| CpiError::Cloud(format!("instance {vm_cid} has no free device name for a volume")))?;
        self.ec2
            .attach_volume()
            .volume_id(disk_cid)
            .instance_id(vm_cid)
            .device(*device)
            .send()
            .await
            .map_err(|e| classify(&e, "attaching the volume", Subject::Attachment { vm: vm_cid, disk: disk_cid }))?;
        self.wait_volume(disk_cid, "to be attached", |v| {
            v.attachments().iter().any(|a| {
                a.instance_id() == Some(vm_cid)
                    && a.state() == Some(&aws_sdk_ec2::types::VolumeAttachmentState::Attached)
            })
        })
        .await?;
        // The agent finds the device by its path, or on Nitro instances by the volume id EC2
        // gives as the NVMe device's serial.
        Ok(serde_json::json!({"path": device, "volume_id": disk_cid}))
    }

    async fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<()> {
        let volume = self.live_volume(disk_cid).await?;
        if !volume.attachments().iter().any(|a| a.instance_id() == Some(vm_cid)) {
            // Also when the VM is gone: its attachments went with it.
            return Err(CpiError::DiskNotAttached { vm_cid: vm_cid.into(), disk_cid: disk_cid.into() });
        }
        self.ec2
            .detach_volume()
            .volume_id(disk_cid)
            .instance_id(vm_cid)
            .send()
            .await
            .map_err(|e| classify(&e, "detaching the volume", Subject::Attachment { vm: vm_cid, disk: disk_cid }))?;
        self.wait_volume(disk_cid, "to be detached", |v| {
            !v.attachments().iter().any(|a| a.instance_id() == Some(vm_cid))
        })
        .await?;
        Ok(())
    }

    async fn get_disks(&self, vm_cid: &str) -> CpiResult<Vec<String>> {
        let instance = self.live_instance(vm_cid).await?;
        let root = instance.root_device_name().unwrap_or("/dev/xvda");
        Ok(instance
            .block_device_mappings()
            .iter()
            .filter(|m| m.device_name() != Some(root))
            .filter_map(|m| m.ebs().and_then(|e| e.volume_id()).map(String::from))
            .collect())
    }

    async fn set_disk_metadata(&self, disk_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        self.live_volume(disk_cid).await?;
        self.set_tags(disk_cid, metadata, Subject::Disk(disk_cid)).await
    }

    async fn resize_disk(&self, disk_cid: &str, new_size_mb: u64) -> CpiResult<()> {
        let volume = self.live_volume(disk_cid).await?;
        let current = volume.size().unwrap_or(0);
        let wanted = gib(new_size_mb);
        if wanted < current {
            return Err(CpiError::NotSupported(format!(
                "shrinking EBS volume {disk_cid} from {current} GiB to {wanted} GiB"
            )));
        }
        if wanted == current {
            return Ok(());
        }
        self.ec2
            .modify_volume()
            .volume_id(disk_cid)
            .size(wanted)
            .send()
            .await
            .map_err(|e| classify(&e, "resizing the volume", Subject::Disk(disk_cid)))?;
        self.wait_volume(disk_cid, "to reach its new size", |v| v.size() == Some(wanted)).await?;
        Ok(())
    }

    async fn snapshot_disk(&self, disk_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<String> {
        self.live_volume(disk_cid).await?;
        let description = ["deployment", "instance_group", "index"]
            .iter()
            .filter_map(|k| metadata.get(*k).map(String::as_str))
            .collect::<Vec<_>>()
            .join("/");
        let out = self
            .ec2
            .create_snapshot()
            .volume_id(disk_cid)
            .description(description)
            .set_tag_specifications(tag_spec(ResourceType::Snapshot, metadata).map(|t| vec![t]))
            .send()
            .await
            .map_err(|e| classify(&e, "snapshotting the volume", Subject::Disk(disk_cid)))?;
        out.snapshot_id()
            .map(String::from)
            .ok_or_else(|| CpiError::Cloud("CreateSnapshot returned no snapshot id".into()))
    }

    async fn delete_snapshot(&self, snapshot_cid: &str) -> CpiResult<()> {
        match self.ec2.delete_snapshot().snapshot_id(snapshot_cid).send().await {
            Ok(_) => Ok(()),
            // Gone already: what was asked for.
            Err(e) if errors::code(&e).is_some_and(|c| c.starts_with("InvalidSnapshot.")) => Ok(()),
            Err(e) => Err(classify(&e, "deleting the snapshot", Subject::Other)),
        }
    }

    async fn list_vms(&self) -> CpiResult<Vec<VmListing>> {
        let mut out = Vec::new();
        let mut pages = self.ec2.describe_instances().set_filters(self.director_filter()).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&e, "listing instances", Subject::Other))?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                if let (false, Some(id)) = (is_gone(i), i.instance_id()) {
                    out.push(VmListing { vm_cid: id.to_string(), metadata: tags_of(i.tags()) });
                }
            }
        }
        Ok(out)
    }

    async fn list_disks(&self) -> CpiResult<Vec<DiskListing>> {
        let mut out = Vec::new();
        let mut pages = self.ec2.describe_volumes().set_filters(self.director_filter()).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&e, "listing volumes", Subject::Other))?;
            for v in page.volumes() {
                let Some(id) = v.volume_id() else { continue };
                // A volume that goes with its instance (its root) is no persistent disk; the
                // persistent ones are attached to be kept.
                if v.attachments().iter().any(|a| a.delete_on_termination() == Some(true)) {
                    continue;
                }
                out.push(DiskListing {
                    disk_cid: id.to_string(),
                    size_mb: v.size().unwrap_or(0).max(0) as u64 * 1024,
                    attached_to: v.attachments().iter().find_map(|a| a.instance_id()).map(String::from),
                    metadata: tags_of(v.tags()),
                });
            }
        }
        Ok(out)
    }
}
