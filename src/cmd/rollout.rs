//! `flywheel rollout status|promote|abort`: its arguments, and the request through the status
//! subresource (`crate::rollout_cli`).

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// `flywheel rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: RolloutCommand,
}

/// Manual control of a ModelDeployment's rollout, through its status subresource.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show the stable and canary versions, the step, the evidence and the history.
    Status(RolloutTarget),
    /// Pass the current step's gate (or give the final approval).
    Promote(RolloutTarget),
    /// Remove the canary and return all traffic to stable.
    Abort(RolloutTarget),
}

/// The ModelDeployment a rollout command acts on.
#[derive(Debug, Args)]
pub struct RolloutTarget {
    /// Name of the ModelDeployment.
    pub name: String,
    /// Its namespace (the kubeconfig's by default).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

pub async fn run(args: RolloutArgs) -> ExitCode {
    use crate::api::model_deployment::RolloutAction;
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
        None => kube::Api::<crate::api::ModelDeployment>::namespaced(client, &namespace)
            .get(&target.name)
            .await
            .map_err(crate::rollout_cli::RolloutCliError::from),
        Some(a) => {
            let who = std::env::var("USER").unwrap_or_else(|_| "flywheel-cli".into());
            crate::rollout_cli::request(client, &namespace, &target.name, a, &who).await
        }
    };
    match result {
        Ok(md) => {
            if let Some(a) = action {
                println!("{a:?} requested for {}/{}", namespace, target.name);
            }
            print!("{}", crate::rollout_cli::describe(&md));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flywheel rollout: {e}");
            ExitCode::FAILURE
        }
    }
}
