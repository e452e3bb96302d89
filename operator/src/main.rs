use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ft_operator::compliance::Compliance;
use ft_operator::run::{RunConfig, WebhookSettings};

use ft_core::placement::admission::Confinement;
use ft_core::settings::{BuildSettings, DnsEndpoint};

/// Enforces France Travail's hosting security rules on this cluster.
#[derive(Parser)]
#[command(name = "ft-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the current kubeconfig or in-cluster configuration.
    Run(Box<RunArgs>),
    /// Print every CRD as multi-document YAML (the content of `crds/`).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Print the cluster-wide admission policies (the content of `admission/`), which the chart
    /// installs and the operator only reads.
    Admission {
        /// Write one file per kind group into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Render every object `run` would apply for a tenant: on a cluster described by the flags
    /// (its nodes, provider, Velero), or on the current cluster (`--from-cluster`).
    Plan(Box<PlanArgs>),
    /// Draw a tenant's flow matrix as an SVG for an auditor (CLD-35): its environments, every
    /// declared flow with its nature, peers and ports, DNS, and what is denied. From a manifest
    /// (`-f`; with several tenants in it, `--tenant` picks one), or the tenant stored in the
    /// current cluster (`--tenant` alone).
    Map(MapArgs),
    /// Print the control catalogue: what each control checks and the rules it evidences.
    Controls,
    /// Remove the per-environment admission policies of earlier versions, each once the
    /// cluster-wide ones are in place and its namespaces have their EnvironmentPolicy. Needs
    /// the right to delete admission policies, which `run` does not have.
    Migrate,
    /// Print the operator's own least-privilege RBAC: its ServiceAccount, ClusterRole, Role
    /// (in its namespace) and their bindings.
    Rbac {
        /// The operator's namespace.
        #[arg(long, default_value = "ft-system")]
        namespace: String,
        /// The operator's ServiceAccount, and the name of its roles.
        #[arg(long, default_value = "ft-operator")]
        service_account: String,
        /// Velero's namespace, where the operator keeps Schedules, restore tests and exports.
        #[arg(long, default_value = ft_core::backup::DEFAULT_VELERO_NAMESPACE)]
        velero_namespace: String,
        /// It confines pods with its own webhook (`run --confinement webhook` or `auto` on a
        /// cluster before Kubernetes 1.36): the right to register it.
        #[arg(long)]
        webhook: bool,
    },
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The operator's own namespace: its Lease, key store and records.
    #[arg(long, env = "FT_OPERATOR_NAMESPACE", default_value = "ft-system")]
    namespace: String,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "FT_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "FT_LEASE_NAME", default_value = "ft-operator")]
    lease_name: String,
    /// This replica's identity in the Lease and in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// This replica's pod in the operator's namespace, labelled while it leads so that the
    /// webhook Service reaches the leader only.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Log format.
    #[arg(long, env = "FT_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Log level: `error`, `warn`, `info`, `debug`, `trace`, or per module
    /// (`info,ft_operator=debug`). `RUST_LOG`, when set, takes precedence.
    #[arg(long, env = "FT_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    log_level: String,
    /// The cloud provider of the nodes, from policies/regions.yaml (aws, ovhcloud, …): needed
    /// when a region code means different countries at different providers and the nodes'
    /// providerID does not tell.
    #[arg(long, env = "FT_PROVIDER")]
    provider: Option<String>,
    /// A region catalogue (the format of policies/regions.yaml) replacing the embedded one.
    #[arg(long, env = "FT_REGION_CATALOGUE")]
    region_catalogue: Option<PathBuf>,
    /// How new tenant pods are confined to their regions: `native` (MutatingAdmissionPolicy,
    /// Kubernetes 1.36+), `webhook` (served by the operator), or `auto` (by discovery).
    #[arg(long, env = "FT_CONFINEMENT", value_enum, default_value = "auto")]
    confinement: ConfinementArg,
    /// Also write each tenant's control results as OpenReports `Report`s in its namespaces:
    /// `auto` where the cluster serves `openreports.io/v1alpha1`, `off` never.
    #[arg(long, env = "FT_OPENREPORTS", value_enum, default_value = "auto")]
    openreports: OpenReportsArg,
    /// Address of the placement webhook, when pods are confined by it.
    #[arg(long, env = "FT_WEBHOOK_ADDRESS", default_value = "0.0.0.0:8443")]
    webhook_address: SocketAddr,
    /// The Service, in the operator's namespace, that sends port 443 to the webhook.
    #[arg(
        long,
        env = "FT_WEBHOOK_SERVICE",
        default_value = "ft-operator-webhook"
    )]
    webhook_service: String,
    /// The webhook's full URL instead of the Service, for an operator outside the cluster.
    #[arg(long, env = "FT_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// A directory holding `tls.crt`, `tls.key` and `ca.crt` (a cert-manager Secret, mounted)
    /// to serve the webhook with; without it the operator makes and renews its own.
    #[arg(long, env = "FT_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("tenants").required(true).multiple(false))]
struct PlanArgs {
    /// Tenant manifest (YAML, one or more documents); `-` reads standard input.
    #[arg(short = 'f', long = "filename", group = "tenants")]
    file: Option<PathBuf>,
    /// A tenant stored in the current cluster, by name (with `--from-cluster`).
    #[arg(long, group = "tenants", requires = "from_cluster")]
    tenant: Vec<String>,
    /// Read the cluster facts from the current kubeconfig's cluster: its nodes, whether it
    /// serves MutatingAdmissionPolicies and Velero; and the tenants as stored, to list the
    /// environments a manifest removes (held until confirmed) and adds.
    #[arg(long, conflicts_with_all = ["nodes", "velero", "confinement"])]
    from_cluster: bool,
    /// The cluster's Node objects (YAML, one or more documents, or a `kubectl get nodes -o
    /// yaml` list): their regions decide where pods may run. Without it, no node is allowed.
    #[arg(long)]
    nodes: Option<PathBuf>,
    /// The cluster serves Velero (`velero.io/v1`): the backup Schedules are rendered.
    #[arg(long)]
    velero: bool,
    /// How the cluster confines new pods: `native` (MutatingAdmissionPolicy) or `webhook`.
    #[arg(long, value_enum, default_value = "native")]
    confinement: PlanConfinement,
    /// The cloud provider of the nodes, as for `run`.
    #[arg(long, env = "FT_PROVIDER")]
    provider: Option<String>,
    /// A region catalogue replacing the embedded one, as for `run`.
    #[arg(long, env = "FT_REGION_CATALOGUE")]
    region_catalogue: Option<PathBuf>,
    /// The operator's namespace, where tenant keys are kept.
    #[arg(long, env = "FT_OPERATOR_NAMESPACE", default_value = "ft-system")]
    namespace: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).multiple(true))]
struct MapArgs {
    /// Tenant manifest (YAML, one or more documents); `-` reads standard input.
    #[arg(short = 'f', long = "filename", group = "source")]
    file: Option<PathBuf>,
    /// The tenant to draw: the one of that name in the manifest, or without `-f` the one
    /// stored in the current cluster.
    #[arg(long, group = "source")]
    tenant: Option<String>,
    /// Write the SVG to this file instead of standard output.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanConfinement {
    Native,
    Webhook,
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// Namespace of the cluster DNS, which every environment may always reach.
    #[arg(long, env = "FT_DNS_NAMESPACE", default_value = "kube-system")]
    dns_namespace: String,
    /// Labels of the cluster DNS pods, as `key=value[,key=value]`.
    #[arg(long, env = "FT_DNS_POD_LABELS", default_value = "k8s-app=kube-dns", value_parser = parse_labels)]
    dns_pod_labels: BTreeMap<String, String>,
    /// The cluster's pod and service CIDRs, comma-separated: carved out of every `cidr` flow,
    /// and no `cidr` flow may lie inside them.
    #[arg(long, env = "FT_CLUSTER_NETWORKS", value_delimiter = ',', value_parser = parse_network)]
    cluster_networks: Vec<String>,
    /// Namespace Velero runs in: the tenants' Schedules, restore tests and exports go there.
    #[arg(long, env = "FT_VELERO_NAMESPACE", default_value = ft_core::backup::DEFAULT_VELERO_NAMESPACE)]
    velero_namespace: String,
    /// Namespaces whose pods may run on a tenant's production pool besides its production
    /// pods (the platform's daemons), comma-separated (CLD-25).
    #[arg(
        long,
        env = "FT_PLATFORM_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    platform_namespaces: Vec<String>,
}

impl ClusterArgs {
    fn settings(self) -> BuildSettings {
        BuildSettings {
            dns: DnsEndpoint {
                namespace: self.dns_namespace,
                pod_labels: self.dns_pod_labels,
            },
            cluster_networks: self.cluster_networks,
            velero_namespace: self.velero_namespace,
            platform_namespaces: self.platform_namespaces,
            // Told by discovery when the operator runs, by a flag to `plan`.
            confinement: Default::default(),
            // `run` sets the operator's namespace.
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OpenReportsArg {
    Auto,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum ConfinementArg {
    Auto,
    Native,
    Webhook,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(|pair| {
            pair.split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("{pair:?} is not key=value"))
        })
        .collect()
}

fn parse_log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{s:?} is not a log level or filter: {e}"))
}

fn parse_network(s: &str) -> Result<String, String> {
    ft_core::validate::parse_cidr(s.trim())
        .map(|_| s.trim().to_string())
        .ok_or_else(|| format!("{s:?} is not an IPv4 or IPv6 CIDR"))
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts. One arena: a pass runs a few at a time, on few
/// cores, and each further arena kept its own freed pages. No per-thread caches: they held
/// about a fifth of the operator's memory at a thousand tenants, for less CPU per allocation.
/// Freed pages go back to the system within a second, by jemalloc's background thread.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8] =
    b"narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("ft-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Crd { output_dir } => print_files(ft_core::crd::crd_files(), output_dir),
        Command::Admission { output_dir } => print_files(ft_core::admission::files(), output_dir),
        Command::Plan(args) => run_plan(*args),
        Command::Map(args) => run_map(args),
        Command::Controls => print_controls(),
        Command::Migrate => run_migrate(),
        Command::Rbac {
            namespace,
            service_account,
            velero_namespace,
            webhook,
        } => {
            let mut objects =
                ft_core::rbac::objects(&namespace, &service_account, &velero_namespace, webhook);
            // And what RBAC cannot say: the policy holding it to tenant namespaces.
            let (limits, binding) = ft_core::rbac::limits(&namespace, &service_account);
            objects.extend(
                [serde_json::to_value(limits), serde_json::to_value(binding)]
                    .into_iter()
                    .flatten(),
            );
            match serde_saphyr::to_string_multiple(&objects) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => run(*args),
    }
}

fn run_migrate() -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                let client = kube::Client::try_default().await?;
                let confinement = ft_operator::watch::discover_confinement(&client).await;
                ft_operator::migrate::migrate(&client, confinement).await
            })
        });
    match result {
        Ok(migration) => {
            for key in &migration.removed {
                println!("removed {key}");
            }
            for key in &migration.waiting {
                println!("kept {key}: a namespace it covers has no EnvironmentPolicy yet");
            }
            if migration.waiting.is_empty() {
                ExitCode::SUCCESS
            } else {
                // Run again once the operator has written every EnvironmentPolicy.
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_controls() -> ExitCode {
    match ft_core::controls::Catalogue::embedded() {
        Ok(catalogue) => {
            print!("{}", catalogue.markdown());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints generated files concatenated, or writes each into `output_dir`.
fn print_files(
    files: Result<Vec<(String, String)>, serde_saphyr::SerializeError>,
    output_dir: Option<PathBuf>,
) -> ExitCode {
    let result = files
        .map_err(|e| e.to_string())
        .and_then(|files| match output_dir {
            None => {
                files.iter().for_each(|(_, yaml)| print!("{yaml}"));
                Ok(())
            }
            Some(dir) => files.into_iter().try_for_each(|(name, yaml)| {
                std::fs::write(dir.join(&name), yaml).map_err(|e| format!("{name}: {e}"))
            }),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_plan(args: PlanArgs) -> ExitCode {
    match plan_output(args) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(PlanFailure::Plan(source, e)) => {
            let fields = e.field_errors();
            if fields.is_empty() {
                eprintln!("error: {source}: {e}");
            } else {
                eprintln!("error: {source}: the tenant is invalid:");
                for f in fields {
                    eprintln!("  {f}");
                }
            }
            ExitCode::FAILURE
        }
        Err(PlanFailure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum PlanFailure {
    Plan(String, ft_core::plan::PlanError),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for PlanFailure {
    fn from(e: E) -> Self {
        PlanFailure::Other(e.into())
    }
}

fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| path.display().to_string())
    }
}

fn plan_output(args: PlanArgs) -> Result<String, PlanFailure> {
    let regions = args.region_catalogue.as_ref().map(read_input).transpose()?;
    let compliance = Compliance::load(args.provider.clone(), regions.as_deref())?;
    let settings = BuildSettings {
        key_namespace: args.namespace.clone(),
        ..args.cluster.settings()
    };
    let now = jiff::Timestamp::now();
    let (cluster, tenants, stored, source) = if args.from_cluster {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let manifests = args.file.as_ref().map(read_input).transpose()?;
        let (cluster, stored) = runtime.block_on(async {
            let client = kube::Client::try_default().await?;
            ft_operator::plan::read_cluster(&client, &args.tenant, manifests.as_deref())
                .await
                .map_err(anyhow::Error::from)
        })?;
        let tenants = match manifests {
            Some(m) => m,
            None => serde_saphyr::to_string_multiple(&stored)?,
        };
        let source = args
            .file
            .as_ref()
            .map_or_else(|| args.tenant.join(", "), |f| f.display().to_string());
        (cluster, tenants, stored, source)
    } else {
        let nodes = match &args.nodes {
            Some(path) => ft_core::plan::parse_nodes(&read_input(path)?).map_err(|e| {
                anyhow::anyhow!("{}: not a file of Node objects: {e}", path.display())
            })?,
            None => Vec::new(),
        };
        // clap requires `--from-cluster` with `--tenant`, so a file is given.
        let Some(file) = &args.file else {
            return Err(anyhow::anyhow!("--tenant needs --from-cluster").into());
        };
        let cluster = ft_operator::plan::ClusterFacts {
            nodes: nodes.into_iter().map(std::sync::Arc::new).collect(),
            velero: Some(args.velero),
            confinement: match args.confinement {
                PlanConfinement::Native => Confinement::Native,
                PlanConfinement::Webhook => Confinement::Webhook,
            },
        };
        (
            cluster,
            read_input(file)?,
            Vec::new(),
            file.display().to_string(),
        )
    };
    ft_operator::plan::render(&tenants, &stored, settings, &cluster, &compliance, now)
        .map_err(|e| PlanFailure::Plan(source, e))
}

fn run_map(args: MapArgs) -> ExitCode {
    let tenant = match map_tenant(&args) {
        Ok(tenant) => tenant,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // The map draws what the operator enforces: an invalid tenant is not enforced.
    if let Err(e) = ft_core::validate::validate(&tenant) {
        eprintln!("error: the tenant {} is invalid:", e.tenant);
        for f in &e.errors {
            eprintln!("  {f}");
        }
        return ExitCode::FAILURE;
    }
    let svg = ft_core::flowmap::render(&tenant);
    let written = match &args.output {
        Some(path) => std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            print!("{svg}");
            Ok(())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The tenant to draw: from the manifest, or as the current cluster stores it.
fn map_tenant(args: &MapArgs) -> anyhow::Result<ft_core::api::FranceTravailTenant> {
    use anyhow::Context as _;
    if let Some(file) = &args.file {
        let source = file.display();
        let tenants =
            ft_core::plan::parse_tenants(&read_input(file)?).with_context(|| source.to_string())?;
        return ft_core::flowmap::pick(tenants, args.tenant.as_deref())
            .with_context(|| source.to_string());
    }
    // clap requires `-f` or `--tenant`.
    let name = args
        .tenant
        .as_deref()
        .context("give a manifest (-f) or a tenant of the current cluster (--tenant)")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await?;
        let api: kube::Api<ft_core::api::FranceTravailTenant> = kube::Api::all(client);
        api.get_opt(name)
            .await
            .with_context(|| format!("reading the tenant {name} from the current cluster"))?
            .with_context(|| format!("no FranceTravailTenant named {name} in the current cluster"))
    })
}

fn run(args: RunArgs) -> ExitCode {
    init_tracing(args.log_format, &args.log_level);
    #[cfg(feature = "failpoints")]
    let _failpoints = ft_operator::failpoint::setup();
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "ft-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let config = RunConfig {
        namespace: args.namespace,
        metrics_address: args.metrics_address,
        lease_name: args.lease_name,
        identity,
        pod_name: args.pod_name,
        settings: args.cluster.settings(),
        provider: args.provider,
        region_catalogue: args.region_catalogue,
        confinement: match args.confinement {
            ConfinementArg::Auto => None,
            ConfinementArg::Native => Some(Confinement::Native),
            ConfinementArg::Webhook => Some(Confinement::Webhook),
        },
        openreports: matches!(args.openreports, OpenReportsArg::Auto),
        webhook: WebhookSettings {
            address: args.webhook_address,
            service: args.webhook_service,
            url: args.webhook_url,
            certificate_dir: args.webhook_cert_dir,
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ft_operator::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "operator stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}
