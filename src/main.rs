//! The `flywheel` binary: one subcommand per component.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use flywheel::api;
use flywheel::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        // The demo's output is its live view: logs stay quiet unless RUST_LOG asks.
        Command::Demo(_) => flywheel::demo::init_logging(cli.log_format),
        _ => flywheel::telemetry::init(cli.log_format),
    }
    match cli.command {
        Command::Crds(args) => match args.output_dir {
            Some(dir) => write_crds(&dir),
            None => print_crds(),
        },
        Command::Operator(args) => run_async(run_operator(args)),
        Command::Rollout(args) => run_async(run_rollout(args)),
        Command::FetchModel(args) => run_async(run_fetch_model(args)),
        Command::Collector(args) => run_async(run_collector(args)),
        Command::Agent(args) => run_async(run_agent(args)),
        Command::Sim(args) => run_async(run_sim(args)),
        Command::Demo(args) => run_async(run_demo(args)),
    }
}

fn run_async(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(fut),
        Err(e) => {
            eprintln!("flywheel: starting the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ctrl_c = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ctrl_c = tokio::signal::ctrl_c().await;
    }
}

async fn run_sim(args: flywheel::cli::SimArgs) -> ExitCode {
    let config = flywheel::sim::SimConfig { listen: args.listen, ..flywheel::sim::SimConfig::default() };
    let sim = match flywheel::sim::Sim::start(config).await {
        Ok(sim) => sim,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the simulated cluster");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.kubeconfig_out {
        if let Err(e) = sim.write_kubeconfig(path) {
            tracing::error!(error = %e, "cannot write the kubeconfig");
            sim.shutdown().await;
            return ExitCode::FAILURE;
        }
        tracing::info!(kubeconfig = %path.display(), server = %sim.url(), "kubeconfig written");
    }
    println!("{}", sim.url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    sim.shutdown().await;
    ExitCode::SUCCESS
}

async fn run_operator(args: flywheel::cli::OperatorArgs) -> ExitCode {
    use std::time::Duration;
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client: set KUBECONFIG or run in a cluster");
            return ExitCode::FAILURE;
        }
    };
    if args.leader_elect && (args.renew_deadline >= args.lease_duration || args.retry_period >= args.renew_deadline) {
        tracing::error!(
            lease = args.lease_duration,
            renew = args.renew_deadline,
            retry = args.retry_period,
            "need retry-period < renew-deadline < lease-duration"
        );
        return ExitCode::from(2);
    }
    let identity = args.identity.clone().unwrap_or_else(|| format!("flywheel-{}", uuid::Uuid::new_v4().simple()));
    let leader_election = args.leader_elect.then(|| flywheel::operator::leader::LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity,
        lease_duration: Duration::from_secs(args.lease_duration),
        renew_deadline: Duration::from_secs(args.renew_deadline),
        retry_period: Duration::from_secs(args.retry_period),
    });
    let config = flywheel::operator::OperatorConfig {
        collector_url: args.collector_url.clone(),
        metrics_listen: args.metrics_listen,
        leader_election,
        concurrency: args.concurrency.max(1),
        operator_image: args.image.clone().unwrap_or_else(flywheel::operator::default_image),
        collector_token_secret: args.collector_token_secret.clone(),
        stats_write_interval: Duration::from_secs(args.stats_write_interval.max(1)),
        watch_namespaces: args
            .watch_namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        ..flywheel::operator::OperatorConfig::local()
    };
    let mut config = config;
    if let Some(url) = &args.collector_url {
        let token = match &args.collector_token_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => text.split_whitespace().next().map(str::to_string),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot read the collector token");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        config.collector_token = token.clone();
        config.analysis = std::sync::Arc::new(
            flywheel::operator::model_deployment::feedback_analysis::CollectorAnalysis::new(url, token),
        );
    }
    let operator = match flywheel::operator::start(client, config).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the operator");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(metrics = %operator.metrics_addr, "operator started");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing reconciles, releasing the lease");
    operator.shutdown().await;
    ExitCode::SUCCESS
}

async fn run_rollout(args: flywheel::cli::RolloutArgs) -> ExitCode {
    use flywheel::api::model_deployment::RolloutAction;
    use flywheel::cli::RolloutCommand;
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flywheel rollout: no Kubernetes client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (target, action) = match &args.action {
        RolloutCommand::Status(t) => (t, None),
        RolloutCommand::Promote(t) => (t, Some(RolloutAction::Promote)),
        RolloutCommand::Abort(t) => (t, Some(RolloutAction::Abort)),
    };
    let namespace = target.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let result = match action {
        None => kube::Api::<flywheel::api::ModelDeployment>::namespaced(client, &namespace)
            .get(&target.name)
            .await
            .map_err(flywheel::rollout_cli::RolloutCliError::from),
        Some(a) => {
            let who = std::env::var("USER").unwrap_or_else(|_| "flywheel-cli".into());
            flywheel::rollout_cli::request(client, &namespace, &target.name, a, &who).await
        }
    };
    match result {
        Ok(md) => {
            if let Some(a) = action {
                println!("{a:?} requested for {}/{}", namespace, target.name);
            }
            print!("{}", flywheel::rollout_cli::describe(&md));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flywheel rollout: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_agent(args: flywheel::cli::AgentArgs) -> ExitCode {
    use flywheel::agent::{Agent, AgentConfig, Capture};
    let upstream = match args.upstream.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("flywheel agent: --upstream {:?}: {e}", args.upstream);
            return ExitCode::from(2);
        }
    };
    let mut config = AgentConfig::new(args.listen, upstream, &args.model_version);
    config.admin_listen = args.admin_listen;
    config.upstream_health_path = args.upstream_health_path;
    config.namespace = args.namespace;
    config.deployment = args.deployment;
    config.collector_url = args.collector_url;
    config.collector_token_file = args.collector_token_file;
    config.queue_capacity = args.capture_queue;
    config.capture = Capture {
        sample_rate: args.sample_rate.clamp(0.0, 1.0),
        max_bytes: args.max_capture_bytes,
        redact_headers: args.redact_headers,
        redact_fields: args.redact_fields,
    };
    let agent = match Agent::start(config).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "agent failed to start");
            eprintln!("flywheel agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight and flushing captures");
    agent.shutdown().await;
    ExitCode::SUCCESS
}

async fn run_collector(args: flywheel::cli::CollectorArgs) -> ExitCode {
    use flywheel::collector::{Collector, CollectorConfig};
    let mut config = CollectorConfig::new(args.listen, args.data_dir);
    config.token_file = args.token_file;
    config.database_url = args.database_url;
    config.retention = args.retention;
    config.max_body_bytes = args.max_body_bytes;
    config.queue = args.queue;
    let collector = match Collector::start(config).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "collector failed to start");
            eprintln!("flywheel collector: {e}");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight and committing what is queued");
    collector.shutdown().await;
    ExitCode::SUCCESS
}

async fn run_fetch_model(args: flywheel::cli::FetchModelArgs) -> ExitCode {
    use flywheel::fetch_model::{FetchOptions, fetch};
    let mut options = FetchOptions::from_env();
    options.concurrency = args.concurrency;
    options.attempts = args.attempts;
    options.ca_file = args.ca_file;
    options.allow_http = args.allow_http;
    for option in &args.store_options {
        let Some((key, value)) = option.split_once('=') else {
            eprintln!("flywheel fetch-model: --store-option {option:?}: expected KEY=VALUE");
            return ExitCode::from(2);
        };
        options.store_options.push((key.trim().to_string(), value.to_string()));
    }
    let result = tokio::select! {
        result = fetch(&args.uri, &args.dir, &options) => result,
        () = shutdown_signal() => {
            eprintln!("flywheel fetch-model: interrupted");
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(report) => {
            println!(
                "{} file(s), {} bytes{} in {}",
                report.files.len(),
                report.bytes,
                if report.skipped { " (already present)" } else { "" },
                args.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(uri = %args.uri, error = %e, "fetch failed");
            eprintln!("flywheel fetch-model: {e}");
            ExitCode::from(if e.is_configuration() { 2 } else { 1 })
        }
    }
}

async fn run_demo(args: flywheel::cli::DemoArgs) -> ExitCode {
    use flywheel::demo::{DemoOptions, ViewMode};
    use std::io::IsTerminal;
    // With --json, stdout carries only the summary; the live view goes to stderr.
    let terminal = if args.json { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    let options = DemoOptions {
        cycles: args.cycles,
        speed: args.speed,
        kubeconfig_out: args.kubeconfig_out.clone(),
        view: if terminal && !dumb { ViewMode::Live } else { ViewMode::Log },
        view_to_stderr: args.json,
        ..DemoOptions::new(args.scenario)
    };
    let result = tokio::select! {
        result = flywheel::demo::run(options) => result,
        () = shutdown_signal() => {
            eprintln!("flywheel demo: interrupted");
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string(&summary) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("flywheel demo: encoding the summary: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flywheel demo: {e}");
            ExitCode::from(if matches!(e, flywheel::demo::DemoError::Options(_)) { 2 } else { 1 })
        }
    }
}

fn print_crds() -> ExitCode {
    match api::crds_yaml() {
        Ok(yaml) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(yaml.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flywheel crds: writing to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("flywheel crds: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_crds(dir: &Path) -> ExitCode {
    for crd in api::crds() {
        let path = dir.join(api::crd_file_name(&crd));
        let result = api::crd_yaml(&crd)
            .map_err(|e| e.to_string())
            .and_then(|yaml| std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display())));
        if let Err(e) = result {
            eprintln!("flywheel crds: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
