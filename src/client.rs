//! Connecting, as both binaries do: the kubeconfig rules kubectl users expect, and Apis scoped
//! to a namespace or to the whole cluster.

use std::path::{Path, PathBuf};

use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Config, Resource};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading kubeconfig {}: {source}", path.display())]
    Read { path: PathBuf, source: KubeconfigError },
    #[error("reading kubeconfig ($KUBECONFIG or ~/.kube/config): {0}")]
    ReadDefault(#[source] KubeconfigError),
    #[error("loading kubeconfig: {0}")]
    Load(#[source] KubeconfigError),
    #[error("no kubeconfig ($KUBECONFIG or ~/.kube/config) and not in a cluster: {0}")]
    Infer(#[source] InferConfigError),
}

/// The client configuration from `kubeconfig` (else $KUBECONFIG, then ~/.kube/config) and its
/// `context` (else the current one); with neither given and no kubeconfig file, the in-cluster
/// ServiceAccount.
pub async fn config(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Config, ConfigError> {
    let file = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path).map_err(|source| ConfigError::Read { path: path.into(), source })?,
        None if context.is_some() => Kubeconfig::read().map_err(ConfigError::ReadDefault)?,
        None => return Config::infer().await.map_err(ConfigError::Infer),
    };
    let options = KubeConfigOptions { context: context.map(str::to_owned), ..KubeConfigOptions::default() };
    Config::from_custom_kubeconfig(file, &options).await.map_err(ConfigError::Load)
}

/// An Api over one namespace, or over all of them.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
